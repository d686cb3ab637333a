//! A real VM: the hull guest (kernel + agent) booted by QEMU (TCG here, KVM on hardware),
//! a busybox container created through the agent, processes run in it over hull-proto.
//! Never skipped: without a built guest it fails and says what to run.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_proto::{ProcessIo, Reply, Request, Rootfs};
use hull_sandbox::client::{read_to_end, AgentClient, Streams};
use hull_sandbox::guest::{GuestAssets, DEFAULT_DIR};
use hull_sandbox::hypervisor::{Accel, Disk};
use hull_sandbox::qemu::Qemu;
use hull_sandbox::sandbox::{console_tail, Sandbox, SandboxConfig};
use serde_json::json;

const CALL: Duration = Duration::from_secs(60);

fn assets() -> GuestAssets {
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_DIR.into());
    GuestAssets::locate(&dir)
        .unwrap_or_else(|e| panic!("{e} (scripts/test builds the guest before the tests)"))
}

fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

fn config(args: &[&str]) -> String {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "in-the-vm",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
                           {"type": "cgroup"}],
            "resources": {"memory": {"limit": 33554432}, "pids": {"limit": 64}},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
    .to_string()
}

fn process(args: &[&str]) -> String {
    json!({"args": args, "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}})
        .to_string()
}

fn output_io(agent: &AgentClient) -> (ProcessIo, Streams) {
    let s = agent.streams();
    let io = ProcessIo {
        stdin: None,
        stdout: Some(s.stdout),
        stderr: Some(s.stderr),
        terminal: false,
        extra: vec![],
    };
    (io, s)
}

/// Starts `args` as exec `exec_id` with `io`.
fn start_exec(agent: &AgentClient, exec_id: &str, args: &[&str], io: ProcessIo) {
    let request = Request::Exec {
        container: "c1".into(),
        exec_id: exec_id.into(),
        process: process(args),
        io,
    };
    let reply = agent
        .call(request, CALL)
        .unwrap_or_else(|e| panic!("exec {args:?}: {e}"));
    assert!(
        matches!(reply, Reply::Process { pid } if pid > 0),
        "{reply:?}"
    );
}

/// Starts `args` with its stdin open to the host (a pty with `terminal`); returns the
/// stdin stream and the output.
fn start_with_stdin(
    agent: &AgentClient,
    exec_id: &str,
    args: &[&str],
    terminal: bool,
) -> (u32, std::sync::mpsc::Receiver<Vec<u8>>) {
    let s = agent.streams();
    let out = agent.subscribe(s.stdout);
    let io = ProcessIo {
        stdin: Some(s.stdin),
        stdout: Some(s.stdout),
        stderr: None,
        terminal,
        extra: vec![],
    };
    start_exec(agent, exec_id, args, io);
    (s.stdin, out)
}

/// Runs `args` in the container; returns (exit status, stdout).
fn exec(agent: &AgentClient, exec_id: &str, args: &[&str]) -> (i32, String) {
    let (io, s) = output_io(agent);
    let out = agent.subscribe(s.stdout);
    start_exec(agent, exec_id, args, io);
    let stdout = read_to_end(&out, CALL).expect("exec output");
    let status = wait(agent, Some(exec_id));
    (status, String::from_utf8_lossy(&stdout).into_owned())
}

fn wait(agent: &AgentClient, exec_id: Option<&str>) -> i32 {
    let request = Request::Wait {
        container: "c1".into(),
        exec_id: exec_id.map(Into::into),
    };
    match agent.call(request, CALL) {
        Ok(Reply::Exited { status }) => status,
        r => panic!("wait {exec_id:?}: {r:?}"),
    }
}

fn signal(agent: &AgentClient, exec_id: Option<&str>, signal: i32) {
    let request = Request::Signal {
        container: "c1".into(),
        exec_id: exec_id.map(Into::into),
        signal,
        all: false,
    };
    assert_eq!(agent.call(request, CALL).unwrap(), Reply::Done);
}

fn boot(work: &Path) -> Sandbox {
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    let sandbox_dir = work.join("sandbox");
    std::fs::create_dir_all(&sandbox_dir).unwrap();
    let image = sandbox_dir.join("rootfs.erofs");
    hull_sandbox::image::erofs_from_dir(&rootfs, &image).expect("erofs image");
    let accel = Accel::detect();
    eprintln!("booting the hull guest under QEMU ({accel:?})");
    let config = SandboxConfig {
        assets: assets(),
        dir: sandbox_dir,
        disks: vec![Disk {
            path: image,
            readonly: true,
            serial: "rootfs0".into(),
        }],
        vcpus: 1,
        memory_mib: 128,
        accel,
        extra_cmdline: String::new(),
        boot_timeout: Duration::from_secs(120),
        nets: vec![],
        shares: vec![],
    };
    Sandbox::start(&Qemu::default(), config).expect("the guest boots and the agent answers")
}

/// On a failed assertion, what the guest said: the sandbox removes its log on drop.
struct ConsoleOnPanic(PathBuf);

impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("guest console:\n{}", console_tail(&self.0, 40));
        }
    }
}

