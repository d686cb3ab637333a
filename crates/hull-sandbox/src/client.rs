//! The host's end of hull-proto: one connection to the agent, a reader thread that
//! routes responses to their callers and stream data to its consumers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hull_proto::{
    check_version, encode_frame, encode_message, FrameDecoder, Message, ProtoError, Reply, Request,
    StreamId, CONTROL, PROTOCOL_VERSION, STDIN_WINDOW,
};

use crate::error::{Result, SandboxError};
use crate::hypervisor::Transport;

type Pending = Arc<Mutex<HashMap<u64, Sender<std::result::Result<Reply, String>>>>>;
type Sinks = Arc<Mutex<HashMap<StreamId, Sender<Vec<u8>>>>>;

/// Stdin bytes sent and not yet reported consumed by the agent, per stream; `None`
/// once the connection is gone. Bounded by `STDIN_WINDOW` (hull-proto).
#[derive(Default)]
struct InFlight {
    bytes: Mutex<Option<HashMap<StreamId, u64>>>,
    changed: Condvar,
}

impl InFlight {
    fn new() -> Arc<InFlight> {
        let f = InFlight::default();
        *f.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
        Arc::new(f)
    }

    /// Waits until `len` more bytes fit in `stream`'s window, then counts them.
    fn reserve(&self, stream: StreamId, len: u64) -> Result<()> {
        let mut guard = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Some(map) = guard.as_mut() else {
                return Err(SandboxError::Vm(
                    "the agent went away while stdin was being sent".into(),
                ));
            };
            let used = map.entry(stream).or_default();
            if *used == 0 || *used + len <= STDIN_WINDOW {
                *used += len;
                return Ok(());
            }
            guard = self.changed.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn consumed(&self, stream: StreamId, bytes: u64) {
        if let Some(map) = self
            .bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            if let Some(used) = map.get_mut(&stream) {
                *used = used.saturating_sub(bytes);
            }
        }
        self.changed.notify_all();
    }

    /// The stream ended: what the agent reports of it later changes nothing.
    fn forget(&self, stream: StreamId) {
        if let Some(map) = self
            .bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            map.remove(&stream);
        }
    }

    fn gone(&self) {
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.changed.notify_all();
    }
}

pub struct AgentClient {
    writer: Mutex<UnixStream>,
    pending: Pending,
    sinks: Sinks,
    in_flight: Arc<InFlight>,
    next_id: AtomicU64,
    next_stream: AtomicU32,
    /// The agent's Hello ("hull-agent 0.1.0").
    pub agent: String,
}

/// An exclusive range of stream numbers for one process's stdin, stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: StreamId,
    pub stdout: StreamId,
    pub stderr: StreamId,
}

impl AgentClient {
    /// Connects to the socket the hypervisor listens on and says hello; the agent
    /// answers once the guest has booted, so `timeout` covers the boot.
    pub fn connect(transport: &Transport, timeout: Duration) -> Result<AgentClient> {
        Self::connect_while(transport, timeout, || true)
    }

