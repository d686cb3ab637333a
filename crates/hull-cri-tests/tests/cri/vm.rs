//! A pod with the `hull` handler: one VM for the pod. RunPodSandbox boots it (the
//! pause container), each CreateContainer adds a container inside it, with its rootfs
//! over NBD; they share the pod's network (CNI's address mirrored into the VM) and
//! reach each other on localhost.

use std::path::Path;
use std::time::Instant;

use k8s_cri::v1::{
    ContainerState, ExecSyncRequest, LinuxContainerResources, UpdateContainerResourcesRequest,
};

use super::common::Cri;
use super::{
    assert_clean, container_config, create_started, exec_and_stats, pod_config, run_pod, runtime,
    stop_and_remove, wait_state,
};

/// The VMMs running for this test (their working directory is a sandbox's, under the
/// test's directory).
pub(crate) fn vmms(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            let vmm = exe.to_string_lossy().contains("qemu-system")
                || std::fs::read_to_string(e.path().join("comm")).ok()?.trim() == "hull-vmm";
            (vmm && cwd.starts_with(dir)).then_some(pid)
        })
        .collect()
}

pub(crate) async fn exec_out(cri: &mut Cri, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(r.exit_code, 0, "{cmd:?}: {r:?}");
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

async fn vm_pod(cri: &mut Cri) {
    let name = "pod-hull";
    let sandbox = pod_config(cri, name);
    let t = Instant::now();
    let (pod, netns) = run_pod(cri, "hull", &sandbox).await;
    let pod_time = t.elapsed();
    let app = container_config(
        "app",
        "trap '' TERM; echo pod-shm >/dev/shm/from-app; echo hello; while :; do echo from-app | nc -l -p 8080; done",
    );
    let t = Instant::now();
    let app = create_started(cri, &pod, &sandbox, app).await;
    let one = pod_time + t.elapsed();
    wait_state(cri, &app, ContainerState::ContainerRunning).await;
    let short = container_config(
        "short",
        "cat /proc/sys/kernel/random/boot_id; for i in $(seq 50); do cat /dev/shm/from-app 2>/dev/null && break; sleep 0.1; done; for i in $(seq 100); do nc 127.0.0.1 8080 </dev/null && break; sleep 0.2; done; ip -4 addr show eth0 | grep -c 10.250.; exit 4",
    );
    let t = Instant::now();
    let short = create_started(cri, &pod, &sandbox, short).await;
    let two = one + t.elapsed();
    println!(
        "hull handler: RunPodSandbox {pod_time:?}; + 1 container (created and started) {one:?}; + 2 containers {two:?}"
    );
    let st = wait_state(cri, &short, ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 4, "{st:?}");
    let vms = vmms(&cri.dir);
    assert_eq!(vms.len(), 1, "one VMM for the pod: {vms:?}");
    let boot = exec_out(cri, &app, &["cat", "/proc/sys/kernel/random/boot_id"]).await;
    exec_and_stats(cri, &app).await;
    // Limits hold in the guest's cgroup of the container; the host's sizes the VM.
    cri.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: app.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    // Through /dev/null too: the update keeps the devices every container needs.
    let read = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
    let limit = exec_out(cri, &app, &["sh", "-c", read]).await;
    assert_eq!(
        limit,
        (96u64 << 20).to_string(),
        "the guest's limit after Update"
    );
    let logs = |c: &str| {
        let f = cri.dir.join("logs").join(name).join(format!("{c}.log"));
        std::fs::read_to_string(f).unwrap_or_default()
    };
    let app_log = logs("app");
    assert!(app_log.contains(" stdout F hello"), "CRI log: {app_log:?}");
    let short_log = logs("short");
    assert!(
        short_log.contains(&format!(" stdout F {boot}")),
        "the same VM (boot id {boot}): {short_log:?}"
    );
    assert!(
        short_log.contains(" stdout F from-app"),
        "localhost between the pod's containers: {short_log:?}"
    );
    assert!(
        short_log.contains(" stdout F pod-shm"),
        "the pod's /dev/shm shared between its containers: {short_log:?}"
    );
    assert!(
        short_log.contains(" stdout F 1"),
        "the pod's CNI address in the VM: {short_log:?}"
    );
    stop_and_remove(cri, &pod, &[&app, &short], &netns).await;
    assert!(vmms(&cri.dir).is_empty(), "the pod's VMM outlived it");
}

#[test]
fn cri_pod_in_one_vm_with_hull() {
    runtime().block_on(async {
        let mut cri = Cri::start().await;
        vm_pod(&mut cri).await;
        assert_clean(&cri);
    });
}
