//! virtio-net (virtio 1.2 §5.1) on a host tap device: one receive and one transmit
//! queue, no offloads, no control queue, no mergeable receive buffers. The only
//! optional feature is VIRTIO_NET_F_MAC, offered when the VM is given a MAC address
//! (otherwise Linux picks a random one).
//!
//! Every frame crosses a bounce buffer of this device's own fixed size: the guest's
//! virtio header is stripped on transmit and never reaches the host kernel (the tap has
//! no IFF_VNET_HDR, so a guest cannot hand the host's stack GSO or checksum requests),
//! and received frames get a header of zeros with num_buffers 1.
//!
//! Frames the device cannot place are dropped and counted, never queued in user space:
//! - transmit: a chain with a device-writable buffer, shorter than the header plus an
//!   Ethernet header, or longer than the header plus `MAX_FRAME`; a tap write that fails
//!   (the host interface down, say);
//! - receive: a frame longer than the guest's receive chain (the chain is kept for the
//!   next frame). Malformed receive chains are completed empty without taking a frame.
//!
//! Back-pressure: the tap is read only into a receive chain just taken. With no receive
//! buffers the device stops watching the tap, and frames wait in the tap's own queue
//! (where the host kernel drops them once it is full, as a real NIC's ring would).
//!
//! Threads: `host_event_fd()` is an epoll set over the tap and a wake-up eventfd,
//! readable when `process_host_events()` has work; activation and reset run on a vCPU
//! thread and leave the epoll interest to the VMM thread (whose allowlist has
//! epoll_ctl), waking it through the eventfd.
//! Syscalls on the processing path: epoll_wait (timeout 0), epoll_ctl, read and write
//! on the tap, write on the interrupt eventfd.

pub mod tap;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::{gather, scatter, ActiveQueues, Buffer};
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// struct virtio_net_hdr_v1: its size with VIRTIO_F_VERSION_1, which the transport
/// requires, whether or not mergeable buffers are negotiated.
pub const HDR_LEN: usize = 12;
/// The shortest frame a tap takes: an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// The longest frame: Linux's largest MTU (65535) plus the Ethernet header and one
/// VLAN tag.
pub const MAX_FRAME: usize = 65535 + ETH_HLEN + 4;
const TAP_TOKEN: u64 = 0;
const WAKE_TOKEN: u64 = 1;

/// Frames moved and dropped, in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("virtio-net epoll: {0}")]
    Epoll(io::Error),
}

pub struct Net {
    /// The tap, or anything else whose reads and writes are whole frames (a
    /// SOCK_SEQPACKET socket in the tests). Non-blocking.
    frames: OwnedFd,
    epoll: Epoll,
    /// In the epoll set: written by activation and reset (on a vCPU thread, which may
    /// not touch the epoll set), so the VMM thread brings the tap's interest up to date
    /// even when the driver gave receive buffers before DRIVER_OK and never notifies.
    wake: EventFd,
    /// The interest registered for the tap; None once it left the epoll set.
    interest: Option<EventSet>,
    /// The MAC address as the config space holds it.
    mac: Option<[u8; 6]>,
    queues: Option<ActiveQueues>,
    /// The receive queue had no buffer when last looked at: the tap is not read until
    /// the guest notifies queue 0.
    rx_starved: bool,
    /// The tap reported an error or hang-up (its interface was deleted): it is no
    /// longer read; transmitted frames are dropped.
    broken: bool,
    bounce: Vec<u8>,
    stats: NetStats,
}

impl Net {
    /// A device on `frames`, which must be non-blocking.
    pub fn new(frames: OwnedFd, mac: Option<[u8; 6]>) -> std::result::Result<Net, NetError> {
        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        // Empty interest: errors and hang-ups are reported regardless; `refresh` adds
        // input once the guest has receive buffers.
        let ev = EpollEvent::new(EventSet::empty(), TAP_TOKEN);
        epoll
            .ctl(ControlOperation::Add, frames.as_raw_fd(), ev)
            .map_err(NetError::Epoll)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(NetError::Epoll)?;
        let ev = EpollEvent::new(EventSet::IN, WAKE_TOKEN);
        epoll
            .ctl(ControlOperation::Add, wake.as_raw_fd(), ev)
            .map_err(NetError::Epoll)?;
        Ok(Net {
            frames,
            epoll,
            wake,
            interest: Some(EventSet::empty()),
            mac,
            queues: None,
            rx_starved: false,
            broken: false,
            bounce: vec![0; HDR_LEN + MAX_FRAME],
            stats: NetStats::default(),
        })
    }

