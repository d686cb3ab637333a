//! `hull run` with VM isolation, in the foreground: the bundle's rootfs becomes an erofs
//! disk, a VM boots the hull guest, the agent runs the container from the same
//! config.json, and this process relays stdio and signals until the container exits,
//! then powers the VM off and exits with the container's status. This is the proxy
//! role DESIGN.md gives the pid that `create` reports.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_proto::{ProcessIo, Reply, Request, Rootfs};
use hull_runtime::signal::signal_exact;
use hull_runtime::state::{process_start_time, process_stat};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{self, SetArg};

use crate::client::{AgentClient, Streams};
use crate::error::{io_err, Result, SandboxError};
use crate::guest::GuestAssets;
use crate::hullvmm::HullVmm;
use crate::hypervisor::{Accel, Disk, Hypervisor};
use crate::qemu::Qemu;
use crate::sandbox::{Sandbox, SandboxConfig};

/// In the sandbox directory: "PID START_TIME" of the hull that runs the VM.
pub const OWNER_FILE: &str = "owner";

/// In the sandbox directory: "PID START_TIME" of the VMM process.
pub const VMM_FILE: &str = "vmm";

/// The sandbox directory of container `id` under hull's root.
pub fn sandbox_dir(state_root: &Path, id: &str) -> PathBuf {
    state_root.join(format!("{id}.vm"))
}

/// The hull that owns the VM sandbox of `id`, as recorded: (pid, start time).
fn owner(state_root: &Path, id: &str) -> Option<(i32, u64)> {
    recorded(state_root, id, OWNER_FILE)
}

/// A "PID START_TIME" file of the sandbox of `id`.
fn recorded(state_root: &Path, id: &str, file: &str) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(sandbox_dir(state_root, id).join(file)).ok()?;
    let mut words = text.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// Whether the VM sandbox of `id` is still owned by a running hull; its pid if so.
pub fn owner_alive(state_root: &Path, id: &str) -> Option<i32> {
    let (pid, start) = owner(state_root, id)?;
    (process_start_time(pid) == Some(start)).then_some(pid)
}

