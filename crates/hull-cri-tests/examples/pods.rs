//! bench/pods: N pods started at once through containerd's CRI, each with one busybox
//! container running `sleep`, per runtime handler (`runc`, `hull-ns`, `hull`, and
//! `hull-vmm`: VM pods under hull's own VMM where KVM runs guests): the time
//! until all run, pods per second, each pod's latency (p50, p99), the host memory per
//! pod (PSS of everything the pods added: shims, pause and container processes, and for
//! VM pods the proxy, the VMM and the guest memory it touched), the shims' RSS, and the
//! ratios to runc. Usage: pods [--handlers runc,hull-ns,hull] [--counts 1,10,50]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cri, BUSYBOX};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

type Rt = k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

struct Run {
    handler: String,
    n: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    pss_kib: u64,
    /// PSS by command name (`/proc/PID/comm`), summed over the pods, and how many
    /// processes have that name.
    by_command: BTreeMap<String, (u64, usize)>,
    /// Private_Clean + Private_Dirty of the same processes: what one more pod adds
    /// once the pages pods share (programs, the guest kernel's file) are counted once.
    private_kib: u64,
    shim_rss_kib: Vec<u64>,
}

fn pod_config(cri: &Cri, name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: cri.dir.join("logs").join(name).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", cri.name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sleeper() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleep".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "sleep.log".into(),
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer, StartContainer of one pod: (pod id, latency).
async fn one_pod(mut rt: Rt, config: PodSandboxConfig, handler: String) -> (String, Duration) {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let t = Instant::now();
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {name} ({handler}): {e}"))
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(sleeper()),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer in {name} ({handler}): {e}"))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: id })
        .await
        .unwrap_or_else(|e| panic!("StartContainer in {name} ({handler}): {e}"));
    (pod, t.elapsed())
}

async fn remove(mut rt: Rt, pod: String) {
    let stop = StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    };
    rt.stop_pod_sandbox(stop).await.expect("StopPodSandbox");
    let rm = RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    };
    rt.remove_pod_sandbox(rm).await.expect("RemovePodSandbox");
}

/// A figure of a /proc/PID/smaps_rollup or status text, in KiB (0 where it is missing).
fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn proc_file(pid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

/// Every process the pods added: those naming the bench's directory (shims, proxies,
/// VMMs) and those in the pods' cgroups.
fn pod_processes(cri: &Cri) -> BTreeSet<i32> {
    let mut pids: BTreeSet<i32> = cri.processes().into_iter().map(|(p, _)| p).collect();
    for cg in common::pod_cgroups(&cri.name) {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()));
    }
    pids
}

async fn measure(cri: &Cri, handler: &str, n: usize, round: usize) -> Run {
    let t = Instant::now();
    let started = (0..n).map(|i| {
        let config = pod_config(cri, &format!("p{round}-{i}"));
        tokio::spawn(one_pod(cri.rt.clone(), config, handler.into()))
    });
    let results = join_all(started).await;
    let wall = t.elapsed();
    // Settled: the VMs' guests idle, the shims' start-up garbage gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = pod_processes(cri);
    let mut by_command: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    let mut private_kib = 0;
    for &p in &pids {
        // One read: the figures of one moment, and QEMU's rollup walks all its mappings.
        let rollup = proc_file(p, "smaps_rollup");
        let entry = by_command
            .entry(proc_file(p, "comm").trim().to_string())
            .or_default();
        entry.0 += kib(&rollup, "Pss:");
        entry.1 += 1;
        private_kib += kib(&rollup, "Private_Clean:") + kib(&rollup, "Private_Dirty:");
    }
    let pss_kib = by_command.values().map(|(kib, _)| kib).sum();
    let shim_rss_kib = cri
        .processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-"))
        .map(|(p, _)| kib(&proc_file(p, "status"), "VmRSS:"))
        .collect();
    let pods: Vec<String> = results.iter().map(|(p, _)| p.clone()).collect();
    join_all(
        pods.into_iter()
            .map(|p| tokio::spawn(remove(cri.rt.clone(), p))),
    )
    .await;
    Run {
        handler: handler.into(),
        n,
        wall,
        latencies: results.into_iter().map(|(_, d)| d).collect(),
        pss_kib,
        by_command,
        private_kib,
        shim_rss_kib,
    }
}

async fn join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("a pod's task"));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn print(r: &Run) {
    let mut l = r.latencies.clone();
    l.sort();
    let shim = if r.shim_rss_kib.is_empty() {
        0.0
    } else {
        r.shim_rss_kib.iter().sum::<u64>() as f64 / r.shim_rss_kib.len() as f64 / 1024.0
    };
    println!(
        "{:8} N={:<3} all running in {:6.2} s  {:6.1} pods/s  p50 {:6.0} ms  p99 {:6.0} ms  memory/pod {:6.1} MiB  shim RSS {:5.1} MiB",
        r.handler,
        r.n,
        r.wall.as_secs_f64(),
        r.n as f64 / r.wall.as_secs_f64(),
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
        r.pss_kib as f64 / r.n as f64 / 1024.0,
        shim
    );
    let parts: Vec<String> = r
        .by_command
        .iter()
        // Kernel threads (KVM's per-VM ones sit in the pod's cgroup) have no memory.
        .filter(|(_, (kib, _))| *kib > 0)
        .map(|(c, (kib, count))| {
            let per_pod = |x: f64| x / r.n as f64;
            format!(
                "{c} {:.1} ({:.0} a pod)",
                per_pod(*kib as f64) / 1024.0,
                per_pod(*count as f64)
            )
        })
        .collect();
    println!(
        "  memory/pod by process, MiB: {}; private/pod {:.1} MiB",
        parts.join(", "),
        r.private_kib as f64 / r.n as f64 / 1024.0
    );
}

fn list(args: &[String], flag: &str, default: &str) -> Vec<String> {
    let v = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str);
    v.split(',').map(str::to_string).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let handlers = list(&args, "--handlers", "runc,hull-ns,hull");
    let counts: Vec<usize> = list(&args, "--counts", "1,10,50")
        .iter()
        .map(|c| c.parse().expect("--counts: numbers"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cri = Cri::start().await;
        let mut runs = Vec::new();
        for (round, &n) in counts.iter().enumerate() {
            for h in &handlers {
                let r = measure(&cri, h, n, round * 10 + runs.len()).await;
                print(&r);
                runs.push(r);
            }
        }
        ratios(&runs, &counts);
    });
}

/// Each handler's to runc's per pod (time to all running, memory, shim RSS).
fn ratios(runs: &[Run], counts: &[usize]) {
    let find = |h: &str, n: usize| runs.iter().find(|r| r.handler == h && r.n == n);
    for &n in counts {
        let Some(runc) = find("runc", n) else {
            continue;
        };
        for r in runs.iter().filter(|r| r.n == n && r.handler != "runc") {
            let h = &r.handler;
            let shim = |r: &Run| {
                r.shim_rss_kib.iter().sum::<u64>() as f64 / r.shim_rss_kib.len().max(1) as f64
            };
            println!(
                "ratio {h}/runc N={n}: time {:.2}  memory/pod {:.2}  shim RSS {:.2}",
                r.wall.as_secs_f64() / runc.wall.as_secs_f64(),
                r.pss_kib as f64 / runc.pss_kib.max(1) as f64,
                shim(r) / shim(runc).max(1.0)
            );
        }
    }
}