    /// The fd an event loop polls for readability.
    pub fn host_event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Delivers frames waiting on the tap into receive buffers, without blocking.
    pub fn process_host_events(&mut self) -> std::result::Result<(), NetError> {
        self.refresh();
        let mut events = [EpollEvent::default(); 2];
        let n = loop {
            match self.epoll.wait(0, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetError::Epoll(e)),
            }
        };
        for ev in &events[..n] {
            if ev.data() == WAKE_TOKEN {
                let _ = self.wake.read();
                continue;
            }
            let set = EventSet::from_bits_truncate(ev.events());
            if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !self.broken {
                tracing::warn!(
                    "virtio-net: the tap reports an error or hang-up; no more frames from it"
                );
                self.broken = true;
            }
        }
        if self.queues.is_some() {
            if let Err(e) = self.receive() {
                tracing::debug!("virtio-net: receive queue not served: {e}");
            }
        }
        self.refresh();
        Ok(())
    }

    /// Brings the tap's epoll interest in line with what would make progress.
    fn refresh(&mut self) {
        let fd = self.frames.as_raw_fd();
        if self.broken {
            // EPOLLERR cannot be masked: only leaving the set stops it.
            if self.interest.take().is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            return;
        }
        // A queue the guest broke serves nothing until a reset: not watched either, or a
        // frame waiting in the tap would keep the loop spinning.
        let serving = self.queues.as_ref().is_some_and(|q| !q.irq.needs_reset());
        let want = if serving && !self.rx_starved {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if self.interest != Some(want) {
            let ev = EpollEvent::new(want, TAP_TOKEN);
            match self.epoll.ctl(ControlOperation::Modify, fd, ev) {
                Ok(()) => self.interest = Some(want),
                Err(e) => {
                    tracing::warn!("virtio-net: epoll modify: {e}; no more frames from the tap");
                    self.broken = true;
                    self.refresh();
                }
            }
        }
    }

    /// Sends every transmit chain the guest made available (at most a queue's worth:
    /// a guest refilling from another vCPU notifies again); returns the chains done.
    fn transmit(&mut self) -> Result<usize> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        let result = loop {
            if done >= usize::from(QUEUE_SIZE) {
                break Ok(());
            }
            let (head, buffers) = match q.pop(TX_QUEUE) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let sent = match buffers {
                Some(b) if !self.broken => {
                    send_frame(&q.memory, &b, self.frames.as_raw_fd(), &mut self.bounce)
                }
                _ => false,
            };
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_dropped += 1;
            }
            // The device writes nothing into a transmit chain.
            if let Err(e) = q.add_used(TX_QUEUE, head, 0) {
                break Err(e);
            }
            done += 1;
        };
        if done > 0 {
            q.irq.signal_used();
        }
        result.map(|()| done)
    }

    /// Reads frames from the tap into receive chains while both are there (at most a
    /// queue's worth of chains and frames per call); returns the chains completed.
    fn receive(&mut self) -> Result<usize> {
        let q = self.queues.as_mut().ok_or(VirtioError::NotActivated)?;
        let mut done = 0;
        // Chains completed and frames dropped: each turn costs the guest one or the
        // tap one, but a guest refilling from another vCPU must not keep the VMM
        // thread here; the tap stays watched for what is left.
        let mut turns = 0;
        let result = loop {
            if self.broken || turns >= usize::from(QUEUE_SIZE) {
                break Ok(());
            }
            turns += 1;
            let (head, buffers) = match q.pop(RX_QUEUE) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    self.rx_starved = true;
                    break Ok(());
                }
                Err(e) => break Err(e),
            };
            let buffers = match buffers {
                Some(b) if b.iter().all(|b| b.writable) => b,
                Some(_) => {
                    tracing::debug!("virtio-net: receive chain with a device-readable buffer");
                    Vec::new()
                }
                None => Vec::new(),
            };
            if buffers.is_empty() {
                if let Err(e) = q.add_used(RX_QUEUE, head, 0) {
                    break Err(e);
                }
                done += 1;
                continue;
            }
            let len = match read_frame(self.frames.as_raw_fd(), &mut self.bounce[HDR_LEN..]) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    q.unpop(RX_QUEUE);
                    break Ok(());
                }
                Err(e) => {
                    tracing::warn!("virtio-net: tap read: {e}; no more frames from it");
                    self.broken = true;
                    q.unpop(RX_QUEUE);
                    break Ok(());
                }
            };
            let room: u64 = buffers.iter().map(|b| u64::from(b.len)).sum();
            if (HDR_LEN + len) as u64 > room {
                tracing::debug!(
                    len,
                    room,
                    "virtio-net: frame longer than the receive chain: dropped"
                );
                self.stats.rx_dropped += 1;
                q.unpop(RX_QUEUE);
                continue;
            }
            let header = &mut self.bounce[..HDR_LEN];
            header.fill(0);
            // num_buffers (le16 at offset 10): the frame is in this one chain.
            header[10] = 1;
            let used = scatter(&q.memory, &buffers, &self.bounce[..HDR_LEN + len]);
            self.stats.rx_frames += 1;
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

