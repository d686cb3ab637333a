//! The agent's one loop: poll the host's stream, SIGCHLD, SIGINT and every process's
//! output; answer requests; relay I/O. Single-threaded, because hull-runtime forks.
//!
//! SIGINT is the VMM's Ctrl-Alt-Del (the kernel sends it to PID 1 once the agent has
//! disabled CAD): the containers get SIGTERM, and the loop ends when they have all
//! exited or after `CAD_GRACE`, whichever is first.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hull_proto::{
    check_version, encode_frame, encode_message, ErrorReply, Frame, FrameDecoder, Message, Reply,
    Request, StreamId, CONTROL, PROTOCOL_VERSION,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::containers::{Key, Sandbox};
use crate::io::NearEnds;
use crate::stdin::Stdins;

/// What poll found ready.
struct Ready {
    host: bool,
    signals: bool,
    outputs: Vec<StreamId>,
    /// stdin pipes that take bytes again.
    stdins: Vec<StreamId>,
    /// A watched cgroup's memory.events changed.
    oom: bool,
}

struct Output {
    fd: File,
    stream: StreamId,
    key: Key,
}

pub struct Server {
    host: File,
    decoder: FrameDecoder,
    /// SIGCHLD and SIGINT.
    signals: SignalFd,
    sandbox: Sandbox,
    outputs: Vec<Output>,
    stdins: Stdins,
    /// Wait requests not yet answered: request id, process.
    waits: Vec<(u64, Key)>,
    /// WatchOom requests not yet answered.
    oom: crate::oom::OomWatches,
    greeted: bool,
    shutdown: bool,
    /// The host asked for shutdown and has been answered.
    shutdown_answered: bool,
    /// How long to wait for the host's hang-up after that; None where a write is with
    /// the host when it returns.
    linger: Option<Duration>,
    /// Set by Ctrl-Alt-Del: until when the containers may take to exit.
    stopping_until: Option<Instant>,
    /// Owns the host's stream once an image is attached (router.rs).
    router: Option<crate::router::Router>,
}

/// How long containers get between SIGTERM and SIGKILL after Ctrl-Alt-Del. Below
/// hull-vmm's default `shutdown_grace_ms` (3 s), so the guest is down before its VMM
/// stops waiting.
pub const CAD_GRACE: Duration = Duration::from_secs(2);

/// How long the agent waits, after answering Shutdown, for the host to hang up before
/// it powers off anyway (a host that never hangs up costs this much, no more).
pub const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

enum Outcome {
    Reply(Reply),
    /// Answered later (Wait).
    Deferred,
}

impl Server {
    pub fn new(host: OwnedFd) -> Result<Self> {
        Self::with_sandbox(host, Sandbox::new())
    }

