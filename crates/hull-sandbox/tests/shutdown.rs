//! `Sandbox::shutdown` against a fake VM and a fake agent on a hybrid-vsock socket: the
//! host hangs up once it has the agent's reply (the agent powers off only then), and a
//! reply lost to the guest's power-off is not an error when the VM did power off
//! (regression: `hull run --isolation vm` under hull-vmm exited 1, "the agent went away
//! before answering shutdown", instead of with the container's status).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_proto::{encode_message, FrameDecoder, Message, Reply, Request, PROTOCOL_VERSION};
use hull_sandbox::guest::GuestAssets;
use hull_sandbox::hypervisor::{Accel, Hypervisor, Transport, Vm, VmConfig};
use hull_sandbox::sandbox::{Sandbox, SandboxConfig};

/// How the fake agent answers Shutdown.
#[derive(Clone, Copy)]
enum Agent {
    /// Replies, waits for the host to hang up, then the VM exits 0.
    RepliesAndWaits,
    /// Powers off at once: the reply never leaves the guest; the VM exits 0.
    PowersOffBeforeReplying,
    /// The VMM dies (exit 1) before any reply.
    VmmFails,
}

/// The VMM's exit code once the fake guest is gone, and whether the agent saw the
/// host hang up after its reply.
#[derive(Default)]
struct Outcome {
    exit: Option<i32>,
    saw_hang_up: bool,
}

struct FakeVm(Arc<Mutex<Outcome>>);

impl Vm for FakeVm {
    fn pid(&self) -> u32 {
        std::process::id()
    }
    fn wait_timeout(&mut self, timeout: Duration) -> hull_sandbox::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.0.lock().unwrap().exit {
                return Ok(Some(code));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn kill(&mut self) {}
    fn request_shutdown(&mut self) -> hull_sandbox::Result<()> {
        Ok(())
    }
}

struct FakeHypervisor {
    agent: Agent,
    outcome: Arc<Mutex<Outcome>>,
}

impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn transport(&self, dir: &Path) -> Transport {
        Transport::HybridVsock {
            socket: dir.join("vsock.sock"),
            port: 1024,
        }
    }
    fn device_slots(&self) -> usize {
        1
    }
    fn start(&self, config: &VmConfig) -> hull_sandbox::Result<Box<dyn Vm>> {
        let Transport::HybridVsock { socket, .. } = &config.transport else {
            unreachable!("the fake's transport is hybrid vsock");
        };
        let listener = UnixListener::bind(socket).unwrap();
        let (agent, outcome) = (self.agent, self.outcome.clone());
        std::thread::spawn(move || serve(listener, agent, outcome));
        Ok(Box::new(FakeVm(self.outcome.clone())))
    }
}

/// The fake guest: the hybrid-vsock handshake, hello, then Shutdown as `agent` says.
fn serve(listener: UnixListener, agent: Agent, outcome: Arc<Mutex<Outcome>>) {
    let (mut s, _) = listener.accept().unwrap();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
    }
    s.write_all(b"OK 1024\n").unwrap();
    let send = |s: &mut std::os::unix::net::UnixStream, m: &Message| {
        let mut wire = Vec::new();
        encode_message(m, &mut wire);
        s.write_all(&wire).unwrap();
    };
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        software: "fake-agent".into(),
        realtime: None,
    };
    send(&mut s, &hello);
    let mut d = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let id = loop {
        match d.next_frame().unwrap().map(|f| f.message().unwrap()) {
            Some(Message::Request { id, request }) => {
                assert_eq!(request, Request::Shutdown);
                break id;
            }
            Some(_) => continue,
            None => {}
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the host hung up before asking for shutdown");
        d.push(&buf[..n]);
    };
    let exit = match agent {
        Agent::RepliesAndWaits => {
            send(
                &mut s,
                &Message::Response {
                    id,
                    reply: Ok(Reply::Done),
                },
            );
            let hung_up = matches!(s.read(&mut buf), Ok(0));
            outcome.lock().unwrap().saw_hang_up = hung_up;
            0
        }
        Agent::PowersOffBeforeReplying => 0,
        Agent::VmmFails => 1,
    };
    drop(s);
    outcome.lock().unwrap().exit = Some(exit);
}

fn shut_down(agent: Agent) -> (hull_sandbox::Result<()>, Arc<Mutex<Outcome>>) {
    let dir = std::env::temp_dir().join(format!(
        "hull-shutdown-test-{}-{}",
        std::process::id(),
        agent as u8
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let hv = FakeHypervisor {
        agent,
        outcome: outcome.clone(),
    };
    let none = PathBuf::from("/nonexistent");
    let cfg = SandboxConfig {
        assets: GuestAssets {
            vmlinux: none.clone(),
            bzimage: none.clone(),
            initramfs: none,
            agent_disk: None,
            kernel_build_seconds: None,
            kernel_build_incremental: None,
        },
        dir: dir.clone(),
        disks: Vec::new(),
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Kvm,
        extra_cmdline: String::new(),
        boot_timeout: Duration::from_secs(10),
        nets: vec![],
        shares: vec![],
    };
    let sandbox = Sandbox::start(&hv, cfg).unwrap();
    let r = sandbox.shutdown(Duration::from_secs(5));
    assert!(!dir.exists(), "the sandbox left {}", dir.display());
    (r, outcome)
}

#[test]
fn the_host_hangs_up_once_it_has_the_reply() {
    let (r, outcome) = shut_down(Agent::RepliesAndWaits);
    r.unwrap();
    assert!(outcome.lock().unwrap().saw_hang_up);
}

#[test]
fn a_reply_lost_to_a_clean_power_off_is_still_a_shutdown() {
    let (r, _) = shut_down(Agent::PowersOffBeforeReplying);
    r.unwrap();
}

#[test]
fn a_vmm_that_fails_without_a_reply_is_an_error() {
    let (r, _) = shut_down(Agent::VmmFails);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("went away before answering shutdown"), "{e}");
}
