//! Rootless podman with `--runtime` hull: a test-made user (subordinate ids, its own
//! storage under its home, native overlay, XDG_RUNTIME_DIR of its own) runs podman's
//! everyday flow. podman runs hull as uid 0 of its user namespace, so hull must act
//! rootless there too: bind device nodes, write no cgroup, keep state in
//! $XDG_RUNTIME_DIR/hull. The host's cgroup manager for rootless podman must be
//! cgroupfs (no systemd here); ulimits are lowered since root lacks CAP_SYS_RESOURCE.
//! Networking is `none`: slirp4netns needs /dev/net/tun, which is root-only (0600) on
//! this host, so an unprivileged user cannot open it.

mod common;

use common::rootless::{kvm_node, processes_of, with_kvm, TestUser};
use common::{make_busybox_rootfs, unique_name};
use std::fs;
use std::path::PathBuf;
use std::process::Output;

struct RootlessPodman {
    user: TestUser,
    dir: PathBuf,
    /// A /dev/kvm node of the user's own, bound over /dev/kvm for its podman (this
    /// host's is root's only): for VM isolation.
    kvm: Option<PathBuf>,
    /// The runtime podman runs: bin/hull, or bin/hull-vm.
    runtime: &'static str,
}

impl RootlessPodman {
    fn new() -> RootlessPodman {
        Self::with(false)
    }

    /// With `kvm`, the user's podman sees a /dev/kvm node of its own from its first
    /// call on (podman's pause process keeps the mount namespace it was started in).
    fn with(kvm: bool) -> RootlessPodman {
        let name = unique_name();
        let user = TestUser::new(&format!("hpd{}", &name["hull-test-".len()..]), &[]);
        let dir = PathBuf::from("/tmp").join(&name);
        fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(common::hull_bin(), dir.join("bin/hull")).unwrap();
        std::os::unix::fs::symlink(common::hull_bin(), dir.join("bin/hull-vm")).unwrap();
        fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        let rootfs = dir.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let tar = dir.join("busybox.tar");
        let ok = std::process::Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let kvm = kvm.then(|| kvm_node(&dir, &user));
        let p = RootlessPodman {
            user,
            dir,
            kvm,
            runtime: "hull",
        };
        let out = p.podman(&[
            "import",
            &tar.display().to_string(),
            "localhost/busybox:hull",
        ]);
        assert!(out.status.success(), "podman import as the user: {out:?}");
        p
    }

    fn podman(&self, args: &[&str]) -> Output {
        let home = self.user.home.display().to_string();
        let run = self.user.runtime_dir.display().to_string();
        let runtime = self
            .dir
            .join("bin")
            .join(self.runtime)
            .display()
            .to_string();
        let mut all = vec![
            "podman".to_string(),
            "--root".into(),
            format!("{home}/storage"),
            "--runroot".into(),
            format!("{run}/containers"),
            "--storage-driver".into(),
            "overlay".into(),
            "--runtime".into(),
            runtime,
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = self.user.command(&all);
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        if let Some(node) = &self.kvm {
            cmd = with_kvm(&cmd, node);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("podman: {e} (scripts/install-deps installs it)"))
    }

    fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend_from_slice(flags);
        all.push("localhost/busybox:hull");
        all.extend_from_slice(args);
        self.podman(&all)
    }
}

