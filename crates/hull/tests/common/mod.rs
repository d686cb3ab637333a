//! Integration-test harness: busybox bundles, a `Container` guard that drives the
//! runtime under test through its runc-compatible CLI, and cleanup checks.
//!
//! The runtime is `$HULL_BIN` when set (so `HULL_BIN=runc cargo test` checks the
//! tests themselves against runc), else the `hull` binary of this package.
#![allow(dead_code)]

pub mod cleanup;
pub mod console;
pub mod leaks;
pub mod nested;
pub mod rootless;
pub mod vm;

// Not every test file checks cleanup.
#[allow(unused_imports)]
pub use cleanup::*;
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest any single runtime command may take before the test fails.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Path of the runtime binary under test.
pub fn hull_bin() -> String {
    std::env::var("HULL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hull").to_string())
}

/// True when the binary under test is hull (not a peer such as runc or crun).
pub fn is_hull() -> bool {
    let bin = hull_bin();
    let name = Path::new(&bin)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    name.contains("hull")
}

/// Returns early from a test that checks a hull-only behaviour when a peer runs.
#[macro_export]
macro_rules! hull_only {
    () => {
        if !common::is_hull() {
            eprintln!(
                "skipped: hull-only behaviour, runtime is {}",
                common::hull_bin()
            );
            return;
        }
    };
}

/// A unique name `hull-test-<pid>-<n>`, used as container id, temp dir and cgroup.
pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("hull-test-{}-{}", std::process::id(), n)
}

/// `runc spec` of runc 1.1 (spec 1.0.2-dev), verbatim.
pub fn runc_spec() -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Output of one runtime command. `code` is the exit code, or 128+signal.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics with the full output unless the command exited 0.
    pub fn ok(self, what: &str) -> Out {
        assert_eq!(self.code, 0, "expected `{what}` to succeed, got {self:?}");
        self
    }

    /// Asserts exit 1 with one error line on stderr that mentions one of `words`
    /// (case-insensitive).
    pub fn assert_error(&self, what: &str, words: &[&str]) {
        self.assert_error_code(what, 1, words)
    }

    /// As `assert_error`, with exit code `code` (runc's `exec` fails with 255, so that
    /// its own errors differ from the process's exit codes).
    pub fn assert_error_code(&self, what: &str, code: i32, words: &[&str]) {
        assert_eq!(
            self.code, code,
            "expected `{what}` to exit {code}, got {self:?}"
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(
            !lines.is_empty(),
            "expected an error on stderr for `{what}`, got {self:?}"
        );
        assert!(
            lines.len() == 1,
            "expected one clear error line for `{what}`, got {} lines: {self:?}",
            lines.len()
        );
        let lower = self.stderr.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(&w.to_lowercase())),
            "expected the error for `{what}` to mention one of {words:?}, got {:?}",
            self.stderr
        );
    }
}

/// Runs `cmd` with stdout/stderr to files (a container may keep pipes open), killing it
/// and failing the test after `timeout`. Callers choose stdin.
pub fn run_with_timeout(cmd: &mut Command, dir: &Path, timeout: Duration) -> Out {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let out_path = dir.join(format!("cmd-{n}.out"));
    let err_path = dir.join(format!("cmd-{n}.err"));
    cmd.stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for runtime") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Out {
        code,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A bundle under construction: `/tmp/hull-test-<pid>-<n>/` with `rootfs/` and a config.
pub struct Bundle {
    pub name: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub config: Value,
}

impl Bundle {
    /// A busybox bundle whose process runs `args`.
    pub fn new(args: &[&str]) -> Bundle {
        let name = unique_name();
        let dir = PathBuf::from("/tmp").join(&name);
        let _ = fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let mut config = runc_spec();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["linux"]["cgroupsPath"] = json!(format!("/{name}/{name}"));
        Bundle {
            name,
            dir,
            rootfs,
            config,
        }
    }

    /// Edits the config.json value.
    pub fn config(mut self, f: impl FnOnce(&mut Value)) -> Bundle {
        f(&mut self.config);
        self
    }

    /// Adds a host dir `share/` of the bundle, bind-mounted read-write at `/share`,
    /// through which the container reports to the test.
    pub fn with_share(mut self) -> Bundle {
        let share = self.dir.join("share");
        fs::create_dir_all(&share).expect("mkdir share");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&share, fs::Permissions::from_mode(0o777)).unwrap();
        add_bind(
            &mut self.config,
            &share.display().to_string(),
            "/share",
            &["rw"],
        );
        self
    }

    /// Writes config.json and returns the guard for a container of this bundle.
    pub fn container(self) -> Container {
        let data = serde_json::to_vec_pretty(&self.config).expect("serialise config");
        fs::write(self.dir.join("config.json"), data).expect("write config.json");
        Container {
            id: self.name.clone(),
            root: self.dir.join("state"),
            bin: hull_bin(),
            bundle: self,
        }
    }
}

