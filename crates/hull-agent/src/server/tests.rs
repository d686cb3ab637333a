//! The server against a hostile or confused host: every bad message gets an error reply
//! or is dropped, and only a broken stream (which cannot be resynchronised) ends it,
//! with an error, never a panic. The server runs in a child process, as it reaps every
//! child of its process: this test binary again, running only `server_process`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;

use hull_proto::{
    encode_frame, encode_message, FrameDecoder, Message, ProcessIo, Reply, Request, Rootfs,
    PROTOCOL_VERSION,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::Server;
use crate::containers::Sandbox;

/// Tells `server_process` its directory and stream mode; the stream is its fd 3.
const SERVER_ENV: &str = "HULL_AGENT_TEST_SERVER";
const SERVER_FD: i32 = 3;

struct Agent {
    /// Reaped by `waitpid` on `pid`, which `still_serving` also polls.
    _child: std::process::Child,
    sock: UnixStream,
    decoder: FrameDecoder,
    pid: Pid,
    dir: std::path::PathBuf,
}

/// The server's process, which the tests start (`Agent::spawn_with`). A fresh process,
/// not a fork of this multi-threaded one: a child forked while another test's thread
/// held a lock (std's backtrace lock, taken when RUST_BACKTRACE is set and anyhow
/// builds an error) waited for it forever.
#[test]
#[ignore = "the server of the tests in this module, which start it themselves"]
fn server_process() {
    let Some(spec) = std::env::var_os(SERVER_ENV) else {
        panic!("run by the tests of server::tests, which set {SERVER_ENV}");
    };
    let spec = spec.to_string_lossy().into_owned();
    let (mode, dir) = spec.split_once(':').expect("MODE:DIR");
    let dir = std::path::Path::new(dir);
    // SAFETY: fd 3 is the stream the parent placed there for this process alone.
    let stream = unsafe { OwnedFd::from_raw_fd(SERVER_FD) };
    let sandbox = Sandbox::with_dirs(dir.join("state"), dir.join("bundles"));
    let code = match Server::with_sandbox(stream, sandbox)
        .and_then(|s| s.queued_writes(mode == "queued").serve())
    {
        Ok(()) => 0,
        Err(_) => 3,
    };
    // SAFETY: leave without the test harness's report: the parent reads the code.
    unsafe { libc::_exit(code) }
}

impl Agent {
    fn spawn() -> Agent {
        Agent::spawn_with(true)
    }

    /// A server whose stream queues writes (vsock) or not (virtio-serial).
    fn spawn_with(queued_writes: bool) -> Agent {
        let dir = std::env::temp_dir().join(format!("hull-agent-test-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mode = if queued_writes { "queued" } else { "direct" };
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "server::tests::server_process",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(SERVER_ENV, format!("{mode}:{}", dir.display()))
        .stdout(std::process::Stdio::null());
        // SAFETY: dup2 is async-signal-safe; it gives the child the stream as fd 3,
        // without close-on-exec, and no other child inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_fd, SERVER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the server's process");
        drop(theirs);
        Agent {
            pid: Pid::from_raw(child.id() as i32),
            _child: child,
            sock: ours,
            decoder: FrameDecoder::new(),
            dir,
        }
    }

    fn send(&mut self, m: &Message) {
        let mut wire = Vec::new();
        encode_message(m, &mut wire);
        self.sock.write_all(&wire).unwrap();
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return f.message().unwrap();
            }
            let n = self.sock.read(&mut buf).unwrap();
            assert!(n > 0, "the agent closed the stream");
            self.decoder.push(&buf[..n]);
        }
    }

    fn hello(&mut self) {
        self.agent_hello();
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            software: "test".into(),
            realtime: None,
        });
    }

    /// The agent speaks first.
    fn agent_hello(&mut self) {
        assert!(
            matches!(self.recv(), Message::Hello { version, .. } if version == PROTOCOL_VERSION)
        );
    }

    fn call(&mut self, id: u64, request: Request) -> Result<Reply, String> {
        self.send(&Message::Request { id, request });
        match self.recv() {
            Message::Response { id: got, reply } => {
                assert_eq!(got, id);
                reply.map_err(|e| e.message)
            }
            m => panic!("expected a response, got {m:?}"),
        }
    }

    /// The server's exit code; 3 means it returned an error.
    fn exit_code(self) -> i32 {
        drop(self.sock);
        let status = waitpid(self.pid, None).unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        match status {
            WaitStatus::Exited(_, c) => c,
            s => panic!("the server died: {s:?}"),
        }
    }
}

fn rand_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", std::process::id(), t.subsec_nanos())
}

