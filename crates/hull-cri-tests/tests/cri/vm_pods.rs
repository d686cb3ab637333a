//! VM pods (`hull` handler) as Kubernetes uses them: sized from the pod's resources
//! (the kubelet's sum of its containers' limits), on the CNI network with each other and
//! the host (ping, TCP, a hostPort through CNI's portmap), and a VMM or a shim
//! SIGKILLed under a running pod: containerd sees the task exit, and removing the pod
//! leaves nothing.

use std::io::Read;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerState, CreateContainerRequest, LinuxContainerResources, PodSandboxState,
    PodSandboxStatus, PodSandboxStatusRequest, PortMapping, Protocol, RemoveContainerRequest,
    RemovePodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

use super::common::Cri;
use super::vm::{exec_out, vmms};
use super::{assert_clean, container_config, create_started, pod_config, run_pod, wait_state};

/// The pod's status (state, CNI address).
async fn pod_status(cri: &mut Cri, pod: &str) -> PodSandboxStatus {
    cri.rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a pod status")
}

/// The bridge's own address (the pods' gateway): a local address of this host.
fn gateway(cri: &Cri) -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", &cri.bridge])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address on {}: {text}", cri.bridge));
    cidr.split('/').next().unwrap().to_string()
}

/// What a TCP server answers at `addr` (retried while the pod comes up).
fn tcp_answer(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut text = String::new();
                    s.read_to_string(&mut text).map(|_| text)
                });
        match got {
            Ok(text) if !text.is_empty() => return text,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            other => panic!("{addr}: {other:?}"),
        }
    }
}

/// The cgroup paths (all hierarchies) of a process.
fn cgroups_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

const HOST_PORT: i32 = 18080;

/// StopPodSandbox (it kills the containers), then every container and the pod removed.
pub(crate) async fn remove_pod(cri: &mut Cri, pod: &str, containers: &[&str]) {
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("StopPodSandbox");
    for c in containers {
        cri.rt
            .remove_container(RemoveContainerRequest {
                container_id: c.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {c}: {e}"));
    }
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

async fn network_and_sizing(cri: &mut Cri) {
    let mut a = pod_config(cri, "net-a");
    a.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: HOST_PORT,
        host_ip: String::new(),
    }];
    // The kubelet's pod resources: the VM is sized from them (320 MiB for containers).
    a.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 320 << 20,
        cpu_period: 100_000,
        cpu_quota: 100_000,
        ..Default::default()
    });
    let (pod_a, _) = run_pod(cri, "hull", &a).await;
    let server = container_config(
        "server",
        "trap '' TERM; while :; do echo from-a | nc -l -p 8080; done",
    );
    let server = create_started(cri, &pod_a, &a, server).await;
    wait_state(cri, &server, ContainerState::ContainerRunning).await;
    let mem_kib: u64 = exec_out(cri, &server, &["sh", "-c", "grep MemTotal /proc/meminfo"])
        .await
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse().ok())
        .expect("MemTotal");
    assert!(
        mem_kib > 330 << 10 && mem_kib <= 384 << 10,
        "a 384 MiB guest for 320 MiB of pod resources: MemTotal {mem_kib} kB"
    );
    // The pod's shim joined the sandbox's host cgroup (beside the proxy and VMM).
    let shim = cri
        .processes()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-hull-v2") && !cmd.contains(" delete"))
        .expect("the pod's shim");
    assert!(
        cgroups_of(shim.0).contains(&pod_a),
        "the shim in the pod's cgroup: {}",
        cgroups_of(shim.0)
    );
    // A container the VM cannot hold is refused.
    let mut big = container_config("big", "sleep 1");
    big.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    // containerd creates the task (hull's create) at StartContainer.
    let big = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_a.clone(),
            config: Some(big),
            sandbox_config: Some(a.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    let refused = cri
        .rt
        .start_container(StartContainerRequest {
            container_id: big.clone(),
        })
        .await
        .expect_err("a 512 MiB container in a 384 MiB VM");
    assert!(
        refused.message().contains("a running VM cannot grow"),
        "{refused:?}"
    );
    cri.rt
        .remove_container(RemoveContainerRequest { container_id: big })
        .await
        .expect("RemoveContainer of the refused one");

    let b = pod_config(cri, "net-b");
    let (pod_b, _) = run_pod(cri, "hull", &b).await;
    let ip_a = pod_status(cri, &pod_a)
        .await
        .network
        .map(|n| n.ip)
        .expect("the pod's address");
    let client = container_config("client", "trap '' TERM; while :; do sleep 1; done");
    let client = create_started(cri, &pod_b, &b, client).await;
    wait_state(cri, &client, ContainerState::ContainerRunning).await;
    exec_out(cri, &client, &["ping", "-c", "2", "-W", "5", &ip_a]).await;
    let answer = exec_out(
        cri,
        &client,
        &["sh", "-c", &format!("nc {ip_a} 8080 </dev/null")],
    )
    .await;
    assert_eq!(answer, "from-a", "pod b to pod a over the bridge");
    // The host reaches pod a at its address, and through the hostPort.
    // busybox's ping (busybox-static is installed; iputils-ping may not be).
    let ping = std::process::Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "5", &ip_a])
        .output()
        .expect("busybox ping");
    assert!(ping.status.success(), "host to pod a: {ping:?}");
    let hostport = tcp_answer(&format!("{}:{HOST_PORT}", gateway(cri)));
    assert_eq!(hostport.trim(), "from-a", "hostPort {HOST_PORT}");

    remove_pod(cri, &pod_a, &[&server]).await;
    remove_pod(cri, &pod_b, &[&client]).await;
    let rules = std::process::Command::new("iptables-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(
        !rules.contains(&pod_a),
        "portmap's rules for pod a stayed after its removal"
    );
    assert!(vmms(&cri.dir).is_empty(), "a VMM outlived its pod");
}

