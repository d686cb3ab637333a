//! The device side of split virtqueues: taking chains off the available ring, walking
//! and validating their descriptors, putting them on the used ring.
//!
//! virtio-queue checks the avail index against the queue size, the ring layout
//! (`Queue::is_valid`) and refuses used entries for out-of-range heads. Its
//! `DescriptorChain` iterator is not used here: it ends a chain silently on a next
//! index out of range or a loop (so a truncated chain looks complete), follows indirect
//! tables whether or not the feature was negotiated, and leaves buffer addresses
//! unchecked. `walk` reads each descriptor once into a local copy (a guest rewriting
//! the table mid-request cannot change what was checked) and refuses the chain on any
//! of those.

use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

use super::{IrqTrigger, Result, VirtioError};

/// One buffer of a validated chain: non-empty and inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE); device-readable otherwise.
    pub writable: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("head index {0} is outside the queue")]
    HeadOutOfRange(u16),
    #[error("descriptor {index} links to {next}, outside the queue")]
    NextOutOfRange { index: u16, next: u16 },
    #[error("the chain is longer than the queue ({0} descriptors): a loop")]
    TooLong(u16),
    #[error("descriptor {0} is indirect, a feature this device does not offer")]
    Indirect(u16),
    #[error("descriptor {0} is empty")]
    ZeroLength(u16),
    #[error("descriptor {index}: {len} bytes at {addr:#x} are not all guest memory")]
    OutsideMemory { index: u16, addr: u64, len: u32 },
    #[error("cannot read descriptor {index}: {source}")]
    Read {
        index: u16,
        source: GuestMemoryError,
    },
}

/// The buffers of the chain starting at `head` in a table of `size` descriptors at
/// `table`. At most `size` buffers, so the allocation is bounded by the queue size the
/// device chose as maximum.
pub(crate) fn walk(
    memory: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> std::result::Result<Vec<Buffer>, ChainError> {
    if head >= size {
        return Err(ChainError::HeadOutOfRange(head));
    }
    let mut buffers = Vec::new();
    let mut index = head;
    loop {
        if buffers.len() >= usize::from(size) {
            return Err(ChainError::TooLong(size));
        }
        // The table was checked to hold `size` descriptors when the queue became ready.
        let at = table.unchecked_add(u64::from(index) * 16);
        let desc: Descriptor = memory
            .read_obj(at)
            .map_err(|source| ChainError::Read { index, source })?;
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect(index));
        }
        let len = desc.len();
        if len == 0 {
            return Err(ChainError::ZeroLength(index));
        }
        let addr = desc.addr();
        let inside = addr.checked_add(u64::from(len)).is_some()
            && GuestMemoryBackend::check_range(memory, addr, len as usize);
        if !inside {
            return Err(ChainError::OutsideMemory {
                index,
                addr: addr.raw_value(),
                len,
            });
        }
        buffers.push(Buffer {
            addr,
            len,
            writable: flags & VRING_DESC_F_WRITE != 0,
        });
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(buffers);
        }
        let next = desc.next();
        if next >= size {
            return Err(ChainError::NextOutOfRange { index, next });
        }
        index = next;
    }
}

/// What an activated device holds: guest memory, its queues, its interrupt. Devices
/// either complete every available chain at once (`process`: blk, rng) or take one
/// chain at a time and may put it back (`pop`, `unpop`, `add_used`: console, vsock).
pub(crate) struct ActiveQueues {
    pub memory: GuestMemoryMmap,
    queues: Vec<Queue>,
    pub irq: Arc<IrqTrigger>,
    /// The device, for the logs.
    device: &'static str,
}