/// `hull delete` of a VM container: refuses a running one unless `force`, which kills
/// its hull (the VM dies with it); then removes what is left. Returns false when `id`
/// has no VM sandbox.
pub fn delete(state_root: &Path, id: &str, force: bool) -> Result<bool> {
    let dir = sandbox_dir(state_root, id);
    if !dir.exists() {
        return Ok(false);
    }
    if let Some(pid) = owner_alive(state_root, id) {
        if !force {
            return Err(SandboxError::Vm(format!(
                "container {id} runs in a VM (hull pid {pid}): stop it, or delete --force"
            )));
        }
        if let Some((pid, start)) = owner(state_root, id) {
            // Through a pidfd, checked against the start time: never a reused pid.
            let _ = signal_exact(pid, start, libc::SIGKILL);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while owner_alive(state_root, id).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The VMM dies with its hull, but takes a moment (QEMU tearing down its guest):
    // the sandbox is gone only when the VMM is.
    if let Some((pid, start)) = recorded(state_root, id, VMM_FILE) {
        // A zombie is gone for this purpose: it holds nothing but its pid.
        let running =
            || matches!(process_stat(pid), Some((state, s)) if s == start && state != 'Z');
        if running() {
            let _ = signal_exact(pid, start, libc::SIGKILL);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::fs::remove_dir_all(&dir).map_err(io_err("cannot remove", &dir))?;
    Ok(true)
}

pub struct RunOptions {
    pub id: String,
    pub bundle: PathBuf,
    /// hull's --root: the sandbox's directory goes in it while the VM runs.
    pub state_root: PathBuf,
    pub guest_dir: PathBuf,
}

const CALL: Duration = Duration::from_secs(60);
const ROOTFS_SERIAL: &str = "rootfs0";
/// What the guest kernel and agent need besides the container (measured ~24 MiB).
const GUEST_OVERHEAD_MIB: u64 = 64;

struct Bundle {
    config: String,
    rootfs: PathBuf,
    terminal: bool,
    memory_limit: Option<u64>,
}

fn load_bundle(dir: &Path) -> Result<Bundle> {
    let path = dir.join("config.json");
    let config = std::fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let v: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| SandboxError::Vm(format!("{}: {e}", path.display())))?;
    let root = v["root"]["path"].as_str().unwrap_or("rootfs");
    Ok(Bundle {
        rootfs: dir.join(root),
        terminal: v["process"]["terminal"].as_bool().unwrap_or(false),
        memory_limit: v["linux"]["resources"]["memory"]["limit"].as_u64(),
        config,
    })
}

/// hull-vmm where KVM runs guests in hardware, QEMU (TCG) where it does not;
/// `HULL_HYPERVISOR=qemu|hull-vmm` overrides the choice.
pub fn choose_hypervisor(accel: Accel) -> Result<Box<dyn Hypervisor>> {
    match std::env::var("HULL_HYPERVISOR").as_deref() {
        Ok("qemu") => Ok(Box::new(Qemu::default())),
        Ok("hull-vmm") => Ok(Box::new(HullVmm::default())),
        Ok(other) => Err(SandboxError::Vm(format!(
            "HULL_HYPERVISOR={other:?}: say qemu or hull-vmm, or unset it to let hull choose"
        ))),
        Err(_) if accel == Accel::Kvm => Ok(Box::new(HullVmm::default())),
        Err(_) => Ok(Box::new(Qemu::default())),
    }
}

/// Returns the container's exit status (128 + signal when a signal ended it).
pub fn run_foreground(opts: &RunOptions) -> Result<i32> {
    let assets = GuestAssets::locate(&opts.guest_dir)?;
    let bundle = load_bundle(&opts.bundle)?;
    let dir = sandbox_dir(&opts.state_root, &opts.id);
    if dir.exists() {
        return Err(SandboxError::Vm(format!(
            "{} exists: container {} already runs in a VM (or a killed hull left it: remove it)",
            dir.display(),
            opts.id
        )));
    }
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    // Who owns the sandbox: `hull delete --force` ends this process (and with it the
    // VM, by PDEATHSIG) and removes the directory, even after a SIGKILL here.
    if let Some(start) = process_start_time(std::process::id() as i32) {
        let owner = dir.join(OWNER_FILE);
        let text = format!("{} {start}\n", std::process::id());
        std::fs::write(&owner, text).map_err(io_err("cannot write", &owner))?;
    }
    let image = dir.join("rootfs.erofs");
    if let Err(e) = crate::image::erofs_from_dir(&bundle.rootfs, &image) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    // Before any thread exists, so every thread inherits the mask and the signals
    // queue for the forwarding thread.
    let forwarded = forwarded_signals();
    forwarded
        .thread_block()
        .map_err(|e| SandboxError::Vm(format!("block signals: {e}")))?;
    let memory_mib = bundle
        .memory_limit
        .map(|b| b.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB)
        .unwrap_or(256)
        .clamp(96, 1 << 16) as u32;
    let accel = Accel::detect();
    let hypervisor = choose_hypervisor(accel)?;
    let sandbox = Sandbox::start(
        hypervisor.as_ref(),
        SandboxConfig {
            assets,
            dir,
            disks: vec![Disk {
                path: image,
                readonly: true,
                serial: ROOTFS_SERIAL.into(),
            }],
            vcpus: 1,
            memory_mib,
            accel,
            extra_cmdline: String::new(),
            boot_timeout: Duration::from_secs(120),
        },
    )?;
    tracing::debug!("guest up in {:?}", sandbox.boot_time);
    let status = run_container(&sandbox.agent, opts, &bundle, forwarded);
    let down = sandbox.shutdown(Duration::from_secs(30));
    let _ = forwarded.thread_unblock();
    let status = status?;
    down?;
    Ok(status)
}

fn run_container(
    agent: &Arc<AgentClient>,
    opts: &RunOptions,
    bundle: &Bundle,
    forwarded: SigSet,
) -> Result<i32> {
    let streams = agent.streams();
    let io = ProcessIo {
        stdin: Some(streams.stdin),
        stdout: Some(streams.stdout),
        stderr: (!bundle.terminal).then_some(streams.stderr),
        terminal: bundle.terminal,
    };
    let relays = [
        relay_output(agent, streams.stdout, false),
        relay_output(agent, streams.stderr, true),
    ];
    let create = Request::CreateContainer {
        id: opts.id.clone(),
        config: bundle.config.clone(),
        rootfs: Rootfs {
            serial: ROOTFS_SERIAL.into(),
            fstype: "erofs".into(),
        },
        io,
    };
    agent.call(create, CALL)?;
    let raw = if bundle.terminal {
        RawTerminal::enter()
    } else {
        None
    };
    if raw.is_some() {
        resize(agent, &opts.id);
    }
    agent.call(
        Request::StartContainer {
            id: opts.id.clone(),
        },
        CALL,
    )?;
    relay_stdin(agent.clone(), streams);
    forward_signals(agent.clone(), opts.id.clone(), forwarded);
    let wait = Request::Wait {
        container: opts.id.clone(),
        exec_id: None,
    };
    // No timeout worth the name: the container runs as long as it runs.
    let status = agent.call(wait, Duration::from_secs(u32::MAX as u64));
    for r in relays {
        let _ = r.join();
    }
    drop(raw);
    let status = match status? {
        Reply::Exited { status } => status,
        r => return Err(SandboxError::Vm(format!("wait answered {r:?}"))),
    };
    let delete = Request::DeleteContainer {
        id: opts.id.clone(),
        force: true,
    };
    agent.call(delete, CALL)?;
    Ok(status)
}

fn relay_output(agent: &AgentClient, stream: u32, stderr: bool) -> std::thread::JoinHandle<()> {
    let rx = agent.subscribe(stream);
    std::thread::spawn(move || {
        for chunk in rx {
            if chunk.is_empty() {
                break;
            }
            let _ = if stderr {
                std::io::stderr().write_all(&chunk)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&chunk).and_then(|()| out.flush())
            };
        }
    })
}

/// Detached: a read of the host's stdin cannot be interrupted, and the process exits
/// when the container does.
fn relay_stdin(agent: Arc<AgentClient>, streams: Streams) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match std::io::stdin().read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = agent.send_stdin(streams.stdin, &[]);
                    return;
                }
                Ok(n) => {
                    if agent.send_stdin(streams.stdin, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Signals to hull go to the container's init, as with namespace isolation; a window
/// size change goes to its terminal.
fn forward_signals(agent: Arc<AgentClient>, id: String, set: SigSet) {
    std::thread::spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        if sig == Signal::SIGWINCH {
            resize(&agent, &id);
            continue;
        }
        let request = Request::Signal {
            container: id.clone(),
            exec_id: None,
            signal: sig as i32,
            all: false,
        };
        if agent.call(request, CALL).is_err() {
            return;
        }
    });
}

fn resize(agent: &AgentClient, id: &str) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let r = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if r == 0 {
        let request = Request::ResizeTerminal {
            container: id.into(),
            exec_id: None,
            rows: ws.ws_row,
            cols: ws.ws_col,
        };
        let _ = agent.call(request, CALL);
    }
}

/// The host terminal in raw mode while the container's pty owns the line discipline.
struct RawTerminal(termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}