#[test]
fn bad_requests_get_error_replies_and_the_server_goes_on() {
    let mut a = Agent::spawn();
    a.hello();
    // Not JSON, then JSON of the wrong shape: dropped, the stream stays in sync.
    let mut wire = Vec::new();
    encode_frame(0, b"{not json", &mut wire);
    encode_frame(
        0,
        br#"{"type":"request","id":1,"request":{"op":"launch_missiles"}}"#,
        &mut wire,
    );
    // Data for a stream nobody opened: dropped, and reported taken, so that a host
    // waiting for its stdin window is not kept waiting.
    encode_frame(99, b"stray bytes", &mut wire);
    a.raw(&wire);
    assert_eq!(
        a.recv(),
        Message::Consumed {
            stream: 99,
            bytes: 11
        }
    );
    assert_eq!(a.call(2, Request::Ping), Ok(Reply::Pong));

    let create = Request::CreateContainer {
        id: "../escape".into(),
        config: "{}".into(),
        rootfs: Rootfs::disk("x"),
        io: ProcessIo::default(),
        files: vec![],
        shares: vec![],
    };
    let e = a.call(3, create).unwrap_err();
    assert!(e.contains("escape"), "{e}");
    let create = Request::CreateContainer {
        id: "c1".into(),
        config: "[1, 2".into(),
        rootfs: Rootfs::disk("x"),
        io: ProcessIo {
            stdout: Some(0),
            ..Default::default()
        },
        files: vec![],
        shares: vec![],
    };
    let e = a.call(4, create).unwrap_err();
    assert!(e.contains("stream 0"), "{e}");
    let wait = Request::Wait {
        container: "ghost".into(),
        exec_id: None,
    };
    assert!(a.call(5, wait).unwrap_err().contains("ghost"));
    let exec = Request::Exec {
        container: "ghost".into(),
        exec_id: "e".into(),
        process: "{}".into(),
        io: ProcessIo::default(),
    };
    assert!(a.call(6, exec).is_err());
    let signal = Request::Signal {
        container: "ghost".into(),
        exec_id: Some("e".into()),
        signal: 9,
        all: false,
    };
    assert!(a.call(7, signal).unwrap_err().contains("ghost"));
    assert_eq!(a.call(8, Request::Shutdown), Ok(Reply::Done));
    assert_eq!(a.exit_code(), 0);
}

#[test]
fn a_broken_stream_ends_the_server_with_an_error_not_a_panic() {
    let mut a = Agent::spawn();
    a.hello();
    // A header announcing 4 GiB: the decoder refuses it before allocating.
    a.raw(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(a.exit_code(), 3);
}

#[test]
fn another_protocol_version_is_refused() {
    let mut a = Agent::spawn();
    a.agent_hello();
    a.send(&Message::Hello {
        version: PROTOCOL_VERSION + 1,
        software: "future hull".into(),
        realtime: None,
    });
    assert_eq!(a.exit_code(), 3);
}

#[test]
fn requests_before_hello_are_refused() {
    let mut a = Agent::spawn();
    a.agent_hello();
    a.send(&Message::Request {
        id: 1,
        request: Request::Ping,
    });
    assert_eq!(a.exit_code(), 3);
}

/// Whether the server process has ended, without waiting.
fn still_serving(a: &Agent) -> bool {
    use nix::sys::wait::WaitPidFlag;
    matches!(
        waitpid(a.pid, Some(WaitPidFlag::WNOHANG)),
        Ok(WaitStatus::StillAlive)
    )
}

#[test]
fn after_answering_shutdown_the_agent_waits_for_the_host_to_hang_up() {
    // Regression: the agent powered off right after writing the reply, and on vsock the
    // reply was still queued in the guest, so hull reported the agent gone (exit 1)
    // instead of the container's status.
    let mut a = Agent::spawn();
    a.hello();
    assert_eq!(a.call(1, Request::Shutdown), Ok(Reply::Done));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(still_serving(&a), "the agent ended before the host hung up");
    let t = std::time::Instant::now();
    assert_eq!(a.exit_code(), 0);
    assert!(
        t.elapsed() < super::SHUTDOWN_LINGER / 2,
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_host_that_never_hangs_up_delays_the_power_off_by_the_linger_only() {
    let mut a = Agent::spawn();
    a.hello();
    let t = std::time::Instant::now();
    assert_eq!(a.call(1, Request::Shutdown), Ok(Reply::Done));
    // The host keeps its end open: the server must still end, at SHUTDOWN_LINGER.
    let status = waitpid(a.pid, None).unwrap();
    assert_eq!(status, WaitStatus::Exited(a.pid, 0));
    let took = t.elapsed();
    assert!(
        took >= super::SHUTDOWN_LINGER && took < super::SHUTDOWN_LINGER * 3,
        "{took:?}"
    );
    let _ = std::fs::remove_dir_all(&a.dir);
}

#[test]
fn where_writes_are_not_queued_the_agent_does_not_wait_for_a_hang_up() {
    // On virtio-serial the reply is with the VMM when the write returns: a wait would
    // only add the linger to every VM's shutdown (measured: 1 s more per run on QEMU).
    let mut a = Agent::spawn_with(false);
    a.hello();
    let t = std::time::Instant::now();
    assert_eq!(a.call(1, Request::Shutdown), Ok(Reply::Done));
    let status = waitpid(a.pid, None).unwrap();
    assert_eq!(status, WaitStatus::Exited(a.pid, 0));
    assert!(
        t.elapsed() < super::SHUTDOWN_LINGER / 2,
        "{:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&a.dir);
}
