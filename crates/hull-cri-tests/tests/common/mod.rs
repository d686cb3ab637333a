//! A private containerd 1.6 with its CRI plugin on: its own config, root, state,
//! sockets, CNI configuration (a bridge of its own, host-local addresses kept in the
//! test's directory), runtime handlers `runc`, `hull-ns`, `hull` and `hull-vmm` (VM pods
//! under hull's own VMM, through a config.toml of the handler's), and a pause and a
//! busybox image made here and imported into `k8s.io`. A tonic CRI client talks to it
//! over the Unix socket. For the nested test bed's L1: `HULL_CRI_PORTMAP=off` leaves
//! CNI's portmap out (L1 has no iptables; nothing there asks for a hostPort), and
//! `HULL_CRI_RUNC_NO_PIVOT=1` has runc chroot instead of pivot_root (L1's root is its
//! initramfs, which cannot be pivoted away from).
#![allow(dead_code)]

#[path = "../../../hull-shim/tests/common/image.rs"]
pub mod image;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub const PAUSE: &str = "hull.test/pause:1";
pub const BUSYBOX: &str = "hull.test/busybox:1";
/// busybox's layer and one more on top: `/etc/layered` added, `/etc/group` deleted.
pub const LAYERED: &str = "hull.test/layered:1";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// cargo's target directory of this build, where the shim and hull are.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<triple>/debug/deps/cri-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The shim and the hull beside it, as `cargo test --workspace` builds them.
pub fn shim_bin() -> PathBuf {
    let dir = bin_dir();
    for b in ["containerd-shim-hull-v2", "hull"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build it first (cargo build -p hull -p hull-shim, or cargo test --workspace)",
            dir.join(b).display()
        );
    }
    dir.join("containerd-shim-hull-v2")
}

pub struct Cri {
    pub dir: PathBuf,
    /// The test's name: its directory, and the pods' cgroup parent.
    pub name: String,
    pub bridge: String,
    /// Pod ids and their network namespaces, for the cleanup after a failure.
    pub pods: Vec<String>,
    pub netns: Vec<String>,
    daemon: Child,
    pub rt: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// `restrict_oom_score_adj`: this host withholds CAP_SYS_RESOURCE even from root, and
/// the pause container's -998 would need it (runc and hull alike refuse it then).
fn config(dir: &Path) -> String {
    let d = |s: &str| dir.join(s).display().to_string();
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [{cri}]\n  sandbox_image = \"{PAUSE}\"\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
           restrict_oom_score_adj = true\n\
         [{cri}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{net}\"\n\
         [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.runc.options]\n  NoPivotRoot = {no_pivot}\n\
         [{cri}.containerd.runtimes.hull-ns]\n  runtime_type = \"io.containerd.hull-ns.v2\"\n\
         [{cri}.containerd.runtimes.hull]\n  runtime_type = \"io.containerd.hull.v2\"\n\
         [{cri}.containerd.runtimes.hull-vmm]\n  runtime_type = \"io.containerd.hull.v2\"\n\
         [{cri}.containerd.runtimes.hull-vmm.options]\n  ConfigPath = \"{vmm}\"\n",
        vmm = d("hull-vmm.toml"),
        // The nested test bed's L1 runs from its initramfs, where pivot_root(2) fails.
        no_pivot = std::env::var("HULL_CRI_RUNC_NO_PIVOT").is_ok_and(|v| v == "1"),
        root = d("root"),
        state = d("state"),
        sock = d("c.sock"),
        net = d("net.d"),
    )
}

/// A bridge network of the test's own: no masquerade; portmap's rules for a pod's
/// hostPorts go with the pod (its shared CNI-HOSTPORT-* chains stay, as on any node).
fn cni_config(dir: &Path, name: &str, bridge: &str, subnet: &str) -> String {
    let mut plugins = vec![serde_json::json!({
        "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": dir.join("cni-ipam").display().to_string()
        }
    })];
    if std::env::var("HULL_CRI_PORTMAP").as_deref() != Ok("off") {
        // hostPorts; its DEL (StopPodSandbox) removes the pod's rules.
        plugins.push(serde_json::json!({
            "type": "portmap", "capabilities": {"portMappings": true}
        }));
    }
    serde_json::json!({"cniVersion": "0.4.0", "name": name, "plugins": plugins}).to_string()
}

/// containerd binds its socket before it listens on it (and, under load, well before),
/// so a refused connection is retried until `deadline`.
async fn connect(sock: PathBuf, deadline: Instant) -> Result<Channel, String> {
    loop {
        let p = sock.clone();
        let attempt = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await;
        match attempt {
            Ok(ch) => return Ok(ch),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(format!(
                    "connect to containerd's CRI socket {}: {e:?}",
                    sock.display()
                ))
            }
        }
    }
}

/// The pause image's process: the package's `hull-test-pause`, which cargo builds for
/// its tests, and beside `examples/` for bench/pods' client.
fn pause_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_hull-test-pause") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("hull-test-pause"))
        .unwrap_or_default();
    assert!(
        beside.exists(),
        "no {} (cargo build -p hull-cri-tests --bins)",
        beside.display()
    );
    beside
}

/// containerd did not serve its socket: it goes, with its directory, and its log says why.
fn never_came_up(mut daemon: Child, dir: &Path, why: &str) -> ! {
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    let _ = fs::remove_dir_all(dir);
    panic!("containerd did not come up: {why}\ncontainerd.log:\n{log}");
}