/// Writes the frame in a transmit chain (after its virtio header) to the tap; false if
/// the chain is not a frame or the tap refused it.
fn send_frame(memory: &GuestMemoryMmap, chain: &[Buffer], tap: RawFd, bounce: &mut [u8]) -> bool {
    if chain.iter().any(|b| b.writable) {
        tracing::debug!("virtio-net: transmit chain with a device-writable buffer: dropped");
        return false;
    }
    let total: u64 = chain.iter().map(|b| u64::from(b.len)).sum();
    if total < (HDR_LEN + ETH_HLEN) as u64 || total > bounce.len() as u64 {
        tracing::debug!(total, "virtio-net: transmit chain is not a frame: dropped");
        return false;
    }
    let total = total as usize;
    if gather(memory, chain, 0, &mut bounce[..total]) != total {
        return false;
    }
    let frame = &bounce[HDR_LEN..total];
    loop {
        // SAFETY: `frame` is valid for reads of its length for the call; the kernel
        // only reads it. `tap` is the device's own open fd.
        let r = unsafe { libc::write(tap, frame.as_ptr().cast(), frame.len()) };
        if r >= 0 {
            return true;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            tracing::debug!("virtio-net: tap write: {e}; frame dropped");
            return false;
        }
    }
}

/// One frame from the tap into `buf`: its length, or None if none is waiting.
fn read_frame(tap: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own.
        let r = unsafe { libc::read(tap, buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            return Ok(Some(r as usize));
        }
        if r == 0 {
            // No frame is empty: a zero read is a socket whose peer is gone.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of file"));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        if self.mac.is_some() {
            1 << VIRTIO_NET_F_MAC
        } else {
            0
        }
    }

    fn config_space(&self) -> &[u8] {
        // struct virtio_net_config starts with mac[6]; the fields after it belong to
        // features this device does not offer.
        self.mac.as_ref().map_or(&[], |m| &m[..])
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        _features: u64,
    ) -> Result<()> {
        self.queues = Some(ActiveQueues::new(
            "virtio-net",
            memory,
            queues,
            interrupt,
            2,
        )?);
        // Receive buffers given before DRIVER_OK came with no notification the device
        // saw. Not `refresh` here: a vCPU thread runs this (see the module comment);
        // the wake-up has the VMM thread do it.
        self.rx_starved = false;
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Runs on the VMM thread: KVM's ioeventfds take every valid QueueNotify write
    /// (32-bit, as the transport requires), so the transport never calls this from a
    /// vCPU thread, whose allowlist lacks the tap's read and epoll_ctl.
    fn process_queue(&mut self, index: usize) -> Result<usize> {
        if self.queues.is_none() {
            return Err(VirtioError::NotActivated);
        }
        let result = match index {
            RX_QUEUE => {
                self.rx_starved = false;
                self.receive()
            }
            TX_QUEUE => self.transmit(),
            _ => Err(VirtioError::NoSuchQueue(index)),
        };
        self.refresh();
        result
    }

    fn reset(&mut self) {
        // Frames stay in the tap for the next driver. As in `activate`: a vCPU thread
        // runs this; the VMM thread refreshes the interest.
        self.queues = None;
        self.rx_starved = false;
        let _ = self.wake.write(1);
    }
}
