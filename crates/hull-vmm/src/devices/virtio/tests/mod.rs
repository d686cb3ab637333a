//! The devices driven as Linux drives them: registers through `MmioDevice`, split rings
//! built by hand in guest memory. Every byte of the data area starts as `GUARD`, so a
//! test can tell exactly which bytes a device wrote.

mod blk;
mod console;
mod hostile;
mod mmio;
mod net;
mod rng;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{IrqTrigger, MmioTransport, VirtioDevice};
use crate::devices::bus::MmioDevice;
use crate::vstate::memory;

pub const MEM_SIZE: u64 = 4 << 20;
/// Ring addresses as Linux would place them for queue 0 (any size up to 256).
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x3000;
pub const USED: u64 = 0x4000;
/// The data area: request headers, status bytes and data buffers live here.
pub const DATA: u64 = 0x10000;
pub const DATA_END: u64 = DATA + (3 << 20);
pub const GUARD: u8 = 0xa5;

pub const OK_STATUS: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
pub const RUNNING: u32 = OK_STATUS | VIRTIO_CONFIG_S_DRIVER_OK;

/// A buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub dev: MmioTransport,
    pub irq: Arc<IrqTrigger>,
    pub q: DriverQueue,
}

impl Guest {
    pub fn new(device: impl VirtioDevice + 'static) -> Guest {
        let mem = memory::anonymous(MEM_SIZE as usize).unwrap();
        fill(&mem, DATA, DATA_END - DATA, GUARD);
        let dev = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(device))).unwrap();
        let irq = dev.interrupt();
        Guest {
            mem,
            dev,
            irq,
            q: DriverQueue::new(256, DESC, AVAIL, USED),
        }
    }

    /// A transport over a device the test keeps a handle on, with the data area up to
    /// `guard_end` filled with GUARD; queue 0 of the driver's view is `rings[0]`.
    pub fn shared(
        device: Arc<Mutex<dyn VirtioDevice>>,
        guard_end: u64,
        ring0: (u64, u64, u64),
    ) -> Guest {
        let mem = memory::anonymous(MEM_SIZE as usize).unwrap();
        fill(&mem, DATA, guard_end - DATA, GUARD);
        let dev = MmioTransport::new(mem.clone(), device).unwrap();
        let irq = dev.interrupt();
        Guest {
            mem,
            dev,
            irq,
            q: DriverQueue::new(256, ring0.0, ring0.1, ring0.2),
        }
    }

    /// Negotiates, makes a queue ready on each of `rings` (desc, avail, used; cleared
    /// first) with 256 entries or the device's maximum if less, and sets DRIVER_OK.
    pub fn bring_up(&mut self, rings: &[(u64, u64, u64)]) {
        self.prepare(rings);
        self.driver_ok();
    }

    /// `bring_up` short of DRIVER_OK.
    pub fn prepare(&mut self, rings: &[(u64, u64, u64)]) {
        self.negotiate();
        for (i, &(d, a, u)) in rings.iter().enumerate() {
            fill(&self.mem, d, 16 * 256, 0);
            fill(&self.mem, a, 6 + 2 * 256, 0);
            fill(&self.mem, u, 6 + 8 * 256, 0);
            self.write32(VIRTIO_MMIO_QUEUE_SEL, i as u32);
            let entries = self.read32(VIRTIO_MMIO_QUEUE_NUM_MAX).min(256);
            self.write32(VIRTIO_MMIO_QUEUE_NUM, entries);
            for (lo, v) in [
                (VIRTIO_MMIO_QUEUE_DESC_LOW, d),
                (VIRTIO_MMIO_QUEUE_AVAIL_LOW, a),
                (VIRTIO_MMIO_QUEUE_USED_LOW, u),
            ] {
                self.write32(lo, v as u32);
                self.write32(lo + 4, 0);
            }
            self.write32(VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(self.read32(VIRTIO_MMIO_QUEUE_READY), 1);
        }
    }

    /// A device brought up as Linux does, with queue 0 of `size` entries.
    pub fn running(device: impl VirtioDevice + 'static, size: u16) -> Guest {
        let mut g = Guest::new(device);
        g.negotiate();
        assert!(g.setup_queue(u32::from(size), DESC, AVAIL, USED));
        g.driver_ok();
        g
    }

    pub fn read32(&mut self, offset: u32) -> u32 {
        let mut b = [0; 4];
        self.dev.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&mut self, offset: u32, v: u32) {
        self.dev.write(u64::from(offset), &v.to_le_bytes());
    }

    pub fn status(&mut self) -> u32 {
        self.read32(VIRTIO_MMIO_STATUS)
    }

    pub fn add_status(&mut self, bits: u32) {
        let s = self.status();
        self.write32(VIRTIO_MMIO_STATUS, s | bits);
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    pub fn write_driver_features(&mut self, f: u64) {
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES, f as u32);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write32(VIRTIO_MMIO_DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, accept every offered feature, FEATURES_OK (checked to stick).
    pub fn negotiate(&mut self) -> u64 {
        self.write32(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        let f = self.device_features();
        self.write_driver_features(f);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(self.status(), OK_STATUS, "FEATURES_OK did not stick");
        f
    }

    /// Configures queue 0; returns what QueueReady reads back.
    pub fn setup_queue(&mut self, size: u32, desc: u64, avail: u64, used: u64) -> bool {
        self.write32(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(self.read32(VIRTIO_MMIO_QUEUE_READY), 0);
        self.write32(VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo, v) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
            (VIRTIO_MMIO_QUEUE_USED_LOW, used),
        ] {
            self.write32(lo, v as u32);
            self.write32(lo + 4, (v >> 32) as u32);
        }
        self.write32(VIRTIO_MMIO_QUEUE_READY, 1);
        let ready = self.read32(VIRTIO_MMIO_QUEUE_READY) == 1;
        if ready {
            self.q = DriverQueue::new(size as u16, desc, avail, used);
            self.q.clear(&self.mem);
        }
        ready
    }

    pub fn driver_ok(&mut self) {
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(self.status(), RUNNING);
        assert!(self.dev.is_activated());
    }

    /// QueueNotify, under a watchdog: a device that loops forever fails the run.
    pub fn notify(&mut self, queue: u32) {
        let _w = Watchdog::arm(Duration::from_secs(20));
        self.write32(VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }

    /// Publishes a chain, notifies queue 0, and returns the used element it got.
    pub fn submit(&mut self, chain: &[Buf]) -> (u32, u32) {
        let before = self.q.used_idx(&self.mem);
        let head = self.q.add_chain(&self.mem, chain);
        self.q.publish(&self.mem, head);
        self.notify(0);
        assert_eq!(
            self.q.used_idx(&self.mem),
            before.wrapping_add(1),
            "one used entry"
        );
        let (id, len) = self.q.used(&self.mem, before);
        assert_eq!(id, u32::from(head), "used entry names the chain's head");
        assert_eq!(self.take_irq(), Some(1), "eventfd signalled once");
        assert_eq!(
            self.read32(VIRTIO_MMIO_INTERRUPT_STATUS),
            super::INT_USED_BUFFER
        );
        self.write32(VIRTIO_MMIO_INTERRUPT_ACK, super::INT_USED_BUFFER);
        assert_eq!(self.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        (id, len)
    }

    /// Publishes a device-readable chain on `q` (queue number `index`), notifies it,
    /// and checks the device completed it at once with length 0 (it wrote nothing).
    pub fn transmit(&mut self, q: &mut DriverQueue, index: u32, bufs: &[Buf]) {
        let before = q.used_idx(&self.mem);
        let head = q.add_chain(&self.mem, bufs);
        q.publish(&self.mem, head);
        self.notify(index);
        assert_eq!(
            q.used_idx(&self.mem),
            before.wrapping_add(1),
            "tx completed"
        );
        assert_eq!(q.used(&self.mem, before), (u32::from(head), 0));
    }

    /// What the interrupt eventfd counted since the last call; None if nothing.
    pub fn take_irq(&mut self) -> Option<u64> {
        match self.irq.eventfd().read() {
            Ok(n) => Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Every byte of the data area outside `written` still holds GUARD.
    pub fn assert_untouched(&self, written: &[(u64, u64)]) {
        let area = self.bytes(DATA, (DATA_END - DATA) as usize);
        for (i, &b) in area.iter().enumerate() {
            let addr = DATA + i as u64;
            if b != GUARD && !written.iter().any(|&(a, l)| addr >= a && addr < a + l) {
                panic!("byte at {addr:#x} changed to {b:#x}");
            }
        }
    }
}

/// Waits up to `timeout` for a device's host event fd to become readable, as the
/// event loop does.
pub fn host_fd_readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: the caller's device owns the fd and outlives this call.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap();
    poll(&mut fds, ms).unwrap() > 0
}

pub fn fill(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) {
    mem.write_slice(&vec![byte; len as usize], GuestAddress(addr))
        .unwrap();
}

/// The driver's view of a split virtqueue.
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    next_desc: u16,
}

impl DriverQueue {
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        DriverQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    fn clear(&self, mem: &GuestMemoryMmap) {
        let n = u64::from(self.size);
        fill(mem, self.desc, 16 * n, 0);
        fill(mem, self.avail, 6 + 2 * n, 0);
        fill(mem, self.used, 6 + 8 * n, 0);
    }

    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(i)))
            .unwrap();
    }

    /// Writes `bufs` as a chain in the next free descriptors; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let next = (i + 1) % self.size;
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(mem, i, addr, len, flags, next);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Puts `head` on the avail ring and bumps the avail index.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        std::sync::atomic::fence(Ordering::SeqCst);
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The used element at ring position `n` (modulo the size): (id, len).
    pub fn used(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// Aborts the test process if not dropped within `limit`: a hang becomes a failure.
pub struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    pub fn arm(limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !d.load(Ordering::SeqCst) {
                if start.elapsed() > limit {
                    eprintln!("virtio test: device still busy after {limit:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A raw image in the temporary directory, removed on drop.
pub struct TempImage(pub PathBuf);

impl TempImage {
    pub fn new(content: &[u8]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-virtio-blk-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&path, content).unwrap();
        TempImage(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn content(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
