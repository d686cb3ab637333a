//! podman (Debian's, with conmon) driving hull in both isolations: `--runtime` pointing
//! at hull and at `hull-vm`, with private root, runroot, tmpdir and containers.conf (so
//! nothing of the host's podman is touched), a busybox image imported from a tarball
//! (no registry). Each flow asserts output and exit codes; afterwards nothing is left.

mod common;

use common::{host_kernel, text};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Podman {
    dir: PathBuf,
    runtime: PathBuf,
}

impl Podman {
    /// A private podman whose runtime is hull under `name` (hull or hull-vm).
    fn new(name: &str) -> Podman {
        let dir = PathBuf::from("/tmp").join(common::unique_name());
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let runtime = dir.join("bin").join(name);
        std::os::unix::fs::symlink(common::hull_bin(), &runtime).unwrap();
        // Root here lacks CAP_SYS_RESOURCE: podman's default nofile (1048576) fails.
        // The CNI configs of the networks the test makes stay in its directory.
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_config_dir = \"{}\"\n",
                dir.join("cni").display()
            ),
        )
        .unwrap();
        let p = Podman { dir, runtime };
        let rootfs = p.dir.join("rootfs");
        common::make_busybox_rootfs(&rootfs);
        let tar = p.dir.join("busybox.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let out = p.podman(&[
            "import",
            &tar.display().to_string(),
            "localhost/busybox:hull",
        ]);
        assert!(out.status.success(), "podman import: {out:?}");
        p
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.podman_with(args, |_| {})
    }

    /// `podman`, with a last edit of the command (fds to hand over).
    fn podman_with(&self, args: &[&str], edit: impl FnOnce(&mut Command)) -> Output {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args([
                "--root",
                &d("root"),
                "--runroot",
                &d("runroot"),
                "--tmpdir",
                &d("tmp"),
            ])
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(&self.runtime)
            .args(args)
            .stdin(Stdio::null());
        edit(&mut cmd);
        cmd.output()
            .unwrap_or_else(|e| panic!("podman: {e} (scripts/install-deps installs it)"))
    }

    /// `podman run --rm --network none IMAGE ARGS...` with `flags`.
    fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--network", "none"];
        all.extend_from_slice(flags);
        all.push("localhost/busybox:hull");
        all.extend_from_slice(args);
        self.podman(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        // A network's bridge outlives `podman network rm`: it is ours, so it goes too.
        for e in std::fs::read_dir(self.dir.join("cni"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let _ = self.podman(&[
                "network",
                "rm",
                "-f",
                v["name"].as_str().unwrap_or_default(),
            ]);
            if let Some(bridge) = v["plugins"][0]["bridge"].as_str() {
                let _ = Command::new("ip")
                    .args(["link", "del", bridge])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// No process of these containers left: no proxy, no VMM, no container process.
fn assert_nothing_runs_under(dir: &Path) {
    let needle = dir.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle) || cmdline.starts_with("podman"),
            "left running: pid {:?}: {cmdline}",
            e.file_name()
        );
    }
}

fn everyday_flow(name: &str, vm: bool) {
    let p = Podman::new(name);
    let out = p.run(&[], &["sh", "-c", "uname -r; echo to-stderr >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let kernel = text(&out).trim().to_string();
    assert_eq!(kernel != host_kernel(), vm, "kernel {kernel:?} (VM: {vm})");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    // A directory volume, written from inside and read back on the host.
    let shared = p.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let dvol = format!("{}:/d", shared.display());
    let out = p.run(&["-v", &dvol], &["sh", "-c", "echo back > /d/out; ls /d"]);
    assert_eq!(text(&out), "out\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "back\n"
    );

    // A file volume, read-only; the user; a read-only root.
    let file = p.dir.join("volume.txt");
    std::fs::write(&file, "from the host\n").unwrap();
    let vol = format!("{}:/data.txt:ro", file.display());
    let out = p.run(
        &["-v", &vol, "--user", "1000:1000", "--read-only"],
        &[
            "sh",
            "-c",
            "cat /data.txt; id -u; touch /x 2>/dev/null || echo read-only",
        ],
    );
    assert_eq!(text(&out), "from the host\n1000\nread-only\n", "{out:?}");

    // The memory limit holds where the container runs (the guest's cgroup v2 in a VM).
    let probe = if vm {
        "cat /sys/fs/cgroup/memory.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let out = p.run(&["--memory", "64m"], &["sh", "-c", probe]);
    assert_eq!(text(&out).trim(), "67108864", "{out:?}");

    // --cpus holds where the container runs; --cap-drop ALL leaves no capability.
    let cpu = if vm {
        "cat /sys/fs/cgroup/cpu.max"
    } else {
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    };
    let out = p.run(&["--cpus", "0.5"], &["sh", "-c", cpu]);
    let want = if vm { "50000 100000" } else { "50000" };
    assert_eq!(text(&out).trim(), want, "{out:?}");
    let out = p.run(
        &["--cap-drop", "ALL"],
        &["sh", "-c", "grep CapEff /proc/self/status"],
    );
    assert_eq!(text(&out).trim(), "CapEff:\t0000000000000000", "{out:?}");
    preserved_fd(&p);

    // Detached: exec, logs, stop (SIGTERM, handled), rm.
    let script = "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done";
    let out = p.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "web",
        "localhost/busybox:hull",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = p.podman(&["exec", "web", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(4), "in-exec\n"),
        "{out:?}"
    );
    let out = p.podman(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(text(&out).starts_with("web Up"), "{out:?}");
    top(&p, vm);
    let out = p.podman(&["stop", "-t", "10", "web"]);
    assert!(out.status.success(), "{out:?}");
    let out = p.podman(&["logs", "web"]);
    assert_eq!(text(&out), "started\nbye\n", "{out:?}");
    let out = p.podman(&["inspect", "--format", "{{.State.ExitCode}}", "web"]);
    assert_eq!(text(&out).trim(), "0", "{out:?}");
    let out = p.podman(&["rm", "web"]);
    assert!(out.status.success(), "{out:?}");

    // kill: SIGKILL from podman reaches the container.
    let out = p.podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "k",
        "localhost/busybox:hull",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = p.podman(&["kill", "k"]);
    assert!(out.status.success(), "{out:?}");
    let out = p.podman(&["wait", "k"]);
    assert_eq!(text(&out).trim(), "137", "{out:?}");
    p.podman(&["rm", "k"]);

    published_port(&p);
    interactive_terminal(&p);

    let out = p.podman(&["ps", "-a", "-q"]);
    assert_eq!(text(&out), "", "containers left: {out:?}");
    assert_nothing_runs_under(&p.dir);
}

#[test]
fn podman_everyday_flow_with_namespaces() {
    hull_only!();
    everyday_flow("hull", false);
}

#[test]
fn podman_everyday_flow_in_vms_through_hull_vm() {
    hull_only!();
    everyday_flow("hull-vm", true);
}

/// `-p`: a real request through the published port reaches a server in the container
/// (in a VM: through the engine's veth, the tc redirect and the VM's virtio-net).
fn published_port(p: &Podman) {
    // Unique per test run and per test (the directory's counter): two podmans at once
    // must not pick one subnet or port.
    let counter: u32 = p
        .dir
        .to_string_lossy()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tag = (std::process::id() * 7 + counter) % 200 + 20;
    let net = format!("hullnet{tag}");
    let subnet = format!("10.201.{tag}.0/24");
    let out = p.podman(&["network", "create", "--subnet", &subnet, &net]);
    assert!(out.status.success(), "{out:?}");
    let port = format!("{}", 18000 + tag);
    let publish = format!("{port}:8080");
    let script = "while :; do echo served | nc -l -p 8080; done";
    let out = p.podman(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        &net,
        "-p",
        &publish,
        "localhost/busybox:hull",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{out:?}");
    // CNI's portmap forwards the host's own addresses (not loopback) to the container.
    let host = host_address();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reply = loop {
        if let Ok(mut s) =
            std::net::TcpStream::connect((host.as_str(), port.parse::<u16>().unwrap()))
        {
            let mut r = String::new();
            use std::io::Read;
            let _ = s.read_to_string(&mut r);
            if !r.is_empty() {
                break r;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answered at {host}:{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(reply, "served\n");
    let out = p.podman(&["rm", "-f", "-t", "0", "srv"]);
    assert!(out.status.success(), "{out:?}");
}

/// An IPv4 address of this host other than loopback.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .find(|a| !a.starts_with("10.201."))
        .expect("a global IPv4 address on this host")
        .to_string()
}

/// `run -it` on a terminal (util-linux's `script` gives podman a pty): the container's
/// stdio is a terminal of its own, its exit code comes back.
fn interactive_terminal(p: &Podman) {
    let d = |s: &str| p.dir.join(s).display().to_string();
    let podman = format!(
        "podman --root {} --runroot {} --tmpdir {} --storage-driver vfs --runtime {} \
         run -it --rm --network none localhost/busybox:hull sh -c 'tty; exit 3'",
        d("root"),
        d("runroot"),
        d("tmp"),
        p.runtime.display()
    );
    let conf = p.dir.join("containers.conf");
    let (code, shown) = common::console::on_a_terminal(&podman, &[("CONTAINERS_CONF", &conf)]);
    assert_eq!(code, Some(3), "{shown:?}");
    assert!(shown.contains("/dev/pts/0"), "{shown:?}");
}

/// `podman top`: its own process listing (psgo) reads /proc where the reported pid
/// is, so for a VM container it lists the sandbox's host processes, the proxy and the
/// VMM, never the host's others; ps(1) options run ps in the container, in the guest.
fn top(p: &Podman, vm: bool) {
    let out = p.podman(&["top", "web", "pid", "args"]);
    assert!(out.status.success(), "top: {out:?}");
    let listing = text(&out);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    if vm {
        assert!(
            rows.len() <= 3 && rows.iter().any(|r| r.contains("qemu-system")),
            "top of a VM container: the proxy and the VMM only: {listing}"
        );
    } else {
        assert!(rows.iter().any(|r| r.contains("sh -c")), "{listing}");
    }
    assert!(
        !listing.contains("podman"),
        "host processes listed: {listing}"
    );
    let out = p.podman(&["top", "web", "-ef"]);
    let listing = text(&out);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sh -c")),
        "ps in the container shows its init as pid 1: {out:?}"
    );
}

/// `run --preserve-fds 1`: podman hands conmon, and conmon the runtime, the caller's
/// fd 3; its bytes reach the container's fd 3 (relayed into a VM).
fn preserved_fd(p: &Podman) {
    use std::os::fd::AsRawFd;
    let file = p.dir.join("fd3.txt");
    std::fs::write(&file, "from-fd-3\n").unwrap();
    let f = std::fs::File::open(&file).unwrap();
    let raw = f.as_raw_fd();
    let args = [
        "run",
        "--rm",
        "--network",
        "none",
        "--preserve-fds",
        "1",
        "localhost/busybox:hull",
        "sh",
        "-c",
        "cat <&3",
    ];
    let out = p.podman_with(&args, |cmd| common::hand_over(cmd, vec![raw]));
    assert_eq!(text(&out), "from-fd-3\n", "--preserve-fds 1: {out:?}");
}
