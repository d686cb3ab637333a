//! virtio-rng (entropy device, virtio 1.x §5.4): one queue of device-writable buffers,
//! filled from the host's getrandom(2).

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::queue::{ActiveQueues, Buffer};
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};

pub const QUEUE_SIZE: u16 = 64;
/// Bytes served per chain, however large its buffers: one request must not keep the
/// VMM thread generating randomness for long. Linux asks for far less at a time.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

pub struct Rng {
    active: Option<ActiveQueues>,
    bounce: Vec<u8>,
}

impl Rng {
    pub fn new() -> Self {
        Rng {
            active: None,
            bounce: vec![0; MAX_BYTES_PER_REQUEST],
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
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
        self.active = Some(ActiveQueues::new(
            "virtio-rng",
            memory,
            queues,
            interrupt,
            1,
        )?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<usize> {
        let active = self.active.as_mut().ok_or(VirtioError::NotActivated)?;
        let bounce = &mut self.bounce;
        active.process(index, |memory, chain| fill(memory, chain, bounce))
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// Fills the chain's buffers, up to MAX_BYTES_PER_REQUEST in all; returns the bytes
/// written. A device-readable buffer makes the chain invalid: nothing is written.
fn fill(memory: &GuestMemoryMmap, chain: &[Buffer], bounce: &mut [u8]) -> u32 {
    if chain.iter().any(|b| !b.writable) {
        tracing::debug!("virtio-rng: chain with a device-readable buffer");
        return 0;
    }
    let mut left = bounce.len();
    let mut written = 0;
    for b in chain {
        if left == 0 {
            break;
        }
        let n = left.min(b.len as usize);
        let chunk = &mut bounce[..n];
        if let Err(e) = getrandom(chunk) {
            tracing::warn!("virtio-rng: getrandom: {e}");
            break;
        }
        if let Err(e) = memory.write_slice(chunk, b.addr) {
            tracing::debug!("virtio-rng: cannot write buffer: {e}");
            break;
        }
        left -= n;
        written += n as u32;
    }
    written
}

fn getrandom(mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own.
        let r = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Large requests may be served in parts.
        buf = &mut buf[r as usize..];
    }
    Ok(())
}
