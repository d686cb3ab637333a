//! containerd (Debian's 1.6, its runc v2 shim) driving hull in both isolations through
//! `ctr run --runc-binary`: a containerd of the test's own (config, root, state and
//! socket in the test's directory, CRI off), a busybox rootfs given with `--rootfs`.
//! run, run -d, exec with its exit code, ps, kill --all, delete; nothing left after.

mod common;

use common::{host_kernel, text};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Containerd {
    dir: PathBuf,
    /// Ids are unique per test: every containerd's runc shim keeps runtime state in
    /// the same /run/containerd/runc/<namespace>.
    once: String,
    bg: String,
    tty: String,
    daemon: Child,
    hull: PathBuf,
    hull_vm: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = PathBuf::from("/tmp").join(common::unique_name());
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let d = |s: &str| dir.join(s).display().to_string();
        std::fs::write(
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
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("containerd: {e} (scripts/install-deps installs it)"));
        let hull = dir.join("bin/hull");
        let hull_vm = dir.join("bin/hull-vm");
        std::os::unix::fs::symlink(common::hull_bin(), &hull).unwrap();
        std::os::unix::fs::symlink(common::hull_bin(), &hull_vm).unwrap();
        common::make_busybox_rootfs(&dir.join("rootfs"));
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let c = Containerd {
            once: format!("{name}-once"),
            bg: format!("{name}-bg"),
            tty: format!("{name}-tty"),
            dir,
            daemon,
            hull,
            hull_vm,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("c.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// `ctr run` with the runtime binary and the busybox rootfs.
    fn run(&self, runtime: &std::path::Path, flags: &[&str], id: &str, args: &[&str]) -> Output {
        let rootfs = self.dir.join("rootfs").display().to_string();
        let bin = runtime.display().to_string();
        // --rootfs is a switch: the image argument is then the rootfs directory.
        let mut all = vec!["run", "--runc-binary", bin.as_str()];
        all.extend_from_slice(flags);
        all.extend_from_slice(&["--rootfs", rootfs.as_str(), id]);
        all.extend_from_slice(args);
        self.ctr(&all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in [self.once.clone(), self.bg.clone(), self.tty.clone()] {
            let id = id.as_str();
            let _ = self.ctr(&["task", "kill", "--all", "--signal", "KILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["container", "delete", id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The shims of this containerd exit once their tasks are gone; their state and
        // any mount of the rootfs are under our directory.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("state"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn flow(vm: bool) {
    let c = Containerd::start();
    let runtime = if vm {
        c.hull_vm.clone()
    } else {
        c.hull.clone()
    };
    let out = c.run(
        &runtime,
        &["--rm"],
        &c.once,
        &["sh", "-c", "uname -r; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let host = host_kernel();
    assert_eq!(text(&out).trim() != host, vm, "{out:?}");

    let out = c.run(
        &runtime,
        &["-d"],
        &c.bg,
        &["sh", "-c", "while :; do sleep 0.2; done"],
    );
    assert!(out.status.success(), "{out:?}");
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &c.bg,
        "sh",
        "-c",
        "echo in-exec; exit 6",
    ]);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(6), "in-exec\n"),
        "{out:?}"
    );
    // A terminal: ctr's console goes raw, the shim hands hull --console-socket.
    let ctr = format!(
        "ctr --address {} run --runc-binary {} -t --rm --rootfs {} {} sh -c 'tty; exit 4'",
        c.dir.join("c.sock").display(),
        runtime.display(),
        c.dir.join("rootfs").display(),
        c.tty
    );
    let (code, shown) = common::console::on_a_terminal(&ctr, &[]);
    assert_eq!(code, Some(4), "ctr run -t: {shown:?}");
    assert!(shown.contains("/dev/pts/0"), "ctr run -t: {shown:?}");

    let out = c.ctr(&["task", "ps", &c.bg]);
    assert!(text(&out).lines().count() >= 2, "{out:?}");
    let out = c.ctr(&["task", "kill", "--all", "--signal", "KILL", &c.bg]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&c.ctr(&["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the task did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.ctr(&["task", "delete", &c.bg]).status.success());
    assert!(c.ctr(&["container", "delete", &c.bg]).status.success());
    assert_eq!(text(&c.ctr(&["task", "ls", "-q"])), "");
    let needle = c.dir.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle) || cmdline.starts_with("containerd"),
            "left running: {cmdline}"
        );
    }
}

#[test]
fn containerd_runc_shim_with_namespaces() {
    hull_only!();
    flow(false);
}

#[test]
fn containerd_runc_shim_in_vms_through_hull_vm() {
    hull_only!();
    flow(true);
}
