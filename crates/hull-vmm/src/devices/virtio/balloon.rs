//! virtio-balloon with free page reporting only (virtio 1.x §5.5,
//! VIRTIO_BALLOON_F_REPORTING): the guest tells the device which of its free pages it
//! may take back, and the device drops them from the host (MADV_DONTNEED), so memory a
//! guest touched once (boot-time allocations, poisoned init sections, a container that
//! came and went) stops counting against the host. The next guest access gets a zero
//! page, or the file's bytes where guest memory maps a file (`boot::shared`): free
//! pages have no contents the guest relies on (the device offers no page poisoning).
//!
//! No inflation: `num_pages` stays 0, so the inflate and deflate queues only exist
//! because the driver numbers the reporting queue after them. A chain the driver puts
//! there anyway is completed untouched.
//!
//! Only for anonymous guest memory: MADV_DONTNEED on a shared memfd or hugetlbfs
//! mapping would not free anything (`config` refuses that combination).

use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::queue::{ActiveQueues, Buffer};
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};

/// VIRTIO_BALLOON_F_REPORTING.
pub const F_REPORTING: u64 = 1 << 5;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// Linux reports at most 32 ranges per request (PAGE_REPORTING_CAPACITY).
pub const QUEUE_SIZE: u16 = 32;
const PAGE: u64 = 4096;

pub struct Balloon {
    active: Option<ActiveQueues>,
    /// `num_pages` (always 0) and `actual`, which the driver writes back.
    config: [u8; 8],
    /// Bytes given back to the host since the device was built, for the log and tests.
    pub reported_bytes: u64,
}

impl Balloon {
    pub fn new() -> Self {
        Balloon {
            active: None,
            config: [0; 8],
            reported_bytes: 0,
        }
    }
}

impl Default for Balloon {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        F_REPORTING
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let end = offset as usize + data.len();
        if offset >= 4 && end <= self.config.len() {
            self.config[offset as usize..end].copy_from_slice(data);
        } else {
            tracing::debug!(offset, "virtio-balloon: write to num_pages ignored");
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        features: u64,
    ) -> Result<()> {
        if features & F_REPORTING == 0 {
            // Without reporting the driver sets up two queues, and there is nothing to
            // serve: say why the device stays idle.
            tracing::warn!("virtio-balloon: the driver did not accept free page reporting");
        }
        let expected = queues.len();
        self.active = Some(ActiveQueues::new(
            "virtio-balloon",
            memory,
            queues,
            interrupt,
            expected,
        )?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<usize> {
        let active = self.active.as_mut().ok_or(VirtioError::NotActivated)?;
        match index {
            REPORTING => {
                let mut freed = 0;
                let done = active.process(index, |memory, chain| {
                    freed += discard(memory, chain);
                    0
                })?;
                self.reported_bytes += freed;
                Ok(done)
            }
            INFLATE | DEFLATE => active.process(index, |_, _| 0),
            _ => Err(VirtioError::NoSuchQueue(index)),
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// Drops the whole pages of each buffer from the host; returns the bytes dropped.
/// `walk` already checked each buffer lies in guest memory.
fn discard(memory: &GuestMemoryMmap, chain: &[Buffer]) -> u64 {
    let mut freed = 0;
    for b in chain {
        let start = b.addr.0.next_multiple_of(PAGE);
        let end = (b.addr.0 + u64::from(b.len)) & !(PAGE - 1);
        if end <= start {
            continue;
        }
        let len = (end - start) as usize;
        // One region: a range across two regions is refused whole.
        if memory.get_slice(GuestAddress(start), len).is_err() {
            tracing::debug!(start, len, "virtio-balloon: a range across regions");
            continue;
        }
        let Ok(host) = memory.get_host_address(GuestAddress(start)) else {
            continue;
        };
        // SAFETY: `host..host+len` is guest memory (checked just above), a mapping this
        // process owns for the VM's life; dropping its pages changes only what the
        // guest, which gave them up, reads there next. No host reference points into
        // guest memory across this call.
        let r = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
        if r == 0 {
            freed += len as u64;
        } else {
            tracing::debug!(
                start,
                len,
                "virtio-balloon: madvise: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn resident_pages(memory: &GuestMemoryMmap, at: u64, pages: usize) -> usize {
        let host = memory.get_host_address(GuestAddress(at)).unwrap();
        let mut vec = vec![0u8; pages];
        // SAFETY: mincore reads the residency of our own mapping into `vec`, which
        // has one byte per page.
        let r = unsafe { libc::mincore(host.cast(), pages * PAGE as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn reported_pages_leave_the_host_and_read_back_as_zero() {
        let memory = crate::vstate::memory::anonymous(1 << 20).unwrap();
        memory
            .write_slice(&[0xaa; 8 * 4096], GuestAddress(0x10000))
            .unwrap();
        assert_eq!(resident_pages(&memory, 0x10000, 8), 8);
        // A range that starts and ends inside pages: only the whole pages within it go.
        let chain = [Buffer {
            addr: GuestAddress(0x10800),
            len: 5 * 4096,
            writable: true,
        }];
        assert_eq!(discard(&memory, &chain), 4 * 4096);
        assert_eq!(resident_pages(&memory, 0x10000, 8), 4);
        let mut page = [0xffu8; 4096];
        memory.read_slice(&mut page, GuestAddress(0x11000)).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        memory.read_slice(&mut page, GuestAddress(0x10000)).unwrap();
        assert!(
            page.iter().all(|&b| b == 0xaa),
            "a page outside the range was dropped"
        );
    }

    #[test]
    fn the_driver_may_write_actual_but_not_num_pages() {
        let mut b = Balloon::new();
        b.write_config(4, &7u32.to_le_bytes());
        b.write_config(0, &9u32.to_le_bytes());
        assert_eq!(b.config_space(), &[0, 0, 0, 0, 7, 0, 0, 0]);
    }
}
