//! docker (Debian's docker.io 20.10) driving hull in both isolations: a dockerd of the
//! test's own (`--data-root`, `--exec-root`, its socket, no bridge or iptables changes
//! to the host) with `--add-runtime hull=... --add-runtime hull-vm=...`, a busybox image
//! imported from a tarball. docker puts `blockIO.weight: 0` (unset) in every config:
//! hull must skip it, as runc does, or nothing runs at all. Volumes: a file, read-only,
//! and a directory written from the container.

mod common;

use common::{host_kernel, text};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Docker {
    dir: PathBuf,
    daemon: Child,
}

impl Docker {
    fn start() -> Docker {
        let dir = PathBuf::from("/tmp").join(common::unique_name());
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for name in ["hull", "hull-vm"] {
            std::os::unix::fs::symlink(common::hull_bin(), dir.join("bin").join(name)).unwrap();
        }
        let d = |s: &str| dir.join(s).display().to_string();
        let daemon = Command::new("dockerd")
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args(["-H", &format!("unix://{}", d("docker.sock"))])
            .args(["--pidfile", &d("docker.pid")])
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
            ])
            .args(["--add-runtime", &format!("hull={}", d("bin/hull"))])
            .args(["--add-runtime", &format!("hull-vm={}", d("bin/hull-vm"))])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("dockerd: {e} (scripts/install-deps installs docker.io)"));
        let docker = Docker { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        let rootfs = docker.dir.join("rootfs");
        common::make_busybox_rootfs(&rootfs);
        let tar = docker.dir.join("busybox.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status();
        assert!(ok.unwrap().success());
        let out = docker.docker(&["import", &tar.display().to_string(), "busybox:hull"]);
        assert!(out.status.success(), "{out:?}");
        docker
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "web", "server"]);
        // Its bridge goes with it.
        let _ = self.docker(&["network", "rm", NETWORK]);
        // SIGTERM: dockerd stops its own containerd and unmounts what it mounted.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("exec"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn docker_runs_hull_in_both_isolations() {
    hull_only!();
    let d = Docker::start();
    let host = host_kernel();
    for (runtime, vm) in [("hull", false), ("hull-vm", true)] {
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "busybox:hull",
            "sh",
            "-c",
            "uname -r; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "{runtime}: {out:?}");
        assert_eq!(text(&out).trim() != host, vm, "{runtime}: {out:?}");

        let file = d.dir.join("volume.txt");
        std::fs::write(&file, "from the host\n").unwrap();
        let vol = format!("{}:/v.txt:ro", file.display());
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "-v",
            &vol,
            "busybox:hull",
            "cat",
            "/v.txt",
        ]);
        assert_eq!(text(&out), "from the host\n", "{runtime}: {out:?}");

        // A directory volume, shared both ways (virtio-9p in a VM).
        let shared = d.dir.join(format!("shared-{runtime}"));
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("in"), "to the container\n").unwrap();
        let vol = format!("{}:/d", shared.display());
        let out = d.docker(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "-v",
            &vol,
            "busybox:hull",
            "sh",
            "-c",
            "cat /d/in; echo back > /d/out",
        ]);
        assert_eq!(text(&out), "to the container\n", "{runtime}: {out:?}");
        let back = std::fs::read_to_string(shared.join("out")).unwrap();
        assert_eq!(back, "back\n", "{runtime}");

        let script = "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done";
        let out = d.docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--runtime",
            runtime,
            "busybox:hull",
            "sh",
            "-c",
            script,
        ]);
        assert!(out.status.success(), "{runtime}: {out:?}");
        let out = d.docker(&["exec", "web", "sh", "-c", "echo in-exec; exit 5"]);
        assert_eq!(
            (out.status.code(), text(&out).as_str()),
            (Some(5), "in-exec\n"),
            "{runtime}: {out:?}"
        );
        // docker top filters the host's ps by `ps --format json`'s pids: a VM
        // container's are the sandbox's host processes, never guest pids (guest pid 1
        // would have shown the host's init).
        let out = d.docker(&["top", "web"]);
        let top = text(&out);
        let want = if vm { "qemu-system" } else { "sh -c" };
        assert!(
            out.status.success() && top.contains(want),
            "{runtime}: top: {out:?}"
        );
        assert!(
            !top.lines()
                .skip(1)
                .any(|l| l.split_whitespace().nth(1) == Some("1")),
            "{runtime}: top lists pid 1: {top}"
        );
        let out = d.docker(&["stop", "-t", "10", "web"]);
        assert!(out.status.success(), "{runtime}: {out:?}");
        let out = d.docker(&["logs", "web"]);
        assert_eq!(text(&out), "started\nbye\n", "{runtime}: {out:?}");
        let out = d.docker(&["inspect", "--format", "{{.State.ExitCode}}", "web"]);
        assert_eq!(text(&out).trim(), "0", "{runtime}: {out:?}");
        assert!(d.docker(&["rm", "web"]).status.success());
        published_port(&d, runtime);
    }
    let out = d.docker(&["ps", "-aq"]);
    assert_eq!(text(&out), "", "containers left: {out:?}");
}

/// A bridge network of the test's own: dockerd runs with `--bridge none`, so nothing of
/// the host's docker0 is touched; `network rm` removes its bridge.
const NETWORK: &str = "hulltestnet";

/// `-p`: docker's bridge reaches the container through libnetwork's prestart hook
/// (which, for a VM container, fills the proxy's network namespace that hull mirrors
/// into the VM), and docker-proxy forwards the published port to it.
fn published_port(d: &Docker, runtime: &str) {
    let net = d.docker(&["network", "inspect", NETWORK]);
    if !net.status.success() {
        let out = d.docker(&["network", "create", "--subnet", "10.213.7.0/24", NETWORK]);
        assert!(out.status.success(), "network create: {out:?}");
    }
    let port = if runtime == "hull" { "18781" } else { "18782" };
    let script = "mkdir /www; uname -r > /www/kernel; httpd -f -p 8080 -h /www";
    let publish = format!("127.0.0.1:{port}:8080");
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "server",
        "--network",
        NETWORK,
        "-p",
        &publish,
        "--runtime",
        runtime,
        "busybox:hull",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{runtime}: run -p: {out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(body) = http_get(port.parse().unwrap(), "/kernel") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{runtime}: nothing answers on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let vm = runtime == "hull-vm";
    assert_eq!(
        body.trim() != host_kernel(),
        vm,
        "{runtime}: served from the wrong kernel: {body:?}"
    );
    let out = d.docker(&["rm", "-f", "server"]);
    assert!(out.status.success(), "{runtime}: rm -f: {out:?}");
}

/// The body of an HTTP/1.0 GET on the host's loopback, if a server answered 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}