    pub fn with_sandbox(host: OwnedFd, sandbox: Sandbox) -> Result<Self> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGINT);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .context("block SIGCHLD and SIGINT")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("signalfd")?;
        Ok(Server {
            host: File::from(host),
            decoder: FrameDecoder::new(),
            signals,
            sandbox,
            outputs: Vec::new(),
            stdins: Stdins::default(),
            waits: Vec::new(),
            oom: Default::default(),
            greeted: false,
            shutdown: false,
            shutdown_answered: false,
            linger: Some(SHUTDOWN_LINGER),
            stopping_until: None,
            router: None,
        })
    }

    /// Whether the host's stream queues writes (vsock), so that a reply needs the
    /// host's hang-up before the agent powers off.
    pub fn queued_writes(mut self, queued: bool) -> Self {
        self.linger = queued.then_some(SHUTDOWN_LINGER);
        self
    }

    /// The agent speaks first: on a virtio console the host must not send before the
    /// agent has put the tty in raw mode (the line discipline would echo and edit the
    /// bytes). Repeated until the host answers, since a console drops what the guest
    /// writes while no host is connected to its socket.
    fn hello(&mut self) -> Result<()> {
        self.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            software: format!("hull-agent {}", env!("CARGO_PKG_VERSION")),
            realtime: None,
        })
    }

    /// Returns when the host asks for shutdown or goes away.
    pub fn serve(mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        self.hello()?;
        while !self.shutdown {
            let mut timeout = if self.greeted {
                PollTimeout::NONE
            } else {
                PollTimeout::from(500u16)
            };
            if let Some(until) = self.stopping_until {
                // At most the 500 ms of the hello timeout too.
                let left = until.saturating_duration_since(Instant::now()).as_millis() + 1;
                timeout = PollTimeout::from(left.min(500) as u16);
            }
            let ready = self.wait_ready(timeout)?;
            let (host_ready, sig_ready, ready_outputs) = (ready.host, ready.signals, ready.outputs);
            // A count can grow only with a change the kernel reported, and a watch
            // can be due at once only as it comes or as a process exits: no re-reads
            // for each output chunk.
            let oom_due = ready.oom || sig_ready || host_ready;
            for stream in ready.stdins {
                self.stdins.flush(stream);
            }
            if !self.greeted && !host_ready {
                self.hello()?;
            }
            if sig_ready {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    if info.ssi_signo == Signal::SIGINT as u32 {
                        self.stop_containers();
                    }
                }
            }
            // Reap first: output drained at exit precedes the exit status.
            self.reap()?;
            // By stream, not index: reaping may have drained and removed some.
            for stream in ready_outputs {
                if let Some(i) = self.outputs.iter().position(|o| o.stream == stream) {
                    self.relay_output(i, &mut buf)?;
                }
            }
            if host_ready {
                let n = match self.host.read(&mut buf) {
                    Ok(0) => {
                        tracing::info!("the host closed the channel; shutting down");
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                    Err(e) => return Err(e).context("read from the host"),
                };
                self.decoder.push(&buf[..n]);
                while let Some(frame) = self.decoder.next_frame()? {
                    self.handle_frame(frame)?;
                }
                // Requests may have forked and raced SIGCHLD: look again.
                self.reap()?;
            }
            self.answer_waits(oom_due)?;
            self.report_consumed()?;
            if let Some(until) = self.stopping_until {
                let all_exited = self.sandbox.procs.values().all(|p| p.exit.is_some());
                if all_exited || Instant::now() >= until {
                    tracing::info!(
                        "Ctrl-Alt-Del: {}; shutting down",
                        if all_exited {
                            "every container process has exited"
                        } else {
                            "containers still running after the grace period get SIGKILL"
                        }
                    );
                    self.shutdown = true;
                }
            }
        }
        self.stop_all();
        if let (true, Some(limit)) = (self.shutdown_answered, self.linger) {
            self.wait_for_hangup(limit);
        }
        Ok(())
    }

    fn wait_ready(&self, timeout: PollTimeout) -> Result<Ready> {
        let mut fds = Vec::with_capacity(2 + self.outputs.len());
        fds.push(PollFd::new(self.host.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        for o in &self.outputs {
            fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
        }
        let waiting: Vec<(StreamId, _)> = self.stdins.waiting().collect();
        for (_, fd) in &waiting {
            fds.push(PollFd::new(*fd, PollFlags::POLLOUT));
        }
        // Only for the wake-up: answer_waits then reads every watched count.
        for fd in self.oom.fds() {
            fds.push(PollFd::new(fd, PollFlags::POLLPRI));
        }
        loop {
            match poll(&mut fds, timeout) {
                Ok(_) => break,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
            }
        }
        let ready = |f: &PollFd| !f.revents().unwrap_or(PollFlags::empty()).is_empty();
        let (output_fds, rest) = fds[2..].split_at(self.outputs.len());
        let (stdin_fds, oom_fds) = rest.split_at(waiting.len());
        let outputs = output_fds
            .iter()
            .zip(&self.outputs)
            .filter(|(f, _)| ready(f))
            .map(|(_, o)| o.stream)
            .collect();
        let stdins = stdin_fds
            .iter()
            .zip(&waiting)
            .filter(|(f, _)| ready(f))
            .map(|(_, (s, _))| *s)
            .collect();
        Ok(Ready {
            host: ready(&fds[0]),
            signals: ready(&fds[1]),
            outputs,
            stdins,
            oom: oom_fds.iter().any(ready),
        })
    }

    /// Tells the host how much of each stdin stream it may send again.
    fn report_consumed(&mut self) -> Result<()> {
        for (stream, bytes) in self.stdins.take_consumed() {
            self.send(&Message::Consumed { stream, bytes })?;
        }
        Ok(())
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        let mut wire = Vec::new();
        encode_message(msg, &mut wire);
        self.host.write_all(&wire).context("write to the host")
    }

    fn send_data(&mut self, stream: StreamId, data: &[u8]) -> Result<()> {
        let mut wire = Vec::with_capacity(data.len() + 8);
        encode_frame(stream, data, &mut wire);
        self.host.write_all(&wire).context("write to the host")
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<()> {
        if frame.stream != CONTROL {
            return self.handle_stdin(frame);
        }
        let msg = match frame.message() {
            Ok(m) => m,
            Err(e) => {
                // The framing is intact, so the conversation can go on.
                tracing::warn!("ignoring a malformed message: {e}");
                return Ok(());
            }
        };
        match msg {
            Message::Hello {
                version, realtime, ..
            } => {
                check_version(version)?;
                if let Some((secs, nanos)) = realtime {
                    crate::boot::set_clock(secs, nanos);
                }
                self.greeted = true;
            }
            Message::Request { id, request } => {
                if !self.greeted {
                    bail!("the host sent a request before its hello");
                }
                let reply = match self.dispatch(id, request) {
                    Ok(Outcome::Deferred) => return Ok(()),
                    Ok(Outcome::Reply(r)) => Ok(r),
                    Err(e) => Err(ErrorReply {
                        message: format!("{e:#}"),
                    }),
                };
                self.send(&Message::Response { id, reply })?;
            }
            Message::Response { .. } | Message::Consumed { .. } => {
                tracing::warn!("ignoring a message only the agent sends")
            }
        }
        Ok(())
    }

    fn handle_stdin(&mut self, frame: Frame) -> Result<()> {
        self.stdins.receive(frame.stream, &frame.payload);
        Ok(())
    }

    fn dispatch(&mut self, id: u64, request: Request) -> Result<Outcome> {
        let done = Ok(Outcome::Reply(Reply::Done));
        match request {
            Request::Ping => Ok(Outcome::Reply(Reply::Pong)),
            Request::CreateContainer {
                id: cid,
                config,
                rootfs,
                io,
                files,
                shares,
            } => {
                self.check_streams(io.streams())?;
                let (pid, near) = self
                    .sandbox
                    .create(&cid, &config, &rootfs, &io, &files, &shares)?;
                self.attach(near, (cid, None))?;
                Ok(Outcome::Reply(Reply::Process { pid }))
            }
            Request::Exec {
                container,
                exec_id,
                process,
                io,
            } => {
                self.check_streams(io.streams())?;
                let (pid, near) = self.sandbox.exec(&container, &exec_id, &process, &io)?;
                self.attach(near, (container, Some(exec_id)))?;
                Ok(Outcome::Reply(Reply::Process { pid }))
            }
            Request::Wait { container, exec_id } => {
                let key = (container, exec_id);
                self.sandbox.proc(&key)?;
                self.waits.push((id, key));
                Ok(Outcome::Deferred)
            }
            Request::WatchOom { container, seen } => {
                self.sandbox.proc(&(container.clone(), None))?;
                let file = self.sandbox.oom_kills_file(&container)?;
                self.oom.add(id, container, seen, &file)?;
                Ok(Outcome::Deferred)
            }
            Request::CloseStdin { container, exec_id } => {
                let key = (container, exec_id);
                self.sandbox.proc(&key)?;
                self.stdins.close_where(|k| *k == key);
                done
            }
            Request::DeleteContainer { id: cid, force } => {
                self.sandbox.delete(&cid, force)?;
                self.outputs.retain(|o| o.key.0 != cid);
                self.stdins.close_where(|k| k.0 == cid);
                done
            }
            Request::AttachImage {
                image,
                stream,
                size,
            } => {
                self.check_streams(std::iter::once(stream))?;
                self.ensure_router()?;
                let router = self.router.as_ref().context("no router")?;
                self.sandbox.images.attach(router, &image, stream, size)?;
                done
            }
            Request::Shutdown => {
                self.shutdown = true;
                self.shutdown_answered = true;
                done
            }
            other => Ok(Outcome::Reply(sandbox_request(&mut self.sandbox, other)?)),
        }
    }

    /// The router, started (and given the host's stream) on first use.
    fn ensure_router(&mut self) -> Result<()> {
        if self.router.is_none() {
            let (router, ours) = crate::router::spawn(self.host.as_fd())?;
            tracing::info!("router (pid {}) serves the host's stream", router.pid);
            self.host = File::from(ours);
            // Our writes now wait in the router: the shutdown reply needs the host's
            // hang-up before the VM powers off.
            self.linger = Some(SHUTDOWN_LINGER);
            self.router = Some(router);
        }
        Ok(())
    }

    /// Stream numbers are the host's to pick, but two processes cannot share one.
    fn check_streams(&self, streams: impl Iterator<Item = StreamId>) -> Result<()> {
        for s in streams {
            if s == CONTROL || self.stdins.contains(s) || self.outputs.iter().any(|o| o.stream == s)
            {
                bail!("stream {s} is the control stream or already in use");
            }
        }
        Ok(())
    }

    fn attach(&mut self, near: NearEnds, key: Key) -> Result<()> {
        for (fd, s) in near.inputs {
            self.stdins.insert(s, fd, key.clone())?;
        }
        for (fd, stream) in near.outputs {
            self.outputs.push(Output {
                fd: File::from(fd),
                stream,
                key: key.clone(),
            });
        }
        Ok(())
    }

    /// Reads what one output has; on end of file (or EIO, a pty whose last user is
    /// gone) sends EOF on its stream and forgets it.
    fn relay_output(&mut self, i: usize, buf: &mut [u8]) -> Result<()> {
        let r = self.outputs[i].fd.read(buf);
        let stream = self.outputs[i].stream;
        match r {
            Ok(n) if n > 0 => self.send_data(stream, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            _ => {
                self.outputs.remove(i);
                self.send_data(stream, &[])
            }
        }
    }

    fn reap(&mut self) -> Result<()> {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return Ok(()),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e).context("waitpid"),
            };
            let Some((key, proc)) = self.sandbox.by_pid(pid.as_raw()) else {
                continue;
            };
            proc.exit = Some(status);
            let key = key.clone();
            tracing::debug!("{key:?} (pid {pid}) exited with {status}");
            self.drain_outputs(&key)?;
            self.stdins.close_where(|k| *k == key);
        }
    }

    /// Everything the process wrote before exiting, then EOF on its streams.
    fn drain_outputs(&mut self, key: &Key) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut i = 0;
        while i < self.outputs.len() {
            if self.outputs[i].key != *key {
                i += 1;
                continue;
            }
            loop {
                match self.outputs[i].fd.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let s = self.outputs[i].stream;
                        self.send_data(s, &buf[..n])?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            let o = self.outputs.remove(i);
            self.send_data(o.stream, &[])?;
        }
        Ok(())
    }

    fn answer_waits(&mut self, oom_due: bool) -> Result<()> {
        let mut i = 0;
        while i < self.waits.len() {
            let exit = self.sandbox.procs.get(&self.waits[i].1).map(|p| p.exit);
            let reply = match exit {
                Some(Some(status)) => Ok(Reply::Exited { status }),
                Some(None) => {
                    i += 1;
                    continue;
                }
                None => Err(ErrorReply {
                    message: format!("{:?} was deleted before it exited", self.waits[i].1),
                }),
            };
            let (id, _) = self.waits.remove(i);
            self.send(&Message::Response { id, reply })?;
        }
        let answers = if oom_due {
            self.oom.answers(&self.sandbox.procs)
        } else {
            Vec::new()
        };
        for answer in answers {
            self.send(&answer)?;
        }
        Ok(())
    }
}

mod requests;
mod shutdown;
use requests::sandbox_request;

#[cfg(test)]
mod tests;
