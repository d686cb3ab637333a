//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's "hybrid vsock" host side: the
//! guest's stream sockets come out as Unix stream sockets on the host.
//!
//! The device listens on a Unix socket U. A host process connects to U and writes
//! `CONNECT <port>\n`; the device sends the guest a REQUEST from a host port it picks
//! and, once the guest answers RESPONSE, writes `OK <that port>\n` to the host stream,
//! after which bytes flow both ways (an RST from the guest closes the host stream).
//! A guest REQUEST for host port P makes the device connect to `U_P`.
//!
//! Threads: the transport calls `process_queue` (vCPU thread, or an ioeventfd loop);
//! an event loop polls `host_event_fd()` and calls `process_host_events()`. Both take
//! the device's mutex, and neither ever blocks: every host socket is non-blocking.
//!
//! Rules for what the guest sends (a broken guest can hurt only its own connections):
//! - A tx chain that is not a packet (a device-writable buffer, less than a header) is
//!   completed and dropped: nothing in it can be trusted to name a connection.
//! - A complete header with a bad body (`len` over 64 KiB, or not what the chain
//!   holds): the connection it names is reset (RST).
//! - `src_cid` not the guest's: dropped (there is nobody to answer). `dst_cid` not the
//!   host (2) or `type` not STREAM: RST. Unknown op, a packet for no connection, a
//!   REQUEST for a live connection, RW beyond the credit it was given: RST. An RST is
//!   never answered.
//! - At most `MAX_CONNECTIONS` connections; beyond, a REQUEST gets an RST.
//!
//! The event queue (2) is kept valid and never used: TRANSPORT_RESET would be for
//! migration, which hull does not do.

mod connection;
mod muxer;
mod packet;
mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::queue::ActiveQueues;
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};
pub use connection::CONN_BUF_SIZE;
use muxer::Muxer;
pub use muxer::{MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PENDING_HOST};
pub use packet::{HOST_CID, MAX_PAYLOAD};

pub const QUEUE_SIZE: u16 = 256;
/// The receive queue is shorter: Linux fills all of it up front with a 4 KiB buffer per
/// entry (virtio_vsock_rx_fill), 1 MiB of every guest's slab at 256 entries. 64 keep
/// 236 KiB of the host's data in flight, which the agent's relay drains 64 KiB at a
/// time, and the guest refills at half.
pub const RX_QUEUE_SIZE: u16 = 64;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// Why a vsock device could not be built or serve the host.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is invalid: it must be at least 3 and below 2^32 - 1")]
    InvalidCid(u64),
    #[error("cannot listen on the vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("vsock epoll: {0}")]
    Epoll(io::Error),
}

