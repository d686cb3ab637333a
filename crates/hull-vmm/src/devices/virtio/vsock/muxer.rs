//! The host side of hybrid vsock: the listening Unix socket, the host streams waiting
//! to say `CONNECT <port>`, the connections, and one epoll set over all of their fds.
//!
//! The epoll set is level-triggered and holds only interests that make progress when
//! served, so its fd is readable exactly when host work is pending: the listener
//! (accepts until EAGAIN), streams owing a CONNECT line (read until EAGAIN), a
//! connection's EPOLLIN only while the guest has credit and the device has not yet
//! noted the stream readable, EPOLLOUT only while guest bytes wait for the host. A
//! stream that hangs up leaves the set (EPOLLHUP cannot be masked).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::host_socket::{listen, ListenError};
use super::connection::{Close, ConnKey, Connection};
use super::packet::*;
use super::{unix, VsockError};

/// Connections at once; a REQUEST beyond gets an RST, a CONNECT beyond a closed stream.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host streams accepted but not yet established (no CONNECT line yet, or REQUEST not
/// answered); beyond, new host streams are closed at once.
pub const MAX_PENDING_HOST: usize = 64;
/// `CONNECT 4294967295\n` is 19 bytes; a longer line is not one.
pub const MAX_CONNECT_LINE: usize = 32;
/// RSTs waiting for rx buffers. At half of it the device stops taking tx packets
/// (each can cost one RST) until the guest gives rx buffers; at the limit an RST is
/// dropped (only host-side hang-ups can get there).
const MAX_RST_QUEUE: usize = 2 * MAX_CONNECTIONS;
const TX_STALL_RSTS: usize = MAX_CONNECTIONS;
/// Host-initiated connections get local ports from here up (as Firecracker does), away
/// from the ports a guest is likely to connect to.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;
/// The eventfd by which a reset on a vCPU thread hands closing to the VMM thread.
const CLOSING_TOKEN: u64 = u64::MAX;

enum Owner {
    /// A host stream that has not finished its CONNECT line.
    Unannounced,
    Conn(ConnKey),
}

struct Unannounced {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    next_token: u64,
    owners: HashMap<u64, Owner>,
    unannounced: HashMap<u64, Unannounced>,
    conns: HashMap<ConnKey, Connection>,
    rx_list: VecDeque<ConnKey>,
    rsts: VecDeque<Header>,
    next_local_port: u32,
    /// Connections a reset ended, closed by the next `host_events` (on the VMM thread:
    /// a reset runs on the vCPU thread that wrote the status register, whose allowlist
    /// has no close), which `closing_event` wakes.
    closing: Vec<Connection>,
    closing_event: EventFd,
    /// The guest driver is running: only then are connections made.
    pub active: bool,
    pub max_connections: usize,
}