impl Drop for RootlessPodman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = fs::remove_dir_all(&self.dir);
        // TestUser's drop ends podman's pause process and removes the storage.
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// podman's own warnings (it prints one about "/" not being a shared mount here).
fn hull_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.contains("level=warning"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn rootless_podman_everyday_flow() {
    let p = RootlessPodman::new();
    let (uid, sub) = (p.user.uid, p.user.subuid);

    let out = p.run(
        &[],
        &[
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; ls /sys/fs/cgroup | wc -l; echo to-stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let lines: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{out:?}");
    assert_eq!(
        lines[1],
        ["0", &uid.to_string(), "1"],
        "root is the user: {out:?}"
    );
    assert_eq!(
        lines[2][..2],
        ["1".to_string(), sub.0.to_string()],
        "{out:?}"
    );
    assert_eq!(lines.last().unwrap(), &["0"], "no cgroup shows: {out:?}");
    assert_eq!(hull_lines(&out), ["to-stderr"], "{out:?}");

    // A volume of the user's: written by the container's root, owned by the user.
    let vol = p.user.home.join("vol");
    fs::create_dir_all(&vol).unwrap();
    p.user.give(&vol);
    let v = format!("{}:/d", vol.display());
    let out = p.run(&["-v", &v], &["sh", "-c", "echo back > /d/out"]);
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(vol.join("out")).unwrap();
    assert_eq!(
        (meta.uid(), fs::read_to_string(vol.join("out")).unwrap()),
        (uid, "back\n".into())
    );

    // Another user and a read-only root.
    let out = p.run(
        &["--user", "1000:1000", "--read-only"],
        &["sh", "-c", "id -u; touch /x 2>/dev/null || echo read-only"],
    );
    assert_eq!(stdout(&out), "1000\nread-only\n", "{out:?}");

    // Detached: exec, logs, stop (SIGTERM, handled), rm.
    let script = "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done";
    let out = p.podman(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "none",
        "localhost/busybox:hull",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "run -d: {out:?}");
    let out = p.podman(&["exec", "web", "sh", "-c", "echo in-exec; id -u"]);
    assert_eq!(stdout(&out), "in-exec\n0\n", "{out:?}");
    let out = p.podman(&["exec", "--user", "1000", "web", "sleep", "0.3"]);
    assert!(out.status.success(), "{out:?}");
    let out = p.podman(&["logs", "web"]);
    assert_eq!(stdout(&out), "started\n", "{out:?}");
    let out = p.podman(&["stop", "-t", "5", "web"]);
    assert!(out.status.success(), "stop: {out:?}");
    let out = p.podman(&["logs", "web"]);
    assert_eq!(
        stdout(&out),
        "started\nbye\n",
        "SIGTERM reached the handler: {out:?}"
    );
    let out = p.podman(&["rm", "web"]);
    assert!(out.status.success(), "rm: {out:?}");
    let out = p.podman(&["ps", "-aq"]);
    assert_eq!(stdout(&out), "", "{out:?}");

    // hull kept its state under $XDG_RUNTIME_DIR/hull and left none there.
    let state = p.user.runtime_dir.join("hull");
    assert!(state.is_dir(), "state root {}", state.display());
    assert_eq!(fs::read_dir(&state).unwrap().count(), 0, "state left");
    assert!(
        processes_of(sub.0 + 999).is_empty(),
        "a process of container uid 1000 survived"
    );
}

/// Rootless podman with `--runtime hull-vm`, for a user who may open /dev/kvm: podman
/// runs hull as root of its user namespace, whose proxy needs no namespace of its own
/// beyond a pid namespace; QEMU keeps the user's ids.
#[test]
fn rootless_podman_runs_containers_in_vms() {
    let mut p = RootlessPodman::with(true);
    p.runtime = "hull-vm";
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let out = p.run(&[], &["sh", "-c", "uname -r; id -u; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_ne!(lines[0], host.trim(), "the guest's kernel: {out:?}");
    assert_eq!(lines[1], "0", "{out:?}");
    let out = p.podman(&[
        "run",
        "-d",
        "--name",
        "vm",
        "--network",
        "none",
        "localhost/busybox:hull",
        "sleep",
        "60",
    ]);
    assert!(out.status.success(), "run -d: {out:?}");
    let out = p.podman(&["exec", "vm", "sh", "-c", "echo in-vm; uname -r"]);
    assert_eq!(stdout(&out).lines().next(), Some("in-vm"), "{out:?}");
    let out = p.podman(&["rm", "-f", "-t", "0", "vm"]);
    assert!(out.status.success(), "rm -f: {out:?}");
    // The proxy, QEMU and the 9p helper go with the container; conmon (whose command
    // line names hull-vm too) is podman's. They end a moment after `rm` returns.
    let ours = |pid: &i32| {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        comm.starts_with("qemu")
            || comm.starts_with("virtfs")
            || comm == "hull"
            || comm == "hull-vm"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let left = loop {
        let left: Vec<String> = processes_of(p.user.uid)
            .into_iter()
            .filter(ours)
            .map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                format!("{pid}: {stat}")
            })
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(left.is_empty(), "a proxy or VMM was left: {left:?}");
}
