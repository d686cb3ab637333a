//! A private containerd 1.6 (Debian's) for the shim's tests: its own config, root,
//! state and sockets under /tmp, CRI off, the shim under both names on its PATH (the
//! shim finds `hull` beside its own executable, both in cargo's target directory), a
//! containerd namespace of its own. Drop stops it and removes what a test left.
#![allow(dead_code)]

pub mod image;

pub use image::make_busybox_rootfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("hull-test-{}-{n}", std::process::id())
}

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");

/// The hull the shim will run: beside the shim, as cargo builds the workspace.
pub fn hull_bin() -> PathBuf {
    let hull = Path::new(SHIM).with_file_name("hull");
    assert!(
        hull.is_file(),
        "{} is missing: the shim runs hull from beside itself; build it first \
         (cargo build -p hull, or cargo test --workspace)",
        hull.display()
    );
    hull
}

/// The runtime handler names containerd resolves to the shim's two command names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Iso {
    Namespace,
    Vm,
}

impl Iso {
    pub fn runtime(self) -> &'static str {
        match self {
            Iso::Namespace => "io.containerd.hull-ns.v2",
            Iso::Vm => "io.containerd.hull.v2",
        }
    }
}

/// A VM test needs the guest `hull guest build` makes (scripts/test builds it).
pub fn require_guest() {
    let dir = std::env::var("HULL_GUEST_DIR").unwrap_or_else(|_| "/var/lib/hull/guest".into());
    assert!(
        Path::new(&dir).join("current.json").exists(),
        "no hull guest in {dir}: run `hull guest build` first (scripts/test does)"
    );
}

