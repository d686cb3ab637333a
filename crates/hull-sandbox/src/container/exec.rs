//! `exec` in a VM container. The client hands its stdio (or a pty's slave whose master
//! went to --console-socket) to the proxy with the request; the proxy relays it to
//! the agent's streams. The client then waits on the connection for the exit status,
//! passing on its signals and the terminal's size. With --detach it forks a waiter that
//! does this and reports the waiter's pid: the process engines wait on and signal, as
//! they do the exec'd process itself with runc.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hull_proto::{ProcessIo, Reply, Request};
use hull_runtime::container::Container;
use hull_runtime::state::Status;
use nix::sys::signal::Signal;
use nix::unistd::ForkResult;
use oci_spec::runtime::Process;

use super::control::{self, Control, ControlReply};
use super::preserved::{Direction, Preserved};
use super::proxy::{Shared, CALL};
use super::relay::{self, RawTerminal};
use crate::error::{Result, SandboxError};

pub struct VmExec<'a> {
    pub process: Process,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub detach: bool,
    pub preserve_fds: i32,
}

/// The exit status, or 0 once started when detached.
pub fn exec(c: &Container, req: VmExec) -> Result<i32> {
    c.require("exec", &[Status::Created, Status::Running])?;
    let preserved = super::preserved::take(req.preserve_fds)?;
    let terminal = req.process.terminal() == Some(true);
    let process = serde_json::to_string(&req.process)
        .map_err(|e| SandboxError::Vm(format!("exec: the process: {e}")))?;
    let (fds, tty, raw) = exec_stdio(terminal, &req)?;
    let msg = Control::Exec {
        process,
        terminal,
        preserved: preserved.iter().map(|p| p.direction).collect(),
    };
    let (dir, msg) = super::member::route(c, msg);
    let conn = control::connect(&dir)?;
    let borrowed: Vec<BorrowedFd> = fds
        .iter()
        .map(|f| f.as_fd())
        .chain(preserved.iter().map(|p| p.fd.as_fd()))
        .collect();
    control::send(conn.as_fd(), &msg, &borrowed)?;
    drop(fds);
    drop(preserved);
    match control::recv::<ControlReply>(conn.as_fd())? {
        Some((ControlReply::Started { .. }, _)) => {}
        Some((ControlReply::Error { message }, _)) => return Err(SandboxError::Vm(message)),
        other => {
            return Err(SandboxError::Vm(format!(
                "exec: the proxy answered {:?}",
                other.map(|o| o.0)
            )))
        }
    }
    if !req.detach {
        if let (Some(t), Some(_)) = (&tty, req.console_socket) {
            // The console pty as our terminal, so that the engine's resizes of its
            // master reach us as SIGWINCH (as the detached waiter does below). A
            // process group leader cannot start a session: its resizes are lost.
            if nix::unistd::setsid().is_ok() {
                let _ = relay::take_controlling_terminal(t.as_fd());
            }
        }
        let status = wait_exec(&conn, tty, |_| {}).status;
        drop(raw);
        return Ok(status);
    }
    // SAFETY: hull is single-threaded up to here; the child only waits.
    match unsafe { nix::unistd::fork() }.map_err(|e| SandboxError::Vm(format!("fork: {e}")))? {
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            if let Some(t) = &tty {
                let _ = relay::take_controlling_terminal(t.as_fd());
            }
            let _ = relay::stdio_to_null();
            std::process::exit(wait_exec(&conn, tty, |_| {}).status)
        }
        ForkResult::Parent { child } => {
            if let Some(p) = req.pid_file {
                hull_runtime::container::create::write_pid_file(p, child.as_raw())
                    .map_err(SandboxError::from)?;
            }
            Ok(0)
        }
    }
}

type ExecStdio = (Vec<OwnedFd>, Option<OwnedFd>, Option<RawTerminal>);

