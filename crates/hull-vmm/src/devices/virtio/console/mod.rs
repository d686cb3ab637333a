//! virtio-console (virtio 1.2 §5.3), a single port with no optional features (no SIZE,
//! no MULTIPORT, no EMERG_WRITE), whose host side is a Unix stream socket. Linux binds
//! it as hvc0; hull's guest agent uses it raw as its channel to the host.
//!
//! Queues: receiveq0 (0) carries host bytes into device-writable guest buffers,
//! transmitq0 (1) carries guest bytes in device-readable buffers to the host.
//!
//! The host side listens on a Unix socket and serves one client at a time:
//! - A client that connects while another is connected is accepted and closed at once
//!   (it reads EOF), rather than left in the backlog where it could not tell a busy
//!   console from a slow one, and where its pending connection would keep the
//!   listener readable (a busy loop for the event loop).
//! - A client that hangs up (EPOLLHUP/EPOLLERR, or a failed write) is gone for the
//!   guest's output; what it wrote before going is still delivered as the guest gives
//!   rx buffers, until EOF. A new client replaces a hung-up one at once (the old one's
//!   unread bytes are dropped: they belong to a session that is over).
//! - A client that only shuts its write side (EOF, no hang-up) keeps the slot and
//!   keeps getting the guest's output until it closes.
//! - Guest output while no client is connected is dropped (chains completed at once),
//!   so a guest writing to hvc0 never stalls for want of a reader; the guest's rx
//!   buffers wait for the next client.
//!
//! Buffers and back-pressure, with no buffer whose size the guest or the host chooses:
//! - host → guest: bytes are read from the socket only into a guest rx chain just
//!   taken, at most the chain's writable length (and at most `CHUNK`) per read. With no
//!   rx buffers the device stops watching the socket, so the client's writes block
//!   once the kernel's socket buffer is full.
//! - guest → host: the device writes a tx chain straight from guest memory to the
//!   socket and completes it once all its bytes went; if the socket would block it
//!   keeps that one chain (not its bytes) and takes no further tx chains until the
//!   socket drains. The bounded buffer is the kernel's socket buffer; the guest is
//!   held back by its own uncompleted chain.
//!
//! Threads and fds: `host_event_fd()` is one level-triggered epoll set over the
//! listener and the client, readable exactly when `process_host_events()` has work
//! (the client is watched for input only while the guest has rx buffers, for output
//! only while a tx chain waits). Every socket is non-blocking; nothing here blocks.
//!
//! Syscalls on the processing path (checked with strace): epoll_wait (timeout 0),
//! accept4 and ioctl(FIONBIO) (std's accept and set_nonblocking), epoll_ctl,
//! recvfrom (std's UnixStream read is recv(2)), sendto (send(2), MSG_NOSIGNAL),
//! close (with fcntl(F_GETFD) before it in debug builds), and write on the interrupt
//! eventfd.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::host_socket::{listen, ListenError};
use super::queue::{scatter, ActiveQueues, Buffer};
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};
use transfer::send_chain;

mod transfer;

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Bytes moved per read or write syscall: the size of the one bounce buffer.
pub const CHUNK: usize = 64 << 10;
/// Connections accepted per `process_host_events`: a host connecting in a loop cannot
/// keep the event loop here; the listener stays readable for the rest.
const MAX_ACCEPTS: usize = 16;
const LISTENER_TOKEN: u64 = 0;

/// Why a console could not be built or serve the host.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console socket path {0} already exists")]
    PathExists(PathBuf),
    #[error("cannot listen on the console socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("console epoll: {0}")]
    Epoll(io::Error),
}

/// The connected host client.
struct Client {
    stream: UnixStream,
    /// Its epoll data: unique per client, so an event for a client already replaced
    /// is not taken for its successor's.
    token: u64,
    /// Read returned 0: the host sends no more.
    read_eof: bool,
    /// The host is gone: no more writes. Left the epoll set (EPOLLHUP cannot be
    /// masked); what it sent before is still read, until `read_eof`.
    hung_up: bool,
    /// The interest registered in the epoll set; None once out of it.
    interest: Option<EventSet>,
}

/// The tx chain being written to the host.
struct TxChain {
    head: u16,
    buffers: Vec<Buffer>,
    total: u64,
    sent: u64,
}

pub struct Console {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    client: Option<Client>,
    next_token: u64,
    queues: Option<ActiveQueues>,
    tx: Option<TxChain>,
    /// The rx queue had no buffer when last looked at: the client is not read until
    /// the guest notifies queue 0.
    rx_starved: bool,
    bounce: Vec<u8>,
}

