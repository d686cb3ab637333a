//! One vsock stream between a guest port and a host Unix stream: its state, both
//! directions of flow control, and the packets it owes the guest.
//!
//! Host→guest bytes are read from the host stream straight into an rx buffer, never
//! buffered here: the guest's credit (its `buf_alloc` minus what is in flight) and the
//! rx buffer's size bound each read, so a slow guest leaves the bytes in the host's
//! socket. Guest→host bytes are written to the host stream at once; what the host does
//! not take waits in `pending`, whose bound is the `buf_alloc` advertised to the guest.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::*;

/// Guest→host bytes the device buffers per connection; advertised as `buf_alloc`.
pub const CONN_BUF_SIZE: u32 = 256 << 10;
/// A CREDIT_UPDATE is owed once the guest may believe it has less free credit than
/// this while the device has forwarded bytes it does not know of: it would otherwise
/// wait for credit Linux never asks for.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port: the port the guest connected to, or the one the device
    /// picked for a host-initiated connection.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
}

/// How a connection ends, once the muxer sees `done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Forget it; the guest is owed nothing (it reset, or it was told already).
    Silent,
    /// Forget it and send the guest an RST.
    Rst,
}

/// A broken connection: the muxer resets it.
#[derive(Debug, thiserror::Error)]
pub enum ConnFault {
    #[error("guest sent {len} bytes beyond its credit ({in_flight} in flight of {CONN_BUF_SIZE})")]
    CreditExceeded { len: u32, in_flight: u32 },
    #[error("guest sent data on a connection not established or shut for sending")]
    NotWritable,
    #[error("host stream: {0}")]
    Host(io::Error),
}

pub struct Connection {
    pub stream: UnixStream,
    pub key: ConnKey,
    pub guest_cid: u64,
    /// The epoll token of `stream`.
    pub token: u64,
    /// The guest answered the REQUEST, or the device answered the guest's.
    pub established: bool,
    /// Host-initiated and not yet established.
    pub host_initiated: bool,
    /// The events `stream` is registered for; None once it left the epoll set (it hung
    /// up: EPOLLHUP cannot be masked and would be reported forever).
    pub interest: Option<u32>,
    /// Queued in the muxer's rx list.
    pub in_rx_list: bool,
    /// Set when the connection must go; the muxer removes it.
    pub done: Option<Close>,

    owe_request: bool,
    owe_response: bool,
    owe_credit_update: bool,
    /// SHUTDOWN flags owed to the guest (0: none).
    owe_shutdown: u32,

    // Host→guest: the guest's credit.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// The host stream may have bytes (or an EOF) to read.
    pub readable: bool,
    /// The host stream hung up (EPOLLHUP/EPOLLERR).
    pub host_hup: bool,
    /// Read returned 0: the host sends no more.
    host_eof: bool,