/// Writes a busybox rootfs: /bin/busybox plus one symlink per applet, /etc/passwd,
/// /etc/group and the usual empty mount points.
pub fn make_busybox_rootfs(rootfs: &Path) {
    for d in [
        "bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "home/test",
    ] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs dir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/install-deps)");
    fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", rootfs.join("bin").join(applet)).expect("applet symlink");
        }
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         test:x:1000:1000:test:/home/test:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("write passwd");
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\ntty:x:5:\ntest:x:1000:\nnogroup:x:65534:\n",
    )
    .expect("write group");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A container of one bundle, with its own `--root` state dir. Drop cleans up.
pub struct Container {
    pub id: String,
    pub root: PathBuf,
    pub bin: String,
    pub bundle: Bundle,
}

impl Container {
    /// `hull --root ROOT <args...>`.
    pub fn hull(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        run_with_timeout(&mut cmd, &self.bundle.dir, CMD_TIMEOUT)
    }

    /// `hull --root ROOT <args...>` run from the bundle dir with a custom Command edit.
    pub fn hull_with(&self, args: &[&str], f: impl FnOnce(&mut Command)) -> Out {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .args(args)
            .current_dir(&self.bundle.dir);
        cmd.stdin(Stdio::null());
        f(&mut cmd);
        run_with_timeout(&mut cmd, &self.bundle.dir, CMD_TIMEOUT)
    }

    pub fn dir(&self) -> String {
        self.bundle.dir.display().to_string()
    }

    /// `hull --isolation ISO run -d --bundle DIR ID`.
    pub fn run_detached(&self, isolation: &str) -> Out {
        self.hull(&[
            "--isolation",
            isolation,
            "run",
            "-d",
            "--bundle",
            &self.dir(),
            &self.id,
        ])
    }

    /// `run --bundle DIR ID`: waits for the container's process and returns its output.
    pub fn run(&self) -> Out {
        self.hull(&["run", "--bundle", &self.dir(), &self.id])
    }

    /// `create --bundle DIR ID`. The container's stdout/stderr go to files read by
    /// `init_output()`.
    pub fn create(&self) -> Out {
        self.create_with(&[])
    }