/// The test's files go, whether it passes or fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn container_in_a_qemu_vm() {
    let work = std::env::temp_dir().join(format!("hull-vm-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let _cleanup = RemoveOnDrop(work.clone());
    let sandbox = boot(&work);
    let vmm_pid = sandbox.pid();
    let sandbox_dir = sandbox.dir().to_path_buf();
    eprintln!(
        "{} answered {:?} after QEMU started",
        sandbox.agent.agent, sandbox.boot_time
    );
    let _console = ConsoleOnPanic(sandbox.console_log.clone());
    let agent = &sandbox.agent;
    assert_eq!(agent.call(Request::Ping, CALL).unwrap(), Reply::Pong);

    // The container's init: a long sleep, killed at the end.
    let (io, s) = output_io(agent);
    let init_out = agent.subscribe(s.stdout);
    let create = Request::CreateContainer {
        id: "c1".into(),
        config: config(&["sh", "-c", "echo init up; exec sleep 1000"]),
        rootfs: Rootfs::disk("rootfs0"),
        io,
        files: vec![],
        shares: vec![],
    };
    let created = agent.call(create, CALL);
    assert!(
        matches!(created, Ok(Reply::Process { pid }) if pid > 0),
        "create: {created:?}\n{}",
        console_tail(&sandbox.console_log, 30)
    );
    let started = agent.call(Request::StartContainer { id: "c1".into() }, CALL);
    assert_eq!(started.unwrap(), Reply::Done);
    let first = init_out
        .recv_timeout(CALL)
        .expect("the init's first output");
    assert_eq!(String::from_utf8_lossy(&first), "init up\n");

    let (status, out) = exec(agent, "e1", &["echo", "hello from the VM"]);
    assert_eq!((status, out.as_str()), (0, "hello from the VM\n"));
    let (status, out) = exec(agent, "e2", &["hostname"]);
    assert_eq!((status, out.as_str()), (0, "in-the-vm\n"));
    // The limits are hull-runtime's, on the guest's cgroup v2.
    let limits = [
        "cat",
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
    ];
    let (status, out) = exec(agent, "e3", &limits);
    assert_eq!((status, out.as_str()), (0, "33554432\n64\n"));
    let (status, _) = exec(agent, "e4", &["false"]);
    assert_eq!(status, 1, "false's exit status reaches the host");

    // stdin reaches the process, and its end closes it.
    let (stdin, out) = start_with_stdin(agent, "cat", &["cat"], false);
    // Every byte value, more than any buffer on the way holds: the channel is a tty
    // in the guest, and must pass binary data unchanged and without loss.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    for chunk in data.chunks(50_000) {
        agent.send_stdin(stdin, chunk).unwrap();
    }
    agent.send_stdin(stdin, b"").unwrap();
    let echoed = read_to_end(&out, CALL).unwrap();
    assert!(
        echoed == data,
        "{} bytes came back of {}",
        echoed.len(),
        data.len()
    );
    assert_eq!(wait(agent, Some("cat")), 0);

    // A process that writes a megabyte before it reads its stdin, with a megabyte of
    // stdin already on its way: the agent must drain the output while the input waits
    // (it once blocked writing stdin while the process blocked writing stdout).
    let script = ["sh", "-c", "head -c 1048576 /dev/zero; wc -c"];
    let (stdin, out) = start_with_stdin(agent, "late-reader", &script, false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            agent.send_stdin(stdin, &vec![b'x'; 1 << 20]).unwrap();
            agent.send_stdin(stdin, b"").unwrap();
        });
        let got = read_to_end(&out, CALL).unwrap();
        let zeros = got.iter().take_while(|&&b| b == 0).count();
        assert_eq!(zeros, 1 << 20);
        assert_eq!(String::from_utf8_lossy(&got[zeros..]).trim(), "1048576");
    });
    assert_eq!(wait(agent, Some("late-reader")), 0);

    // close_stdin ends a reader without an EOF frame from the host.
    let (stdin, out) = start_with_stdin(agent, "wc", &["wc", "-c"], false);
    agent.send_stdin(stdin, b"12345").unwrap();
    let close = Request::CloseStdin {
        container: "c1".into(),
        exec_id: Some("wc".into()),
    };
    assert_eq!(agent.call(close, CALL).unwrap(), Reply::Done);
    let counted = String::from_utf8_lossy(&read_to_end(&out, CALL).unwrap()).into_owned();
    assert_eq!(counted.trim(), "5");
    assert_eq!(wait(agent, Some("wc")), 0);

    // A terminal, of the size the host sets.
    let script = ["sh", "-c", "read x; tty; stty size; echo got $x"];
    let (stdin, out) = start_with_stdin(agent, "tty", &script, true);
    let resize = Request::ResizeTerminal {
        container: "c1".into(),
        exec_id: Some("tty".into()),
        rows: 33,
        cols: 77,
    };
    assert_eq!(agent.call(resize, CALL).unwrap(), Reply::Done);
    agent.send_stdin(stdin, b"word\n").unwrap();
    let text = String::from_utf8_lossy(&read_to_end(&out, CALL).unwrap()).into_owned();
    assert!(
        text.contains("/dev/pts/0") && text.contains("33 77") && text.contains("got word"),
        "{text:?}"
    );
    assert_eq!(wait(agent, Some("tty")), 0);

    // A long sleep that a signal ends.
    let (io, _) = output_io(agent);
    start_exec(agent, "sleeper", &["sleep", "1000"], io);
    signal(agent, Some("sleeper"), 15);
    assert_eq!(wait(agent, Some("sleeper")), 128 + 15);

    let stats = agent.call(
        Request::Stats {
            container: "c1".into(),
        },
        CALL,
    );
    assert!(
        matches!(&stats, Ok(Reply::Stats { json, .. }) if json.contains("memory")),
        "{stats:?}"
    );

    // Bad input gets an error reply naming it, and the agent goes on.
    let bad = agent.call(Request::StartContainer { id: "nope".into() }, CALL);
    assert!(bad.unwrap_err().to_string().contains("nope"));

    signal(agent, None, 9);
    assert_eq!(wait(agent, None), 128 + 9);
    let delete = Request::DeleteContainer {
        id: "c1".into(),
        force: false,
    };
    assert_eq!(agent.call(delete, CALL).unwrap(), Reply::Done);

    sandbox
        .shutdown(Duration::from_secs(60))
        .expect("the guest powers off");
    assert!(
        !Path::new(&format!("/proc/{vmm_pid}")).exists(),
        "QEMU (pid {vmm_pid}) is gone"
    );
    assert!(!sandbox_dir.exists(), "the sandbox directory is removed");
}