    // Guest→host: the device's credit.
    rx_cnt: u32,
    fwd_cnt: u32,
    last_adv_fwd_cnt: u32,
    pending: VecDeque<u8>,
    /// Leading bytes of `pending` that are the device's own (the `OK` line), not guest
    /// data: they do not count in `fwd_cnt`.
    pending_own: usize,
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    host_write_shut: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, token: u64) -> Connection {
        Connection {
            stream,
            key,
            guest_cid,
            token,
            established: false,
            host_initiated: false,
            interest: Some(0),
            in_rx_list: false,
            done: None,
            owe_request: false,
            owe_response: false,
            owe_credit_update: false,
            owe_shutdown: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            readable: false,
            host_hup: false,
            host_eof: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_adv_fwd_cnt: 0,
            pending: VecDeque::new(),
            pending_own: 0,
            guest_shut_rcv: false,
            guest_shut_send: false,
            host_write_shut: false,
        }
    }

    /// A host process asked (CONNECT) for the guest's `key.peer_port`: the guest is owed
    /// a REQUEST.
    pub fn host_initiated(stream: UnixStream, key: ConnKey, cid: u64, token: u64) -> Self {
        let mut c = Connection::new(stream, key, cid, token);
        c.host_initiated = true;
        c.owe_request = true;
        // Registered for the CONNECT line; refresh narrows it.
        c.interest = Some(libc::EPOLLIN as u32);
        c
    }

    /// The guest asked and the device reached the host listener: the guest is owed a
    /// RESPONSE. `hdr` is the guest's REQUEST.
    pub fn guest_initiated(
        stream: UnixStream,
        key: ConnKey,
        cid: u64,
        token: u64,
        hdr: &Header,
    ) -> Self {
        let mut c = Connection::new(stream, key, cid, token);
        c.established = true;
        c.owe_response = true;
        c.update_peer_credit(hdr);
        c
    }

    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// Bytes the guest can still take. Values from a hostile guest only ever limit its
    /// own connection: in flight beyond its buffer means no credit.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.established && !self.host_eof && !self.guest_shut_rcv && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest (or may, once it reads).
    pub fn wants_rx(&self) -> bool {
        self.done.is_none()
            && (self.owe_request
                || self.owe_response
                || self.owe_credit_update
                || self.owe_shutdown != 0
                || (self.readable && self.can_read_host()))
    }

    /// The epoll events `stream` should be registered for.
    pub fn desired_interest(&self) -> u32 {
        let mut ev = 0;
        if !self.readable && self.can_read_host() {
            ev |= libc::EPOLLIN as u32;
        }
        if !self.pending.is_empty() {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        // Every packet carries the device's credit; the guest now knows this fwd_cnt.
        self.last_adv_fwd_cnt = self.fwd_cnt;
        self.owe_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, its payload read into `buf[..n]` with n at most
    /// `capacity`; None if there is nothing after all.
    pub fn next_rx(&mut self, capacity: usize, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.done.is_some() {
            return None;
        }
        if self.owe_request {
            self.owe_request = false;
            return Some((self.header(OP_REQUEST, 0, 0), 0));
        }
        if self.owe_response {
            self.owe_response = false;
            return Some((self.header(OP_RESPONSE, 0, 0), 0));
        }
        if self.readable && self.can_read_host() && capacity > 0 {
            let n = capacity.min(buf.len()).min(self.peer_credit() as usize);
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => self.host_eof_seen(),
                Ok(k) => {
                    self.tx_cnt = self.tx_cnt.wrapping_add(k as u32);
                    return Some((self.header(OP_RW, k as u32, 0), k));
                }
                Err(e) if is_transient(&e) => self.readable = false,
                Err(e) => {
                    tracing::debug!(?self.key, "virtio-vsock: host stream read: {e}");
                    self.done = Some(Close::Rst);
                    return None;
                }
            }
        }
        if self.owe_shutdown != 0 {
            let flags = std::mem::take(&mut self.owe_shutdown);
            let hdr = self.header(OP_SHUTDOWN, 0, flags);
            if flags == SHUTDOWN_BOTH {
                // Neither side has anything more to say. Linux answers with an RST,
                // which finds no connection and is dropped without a reply.
                self.done = Some(Close::Silent);
            }
            return Some((hdr, 0));
        }
        if self.owe_credit_update {
            return Some((self.header(OP_CREDIT_UPDATE, 0, 0), 0));
        }
        None
    }

    /// The host stream hung up (EPOLLHUP/EPOLLERR): it is readable for good, and a
    /// guest that takes no more data is told now (no read would ever tell it).
    pub fn host_hung_up(&mut self) {
        self.host_hup = true;
        self.readable = true;
        if self.established && self.guest_shut_rcv && !self.host_eof {
            self.host_eof = true;
            self.owe_shutdown = SHUTDOWN_BOTH;
        }
    }

    fn host_eof_seen(&mut self) {
        self.host_eof = true;
        self.readable = false;
        // A full hang-up, or a half close after the guest stopped sending, ends both
        // directions; a half close leaves the guest→host direction open.
        let both = self.host_hup || self.guest_shut_send;
        self.owe_shutdown = if both { SHUTDOWN_BOTH } else { SHUTDOWN_SEND };
    }

    /// The guest answered our REQUEST. Returns the fault if the host stream is gone.
    pub fn guest_response(&mut self, hdr: &Header) -> Result<(), ConnFault> {
        self.update_peer_credit(hdr);
        self.established = true;
        self.host_initiated = false;
        let line = format!("OK {}\n", self.key.local_port);
        self.pending.extend(line.as_bytes());
        self.pending_own = line.len();
        self.flush()
    }

    /// An RW packet from the guest.
    pub fn guest_rw(&mut self, payload: &[u8]) -> Result<(), ConnFault> {
        if !self.established || self.guest_shut_send {
            return Err(ConnFault::NotWritable);
        }
        let len = payload.len() as u32;
        // The guest's credit was computed from the last fwd_cnt it was told; anything
        // beyond that is a broken or hostile driver. This also bounds `pending`.
        let in_flight = self.rx_cnt.wrapping_sub(self.last_adv_fwd_cnt);
        if u64::from(in_flight) + u64::from(len) > u64::from(CONN_BUF_SIZE) {
            return Err(ConnFault::CreditExceeded { len, in_flight });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        let mut rest = payload;
        if self.pending.is_empty() {
            while !rest.is_empty() {
                match self.stream.write(rest) {
                    Ok(0) => return Err(ConnFault::Host(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        rest = &rest[n..];
                        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if is_transient(&e) => break,
                    Err(e) => return Err(ConnFault::Host(e)),
                }
            }
        }
        self.pending.extend(rest);
        self.check_credit_update();
        Ok(())
    }

    /// Writes what the host stream takes of `pending`; once empty, carries out a
    /// SHUTDOWN the guest sent.
    pub fn flush(&mut self) -> Result<(), ConnFault> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnFault::Host(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pending.drain(..n);
                    let own = n.min(self.pending_own);
                    self.pending_own -= own;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - own) as u32);
                }
                Err(e) if is_transient(&e) => break,
                Err(e) => return Err(ConnFault::Host(e)),
            }
        }
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
            self.after_guest_shutdown();
        }
        self.check_credit_update();
        Ok(())
    }

    fn check_credit_update(&mut self) {
        let believed_in_flight = self.rx_cnt.wrapping_sub(self.last_adv_fwd_cnt);
        let believed_free = CONN_BUF_SIZE.saturating_sub(believed_in_flight);
        if self.fwd_cnt != self.last_adv_fwd_cnt && believed_free < CREDIT_UPDATE_THRESHOLD {
            self.owe_credit_update = true;
        }
    }

    pub fn credit_request(&mut self) {
        self.owe_credit_update = true;
    }

    /// A SHUTDOWN from the guest.
    pub fn guest_shutdown(&mut self, flags: u32) {
        self.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        self.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
        if self.pending.is_empty() {
            self.after_guest_shutdown();
        }
    }

    /// With `pending` empty: pass the guest's end of sending on to the host, and end
    /// the connection when neither side will send again.
    fn after_guest_shutdown(&mut self) {
        if !self.guest_shut_send {
            return;
        }
        if !self.host_write_shut {
            self.host_write_shut = true;
            // The host sees EOF; ENOTCONN if it already went changes nothing.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let host_done = self.host_eof && self.owe_shutdown == 0;
        if self.guest_shut_rcv || host_done {
            self.done = Some(Close::Rst);
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