    /// `create` with extra flags (e.g. `--pid-file F`, `--console-socket S`).
    pub fn create_with(&self, flags: &[&str]) -> Out {
        let mut args = vec!["create", "--bundle"];
        let dir = self.dir();
        args.push(&dir);
        args.extend_from_slice(flags);
        args.push(&self.id);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(&args);
        let out = fs::File::create(self.bundle.dir.join("init.out")).unwrap();
        let err = fs::File::create(self.bundle.dir.join("init.err")).unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn create: {e}"));
        let deadline = Instant::now() + CMD_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "create did not return within {CMD_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        Out {
            code: status.code().unwrap_or(128),
            stdout: String::new(),
            stderr: self.init_output().1,
        }
    }

    /// What the created container (and `create` itself) wrote: (stdout, stderr).
    pub fn init_output(&self) -> (String, String) {
        let read = |n: &str| fs::read_to_string(self.bundle.dir.join(n)).unwrap_or_default();
        (read("init.out"), read("init.err"))
    }

    pub fn start(&self) -> Out {
        self.hull(&["start", &self.id])
    }

    /// `state ID` parsed; panics if the command fails or prints no JSON.
    pub fn state(&self) -> Value {
        let out = self.hull(&["state", &self.id]).ok("state");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("state output is not JSON ({e}): {:?}", out.stdout))
    }

    pub fn status(&self) -> String {
        self.state()["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Container init pid from `state`.
    pub fn pid(&self) -> i32 {
        self.state()["pid"].as_i64().expect("state has a pid") as i32
    }

    /// Polls `state` until the status is `want`, failing after `timeout`.
    pub fn wait_status(&self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if st == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected status {want:?}, still {st:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&self, sig: &str) -> Out {
        self.hull(&["kill", &self.id, sig])
    }

    pub fn delete(&self, force: bool) -> Out {
        if force {
            self.hull(&["delete", "--force", &self.id])
        } else {
            self.hull(&["delete", &self.id])
        }
    }

    /// `exec ID args...`.
    pub fn exec(&self, args: &[&str]) -> Out {
        self.exec_with(&[], args)
    }

    /// `exec FLAGS... ID args...`.
    pub fn exec_with(&self, flags: &[&str], args: &[&str]) -> Out {
        let mut all = vec!["exec"];
        all.extend_from_slice(flags);
        all.push(&self.id);
        all.extend_from_slice(args);
        self.hull(&all)
    }

    /// Cgroup path relative to each hierarchy: `/hull-test-P-N/hull-test-P-N`.
    pub fn cgroup_path(&self) -> String {
        format!("/{}/{}", self.id, self.id)
    }

    /// The container's cgroup dir in v1 hierarchy `controller` (e.g. "memory").
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/cgroup/{controller}{}", self.cgroup_path()))
    }

    /// Reads a cgroup file of this container, trimmed.
    pub fn cgroup_read(&self, controller: &str, file: &str) -> String {
        let p = self.cgroup_dir(controller).join(file);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// Host path of `/share/<name>` (see `Bundle::with_share`).
    pub fn share(&self, name: &str) -> PathBuf {
        self.bundle.dir.join("share").join(name)
    }

    /// Contents of `/share/<name>`, empty if absent.
    pub fn read_share(&self, name: &str) -> String {
        fs::read_to_string(self.share(name)).unwrap_or_default()
    }

    /// Waits until `/share/<name>` exists and is non-empty, then returns it.
    pub fn wait_share(&self, name: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.read_share(name);
            if !s.is_empty() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "expected /share/{name} to be written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a file into the bundle dir (next to config.json) and returns its path.
    pub fn write_file(&self, name: &str, data: &str) -> String {
        let p = self.bundle.dir.join(name);
        fs::File::create(&p)
            .and_then(|mut f| f.write_all(data.as_bytes()))
            .unwrap();
        p.display().to_string()
    }
}

/// readlink of /proc/self/ns/<ns> in the test process, e.g. "uts:[4026531838]".
pub fn host_ns(ns: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Adds a bind mount of host `src` at container `dst` with `options`.
pub fn add_bind(config: &mut Value, src: &str, dst: &str, options: &[&str]) {
    let mut opts = vec!["rbind"];
    opts.extend_from_slice(options);
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": dst, "type": "bind", "source": src, "options": opts}));
}

/// Adds a tmpfs at `dst` (handy for a writable /tmp under a read-only root).
pub fn add_tmpfs(config: &mut Value, dst: &str, options: &[&str]) {
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": dst, "type": "tmpfs", "source": "tmpfs", "options": options}));
}

/// A command's stdout as text.
pub fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The host's kernel release, to tell a guest kernel from it.
pub fn host_kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

/// Makes `fds[i]` the child's fd 3 + i, inheritable.
pub fn hand_over(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    // SAFETY: dup2 and fcntl only, both async-signal-safe, in the forked child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            // Out of the way first: a source may sit at another's target number.
            let mut high = [0; 8];
            for (i, &from) in fds.iter().enumerate() {
                high[i] = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &from) in high[..fds.len()].iter().enumerate() {
                let to = 3 + i as i32;
                if libc::dup2(from, to) < 0 || libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
