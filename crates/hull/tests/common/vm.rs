//! VM containers as engines drive them: the test adopts the proxy `create` reports (as
//! conmon and containerd's shim do), waits on it, and checks that a sandbox leaves
//! nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{cleanup, Container, Out};

/// The test process adopts orphans, as conmon and containerd's shim do: the proxy that
/// `create` reports outlives `create` and is waited on here.
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// The exit status of `pid`, a process this test adopted.
pub fn wait_adopted(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(e) => panic!("waitpid {pid}: {e} (not adopted?)"),
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// `hull --isolation vm create` with stdin from `input`; stdout and stderr of the
/// container land in init.out and init.err.
pub fn create_vm(c: &Container, input: Option<&Path>, global: &[&str]) -> (Out, PathBuf) {
    let pid_file = c.bundle.dir.join("init.pid");
    let mut cmd = Command::new(&c.bin);
    cmd.arg("--root").arg(&c.root).args(global);
    cmd.args(["create", "--bundle", &c.dir(), "--pid-file"])
        .arg(&pid_file)
        .arg(&c.id);
    let stdin = match input {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(std::fs::File::create(c.bundle.dir.join("init.out")).unwrap())
        .stderr(std::fs::File::create(c.bundle.dir.join("init.err")).unwrap());
    let status = cmd.status().expect("spawn create");
    let out = Out {
        code: status.code().unwrap_or(128),
        stdout: String::new(),
        stderr: c.init_output().1,
    };
    (out, pid_file)
}

/// No process of this container's sandbox left (proxy or VMM), no state directory.
pub fn assert_vm_gone(c: &Container) {
    let state = c.root.join(&c.id);
    assert!(!state.exists(), "{} was left behind", state.display());
    let left = cleanup::processes_under(&state);
    assert!(
        left.is_empty(),
        "a proxy or VMM of this container still runs: {left:?}"
    );
    let left: Vec<PathBuf> = cleanup::cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(&c.id))
        .filter(|p| p.join(&c.id).exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// `run -d` of the container in a VM under QEMU, with hull's config.toml `config` if
/// given; QEMU's pid (the proxy's child).
pub fn run_under_qemu(c: &Container, config: Option<&Path>) -> u32 {
    let dir = c.dir();
    let out = c.hull_with(
        &["run", "-d", "--isolation", "vm", "--bundle", &dir, &c.id],
        |cmd| {
            cmd.env("HULL_HYPERVISOR", "qemu");
            if let Some(config) = config {
                cmd.env("HULL_CONFIG", config);
            }
        },
    );
    assert_eq!(out.code, 0, "{out:?}");
    let proxy = c.state()["pid"].as_u64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{proxy}/task/{proxy}/children")).unwrap();
    children
        .split_whitespace()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("qemu"))
        })
        .expect("QEMU, a child of the proxy")
        .parse()
        .unwrap()
}

/// The state directory's count of a VM container's guest OOM kills (the file its proxy
/// or stand-in keeps current, which the shim reads).
pub fn recorded_oom_kills(c: &Container) -> Option<u64> {
    let text = std::fs::read_to_string(c.root.join(&c.id).join("oom-kills")).ok()?;
    text.trim().parse().ok()
}

/// Waits up to `timeout` for the recorded count to be `kills`.
pub fn wait_recorded_oom_kills(c: &Container, kills: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while recorded_oom_kills(c) != Some(kills) {
        assert!(
            Instant::now() < deadline,
            "kill {kills} not recorded: {:?}",
            recorded_oom_kills(c)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's /proc/meminfo (kB), read from inside `c`.
pub fn guest_meminfo(c: &Container) -> std::collections::HashMap<String, u64> {
    let out = c.exec(&["cat", "/proc/meminfo"]).ok("meminfo");
    out.stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}