impl ActiveQueues {
    /// The transport hands over only ready queues that passed `Queue::is_valid`; this
    /// checks again so a device activated some other way gets the same guarantees.
    pub fn new(
        device: &'static str,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
        expected: usize,
    ) -> Result<Self> {
        if queues.len() != expected {
            return Err(VirtioError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        if let Some(index) = queues.iter().position(|q| !q.is_valid(&memory)) {
            return Err(VirtioError::QueueNotReady(index));
        }
        Ok(ActiveQueues {
            memory,
            queues,
            irq,
            device,
        })
    }

    /// Completes every chain the driver has made available on queue `index`. `serve`
    /// gets each well-formed chain and returns the bytes it wrote into the chain's
    /// device-writable buffers (the used length); a malformed chain is completed with
    /// length 0 without being touched. Returns how many chains were completed.
    ///
    /// An avail index more than a queue ahead is a driver the device can no longer
    /// trust: the device needs a reset, and serves nothing until it gets one.
    pub fn process(
        &mut self,
        index: usize,
        mut serve: impl FnMut(&GuestMemoryMmap, &[Buffer]) -> u32,
    ) -> Result<usize> {
        if index >= self.queues.len() {
            return Err(VirtioError::NoSuchQueue(index));
        }
        let mut completed = 0;
        let result = loop {
            let (head, buffers) = match self.pop(index) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(completed),
                Err(e) => break Err(e),
            };
            let used_len = buffers.map_or(0, |b| serve(&self.memory, &b));
            if let Err(e) = self.add_used(index, head, used_len) {
                break Err(e);
            }
            completed += 1;
        };
        if completed > 0 {
            self.irq.signal_used();
        }
        result
    }

    /// The next chain on queue `index`: its head and its buffers, or None as buffers
    /// if the chain is malformed (it is still to be completed, with length 0).
    pub fn pop(&mut self, index: usize) -> Result<Option<(u16, Option<Vec<Buffer>>)>> {
        if self.irq.needs_reset() {
            return Err(VirtioError::NeedsReset);
        }
        loop {
            let queue = &mut self.queues[index];
            // A new iterator each time: it rereads (and rechecks) the avail index.
            let head = match queue.iter(&self.memory) {
                Ok(mut avail) => match avail.next() {
                    Some(chain) => chain.head_index(),
                    None => return Ok(None),
                },
                Err(source) => return Err(self.fail(index, source)),
            };
            let table = GuestAddress(queue.desc_table());
            match walk(&self.memory, table, queue.size(), head) {
                Ok(buffers) => return Ok(Some((head, Some(buffers)))),
                // The used ring names chains by head index: this one has none to give
                // back. The driver loses the entry; the queue goes on. Bounded: each
                // turn consumes an avail entry.
                Err(e @ ChainError::HeadOutOfRange(_)) => {
                    tracing::debug!("{} queue {index}: dropped avail entry: {e}", self.device);
                }
                Err(e) => {
                    tracing::debug!(
                        "{} queue {index}: chain at {head} refused: {e}",
                        self.device
                    );
                    return Ok(Some((head, None)));
                }
            }
        }
    }

    /// Puts the chain just popped back: there turned out to be nothing to put in it.
    pub fn unpop(&mut self, index: usize) {
        self.queues[index].go_to_previous_position();
    }

    pub fn add_used(&mut self, index: usize, head: u16, len: u32) -> Result<()> {
        let queue = &mut self.queues[index];
        queue
            .add_used(&self.memory, head, len)
            .map_err(|source| self.fail(index, source))
    }

    fn fail(&self, index: usize, source: virtio_queue::Error) -> VirtioError {
        let e = VirtioError::Queue { index, source };
        tracing::warn!("{}: {e}; the device needs a reset", self.device);
        self.irq.set_needs_reset();
        e
    }
}

/// Copies up to `out.len()` bytes of the chain, from byte `skip` on, into `out`;
/// returns how many. `walk` checked the buffers lie in guest memory.
pub(crate) fn gather(
    memory: &GuestMemoryMmap,
    buffers: &[Buffer],
    mut skip: u64,
    out: &mut [u8],
) -> usize {
    let mut n = 0;
    for b in buffers {
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        if n == out.len() {
            break;
        }
        // Both fit in usize: `len` is a u32, the rest is bounded by `out`.
        let take = ((len - skip) as usize).min(out.len() - n);
        let at = GuestAddress(b.addr.0 + skip);
        if let Err(e) = memory.read_slice(&mut out[n..n + take], at) {
            tracing::warn!("virtio: reading a validated guest buffer failed: {e}");
            break;
        }
        n += take;
        skip = 0;
    }
    n
}

/// Writes `data` across the chain's buffers; returns the bytes written (the used
/// length). The caller read no more than the buffers hold.
pub(crate) fn scatter(memory: &GuestMemoryMmap, buffers: &[Buffer], mut data: &[u8]) -> u32 {
    let mut written = 0;
    for b in buffers {
        if data.is_empty() {
            break;
        }
        let take = data.len().min(b.len as usize);
        if let Err(e) = memory.write_slice(&data[..take], b.addr) {
            tracing::warn!("virtio: writing a validated guest buffer failed: {e}");
            break;
        }
        data = &data[take..];
        // Bounded by `data`, which callers keep within a u32.
        written += take as u32;
    }
    written
}