impl Cri {
    pub async fn start() -> Cri {
        let shim = shim_bin();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("hull-cri-{}-{n}", std::process::id());
        let dir = PathBuf::from("/tmp").join(&name);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("net.d")).unwrap();
        for b in ["containerd-shim-hull-v2", "containerd-shim-hull-ns-v2"] {
            std::os::unix::fs::symlink(&shim, dir.join("bin").join(b)).unwrap();
        }
        fs::write(dir.join("config.toml"), config(&dir)).unwrap();
        fs::write(
            dir.join("hull-vmm.toml"),
            "[vm]\nhypervisor = \"hull-vmm\"\n",
        )
        .unwrap();
        // A bridge name is at most 15 bytes; the subnet is the test's alone.
        let bridge = format!("hc{}", std::process::id() % 1_000_000 * 10 + n as u32 % 10);
        let subnet = format!("10.250.{}.0/24", (std::process::id() as usize + n) % 250);
        let conf = cni_config(&dir, &name, &bridge, &subnet);
        fs::write(dir.join("net.d/10-hull-test.conflist"), conf).unwrap();
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("HULL_SHIM_ROOT", dir.join("shim"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("containerd: {e} (scripts/install-deps installs it)"));
        let sock = dir.join("c.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ch = match connect(sock, deadline).await {
            Ok(ch) => ch,
            Err(e) => never_came_up(daemon, &dir, &e),
        };
        let cri = Cri {
            rt: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
            dir,
            name,
            bridge,
            pods: Vec::new(),
            netns: Vec::new(),
            daemon,
        };
        cri.import_images();
        cri
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr")
    }

    /// The pause image (src/bin/pause.rs alone, as /pause), busybox and a two-layer
    /// image, into `k8s.io`.
    fn import_images(&self) {
        let rootfs = self.dir.join("rootfs");
        image::make_busybox_rootfs(&rootfs);
        let pause = self.dir.join("pause-rootfs");
        fs::create_dir_all(&pause).unwrap();
        fs::copy(pause_bin(), pause.join("pause")).expect("copy the pause binary");
        for (dir, name, cmd, file) in [
            (&pause, PAUSE, &["/pause"][..], "pause.tar"),
            (&rootfs, BUSYBOX, &["sh"][..], "busybox.tar"),
        ] {
            let tar = self.dir.join(file);
            image::build(dir, name, cmd, &tar);
            let out = self.ctr(&["images", "import", &tar.display().to_string()]);
            assert!(out.status.success(), "import {name}: {out:?}");
        }
        let top = self.dir.join("top");
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::write(top.join("etc/layered"), "from the second layer\n").unwrap();
        fs::write(top.join("etc/.wh.group"), "").unwrap();
        let tar = self.dir.join("layered.tar");
        image::build_layers(&[&rootfs, &top], LAYERED, &["sh"], &tar);
        let out = self.ctr(&["images", "import", &tar.display().to_string()]);
        assert!(out.status.success(), "import {LAYERED}: {out:?}");
    }

    /// Processes whose command line names this test's directory (shims, proxies, VMMs).
    pub fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.dir.display().to_string();
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) && !cmd.starts_with("containerd --config") {
                out.push((pid, cmd));
            }
        }
        out
    }
}

/// containerd's shim socket of a pod (both shims group a pod's containers).
pub fn socket_of(containerd: &Path, pod: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{}/k8s.io/{pod}", containerd.display()).as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/run/containerd/s").join(hex)
}

pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            matches!(f.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2"))
                .then(|| PathBuf::from(f[4]))
        })
        .collect()
}

/// The cgroups below the test's pod parent, deepest first.
pub fn pod_cgroups(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in cgroup_hierarchies() {
        let mut stack = vec![h.join(name)];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                out.push(d);
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

impl Cri {
    /// After a failure: every task killed and deleted through containerd, so that the
    /// shims end and clean up as they do normally.
    fn teardown_tasks(&self) {
        let tasks = String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout).to_string();
        for t in tasks.lines() {
            let _ = self.ctr(&["task", "kill", "--all", "--signal", "KILL", t]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for t in tasks.lines() {
            let _ = self.ctr(&["task", "delete", "--force", t]);
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // A failed test says what containerd (and the shims, through it) said.
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(150).collect();
            eprintln!(
                "containerd.log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.teardown_tasks();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let kill = |pid: i32| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        for (pid, _) in self.processes() {
            kill(pid);
        }
        // The pods' cgroups are under a parent named for this test: all of it is ours.
        for cg in pod_cgroups(&self.name) {
            for p in fs::read_to_string(cg.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                kill(p.trim().parse().unwrap_or(0));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for cg in pod_cgroups(&self.name) {
            let _ = fs::remove_dir(&cg);
        }
        for ns in &self.netns {
            let _ = nix::mount::umount2(ns.as_str(), nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_file(ns);
        }
        for pod in &self.pods {
            let _ = fs::remove_file(socket_of(&self.dir.join("c.sock"), pod));
        }
        remove_hostport_rules(&self.name);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let prefix = self.dir.display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// portmap's rules for the pods of network `name` that a failed test never stopped
/// (CNI DEL removes them on StopPodSandbox): a stale DNAT for a hostPort would catch
/// a later test's connections.
pub fn remove_hostport_rules(name: &str) {
    let Ok(out) = Command::new("iptables-save").args(["-t", "nat"]).output() else {
        return;
    };
    let tag = format!("dnat name: \\\"{name}\\\"");
    for rule in String::from_utf8_lossy(&out.stdout).lines() {
        if !(rule.starts_with("-A CNI-HOSTPORT-DNAT ") && rule.contains(&tag)) {
            continue;
        }
        let delete = format!("iptables -t nat -D {}", &rule[3..]);
        let _ = Command::new("sh").args(["-c", &delete]).status();
        if let Some(chain) = rule.rsplit(" -j ").next() {
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, chain.trim()])
                    .status();
            }
        }
    }
}
