//! A throwaway unprivileged user for rootless tests: made with useradd (home and
//! XDG_RUNTIME_DIR under /tmp, subordinate ids in /etc/subuid and /etc/subgid), removed
//! with userdel when the guard drops. Commands run as it through setpriv, with a
//! clean environment, the user's groups and no capabilities.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{run_with_timeout, Out, CMD_TIMEOUT};

/// useradd and userdel lock /etc/passwd; parallel tests take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
    /// The first subordinate uid and gid range: (start, count).
    pub subuid: (u32, u32),
    pub subgid: (u32, u32),
    /// Extra groups the user was put in (e.g. a kvm group), removed with it.
    groups: Vec<String>,
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name:start:count` lines of /etc/subuid or /etc/subgid for `name`, the first one.
fn subids(file: &str, name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() != 3 || f[0] != name {
            return None;
        }
        Some((f[1].parse().ok()?, f[2].parse().ok()?))
    })
}

impl TestUser {
    /// A new user named `name` (at most 32 characters) with 65536 subordinate ids,
    /// and extra supplementary `groups` (made here if missing, removed on drop).
    pub fn new(name: &str, groups: &[&str]) -> TestUser {
        for tool in ["useradd", "newuidmap", "newgidmap", "setpriv"] {
            assert!(
                ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                    .iter()
                    .any(|d| Path::new(d).join(tool).exists()),
                "{tool} is missing: run scripts/install-deps (Debian packages passwd, uidmap, util-linux)"
            );
        }
        let home = PathBuf::from("/tmp").join(format!("{name}-home"));
        let _lock = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let mut made_groups = Vec::new();
        for g in groups {
            let exists = Command::new("getent").args(["group", g]).output().unwrap();
            if !exists.status.success() {
                run_ok(Command::new("groupadd").arg(g));
                made_groups.push(g.to_string());
            }
        }
        let mut add = Command::new("useradd");
        add.args(["-m", "-d"]).arg(&home).args(["-s", "/bin/sh"]);
        if !groups.is_empty() {
            add.args(["-G", &groups.join(",")]);
        }
        run_ok(add.arg(name));
        // Debian's useradd allots subordinate ids itself (SUB_UID_COUNT); where it
        // did not, give a range.
        if subids("/etc/subuid", name).is_none() || subids("/etc/subgid", name).is_none() {
            run_ok(Command::new("usermod").args([
                "--add-subuids",
                "600000-665535",
                "--add-subgids",
                "600000-665535",
                name,
            ]));
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let runtime_dir = home.join("run");
        fs::create_dir_all(&runtime_dir).unwrap();
        std::os::unix::fs::chown(&runtime_dir, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&runtime_dir, fs::Permissions::from_mode(0o700)).unwrap();
        TestUser {
            name: name.into(),
            uid,
            gid,
            subuid: subids("/etc/subuid", name).expect("subuid range"),
            subgid: subids("/etc/subgid", name).expect("subgid range"),
            home,
            runtime_dir,
            groups: made_groups,
        }
    }

    /// `args` as this user, in `dir` (output files go there too).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            &self.uid.to_string(),
            "--regid",
            &self.gid.to_string(),
            "--init-groups",
            "--inh-caps=-all",
            "--",
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &self.home)
        .env("USER", &self.name)
        .env("LOGNAME", &self.name)
        .env("XDG_RUNTIME_DIR", &self.runtime_dir)
        .current_dir(&self.home)
        .stdin(Stdio::null());
        if let Ok(rust_log) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", rust_log);
        }
        cmd
    }

    /// Runs `args` as this user with the harness's timeout; output files in `dir`.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Out {
        run_with_timeout(&mut self.command(args), dir, CMD_TIMEOUT)
    }

    /// Makes `path` (and what is under it) the user's.
    pub fn give(&self, path: &Path) {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(path),
        );
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        // Whatever the user still runs (a failed test's container) goes first, or
        // userdel refuses; found by uid, killed by pid.
        for _ in 0..50 {
            let left = processes_of(self.uid);
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) of a pid owned by the test's own user.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let del = Command::new("userdel").args(["-r", &self.name]).output();
        if let Ok(o) = &del {
            if !o.status.success() {
                eprintln!(
                    "userdel {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        // userdel -r leaves what the user's subordinate ids own (podman's storage).
        let _ = fs::remove_dir_all(&self.home);
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).status();
        }
    }
}

/// Pids whose real uid is `uid` (from /proc/<pid>/status).
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                    == Some(uid)
            })
        })
        .collect()
}

/// A /dev/kvm of `user`'s own in `dir` (10:232, its group, 0660): this host's is root's
/// only, and a test must not change it. `with_kvm` binds it over /dev/kvm.
pub fn kvm_node(dir: &Path, user: &TestUser) -> PathBuf {
    let node = dir.join("kvm");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod(2), chown(2) and chmod(2) with a NUL-terminated path; 10:232 is
    // /dev/kvm's device.
    unsafe {
        let made = libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o660, libc::makedev(10, 232));
        assert_eq!(made, 0, "mknod {}", node.display());
        assert_eq!(libc::chown(c.as_ptr(), 0, user.gid), 0);
        // Past the umask.
        assert_eq!(libc::chmod(c.as_ptr(), 0o660), 0);
    }
    node
}

/// `cmd` (a `TestUser::command`) run with `node` bound over /dev/kvm in a private mount
/// namespace; its environment and working directory kept.
pub fn with_kvm(cmd: &Command, node: &Path) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /dev/kvm && exec \"$@\"")
        .arg(node)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        wrapped.current_dir(d);
    }
    wrapped
}