pub struct Containerd {
    pub dir: PathBuf,
    pub ns: String,
    daemon: Child,
    events: Option<Child>,
    /// Every container id a test used, for the cleanup checks.
    pub ids: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    pub fn start() -> Containerd {
        hull_bin();
        let name = unique_name();
        let dir = PathBuf::from("/tmp").join(&name);
        fs::create_dir_all(dir.join("bin")).unwrap();
        for n in ["containerd-shim-hull-v2", "containerd-shim-hull-ns-v2"] {
            std::os::unix::fs::symlink(SHIM, dir.join("bin").join(n)).unwrap();
        }
        let d = |s: &str| dir.join(s).display().to_string();
        fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
                d("root"),
                d("state"),
                d("c.sock"),
                d("c.sock.ttrpc")
            ),
        )
        .unwrap();
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
        make_busybox_rootfs(&dir.join("rootfs"));
        let mut c = Containerd {
            dir,
            ns: name,
            daemon,
            events: None,
            ids: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let events = fs::File::create(c.dir.join("events.log")).unwrap();
        c.events = Some(
            c.ctr_cmd(&["events"])
                .stdout(events)
                .stderr(Stdio::null())
                .spawn()
                .expect("ctr events"),
        );
        c
    }

    pub fn sock(&self) -> String {
        self.dir.join("c.sock").display().to_string()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["--address", &self.sock(), "--namespace", &self.ns])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("ctr")
    }

    /// `ctr ARGS` with `input` on its stdin.
    pub fn ctr_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .ctr_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `ctr run --runtime R FLAGS --rootfs DIR ID ARGS` (the test's busybox rootfs).
    pub fn run(&self, iso: Iso, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let rootfs = self.dir.join("rootfs").display().to_string();
        let mut all = vec!["run", "--runtime", iso.runtime()];
        all.extend_from_slice(flags);
        all.extend_from_slice(&["--rootfs", &rootfs]);
        self.run_image(&all, id, args)
    }

    /// `ctr run FLAGS... ID ARGS` where FLAGS name the image or rootfs.
    pub fn run_image(&self, flags: &[&str], id: &str, args: &[&str]) -> Output {
        self.ids.borrow_mut().push(id.to_string());
        let mut all = flags.to_vec();
        all.push(id);
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// A command line for ctr with this containerd's address and namespace.
    pub fn ctr_line(&self) -> String {
        format!("ctr --address {} --namespace {}", self.sock(), self.ns)
    }

    /// The events `ctr events` printed so far.
    pub fn events(&self) -> String {
        fs::read_to_string(self.dir.join("events.log")).unwrap_or_default()
    }

    /// Waits for an event line holding every one of `words`.
    pub fn wait_event(&self, words: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let seen = |ev: &str| ev.lines().any(|l| words.iter().all(|w| l.contains(w)));
        while !seen(&self.events()) {
            assert!(
                Instant::now() < deadline,
                "no event with {words:?} after {timeout:?}:\n{}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `ctr task ls` shows `id` as `status` (or, with "", not at all).
    pub fn wait_task(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = text(&self.ctr(&["task", "ls"]));
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id));
            let found = match line {
                Some(l) => l.split_whitespace().nth(2) == Some(status),
                None => status.is_empty(),
            };
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not {status:?} after {timeout:?}: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shim daemon serving `id`, if one runs.
    pub fn shim_pids(&self) -> Vec<i32> {
        let sock = self.sock();
        processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("containerd-shim-hull") && cmd.contains(&sock))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Asserts that nothing of the test's containers is left: no shim, no hull proxy or
    /// VMM, no mount, no container cgroup, no shim socket, no hull state.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(self.shim_pids(), Vec::<i32>::new(), "shims left running");
        let shim_root = self.dir.join("shim");
        let left = || -> Vec<(i32, String)> {
            processes()
                .into_iter()
                .filter(|(pid, cmd)| {
                    cmd.contains(&shim_root.display().to_string())
                        || fs::read_link(format!("/proc/{pid}/cwd"))
                            .is_ok_and(|c| c.starts_with(&shim_root))
                })
                .collect()
        };
        // A VM's `hull events` (OOM watcher) outlives a SIGKILLed shim until its next
        // look (2 s) finds the container gone or its pipe closed.
        while !left().is_empty() && Instant::now() < deadline + Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = left();
        assert!(left.is_empty(), "hull proxies or VMMs left: {left:?}");
        let mounts = mounts_under(&self.dir);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        for id in self.ids.borrow().iter() {
            for h in cgroup_hierarchies() {
                let leaf = h.join(&self.ns).join(id);
                assert!(!leaf.exists(), "cgroup left: {}", leaf.display());
            }
            let addr = socket_address(&self.sock(), &self.ns, id);
            assert!(!Path::new(&addr).exists(), "shim socket left: {addr}");
            let state = shim_root.join(&self.ns).join(id);
            assert!(!state.exists(), "hull state left: {}", state.display());
        }
        let consoles: Vec<_> = fs::read_dir(shim_root.join(".console"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(consoles.is_empty(), "console sockets left: {consoles:?}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids = self.ids.borrow().clone();
        for id in &ids {
            let _ = self.ctr(&["task", "kill", "--all", "--signal", "KILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["container", "delete", id]);
        }
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut e) = self.events.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for id in &ids {
            let addr = socket_address(&self.sock(), &self.ns, id);
            let _ = fs::remove_file(addr);
        }
        let mut mounts = mounts_under(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // ctr's fifos of a task whose shim died stay in /run/containerd/fifo/<n>/.
        remove_fifos(&format!("{}-", self.ns));
        // containerd's default cgroupsPath is /<namespace>/<id>: the parent is ours.
        for h in cgroup_hierarchies() {
            let _ = fs::remove_dir(h.join(&self.ns));
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// ctr's fifo directories holding fifos named `<prefix>...` (the test's ids).
fn remove_fifos(prefix: &str) {
    for d in fs::read_dir("/run/containerd/fifo")
        .into_iter()
        .flatten()
        .flatten()
    {
        let files: Vec<_> = fs::read_dir(d.path())
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        if files
            .iter()
            .any(|f| f.file_name().to_string_lossy().starts_with(prefix))
        {
            for f in &files {
                let _ = fs::remove_file(f.path());
            }
            let _ = fs::remove_dir(d.path());
        }
    }
}

/// containerd's shim socket for a group: /run/containerd/s/<sha256(addr/ns/group)>.
pub fn socket_address(containerd: &str, ns: &str, group: &str) -> String {
    let d = Sha256::digest(format!("{containerd}/{ns}/{group}").as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("/run/containerd/s/{hex}")
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every process: (pid, command line).
pub fn processes() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if !cmd.is_empty() {
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
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

/// Runs the shell command `command` on a fresh pty (util-linux `script`), its input
/// kept open until the command is done: (exit code, what the terminal showed).
pub fn on_a_terminal(command: &str) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let input = child.stdin.take();
    let mut shown = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    let status = child.wait().unwrap();
    drop(input);
    (status.code(), shown)
}
