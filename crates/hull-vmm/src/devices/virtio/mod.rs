//! Virtio devices (virtio 1.x, split virtqueues) behind the virtio-mmio transport.
//!
//! The guest is hostile: every value it hands over (register writes, ring addresses,
//! descriptor chains, request headers) is checked before use, and a malformed request
//! costs the guest that request, never the VMM. Guest mistakes are logged at `debug`,
//! so a guest cannot flood the host's log; events that end a device's service until the
//! driver resets it are logged at `warn`, once per reset.
//!
//! Split: `mmio` is the register file and feature/status handshake, `queue` walks and
//! validates descriptor chains; `blk`, `rng`, `console`, `vsock`, `net` and `balloon`
//! are the devices.

pub mod balloon;
pub mod blk;
pub mod console;
mod host_socket;
pub mod mmio;
pub mod net;
mod queue;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use balloon::Balloon;
pub use blk::Block;
pub use console::Console;
pub use mmio::{cmdline_entry, MmioTransport, MMIO_WINDOW};
pub use net::Net;
pub use rng::Rng;
pub use vsock::Vsock;

/// Why a device could not be built, activated or serve a queue.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("cannot open disk image {path}: {source}")]
    OpenImage { path: PathBuf, source: io::Error },
    #[error("disk serial {0:?} is longer than the 20 bytes virtio-blk has for it")]
    SerialTooLong(String),
    #[error("cannot create the interrupt eventfd: {0}")]
    EventFd(io::Error),
    #[error("the device has no queue {0}")]
    NoSuchQueue(usize),
    #[error("the driver activated the device without making queue {0} ready")]
    QueueNotReady(usize),
    #[error("the device expects {expected} queues, activation brought {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {index} is invalid: {source}")]
    InvalidQueue {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("the device is not activated")]
    NotActivated,
    #[error("the device needs a reset before it serves requests again")]
    NeedsReset,
    #[error("queue {index}: {source}")]
    Queue {
        index: usize,
        source: virtio_queue::Error,
    },
}

pub type Result<T> = std::result::Result<T, VirtioError>;

/// A device behind a virtio transport.
///
/// The transport owns feature negotiation and queue configuration; after DRIVER_OK it
/// hands the device guest memory, the validated queues and the interrupt. From then on
/// the device holds everything it needs, so `process_queue` can be called by whoever
/// learns of a notification: the transport's QueueNotify register today, an event loop
/// woken by a KVM ioeventfd later.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue; the length is the number of queues. Each must be
    /// a power of two (virtio-queue refuses others).
    fn queue_max_sizes(&self) -> &[u16];

    /// Device-specific feature bits offered. The transport adds its own
    /// (VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;

    /// The device configuration space, as the driver reads it from offset 0x100.
    fn config_space(&self) -> &[u8];

    /// A driver write to the configuration space, already checked to lie within it.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            offset,
            len = data.len(),
            "virtio: write to read-only config space ignored"
        );
    }

    /// Starts serving: `queues` are ready and lie in `memory`; `features` are those the
    /// driver accepted.
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        features: u64,
    ) -> Result<()>;

    /// Serves what the driver made available on queue `index`; returns how many
    /// requests were completed.
    fn process_queue(&mut self, index: usize) -> Result<usize>;

    /// Back to the state before activation (the driver wrote 0 to Status).
    fn reset(&mut self);
}

/// The device's interrupt line to the driver: the InterruptStatus bits and an eventfd
/// the VMM registers with KVM_IRQFD for the device's GSI. Shared between the transport
/// (which reads and acknowledges the bits) and the activated device (which raises
/// them, possibly on another thread).
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

/// InterruptStatus bit 0: the device used buffers.
pub const INT_USED_BUFFER: u32 = VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit 1: the configuration (or the device status) changed.
pub const INT_CONFIG_CHANGE: u32 = VIRTIO_MMIO_INT_CONFIG;

impl IrqTrigger {
    pub fn new() -> Result<Self> {
        // Non-blocking: a counter at its maximum means an interrupt is already pending,
        // and the signalling thread must not wait for the guest to take it.
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt,
        })
    }

    /// The eventfd to register with KVM_IRQFD.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver has handled these bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn signal_used(&self) {
        self.signal(INT_USED_BUFFER);
    }

    pub fn signal_config(&self) {
        self.signal(INT_CONFIG_CHANGE);
    }

    /// The device stops serving until the driver resets it: Status shows
    /// DEVICE_NEEDS_RESET and the driver gets a configuration-change interrupt, as the
    /// spec (§2.1.2) has it.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Device reset: no pending bits, no error. A count already in the eventfd stays
    /// (KVM may have consumed it); a spurious interrupt finds InterruptStatus clear.
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            // EAGAIN: the counter is saturated, so an interrupt is pending anyway.
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::error!("virtio: cannot signal the interrupt eventfd: {e}");
            }
        }
    }
}
