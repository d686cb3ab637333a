//! Directory volumes in pods (what Kubernetes' emptyDir, hostPath, configMap and
//! service account tokens are to a runtime: host directories bound into containers).
//! In a VM pod each member's directories reach the guest through the pod's one share,
//! both ways and live, read-only where asked; two members see one directory as one.
//! The same pods under `hull-ns` and `runc` behave alike. Removing the pod leaves no
//! mount and no pod directory.

use k8s_cri::v1::{ContainerState, Mount};

use super::common::Cri;
use super::vm::exec_out;
use super::vm_pods::remove_pod;
use super::{assert_clean, container_config, create_started, pod_config, run_pod, wait_state};

const POD_DIRS: &str = "/run/hull-vm/volumes";

fn volume(host: &std::path::Path, at: &str, readonly: bool) -> Mount {
    Mount {
        container_path: at.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// What the guest sees of the pod directory is a read-only view of a tmpfs of hull's:
/// it can write into its volumes (mounts of their own) and plant nothing else; and
/// only root may pass the directory that holds it (secrets are bound in there).
fn pod_directory_is_root_only_and_read_only(pod: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(POD_DIRS).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{POD_DIRS}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mine: Vec<&str> = info
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(&format!("{POD_DIRS}/{pod}")))
        })
        .collect();
    let view = mine
        .iter()
        .find(|l| {
            !l.split(' ').nth(4).unwrap().ends_with(".rw")
                && l.split(' ').nth(4).unwrap().matches('/').count() == 4
        })
        .unwrap_or_else(|| panic!("no pod view among {mine:?}"));
    let opts = view.split(' ').nth(5).unwrap();
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "the guest's view is writable: {view}"
    );
    assert!(view.contains(" - tmpfs "), "{view}");
}

async fn pod_with_volumes(cri: &mut Cri, handler: &str) {
    let (rw, ro) = (
        cri.dir.join(format!("rw-{handler}")),
        cri.dir.join(format!("ro-{handler}")),
    );
    for d in [&rw, &ro] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(rw.join("from-host"), "host wrote this\n").unwrap();
    std::fs::write(ro.join("config"), "read me\n").unwrap();
    let sandbox = pod_config(cri, &format!("volumes-{handler}"));
    let (pod, _) = run_pod(cri, handler, &sandbox).await;
    let mut writer = container_config("writer", "exec sleep 1000");
    writer.mounts = vec![volume(&rw, "/data", false), volume(&ro, "/config", true)];
    let writer = create_started(cri, &pod, &sandbox, writer).await;
    let mut reader = container_config("reader", "exec sleep 1000");
    reader.mounts = vec![volume(&rw, "/shared", false)];
    let reader = create_started(cri, &pod, &sandbox, reader).await;
    for id in [&writer, &reader] {
        wait_state(cri, id, ContainerState::ContainerRunning).await;
    }

    let script = "cat /data/from-host; echo guest wrote this > /data/from-guest; \
                  cat /config/config; (echo x > /config/x) 2>/dev/null && echo ro-writable || echo ro-refused";
    let seen = exec_out(cri, &writer, &["sh", "-c", script]).await;
    assert_eq!(
        seen, "host wrote this\nread me\nro-refused",
        "{handler}: the writer's volumes"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest")).unwrap(),
        "guest wrote this\n",
        "{handler}: the container's write reached the host"
    );
    assert!(
        !ro.join("x").exists(),
        "{handler}: a write through a read-only volume"
    );
    // Live both ways, and one directory for two members.
    std::fs::write(rw.join("later"), "after the start\n").unwrap();
    let seen = exec_out(
        cri,
        &reader,
        &["sh", "-c", "cat /shared/from-guest /shared/later"],
    )
    .await;
    assert_eq!(
        seen, "guest wrote this\nafter the start",
        "{handler}: the reader"
    );

    if handler == "hull" {
        pod_directory_is_root_only_and_read_only(&pod);
    }
    remove_pod(cri, &pod, &[&writer, &reader]).await;
    let left: Vec<String> = std::fs::read_dir(POD_DIRS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&pod))
        .collect();
    assert!(left.is_empty(), "{handler}: pod directories left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(POD_DIRS) && l.contains(&pod)),
        "{handler}: a pod volume is still mounted"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("from-host")).unwrap(),
        "host wrote this\n",
        "{handler}: the host's files survive the pod"
    );
}

#[test]
fn cri_directory_volumes_in_vm_pods_and_beside_them() {
    super::runtime().block_on(async {
        let mut cri = Cri::start().await;
        for handler in ["hull", "hull-ns", "runc"] {
            pod_with_volumes(&mut cri, handler).await;
            assert_clean(&cri);
        }
    });
}
