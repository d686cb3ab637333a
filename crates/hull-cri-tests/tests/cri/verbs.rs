//! The CRI verbs the pod tests leave out, with each handler (`runc` as the yardstick,
//! `hull-ns`, `hull`): ListContainers by pod, a `tty: true` container, ReopenContainerLog
//! (log rotation by the kubelet), and OOMKilled after a memory limit is hit.

use std::time::Duration;

use k8s_cri::v1::{
    ContainerFilter, ContainerState, LinuxContainerConfig, LinuxContainerResources,
    ListContainersRequest, ReopenContainerLogRequest,
};

use super::common::Cri;
use super::{container_config, create_started, pod_config, run_pod, wait_state};

async fn log_of(cri: &Cri, pod: &str, container: &str) -> String {
    let f = cri
        .dir
        .join("logs")
        .join(pod)
        .join(format!("{container}.log"));
    std::fs::read_to_string(f).unwrap_or_default()
}

/// Waits (30 s at most) until the container's log holds `needle`.
async fn log_has(cri: &Cri, pod: &str, container: &str, needle: &str) -> String {
    for _ in 0..300 {
        let log = log_of(cri, pod, container).await;
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{pod}/{container}: no {needle:?} in its log: {:?}",
        log_of(cri, pod, container).await
    );
}

async fn verbs(cri: &mut Cri, handler: &str) {
    let name = format!("verbs-{handler}");
    let sandbox = pod_config(cri, &name);
    let (pod, _) = run_pod(cri, handler, &sandbox).await;

    let mut tty = container_config(
        "tty",
        "tty; stty size; trap '' TERM; while :; do sleep 1; done",
    );
    tty.tty = true;
    tty.stdin = true;
    let tty = create_started(cri, &pod, &sandbox, tty).await;
    log_has(cri, &name, "tty", "/dev/pts/").await;

    let ticker = container_config(
        "ticker",
        "trap '' TERM; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    );
    let ticker = create_started(cri, &pod, &sandbox, ticker).await;
    log_has(cri, &name, "ticker", "tick 2").await;
    let log = cri.dir.join("logs").join(&name).join("ticker.log");
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    cri.rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect("ReopenContainerLog");
    let fresh = log_has(cri, &name, "ticker", "tick").await;
    assert!(
        !fresh.contains(" tick 1\n"),
        "the reopened log starts afresh: {fresh:?}"
    );

    // A shell variable of 64 MiB under a 32 MiB limit.
    let mut hog = container_config(
        "hog",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
    );
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = create_started(cri, &pod, &sandbox, hog).await;
    let st = wait_state(cri, &hog, ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{handler}: {st:?}");
    // In a VM too: the guest cgroup's count, read when the init exited, comes before
    // the exit.
    assert_eq!(st.reason, "OOMKilled", "{handler}: {st:?}");

    let listed = cri
        .rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    let mut ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![tty.as_str(), ticker.as_str(), hog.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "{handler}: the pod's containers");

    super::vm_pods::remove_pod(cri, &pod, &[&tty, &ticker, &hog]).await;
}

#[test]
fn cri_tty_log_reopen_oom_and_list_with_every_handler() {
    super::runtime().block_on(async {
        let mut cri = Cri::start().await;
        for handler in ["runc", "hull-ns", "hull"] {
            verbs(&mut cri, handler).await;
        }
        super::assert_clean(&cri);
    });
}