/// A pod whose VMM (or shim) `victim` picks is SIGKILLed under it.
async fn killed_under_a_pod(cri: &mut Cri, name: &str, victim: impl Fn(&Cri) -> i32) {
    let sandbox = pod_config(cri, name);
    let (pod, _) = run_pod(cri, "hull", &sandbox).await;
    let app = container_config("app", "trap '' TERM; while :; do sleep 1; done");
    let app = create_started(cri, &pod, &sandbox, app).await;
    wait_state(cri, &app, ContainerState::ContainerRunning).await;
    let pid = victim(cri);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_state(cri, &app, ContainerState::ContainerExited).await;
    assert_ne!(st.exit_code, 0, "{name}: {st:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while pod_status(cri, &pod).await.state != PodSandboxState::SandboxNotready as i32 {
        assert!(Instant::now() < deadline, "{name}: the pod stayed ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    remove_pod(cri, &pod, &[&app]).await;
}

#[test]
fn cri_vm_pods_network_hostport_and_sizing() {
    super::runtime().block_on(async {
        let mut cri = Cri::start().await;
        network_and_sizing(&mut cri).await;
        assert_clean(&cri);
    });
}

#[test]
fn cri_vm_pod_with_its_vmm_or_shim_killed() {
    super::runtime().block_on(async {
        let mut cri = Cri::start().await;
        killed_under_a_pod(&mut cri, "vmm-killed", |c| {
            let v = vmms(&c.dir);
            assert_eq!(v.len(), 1, "one VMM: {v:?}");
            v[0]
        })
        .await;
        assert_clean(&cri);
        killed_under_a_pod(&mut cri, "shim-killed", |c| {
            c.processes()
                .into_iter()
                .find(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
                .expect("the pod's shim")
                .0
        })
        .await;
        assert_clean(&cri);
        assert!(vmms(&cri.dir).is_empty(), "a VMM outlived its shim");
    });
}