    /// `connect`, giving up as soon as `vmm_alive` says the VMM has gone: a guest that
    /// died during boot should not cost the whole timeout.
    pub fn connect_while(
        transport: &Transport,
        timeout: Duration,
        mut vmm_alive: impl FnMut() -> bool,
    ) -> Result<AgentClient> {
        let deadline = Instant::now() + timeout;
        let gone = || SandboxError::Vm("the VMM exited before the agent answered".into());
        // Until the VMM (serial) or the agent (vsock) listens, connecting fails.
        // A hybrid vsock refuses CONNECT while the agent does not listen yet; that
        // answer says more than the refused connections after it.
        let mut answer = None;
        let stream = loop {
            let e = match open_stream(transport) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Other => answer.insert(e).kind(),
                Err(e) => {
                    if Instant::now() >= deadline {
                        let e = answer.unwrap_or(e);
                        return Err(SandboxError::Vm(format!(
                            "cannot connect to the agent over {transport:?}: {e}"
                        )));
                    }
                    e.kind()
                }
            };
            if Instant::now() >= deadline {
                if let Some(a) = answer.take() {
                    return Err(SandboxError::Vm(format!(
                        "cannot connect to the agent over {transport:?}: {a}"
                    )));
                }
            }
            tracing::trace!("agent not reachable yet: {e:?}");
            if !vmm_alive() {
                return Err(gone());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut writer = stream
            .try_clone()
            .map_err(|e| SandboxError::Vm(format!("agent socket: {e}")))?;

        let (hello_tx, hello_rx) = channel();
        let pending: Pending = Arc::default();
        let sinks: Sinks = Arc::default();
        let in_flight = InFlight::new();
        let routes = Routes {
            hello: hello_tx,
            pending: pending.clone(),
            sinks: sinks.clone(),
            in_flight: in_flight.clone(),
        };
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(stream, routes))
            .map_err(|e| SandboxError::Vm(format!("spawn reader: {e}")))?;
        let hello = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match hello_rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(Ok((version, software))) => {
                    break check_version(version)
                        .map(|()| software)
                        .map_err(SandboxError::from)
                }
                Ok(Err(e)) => break Err(SandboxError::Vm(e)),
                Err(_) if left.is_zero() => {
                    break Err(SandboxError::Timeout {
                        what: "the agent's hello (did the guest boot? see its console log)".into(),
                        secs: timeout.as_secs(),
                    })
                }
                Err(_) if !vmm_alive() => break Err(gone()),
                Err(_) => {}
            }
        };
        // The agent spoke first (it may have to set up its end); now ours, with the
        // clock the guest takes.
        let hello = hello.and_then(|software| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let ours = Message::Hello {
                version: PROTOCOL_VERSION,
                software: format!("hull {}", env!("CARGO_PKG_VERSION")),
                realtime: Some((now.as_secs() as i64, now.subsec_nanos())),
            };
            let mut wire = Vec::new();
            encode_message(&ours, &mut wire);
            writer.write_all(&wire).map_err(ProtoError::from)?;
            Ok(software)
        });
        let agent = match hello {
            Ok(a) => a,
            Err(e) => {
                // Ends the reader thread too.
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return Err(e);
            }
        };
        Ok(AgentClient {
            writer: Mutex::new(writer),
            pending,
            sinks,
            in_flight,
            next_id: AtomicU64::new(1),
            next_stream: AtomicU32::new(1),
            agent,
        })
    }

    /// Sends `request` and waits up to `timeout` for its reply.
    pub fn call(&self, request: Request, timeout: Duration) -> Result<Reply> {
        let op = op_name(&request);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut wire = Vec::new();
        encode_message(&Message::Request { id, request }, &mut wire);
        self.write(&wire)?;
        match rx.recv_timeout(timeout) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(message)) => Err(SandboxError::Refused { op, message }),
            Err(RecvTimeoutError::Timeout) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(SandboxError::Timeout {
                    what: format!("the agent's answer to {op}"),
                    secs: timeout.as_secs(),
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(SandboxError::Vm(format!(
                "the agent went away before answering {op}"
            ))),
        }
    }

    /// Three fresh stream numbers; subscribe to the outputs before creating the process.
    pub fn streams(&self) -> Streams {
        let base = self.next_stream.fetch_add(3, Ordering::Relaxed);
        Streams {
            stdin: base,
            stdout: base + 1,
            stderr: base + 2,
        }
    }

    /// One fresh stream number.
    pub fn stream(&self) -> StreamId {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Data arriving on `stream`; an empty chunk is its end.
    pub fn subscribe(&self, stream: StreamId) -> Receiver<Vec<u8>> {
        let (tx, rx) = channel();
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, tx);
        rx
    }

    /// Writes to a process's stdin; `data` empty closes it. Blocks while the agent
    /// holds a window's worth of this stream that the process has not read.
    pub fn send_stdin(&self, stream: StreamId, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            self.in_flight.forget(stream);
            let mut wire = Vec::with_capacity(8);
            encode_frame(stream, data, &mut wire);
            return self.write(&wire);
        }
        for chunk in data.chunks(STDIN_WINDOW as usize / 4) {
            self.in_flight.reserve(stream, chunk.len() as u64)?;
            let mut wire = Vec::with_capacity(chunk.len() + 8);
            encode_frame(stream, chunk, &mut wire);
            self.write(&wire)?;
        }
        Ok(())
    }

    /// Writes `data` on `stream` as it is, outside any stdin window: a block device's
    /// replies, which the agent's router hands straight to the kernel (block.rs).
    pub fn send_data(&self, stream: StreamId, data: &[u8]) -> Result<()> {
        let mut wire = Vec::with_capacity(data.len() + 16);
        encode_frame(stream, data, &mut wire);
        self.write(&wire)
    }

    /// Stops delivering `stream`'s data: its receiver sees the end.
    pub fn unsubscribe(&self, stream: StreamId) {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stream);
    }

    /// Closes the channel both ways. After the reply to Shutdown this tells the agent
    /// that the reply arrived, so it may power off.
    pub fn hang_up(&self) {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
    }

    fn write(&self, wire: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(wire).map_err(|e| SandboxError::Proto(e.into()))
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        // Ends the reader thread: it sees EOF.
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Collects everything a stream carries until its end, or fails after `timeout`.
pub fn read_to_end(rx: &Receiver<Vec<u8>>, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) if chunk.is_empty() => return Ok(out),
            Ok(chunk) => out.extend(chunk),
            Err(RecvTimeoutError::Disconnected) => return Ok(out),
            Err(RecvTimeoutError::Timeout) => {
                return Err(SandboxError::Timeout {
                    what: "the end of a process's output".into(),
                    secs: timeout.as_secs(),
                })
            }
        }
    }
}

type HelloTx = Sender<std::result::Result<(u32, String), String>>;

/// Where the reader thread delivers what the agent sends.
struct Routes {
    hello: HelloTx,
    pending: Pending,
    sinks: Sinks,
    in_flight: Arc<InFlight>,
}