/// What the proxy relays for the exec (a pty's slave twice, our terminal, or our 0, 1
/// and 2), the terminal whose size we pass on, and our terminal in raw mode.
fn exec_stdio(terminal: bool, req: &VmExec) -> Result<ExecStdio> {
    let dup = |fd: BorrowedFd| {
        fd.try_clone_to_owned()
            .map_err(|e| SandboxError::Vm(format!("exec: dup: {e}")))
    };
    Ok(match (terminal, req.console_socket) {
        (true, Some(sock)) => {
            let slave = super::create::send_pty(sock)?;
            (
                vec![dup(slave.as_fd())?, dup(slave.as_fd())?],
                Some(slave),
                None,
            )
        }
        (true, None) if req.detach => {
            return Err(SandboxError::Vm(
                "--tty with --detach needs --console-socket to receive the pty".into(),
            ))
        }
        (true, None) => {
            let stdin = std::io::stdin();
            let fds = vec![dup(stdin.as_fd())?, dup(std::io::stdout().as_fd())?];
            (
                fds,
                Some(dup(stdin.as_fd())?),
                RawTerminal::enter(stdin.as_fd()),
            )
        }
        (false, _) => (
            vec![
                dup(std::io::stdin().as_fd())?,
                dup(std::io::stdout().as_fd())?,
                dup(std::io::stderr().as_fd())?,
            ],
            None,
            None,
        ),
    })
}

/// Waits for the exec's exit status on `conn`; 255 if the proxy went away.
/// How a process in the guest ended.
pub(super) struct Exit {
    pub status: i32,
    pub oom_kills: Option<u64>,
}

/// A member's init also gets its OOM kills as they happen, for `on_oom`.
pub(super) fn wait_exec(conn: &OwnedFd, tty: Option<OwnedFd>, mut on_oom: impl FnMut(u64)) -> Exit {
    let set = relay::passed_on();
    let blocked = set.thread_block().is_ok();
    // The size the terminal has now, read once SIGWINCH is blocked (so a change after
    // the read stays pending for the thread below): an engine that set it before this
    // process took the terminal sends no SIGWINCH for it, and the guest's pty would
    // stay 0x0 (seen in L1: `stty size` failed in `hull exec -t -d`).
    let size = tty.as_ref().and_then(|t| relay::window_size(t.as_fd()));
    if let Some((rows, cols)) = size.filter(|&(r, c)| r > 0 && c > 0) {
        let _ = control::send(conn.as_fd(), &Control::Resize { rows, cols }, &[]);
    }
    if blocked {
        if let Ok(sender) = conn.try_clone() {
            std::thread::spawn(move || loop {
                let Ok(sig) = set.wait() else { return };
                let msg = match (sig, &tty) {
                    (Signal::SIGWINCH, Some(t)) => match relay::window_size(t.as_fd()) {
                        Some((rows, cols)) => Control::Resize { rows, cols },
                        None => continue,
                    },
                    (Signal::SIGWINCH, None) => continue,
                    (s, _) => Control::Signal { signal: s as i32 },
                };
                if control::send(sender.as_fd(), &msg, &[]).is_err() {
                    return;
                }
            });
        }
    }
    loop {
        match control::recv::<ControlReply>(conn.as_fd()) {
            Ok(Some((ControlReply::Exited { status, oom_kills }, _))) => {
                return Exit { status, oom_kills }
            }
            Ok(Some((ControlReply::OomKills { count }, _))) => on_oom(count),
            Ok(Some(_)) => continue,
            _ => {
                return Exit {
                    status: 255,
                    oom_kills: None,
                }
            }
        }
    }
}

/// An exec as the client asked for it over the control socket.
pub(super) struct ExecRequest {
    /// The container it runs in (the proxy's own, or a pod member's).
    pub container: String,
    pub process: String,
    pub terminal: bool,
    pub preserved: Vec<Direction>,
}

/// The proxy's side of one exec (see `serve_process`).
pub(super) fn serve_exec(shared: &Arc<Shared>, conn: OwnedFd, req: ExecRequest, fds: Vec<OwnedFd>) {
    let exec_id = shared.exec_id();
    let key = (req.container.clone(), Some(exec_id.clone()));
    let agent = shared.agent.clone();
    let (container, process) = (req.container, req.process);
    let start = move |io: ProcessIo| match agent.call(
        Request::Exec {
            container,
            exec_id,
            process,
            io,
        },
        CALL,
    ) {
        Ok(Reply::Process { pid }) => Ok(pid),
        Ok(r) => Err(SandboxError::Vm(format!("exec: the agent answered {r:?}"))),
        Err(e) => Err(e),
    };
    serve_process(shared, conn, key, req.terminal, req.preserved, fds, start);
}