impl Muxer {
    pub fn new(guest_cid: u64, path: &Path) -> Result<Muxer, VsockError> {
        let (listener, epoll) = listen(path, LISTENER_TOKEN).map_err(|e| match e {
            ListenError::Bind(source) => VsockError::Bind {
                path: path.to_owned(),
                source,
            },
            ListenError::Setup(source) => VsockError::Epoll(source),
        })?;
        // From here on the path is ours: remove it if the rest fails.
        let cleanup = |source| {
            let _ = std::fs::remove_file(path);
            VsockError::Epoll(source)
        };
        let closing_event = EventFd::new(EFD_NONBLOCK).map_err(cleanup)?;
        let ev = EpollEvent::new(EventSet::IN, CLOSING_TOKEN);
        epoll
            .ctl(ControlOperation::Add, closing_event.as_raw_fd(), ev)
            .map_err(cleanup)?;
        Ok(Muxer {
            guest_cid,
            path: path.to_owned(),
            listener,
            epoll,
            next_token: LISTENER_TOKEN + 1,
            owners: HashMap::new(),
            unannounced: HashMap::new(),
            conns: HashMap::new(),
            rx_list: VecDeque::new(),
            rsts: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            closing: Vec::new(),
            closing_event,
            active: false,
            max_connections: MAX_CONNECTIONS,
        })
    }

    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The driver reset the device: every connection goes (their host streams close).
    pub fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            self.owners.remove(&c.token);
            self.closing.push(c);
        }
        if !self.closing.is_empty() {
            let _ = self.closing_event.write(1);
        }
        self.rx_list.clear();
        self.rsts.clear();
    }

    /// Whether anything waits for an rx buffer.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_list.is_empty()
    }

    /// Whether tx processing should wait for the guest to take RSTs.
    pub fn tx_stalled(&self) -> bool {
        self.rsts.len() >= TX_STALL_RSTS
    }

    /// Serves every host fd that is ready, without blocking.
    pub fn host_events(&mut self) -> Result<(), VsockError> {
        let mut events = [EpollEvent::default(); 32];
        // Bounded rounds: a busy host cannot keep the caller here forever; what is left
        // keeps the (level-triggered) fd readable.
        for _ in 0..8 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VsockError::Epoll(e)),
            };
            for ev in &events[..n] {
                let set = EventSet::from_bits_truncate(ev.events());
                match ev.data() {
                    LISTENER_TOKEN => self.accept(),
                    CLOSING_TOKEN => {
                        let _ = self.closing_event.read();
                        self.closing.clear();
                    }
                    token => match self.owners.get(&token) {
                        Some(Owner::Unannounced) => self.read_connect_line(token),
                        Some(&Owner::Conn(key)) => self.conn_event(key, set),
                        // Its owner went earlier in this batch.
                        None => {}
                    },
                }
            }
            if n < events.len() {
                break;
            }
        }
        Ok(())
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn pending_host(&self) -> usize {
        self.unannounced.len() + self.conns.values().filter(|c| c.host_initiated).count()
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = ?self.path, "virtio-vsock: accept: {e}");
                    return;
                }
            };
            if !self.active || self.pending_host() >= MAX_PENDING_HOST {
                tracing::debug!(
                    active = self.active,
                    "virtio-vsock: host connection refused (guest not running or too many pending)"
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("virtio-vsock: host stream: {e}");
                continue;
            }
            let token = self.token();
            let ev = EpollEvent::new(EventSet::IN, token);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
            {
                tracing::warn!("virtio-vsock: epoll add: {e}");
                continue;
            }
            self.owners.insert(token, Owner::Unannounced);
            let line = Vec::with_capacity(MAX_CONNECT_LINE);
            self.unannounced.insert(token, Unannounced { stream, line });
            // The line is usually there already.
            self.read_connect_line(token);
        }
    }

    /// Reads the CONNECT line a byte at a time: nothing after the newline is the
    /// device's to consume.
    fn read_connect_line(&mut self, token: u64) {
        let Some(u) = self.unannounced.get_mut(&token) else {
            return;
        };
        let mut b = [0u8; 1];
        let port = loop {
            match u.stream.read(&mut b) {
                Ok(0) => break Err("EOF before the end of the line"),
                Ok(_) if b[0] == b'\n' => break parse_connect(&u.line),
                Ok(_) if u.line.len() >= MAX_CONNECT_LINE => break Err("line too long"),
                Ok(_) => u.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Err("read error"),
            }
        };
        self.owners.remove(&token);
        let Some(u) = self.unannounced.remove(&token) else {
            return;
        };
        let port = match port {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!("virtio-vsock: bad CONNECT from the host ({why}); closed");
                return;
            }
        };
        if !self.active || self.conns.len() >= self.max_connections {
            tracing::debug!(
                port,
                "virtio-vsock: CONNECT refused: guest not running or too many connections"
            );
            return;
        }
        let Some(local_port) = self.free_local_port() else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let conn = Connection::host_initiated(u.stream, key, self.guest_cid, token);
        self.owners.insert(token, Owner::Conn(key));
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    fn free_local_port(&mut self) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this ends within that many + 1.
        for _ in 0..=self.conns.len() {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return Some(p);
            }
        }
        None
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            c.host_hung_up();
        }
        if set.contains(EventSet::IN) {
            c.readable = true;
        }
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            if let Err(e) = c.flush() {
                tracing::debug!(?key, "virtio-vsock: host stream: {e}");
                c.done = Some(Close::Rst);
            }
        }
        if c.host_hup && !c.established {
            // The host gave up before the guest answered: tell the guest if it was
            // asked.
            c.done = Some(if c.wants_rx() {
                Close::Silent
            } else {
                Close::Rst
            });
        }
        self.refresh(key);
    }

    /// After anything happened to a connection: remove it if done, else bring its epoll
    /// interest and rx-list membership up to date.
    fn refresh(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(close) = c.done {
            self.remove(key, close);
            return;
        }
        let fd = c.stream.as_raw_fd();
        if c.host_hup {
            if c.interest.take().is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        } else {
            let want = c.desired_interest();
            if c.interest != Some(want) {
                let ev = EpollEvent::new(EventSet::from_bits_truncate(want), c.token);
                match self.epoll.ctl(ControlOperation::Modify, fd, ev) {
                    Ok(()) => c.interest = Some(want),
                    Err(e) => {
                        tracing::warn!(?key, "virtio-vsock: epoll modify: {e}");
                        self.remove(key, Close::Rst);
                        return;
                    }
                }
            }
        }
        if c.wants_rx() && !c.in_rx_list {
            c.in_rx_list = true;
            self.rx_list.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey, close: Close) {
        if let Some(c) = self.conns.remove(&key) {
            self.owners.remove(&c.token);
            // Dropping the stream closes it: the host reads EOF, and the fd leaves the
            // epoll set.
            if close == Close::Rst {
                self.push_rst(Header {
                    src_cid: HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    ..Header::default()
                });
            }
        }
    }

    fn push_rst(&mut self, mut hdr: Header) {
        if self.rsts.len() >= MAX_RST_QUEUE {
            tracing::debug!("virtio-vsock: RST queue full; RST dropped");
            return;
        }
        hdr.len = 0;
        hdr.type_ = TYPE_STREAM;
        hdr.op = OP_RST;
        hdr.flags = 0;
        hdr.buf_alloc = 0;
        hdr.fwd_cnt = 0;
        self.rsts.push_back(hdr);
    }

    /// Answers a guest packet with an RST (never an RST with an RST: two devices must
    /// not ping-pong).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        self.push_rst(Header {
            src_cid: hdr.dst_cid,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            ..Header::default()
        });
    }

    fn key_of(hdr: &Header) -> ConnKey {
        ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        }
    }

    /// A tx packet whose header was complete but whose body was not acceptable: the
    /// stream it belongs to cannot go on.
    pub fn guest_bad_packet(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = Self::key_of(hdr);
        if self.conns.contains_key(&key) {
            self.remove(key, Close::Silent);
        }
        self.reply_rst(hdr);
    }

    /// A well-formed tx packet.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            // Not this guest's address: nobody to answer.
            tracing::debug!(
                src_cid = hdr.src_cid,
                "virtio-vsock: packet with a foreign src_cid dropped"
            );
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            tracing::debug!(
                dst_cid = hdr.dst_cid,
                type_ = hdr.type_,
                "virtio-vsock: packet not for a host stream; reset"
            );
            return self.reply_rst(hdr);
        }
        let key = Self::key_of(hdr);
        if hdr.op == OP_REQUEST {
            return self.guest_request(key, hdr);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                tracing::debug!(?key, op = hdr.op, "virtio-vsock: packet for no connection");
            }
            return self.reply_rst(hdr);
        };
        let result = match hdr.op {
            OP_RESPONSE if c.host_initiated && !c.wants_rx() => c.guest_response(hdr),
            OP_RST => {
                c.done = Some(Close::Silent);
                Ok(())
            }
            OP_SHUTDOWN => {
                c.update_peer_credit(hdr);
                c.guest_shutdown(hdr.flags);
                Ok(())
            }
            OP_RW => {
                c.update_peer_credit(hdr);
                c.guest_rw(payload)
            }
            OP_CREDIT_UPDATE => {
                c.update_peer_credit(hdr);
                Ok(())
            }
            OP_CREDIT_REQUEST => {
                c.update_peer_credit(hdr);
                c.credit_request();
                Ok(())
            }
            op => {
                tracing::debug!(?key, op, "virtio-vsock: unexpected op; reset");
                c.done = Some(Close::Rst);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::debug!(?key, "virtio-vsock: connection reset: {e}");
            c.done = Some(Close::Rst);
        }
        self.refresh(key);
    }

    fn guest_request(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.contains_key(&key) {
            tracing::debug!(?key, "virtio-vsock: REQUEST for a live connection; reset");
            return self.remove(key, Close::Rst);
        }
        if !self.active || self.conns.len() >= self.max_connections {
            tracing::debug!(?key, "virtio-vsock: too many connections; REQUEST reset");
            return self.reply_rst(hdr);
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = match unix::connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(?path, "virtio-vsock: guest connect: {e}");
                return self.reply_rst(hdr);
            }
        };
        let token = self.token();
        let ev = EpollEvent::new(EventSet::empty(), token);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
        {
            tracing::warn!("virtio-vsock: epoll add: {e}");
            return self.reply_rst(hdr);
        }
        let conn = Connection::guest_initiated(stream, key, self.guest_cid, token, hdr);
        self.owners.insert(token, Owner::Conn(key));
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// The next packet for an rx buffer with `capacity` payload bytes; its payload is
    /// in `buf[..n]`.
    pub fn next_rx(&mut self, capacity: usize, buf: &mut [u8]) -> Option<(Header, usize)> {
        loop {
            if let Some(h) = self.rsts.pop_front() {
                return Some((h, 0));
            }
            let key = self.rx_list.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_rx_list = false;
            let packet = c.next_rx(capacity, buf);
            self.refresh(key);
            if packet.is_some() {
                return packet;
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = ?self.path, "virtio-vsock: cannot remove the socket: {e}");
        }
    }
}

/// `CONNECT <port>`, as Firecracker reads it: two words, the port a decimal u32.
fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let mut words = line.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => port.parse().map_err(|_| "port not a number"),
        _ => Err("not a CONNECT line"),
    }
}