fn read_loop(mut stream: UnixStream, routes: Routes) {
    let Routes {
        hello,
        pending,
        sinks,
        in_flight,
    } = routes;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let fail = |why: String| {
        let _ = hello.send(Err(why.clone()));
        // Dropping the senders wakes every caller with "went away".
        pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
        sinks.lock().unwrap_or_else(|e| e.into_inner()).clear();
        in_flight.gone();
        tracing::debug!("agent reader: {why}");
    };
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return fail("the agent closed the connection".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("read: {e}")),
        };
        decoder.push(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return fail(e.to_string()),
            };
            if frame.stream != CONTROL {
                let mut sinks = sinks.lock().unwrap_or_else(|e| e.into_inner());
                let eof = frame.is_eof();
                if let Some(tx) = sinks.get(&frame.stream) {
                    let _ = tx.send(frame.payload);
                }
                if eof {
                    sinks.remove(&frame.stream);
                }
                continue;
            }
            match frame.message() {
                Ok(Message::Hello {
                    version, software, ..
                }) => {
                    let _ = hello.send(Ok((version, software)));
                }
                Ok(Message::Response { id, reply }) => {
                    let tx = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(reply.map_err(|e| e.message));
                    }
                }
                Ok(Message::Consumed { stream, bytes }) => in_flight.consumed(stream, bytes),
                Ok(Message::Request { .. }) => tracing::warn!("the agent sent a request"),
                Err(e) => tracing::warn!("malformed message from the agent: {e}"),
            }
        }
    }
}

/// A connected byte stream to the agent. A vsock socket is held in a UnixStream: both
/// are stream sockets, and only read, write and shutdown are used.
fn open_stream(transport: &Transport) -> std::io::Result<UnixStream> {
    match transport {
        Transport::Serial { socket } => UnixStream::connect(socket),
        Transport::Vsock { cid, port } => {
            use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            connect(fd.as_raw_fd(), &VsockAddr::new(*cid, *port))?;
            Ok(UnixStream::from(fd))
        }
        Transport::HybridVsock { socket, port } => {
            let mut s = UnixStream::connect(socket)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            // Byte by byte: nothing past the newline may be consumed here.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.len() < 64 {
                s.read_exact(&mut b)?;
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            if !line.starts_with(b"OK ") {
                return Err(std::io::Error::other(format!(
                    "hybrid vsock answered {:?} to CONNECT {port}",
                    String::from_utf8_lossy(&line)
                )));
            }
            Ok(s)
        }
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Ping => "ping",
        Request::CreateContainer { .. } => "create_container",
        Request::StartContainer { .. } => "start_container",
        Request::Exec { .. } => "exec",
        Request::Signal { .. } => "signal",
        Request::Wait { .. } => "wait",
        Request::Stats { .. } => "stats",
        Request::WatchOom { .. } => "watch_oom",
        Request::ResizeTerminal { .. } => "resize_terminal",
        Request::CloseStdin { .. } => "close_stdin",
        Request::DeleteContainer { .. } => "delete_container",
        Request::Pids { .. } => "pids",
        Request::Pause { .. } => "pause",
        Request::Resume { .. } => "resume",
        Request::Update { .. } => "update",
        Request::ConfigureNetwork { .. } => "configure_network",
        Request::AttachImage { .. } => "attach_image",
        Request::DetachImage { .. } => "detach_image",
        Request::Shutdown => "shutdown",
    }
}

/// For the fuzz targets and their replay test (crates/hull-fuzz) only: `bytes` as the
/// agent's side of the connection, read by the host's reader exactly as `connect` wires
/// it, with four requests (ids 0 to 3) awaiting replies, four output streams (1 to 4)
/// subscribed and stdin in flight on streams 1 and 2. Returns how many replies and
/// stream chunks reached their receivers. Not an API: hidden, and may change.
#[doc(hidden)]
pub fn fuzz_agent_bytes(bytes: &[u8]) -> std::io::Result<usize> {
    let (mut agent, host) = UnixStream::pair()?;
    let (hello, hello_rx) = channel();
    let pending: Pending = Arc::default();
    let sinks: Sinks = Arc::default();
    let mut replies = Vec::new();
    let mut chunks = Vec::new();
    for n in 0..4 {
        let (tx, rx) = channel();
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, tx);
        replies.push(rx);
        let (tx, rx) = channel();
        let stream = n as StreamId + 1;
        sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream, tx);
        chunks.push(rx);
    }
    let in_flight = InFlight::new();
    for stream in [1, 2] {
        in_flight
            .reserve(stream, STDIN_WINDOW / 2)
            .map_err(std::io::Error::other)?;
    }
    let routes = Routes {
        hello,
        pending,
        sinks,
        in_flight: in_flight.clone(),
    };
    // A writer thread: more than the socket buffer would block a write done here.
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = agent.write_all(&bytes);
    });
    read_loop(host, routes);
    let _ = writer.join();
    // The connection ended: whoever waits on stdin's window must be told so.
    if in_flight.reserve(1, 1).is_ok() {
        return Err(std::io::Error::other("stdin window still open after EOF"));
    }
    let hellos = hello_rx.try_iter().count();
    let replies: usize = replies.iter().map(|r| r.try_iter().count()).sum();
    let chunks: usize = chunks.iter().map(|r| r.try_iter().count()).sum();
    Ok(hellos + replies + chunks)
}