/// A process in the guest as the proxy relays it for one client connection (an exec,
/// or a pod member's init for its stand-in): the fds that came with the request
/// relayed to its streams, `start` (which creates it), its pid back, then resizes and
/// signals from the client, and its exit status back. A client that goes away first
/// takes the process with it (SIGKILL): it was the process's stand-in on the host.
/// The exit status, or None when it never started (the client got the error).
pub(super) fn serve_process(
    shared: &Arc<Shared>,
    conn: OwnedFd,
    key: (String, Option<String>),
    terminal: bool,
    preserved: Vec<Direction>,
    fds: Vec<OwnedFd>,
    start: impl FnOnce(ProcessIo) -> Result<i32>,
) -> Option<i32> {
    let fail = |conn: &OwnedFd, message: String| {
        let _ = control::send(conn.as_fd(), &ControlReply::Error { message }, &[]);
        None
    };
    let stdio = if terminal { 2 } else { 3 };
    let wanted = stdio + preserved.len();
    if fds.len() != wanted {
        return fail(
            &conn,
            format!("{} fds came with the request, not {wanted}", fds.len()),
        );
    }
    let agent = shared.agent.clone();
    let (io, mut plumbed) = match plumb(&agent, terminal, preserved, fds) {
        Ok(p) => p,
        Err(e) => return fail(&conn, e.to_string()),
    };
    let streams = plumbed.streams;
    let pid = match start(io) {
        Ok(pid) => pid,
        Err(e) => {
            for s in [streams.stdout, streams.stderr] {
                agent.unsubscribe(s);
            }
            return fail(&conn, e.to_string());
        }
    };
    // Stopped once the process has exited: they would hold the host's fds for as
    // long as the container runs.
    let mut inputs = plumbed.relays.start_inputs(&agent);
    if let Some(i) = plumbed.input.take() {
        inputs.push(relay::into_agent(agent.clone(), streams.stdin, i));
    }
    if control::send(conn.as_fd(), &ControlReply::Started { pid }, &[]).is_err() {
        tracing::debug!("{key:?}: the client left before it started");
    }
    // After Started: the stand-in takes nothing else before it.
    if key.1.is_none() {
        if let Ok(to_stand_in) = conn.try_clone() {
            follow_oom(agent.clone(), key.0.clone(), move |count| {
                let _ = control::send(to_stand_in.as_fd(), &ControlReply::OomKills { count }, &[]);
            });
        }
    }
    let exited = Arc::new(AtomicBool::new(false));
    if let Ok(reader) = conn.try_clone() {
        let (shared, key, exited) = (shared.clone(), key.clone(), exited.clone());
        std::thread::spawn(move || process_requests(&shared, &key, reader, &exited));
    }
    let wait = Request::Wait {
        container: key.0.clone(),
        exec_id: key.1.clone(),
    };
    let status = match agent.call(wait, Duration::from_secs(u32::MAX as u64)) {
        Ok(Reply::Exited { status }) => status,
        _ => 255,
    };
    exited.store(true, Ordering::SeqCst);
    // A container's init: its cgroup in the guest stays until the container is deleted.
    let oom_kills = match &key.1 {
        None => guest_oom_kills(&agent, &key.0),
        Some(_) => None,
    };
    drop(inputs);
    for o in plumbed.outputs {
        let _ = o.join();
    }
    let reply = ControlReply::Exited { status, oom_kills };
    let _ = control::send(conn.as_fd(), &reply, &[]);
    Some(status)
}

