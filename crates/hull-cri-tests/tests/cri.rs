//! Kubernetes' CRI through containerd 1.6's CRI plugin, with the runtime handler
//! `hull-ns` (hull's shim, namespaces) and `runc` (containerd's runc shim) for
//! comparison, and `hull` (one VM per pod: cri/vm.rs): a pod on a CNI bridge, two containers in it (one sharing the shim of
//! its pod), their logs in CRI format, ExecSync, stats, Update, exit codes, stop with a grace
//! period then SIGKILL, removal; after it, no shim, mount, netns or cgroup left.

mod common;
#[path = "cri/layers.rs"]
mod layers;
#[path = "cri/verbs.rs"]
mod verbs;
#[path = "cri/vm.rs"]
mod vm;
#[path = "cri/vm_pods.rs"]
mod vm_pods;
#[path = "cri/volumes.rs"]
mod volumes;

use std::path::PathBuf;
use std::time::Duration;

use common::{Cri, BUSYBOX};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatsRequest,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerResources, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest, VersionRequest,
};

pub(crate) fn pod_config(cri: &Cri, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: cri.dir.join("logs").join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            // Under a cgroup of the test's own (cgroupfs driver).
            cgroup_parent: format!("/{}", cri.dir.file_name().unwrap().to_string_lossy()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn container_config(name: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Waits until the container is in `state`; its status then.
pub(crate) async fn wait_state(
    cri: &mut Cri,
    id: &str,
    state: ContainerState,
) -> k8s_cri::v1::ContainerStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = cri
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status");
        if st.state == state as i32 {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container {id} not {state:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn create_started(
    cri: &mut Cri,
    pod: &str,
    sandbox: &PodSandboxConfig,
    c: ContainerConfig,
) -> String {
    let id = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// The memory limit of a container's cgroup on this host (v1 memory controller, else v2).
fn memory_limit(cri: &Cri, id: &str) -> Option<u64> {
    let v1 = PathBuf::from("/sys/fs/cgroup/memory")
        .join(&cri.name)
        .join(id);
    let file = if v1.exists() {
        v1.join("memory.limit_in_bytes")
    } else {
        PathBuf::from("/sys/fs/cgroup")
            .join(&cri.name)
            .join(id)
            .join("memory.max")
    };
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// UpdateContainerResources reaches the container's cgroup (the shim's Update).
async fn update_memory(cri: &mut Cri, id: &str) {
    const LIMIT: i64 = 96 << 20;
    cri.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: LIMIT,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(
        memory_limit(cri, id),
        Some(LIMIT as u64),
        "the memory limit after Update"
    );
}

/// The pod's network namespace file, from the sandbox's verbose status.
async fn netns_of(cri: &mut Cri, pod: &str) -> Option<String> {
    let resp = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(resp.info.get("info")?).ok()?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .map(str::to_string)
}

/// RunPodSandbox on the test's CNI bridge: (pod id, its netns file).
pub(crate) async fn run_pod(
    cri: &mut Cri,
    handler: &str,
    sandbox: &PodSandboxConfig,
) -> (String, String) {
    let pod = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox with {handler}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    cri.pods.push(pod.clone());
    let netns = netns_of(cri, &pod).await.expect("the pod's netns path");
    cri.netns.push(netns.clone());
    let status = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a pod status");
    assert_eq!(
        status.state,
        PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    assert!(ip.starts_with("10.250."), "the pod's CNI address: {ip:?}");
    (pod, netns)
}

/// ExecSync's output and exit code, and ContainerStats of a running container.
pub(crate) async fn exec_and_stats(cri: &mut Cri, id: &str) {
    let exec = cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: ["sh", "-c", "echo out; echo err >&2; exit 3"]
                .map(String::from)
                .to_vec(),
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let got = (
        exec.exit_code,
        exec.stdout.as_slice(),
        exec.stderr.as_slice(),
    );
    assert_eq!(got, (3, &b"out\n"[..], &b"err\n"[..]), "ExecSync");
    let stats = cri
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(mem.is_some_and(|m| m > 0), "working set: {mem:?}");
}

/// StopContainer (the app ignores SIGTERM: the grace period ends in SIGKILL), then
/// every container and the pod removed; its netns goes with it.
pub(crate) async fn stop_and_remove(cri: &mut Cri, pod: &str, containers: &[&str], netns: &str) {
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: containers[0].into(),
            timeout: 1,
        })
        .await
        .expect("StopContainer");
    let st = wait_state(cri, containers[0], ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    for c in containers {
        cri.rt
            .remove_container(RemoveContainerRequest {
                container_id: c.to_string(),
            })
            .await
            .expect("RemoveContainer");
    }
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("StopPodSandbox");
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("RemovePodSandbox");
    assert!(!std::path::Path::new(netns).exists(), "netns left: {netns}");
}

async fn pod_lifecycle(cri: &mut Cri, handler: &str) {
    let name = format!("pod-{handler}");
    let sandbox = pod_config(cri, &name);
    let (pod, netns) = run_pod(cri, handler, &sandbox).await;
    let app = container_config("app", "trap '' TERM; echo hello; while :; do sleep 1; done");
    let app = create_started(cri, &pod, &sandbox, app).await;
    wait_state(cri, &app, ContainerState::ContainerRunning).await;
    let short = container_config("short", "ip -4 addr show eth0 | grep -c 10.250.; exit 4");
    let short = create_started(cri, &pod, &sandbox, short).await;
    let st = wait_state(cri, &short, ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 4, "{st:?}");
    if handler == "hull-ns" {
        // The pod's containers are grouped by io.kubernetes.cri.sandbox-id: one shim.
        let shims: Vec<_> = cri
            .processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim-hull-ns-v2"))
            .collect();
        assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    }
    exec_and_stats(cri, &app).await;
    update_memory(cri, &app).await;
    let logs = |c: &str| {
        let f = cri.dir.join("logs").join(&name).join(format!("{c}.log"));
        std::fs::read_to_string(f).unwrap_or_default()
    };
    let app_log = logs("app");
    assert!(app_log.contains(" stdout F hello"), "CRI log: {app_log:?}");
    let short_log = logs("short");
    assert!(
        short_log.contains(" stdout F 1"),
        "pod network in a container: {short_log:?}"
    );
    stop_and_remove(cri, &pod, &[&app, &short], &netns).await;
}

pub(crate) fn assert_clean(cri: &Cri) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cri.processes().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cri.processes(), vec![], "processes left");
    let prefix = cri.dir.display().to_string();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    // The parent itself stays (as with runc); no pod's or container's cgroup below it.
    let cgroups: Vec<_> = common::pod_cgroups(&cri.name)
        .into_iter()
        .filter(|c| c.parent().and_then(|p| p.file_name()) == Some(cri.name.as_ref()))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    for pod in &cri.pods {
        let s = common::socket_of(&cri.dir.join("c.sock"), pod);
        assert!(!s.exists(), "shim socket left: {}", s.display());
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn cri_pods_with_hull_ns_and_runc() {
    runtime().block_on(async {
        let mut cri = Cri::start().await;
        let v = cri
            .rt
            .version(VersionRequest {
                version: "v1".into(),
            })
            .await
            .expect("Version")
            .into_inner();
        assert_eq!(v.runtime_name, "containerd", "{v:?}");
        for handler in ["hull-ns", "runc"] {
            pod_lifecycle(&mut cri, handler).await;
        }
        assert_clean(&cri);
    });
}