impl Console {
    /// A console listening on `socket_path`, which must not exist; it is removed when
    /// the console is dropped.
    pub fn new(socket_path: &Path) -> std::result::Result<Console, ConsoleError> {
        // bind(2) would say only "address in use"; this names the cause. bind still
        // guards against a path appearing in between.
        if socket_path.symlink_metadata().is_ok() {
            return Err(ConsoleError::PathExists(socket_path.to_owned()));
        }
        let (listener, epoll) = listen(socket_path, LISTENER_TOKEN).map_err(|e| match e {
            ListenError::Bind(source) => ConsoleError::Bind {
                path: socket_path.to_owned(),
                source,
            },
            ListenError::Setup(source) => ConsoleError::Epoll(source),
        })?;
        Ok(Console {
            path: socket_path.to_owned(),
            listener,
            epoll,
            client: None,
            next_token: LISTENER_TOKEN + 1,
            queues: None,
            tx: None,
            rx_starved: false,
            bounce: vec![0; CHUNK],
        })
    }

    /// The fd an event loop polls for readability: an epoll set over the listening
    /// socket and the client. Readable whenever `process_host_events` has work.
    pub fn host_event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Whether a host client is connected (and has not hung up).
    pub fn has_client(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.hung_up)
    }

    /// Does all pending host-side work without blocking: accepts, notices hang-ups,
    /// writes waiting guest output, fills rx buffers the guest gave. Fails only if
    /// epoll does; a queue the guest broke was already reported (the device shows
    /// DEVICE_NEEDS_RESET) and is not an error here.
    pub fn process_host_events(&mut self) -> std::result::Result<(), ConsoleError> {
        // An activation or reset since the last call changed what the client should be
        // watched for; both leave that to this thread.
        self.refresh();
        let mut events = [EpollEvent::default(); 4];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConsoleError::Epoll(e)),
            }
        };
        let mut accept = false;
        // Hang-ups first: a client that just left frees the slot for one waiting.
        for ev in &events[..n] {
            let set = EventSet::from_bits_truncate(ev.events());
            match ev.data() {
                LISTENER_TOKEN => accept = true,
                token => {
                    if let Some(c) = self.client.as_mut().filter(|c| c.token == token) {
                        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                            tracing::debug!("virtio-console: the host client hung up");
                            c.hung_up = true;
                        }
                    }
                }
            }
        }
        if accept {
            self.accept();
        }
        if self.queues.is_some() {
            if let Err(e) = self.pump() {
                tracing::debug!("virtio-console: queues not served: {e}");
            }
        }
        self.refresh();
        Ok(())
    }

    fn accept(&mut self) {
        for _ in 0..MAX_ACCEPTS {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = ?self.path, "virtio-console: accept: {e}");
                    return;
                }
            };
            if let Some(old) = self.client.take() {
                if !old.hung_up {
                    tracing::debug!("virtio-console: a second host client closed at once");
                    self.client = Some(old);
                    continue;
                }
                tracing::debug!(
                    "virtio-console: new host client; the old one's unread bytes dropped"
                );
                self.forget(old);
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("virtio-console: host client: {e}");
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            // Empty interest: hang-ups are reported regardless; `refresh` adds what
            // the queues call for.
            let ev = EpollEvent::new(EventSet::empty(), token);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
            {
                tracing::warn!("virtio-console: epoll add: {e}");
                continue;
            }
            tracing::debug!("virtio-console: host client connected");
            self.client = Some(Client {
                stream,
                token,
                read_eof: false,
                hung_up: false,
                interest: Some(EventSet::empty()),
            });
        }
    }

    /// Takes `c` out of the epoll set; dropping it closes the stream.
    fn forget(&self, c: Client) {
        if c.interest.is_some() {
            let fd = c.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Brings the client's epoll interest in line with what would make progress, and
    /// drops a client that is entirely done.
    fn refresh(&mut self) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        if c.hung_up && c.read_eof {
            tracing::debug!("virtio-console: host client gone");
            if let Some(c) = self.client.take() {
                self.forget(c);
            }
            return;
        }
        let fd = c.stream.as_raw_fd();
        if c.hung_up {
            if c.interest.take().is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            return;
        }
        let mut want = EventSet::empty();
        // A queue the guest broke serves nothing until a reset: the client is not
        // watched either, or bytes waiting in it would keep the loop spinning.
        let serving = self.queues.as_ref().is_some_and(|q| !q.irq.needs_reset());
        if serving && !self.rx_starved && !c.read_eof {
            want |= EventSet::IN;
        }
        if self.tx.is_some() {
            want |= EventSet::OUT;
        }
        if c.interest != Some(want) {
            let ev = EpollEvent::new(want, c.token);
            match self.epoll.ctl(ControlOperation::Modify, fd, ev) {
                Ok(()) => c.interest = Some(want),
                Err(e) => {
                    // Without its interest the client could stall forever: let it go.
                    tracing::warn!("virtio-console: epoll modify: {e}; host client dropped");
                    if let Some(c) = self.client.take() {
                        self.forget(c);
                    }
                }
            }
        }
    }

    /// Guest output, then host input. Returns the chains completed.
    fn pump(&mut self) -> Result<usize> {
        let tx = self.process_tx();
        let rx = self.deliver_rx();
        Ok(tx? + rx?)
    }

    /// Writes tx chains to the host until the queue is empty or the socket would
    /// block; returns the chains completed.
    fn process_tx(&mut self) -> Result<usize> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        let result = loop {
            let chain = match self.tx.take() {
                Some(chain) => chain,
                None => match q.pop(TX_QUEUE) {
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                    Ok(Some((head, None))) => TxChain {
                        head,
                        buffers: Vec::new(),
                        total: 0,
                        sent: 0,
                    },
                    Ok(Some((head, Some(buffers)))) => {
                        if buffers.iter().any(|b| b.writable) {
                            tracing::debug!(
                                "virtio-console: tx chain with a device-writable buffer"
                            );
                            TxChain {
                                head,
                                buffers: Vec::new(),
                                total: 0,
                                sent: 0,
                            }
                        } else {
                            let total = buffers.iter().map(|b| u64::from(b.len)).sum();
                            TxChain {
                                head,
                                buffers,
                                total,
                                sent: 0,
                            }
                        }
                    }
                },
            };
            let mut chain = chain;
            if !send_chain(&q.memory, &mut chain, &mut self.client, &mut self.bounce) {
                self.tx = Some(chain);
                break Ok(());
            }
            // The device wrote nothing into the chain.
            if let Err(e) = q.add_used(TX_QUEUE, chain.head, 0) {
                break Err(e);
            }
            done += 1;
        };
        if done > 0 {
            q.irq.signal_used();
        }
        result.map(|()| done)
    }

    /// Reads host bytes into rx chains while both are there; returns the chains
    /// completed.
    fn deliver_rx(&mut self) -> Result<usize> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        let result = loop {
            // Bounded: a guest refilling the queue from another vCPU cannot keep the
            // caller here; the client stays watched for what is left.
            if done >= usize::from(QUEUE_SIZE) {
                break Ok(());
            }
            let Some(c) = self.client.as_mut().filter(|c| !c.read_eof) else {
                break Ok(());
            };
            let (head, buffers) = match q.pop(RX_QUEUE) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    self.rx_starved = true;
                    break Ok(());
                }
                Err(e) => break Err(e),
            };
            let used = match buffers {
                None => 0,
                Some(b) if b.iter().any(|b| !b.writable) => {
                    tracing::debug!("virtio-console: rx chain with a device-readable buffer");
                    0
                }
                Some(buffers) => {
                    let room: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
                    let want = usize::try_from(room).map_or(CHUNK, |r| r.min(CHUNK));
                    match (&c.stream).read(&mut self.bounce[..want]) {
                        Ok(0) => {
                            tracing::debug!("virtio-console: the host client sends no more");
                            c.read_eof = true;
                            q.unpop(RX_QUEUE);
                            break Ok(());
                        }
                        Ok(n) => scatter(&q.memory, &buffers, &self.bounce[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            q.unpop(RX_QUEUE);
                            break Ok(());
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            q.unpop(RX_QUEUE);
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!("virtio-console: host client read: {e}; dropped");
                            c.read_eof = true;
                            c.hung_up = true;
                            q.unpop(RX_QUEUE);
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = q.add_used(RX_QUEUE, head, used) {
                break Err(e);
            }
            done += 1;
        };
        if done > 0 {
            q.irq.signal_used();
        }
        result.map(|()| done)
    }
}

impl AsRawFd for Console {
    fn as_raw_fd(&self) -> RawFd {
        self.host_event_fd()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = ?self.path, "virtio-console: cannot remove the socket: {e}");
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        // No SIZE, MULTIPORT or EMERG_WRITE: one port, nothing in the config space.
        0
    }

    fn config_space(&self) -> &[u8] {
        &[]
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        _features: u64,
    ) -> Result<()> {
        self.queues = Some(ActiveQueues::new(
            "virtio-console",
            memory,
            queues,
            interrupt,
            2,
        )?);
        // Buffers given before DRIVER_OK came with no notification the device saw:
        // look at the queue when the host has bytes.
        self.rx_starved = false;
        // Not `refresh` here: activation runs on a vCPU thread (the guest's DRIVER_OK),
        // whose allowlist has no epoll_ctl or close. The VMM thread brings the epoll
        // interest up to date at the next queue notification or host event.
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<usize> {
        if self.queues.is_none() {
            return Err(VirtioError::NotActivated);
        }
        match index {
            RX_QUEUE => self.rx_starved = false,
            TX_QUEUE => {}
            _ => return Err(VirtioError::NoSuchQueue(index)),
        }
        let result = self.pump();
        self.refresh();
        result
    }

    fn reset(&mut self) {
        // The client stays: the host's session outlives a driver reset, and its bytes
        // wait in the socket for the next driver.
        self.queues = None;
        self.tx = None;
        self.rx_starved = false;
        // As in `activate`: a vCPU thread runs this; the VMM thread refreshes.
    }
}