/// Hands `report` each new count of the OOM kills in `container`'s guest cgroup while
/// its init runs (the agent answers WatchOom as the count grows, and last when the init
/// exits), from a thread of its own: the proxy keeps its containers' counts current on
/// the host, where `hull events` and the shim read them, and nothing polls the guest.
pub(super) fn follow_oom(
    agent: Arc<crate::client::AgentClient>,
    container: String,
    mut report: impl FnMut(u64) + Send + 'static,
) {
    let name = container.clone();
    let spawned = std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || {
            let mut seen = 0;
            loop {
                let watch = Request::WatchOom {
                    container: container.clone(),
                    seen,
                };
                match agent.call(watch, Duration::from_secs(u32::MAX as u64)) {
                    Ok(Reply::OomKills { count, exited }) => {
                        if count > seen {
                            seen = count;
                            report(count);
                        }
                        if exited {
                            return;
                        }
                    }
                    Ok(r) => {
                        tracing::warn!("{container}: WatchOom answered {r:?}");
                        return;
                    }
                    // The VM went, or the container with it.
                    Err(e) => {
                        tracing::debug!("{container}: no more OOM kills to follow: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("{name}: its OOM kills will be known at its exit only: {e}");
    }
}

/// The OOM kills the guest's cgroup of `container` has counted.
pub(super) fn guest_oom_kills(agent: &crate::client::AgentClient, container: &str) -> Option<u64> {
    let stats = Request::Stats {
        container: container.into(),
    };
    match agent.call(stats, Duration::from_secs(10)) {
        Ok(Reply::Stats { oom_kills, .. }) => Some(oom_kills),
        _ => None,
    }
}

/// A process's relays, set up before it exists.
struct Plumbed {
    streams: crate::client::Streams,
    outputs: Vec<std::thread::JoinHandle<()>>,
    relays: super::preserved::Relays,
    input: Option<OwnedFd>,
}

/// Streams and relays for the fds that came with a request: stdin, stdout, stderr
/// (a terminal: its slave twice), then the preserved ones.
fn plumb(
    agent: &Arc<crate::client::AgentClient>,
    terminal: bool,
    preserved: Vec<Direction>,
    fds: Vec<OwnedFd>,
) -> Result<(ProcessIo, Plumbed)> {
    let streams = agent.streams();
    let mut fds = fds.into_iter();
    let (input, output, error) = (
        fds.next(),
        fds.next(),
        (!terminal).then(|| fds.next()).flatten(),
    );
    let preserved = fds
        .zip(preserved)
        .map(|(fd, direction)| Preserved { fd, direction })
        .collect();
    let (extra, mut relays) = super::preserved::plan(agent, preserved)?;
    let mut outputs = std::mem::take(&mut relays.outputs);
    if let Some(o) = output {
        outputs.push(relay::out_of_agent(agent.subscribe(streams.stdout), o));
    }
    if let Some(e) = error {
        outputs.push(relay::out_of_agent(agent.subscribe(streams.stderr), e));
    }
    let io = ProcessIo {
        stdin: Some(streams.stdin),
        stdout: Some(streams.stdout),
        stderr: (!terminal).then_some(streams.stderr),
        terminal,
        extra,
    };
    let plumbed = Plumbed {
        streams,
        outputs,
        relays,
        input,
    };
    Ok((io, plumbed))
}

fn process_requests(
    shared: &Shared,
    key: &(String, Option<String>),
    conn: OwnedFd,
    exited: &AtomicBool,
) {
    let (container, exec_id) = (key.0.clone(), key.1.clone());
    loop {
        let request = match control::recv::<Control>(conn.as_fd()) {
            Ok(Some((Control::Resize { rows, cols }, _))) => Request::ResizeTerminal {
                container: container.clone(),
                exec_id: exec_id.clone(),
                rows,
                cols,
            },
            Ok(Some((Control::Signal { signal }, _))) => Request::Signal {
                container: container.clone(),
                exec_id: exec_id.clone(),
                signal,
                all: false,
            },
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                if !exited.load(Ordering::SeqCst) {
                    let _ = shared.agent.call(
                        Request::Signal {
                            container: container.clone(),
                            exec_id: exec_id.clone(),
                            signal: libc::SIGKILL,
                            // A pod member's init: all of its container.
                            all: exec_id.is_none(),
                        },
                        CALL,
                    );
                }
                return;
            }
        };
        let _ = shared.agent.call(request, CALL);
    }
}