pub struct Vsock {
    config: [u8; 8],
    muxer: Muxer,
    queues: Option<ActiveQueues>,
    /// Tx payloads and rx payloads pass through here (one at a time).
    buf: Vec<u8>,
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening on `uds_path` (which must
    /// not exist; it is removed when the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::result::Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        Ok(Vsock {
            config: guest_cid.to_le_bytes(),
            muxer: Muxer::new(guest_cid, uds_path)?,
            queues: None,
            buf: vec![0; MAX_PAYLOAD],
        })
    }

    /// The fd an event loop polls for readability: an epoll set over the listening
    /// socket and every host stream. Readable whenever `process_host_events` has work.
    pub fn host_event_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }

    /// Does all pending host-side work without blocking: accepts, reads CONNECT lines,
    /// moves bytes both ways, notices hang-ups, and fills rx buffers the guest gave.
    /// Fails only if epoll does; a queue the guest broke was already reported (the
    /// device shows DEVICE_NEEDS_RESET) and is not an error here.
    pub fn process_host_events(&mut self) -> std::result::Result<(), VsockError> {
        self.muxer.host_events()?;
        if self.queues.is_some() {
            if let Err(e) = self.pump() {
                tracing::debug!("virtio-vsock: queues not served: {e}");
            }
        }
        Ok(())
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    #[cfg(test)]
    pub(crate) fn set_max_connections(&mut self, n: usize) {
        self.muxer.max_connections = n;
    }

    /// Takes tx packets, then fills rx buffers; again if tx stopped for want of rx
    /// buffers and they came. Returns the chains completed.
    fn pump(&mut self) -> Result<usize> {
        let mut done = 0;
        for _ in 0..4 {
            let (n, stalled) = self.process_tx()?;
            done += n;
            done += self.deliver_rx()?;
            if !stalled || self.muxer.tx_stalled() {
                break;
            }
        }
        Ok(done)
    }

    /// Returns the chains completed and whether tx stopped with chains left.
    fn process_tx(&mut self) -> Result<(usize, bool)> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        let mut stalled = false;
        let result = loop {
            if self.muxer.tx_stalled() {
                stalled = true;
                break Ok(());
            }
            let (head, chain) = match q.pop(TX_QUEUE) {
                Ok(Some(c)) => c,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if let Some(chain) = chain {
                match packet::read_tx(&q.memory, &chain, &mut self.buf) {
                    Ok(hdr) => self.muxer.guest_packet(&hdr, &self.buf[..hdr.len as usize]),
                    Err((Some(hdr), why)) => {
                        tracing::debug!("virtio-vsock: tx packet refused: {why}");
                        self.muxer.guest_bad_packet(&hdr);
                    }
                    Err((None, why)) => tracing::debug!("virtio-vsock: tx chain dropped: {why}"),
                }
            }
            if let Err(e) = q.add_used(TX_QUEUE, head, 0) {
                break Err(e);
            }
            done += 1;
        };
        if done > 0 {
            q.irq.signal_used();
        }
        result.map(|()| (done, stalled))
    }

    /// Fills rx buffers while anything waits for one; returns the chains completed.
    fn deliver_rx(&mut self) -> Result<usize> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        let result = loop {
            if !self.muxer.has_rx() {
                break Ok(());
            }
            let (head, chain) = match q.pop(RX_QUEUE) {
                Ok(Some(c)) => c,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let usable = chain.and_then(|c| packet::rx_capacity(&c).map(|cap| (c, cap)));
            let used = match usable {
                // A chain the device cannot use goes back empty, as virtio-rng does.
                None => 0,
                Some((chain, capacity)) => match self.muxer.next_rx(capacity, &mut self.buf) {
                    Some((hdr, n)) => {
                        match packet::write_rx(&q.memory, &chain, &hdr, &self.buf[..n]) {
                            Ok(len) => len,
                            Err(e) => {
                                // `walk` checked the buffers lie in guest memory.
                                tracing::warn!("virtio-vsock: rx write failed: {e}");
                                0
                            }
                        }
                    }
                    None => {
                        q.unpop(RX_QUEUE);
                        break Ok(());
                    }
                },
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

impl AsRawFd for Vsock {
    fn as_raw_fd(&self) -> RawFd {
        self.host_event_fd()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RX_QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        // No SEQPACKET (bit 1): streams only.
        0
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        _features: u64,
    ) -> Result<()> {
        self.queues = Some(ActiveQueues::new(
            "virtio-vsock",
            memory,
            queues,
            interrupt,
            3,
        )?);
        self.muxer.active = true;
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<usize> {
        if self.queues.is_none() {
            return Err(VirtioError::NotActivated);
        }
        match index {
            // New rx buffers or new tx packets: either can unblock the other.
            RX_QUEUE | TX_QUEUE => self.pump(),
            // Event buffers are held for an event that never comes.
            EVENT_QUEUE => Ok(0),
            _ => Err(VirtioError::NoSuchQueue(index)),
        }
    }

    fn reset(&mut self) {
        self.queues = None;
        self.muxer.active = false;
        self.muxer.reset();
    }
}