#[test]
fn ctrl_alt_del_stops_the_containers_then_the_guest() {
    // What hull-vmm does on SIGTERM, typed here through QEMU's monitor: the agent must
    // give the containers SIGTERM and its grace, then power the guest off by itself.
    let work = std::env::temp_dir().join(format!("hull-vm-cad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let _cleanup = RemoveOnDrop(work.clone());
    let mut sandbox = boot(&work);
    let console = sandbox.console_log.clone();
    let _console = ConsoleOnPanic(console.clone());
    let agent = sandbox.agent.clone();

    let (io, s) = output_io(&agent);
    let out = agent.subscribe(s.stdout);
    let init = "trap 'echo got TERM; exit 7' TERM; echo up; while :; do sleep 0.1; done";
    let create = Request::CreateContainer {
        id: "c1".into(),
        config: config(&["sh", "-c", init]),
        rootfs: Rootfs::disk("rootfs0"),
        io,
        files: vec![],
        shares: vec![],
    };
    assert!(matches!(
        agent.call(create, CALL),
        Ok(Reply::Process { .. })
    ));
    assert_eq!(
        agent
            .call(Request::StartContainer { id: "c1".into() }, CALL)
            .unwrap(),
        Reply::Done
    );
    assert_eq!(out.recv_timeout(CALL).expect("the init's output"), b"up\n");
    let waiter = std::thread::spawn({
        let agent = agent.clone();
        move || wait(&agent, None)
    });

    let t = std::time::Instant::now();
    let code = sandbox
        .ctrl_alt_del(Duration::from_secs(60))
        .expect("the guest shuts down after Ctrl-Alt-Del");
    eprintln!("QEMU exited {code} {:?} after Ctrl-Alt-Del", t.elapsed());
    assert_eq!(code, 0, "QEMU ends by the guest's reset (-no-reboot)");
    assert_eq!(
        waiter.join().unwrap(),
        7,
        "the container's init ran its TERM trap"
    );
    let rest = String::from_utf8_lossy(&read_to_end(&out, CALL).unwrap_or_default()).into_owned();
    assert_eq!(rest, "got TERM\n");
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(
        log.contains("Ctrl-Alt-Del: asking the containers to stop")
            && log.contains("every container process has exited"),
        "the agent's shutdown is in the console:\n{}",
        console_tail(&console, 20)
    );
}
