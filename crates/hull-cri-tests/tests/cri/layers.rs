//! An image's layers in a VM pod: containerd's overlayfs snapshotter gives the shim
//! an overlay of the image's layers, and each layer goes into the VM as an erofs image
//! of its own, stacked again in the guest. Two containers of one pod whose images share
//! a base layer share that layer's device; a layer's whiteouts still delete what the
//! layers below have. The same containers under `hull-ns` and `runc` see the same files.

use k8s_cri::v1::{ContainerState, ImageSpec};

use super::common::{Cri, LAYERED};
use super::vm::exec_out;
use super::vm_pods::remove_pod;
use super::{assert_clean, container_config, create_started, pod_config, run_pod, wait_state};

/// What a container of the layered image sees of its layers' files.
const LOOK: &str = "cat /etc/layered; test -e /etc/group && echo group-kept || echo group-deleted; test -x /bin/sh && echo sh";

/// The lowerdirs of the root's overlay, as the container's /proc/mounts shows them.
fn lowers(mounts: &str) -> Vec<String> {
    let root = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no root in {mounts}"));
    let options = root.split(' ').nth(3).unwrap_or_default();
    options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("the root is no overlay: {root}"))
        .split(':')
        .map(String::from)
        .collect()
}

async fn layered_pod(cri: &mut Cri, handler: &str) {
    let sandbox = pod_config(cri, &format!("layers-{handler}"));
    let (pod, _) = run_pod(cri, handler, &sandbox).await;
    let mut top = container_config("top", "exec sleep 1000");
    top.image = Some(ImageSpec {
        image: LAYERED.into(),
        ..Default::default()
    });
    let top = create_started(cri, &pod, &sandbox, top).await;
    let base = container_config("base", "exec sleep 1000");
    let base = create_started(cri, &pod, &sandbox, base).await;
    for id in [&top, &base] {
        wait_state(cri, id, ContainerState::ContainerRunning).await;
    }
    let seen = exec_out(cri, &top, &["sh", "-c", LOOK]).await;
    assert_eq!(
        seen, "from the second layer\ngroup-deleted\nsh",
        "{handler}: the layered image's files"
    );
    let seen = exec_out(cri, &base, &["sh", "-c", "test -e /etc/group && echo kept"]).await;
    assert_eq!(seen, "kept", "{handler}: the base image is untouched");
    if handler == "hull" {
        let top_lowers = lowers(&exec_out(cri, &top, &["cat", "/proc/mounts"]).await);
        let base_lowers = lowers(&exec_out(cri, &base, &["cat", "/proc/mounts"]).await);
        assert_eq!(top_lowers.len(), 2, "one image per layer: {top_lowers:?}");
        assert_eq!(
            base_lowers,
            top_lowers[1..],
            "the shared base layer is one image in the VM"
        );
        assert!(
            top_lowers
                .iter()
                .all(|l| l.starts_with("/run/hull-images/")),
            "attached images: {top_lowers:?}"
        );
    }
    remove_pod(cri, &pod, &[&top, &base]).await;
}

#[test]
fn cri_image_layers_in_vm_pods_and_beside_them() {
    super::runtime().block_on(async {
        let mut cri = Cri::start().await;
        for handler in ["hull", "hull-ns", "runc"] {
            layered_pod(&mut cri, handler).await;
            assert_clean(&cri);
        }
    });
}
