//! hull-vmm's virtio devices driven by a hostile guest: the fuzzer's bytes are a
//! program of driver operations on the MMIO transport and the split rings in guest
//! memory (descriptor chains, direct and indirect, avail ring writes, notifications,
//! register reads and writes, resets), interleaved with host-side events for devices
//! that have a host end (a tap's frames, vsock and console clients).
//!
//! Everything goes through hull-vmm's public API, as the VMM itself wires a device:
//! `MmioTransport` over `GuestMemoryMmap`, notifications through QueueNotify.

mod host;

use std::sync::{Arc, Mutex};

use hull_vmm::devices::bus::MmioDevice;
use hull_vmm::devices::virtio::{MmioTransport, VirtioDevice};
use hull_vmm::vstate::memory;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::Input;
pub use host::{blk, console, mmio, net, vsock};

/// Guest memory: rings below DATA, buffers from DATA up.
const MEM_SIZE: usize = 1 << 20;
const DATA: u64 = 0x1_0000;
/// Queue `q`'s rings: descriptor table, driver area, device area.
fn rings(q: usize) -> (u64, u64, u64) {
    let base = 0x1000 + 0x3000 * q as u64;
    (base, base + 0x1000, base + 0x2000)
}
/// Never more queues set up than this (vsock has 3; more fit below DATA).
const MAX_QUEUES: usize = 4;

/// What a device with a host end does when the program says "host event".
pub trait HostSide {
    fn event(&mut self, input: &mut Input);
}

/// No host end (virtio-blk): a host event does nothing.
pub struct NoHost;

impl HostSide for NoHost {
    fn event(&mut self, _: &mut Input) {}
}

/// The driver's view of one split queue.
#[derive(Clone, Copy)]
struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    next_desc: u16,
    avail_idx: u16,
}

pub struct Driver {
    mem: GuestMemoryMmap,
    dev: MmioTransport,
    queues: Vec<DriverQueue>,
    max_sizes: Vec<u16>,
}

impl Driver {
    fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let max_sizes = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_max_sizes()
            .to_vec();
        let mem = memory::anonymous(MEM_SIZE).expect("guest memory");
        let dev = MmioTransport::new(mem.clone(), device).expect("transport");
        Driver {
            mem,
            dev,
            queues: Vec::new(),
            max_sizes,
        }
    }

    fn read32(&mut self, offset: u32) -> u32 {
        let mut b = [0; 4];
        self.dev.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(&mut self, offset: u32, v: u32) {
        self.dev.write(u64::from(offset), &v.to_le_bytes());
    }

    fn add_status(&mut self, bits: u32) {
        let s = self.read32(VIRTIO_MMIO_STATUS);
        self.write32(VIRTIO_MMIO_STATUS, s | bits);
    }

    /// Reset, then what Linux does up to DRIVER_OK: the features the input picks of
    /// those offered, queues of the sizes it picks.
    fn bring_up(&mut self, input: &mut Input) {
        self.write32(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let mask = input.u64().unwrap_or(u64::MAX);
        for sel in 0..2 {
            self.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let offered = self.read32(VIRTIO_MMIO_DEVICE_FEATURES);
            self.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            // VERSION_1 (bit 32) unless the mask's top bit asks to leave it out.
            let version = u32::from(sel == 1 && mask >> 63 == 0) << (VIRTIO_F_VERSION_1 - 32);
            let m = (mask >> (32 * sel)) as u32 | version;
            self.write32(VIRTIO_MMIO_DRIVER_FEATURES, offered & m);
        }
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.queues.clear();
        let sizes = self.max_sizes.clone();
        for (q, max) in sizes.into_iter().enumerate().take(MAX_QUEUES) {
            let shift = input.u8().unwrap_or(4) % 9;
            let size = (1u16 << shift).min(max);
            let (desc, avail, used) = rings(q);
            let zero = vec![0u8; 0x3000];
            let _ = self.mem.write_slice(&zero, GuestAddress(desc));
            self.write32(VIRTIO_MMIO_QUEUE_SEL, q as u32);
            self.write32(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
            for (lo, v) in [
                (VIRTIO_MMIO_QUEUE_DESC_LOW, desc),
                (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
                (VIRTIO_MMIO_QUEUE_USED_LOW, used),
            ] {
                self.write32(lo, v as u32);
                self.write32(lo + 4, 0);
            }
            self.write32(VIRTIO_MMIO_QUEUE_READY, 1);
            self.queues.push(DriverQueue {
                size,
                desc,
                avail,
                next_desc: 0,
                avail_idx: 0,
            });
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    }

    fn queue(&mut self, input: &mut Input) -> Option<usize> {
        let n = self.queues.len().max(1);
        Some(usize::from(input.u8()?) % n).filter(|&q| q < self.queues.len())
    }

    /// A buffer address: mostly in the data area (where a real driver puts them), or
    /// any 64-bit value.
    fn addr(input: &mut Input) -> Option<u64> {
        let mode = input.u8()?;
        if mode & 0x80 != 0 {
            return input.u64();
        }
        Some(DATA + u64::from(input.u16()?) * 8 + u64::from(mode & 7))
    }

    /// A buffer length: mostly small, sometimes any 32-bit value.
    fn len(input: &mut Input) -> Option<u32> {
        let mode = input.u8()?;
        if mode & 0x80 != 0 {
            return input.u32();
        }
        Some(u32::from(input.u16()? & 0x3fff))
    }

    fn write_desc(&self, q: DriverQueue, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        let at = q.desc + 16 * u64::from(i % q.size.max(1));
        let _ = self.mem.write_slice(&d, GuestAddress(at));
    }

    /// A chain of 1 to 8 buffers in the next free descriptors, published.
    fn chain(&mut self, input: &mut Input) -> Option<()> {
        let q = self.queue(input)?;
        let n = input.u8()? % 8 + 1;
        let dq = self.queues[q];
        let head = dq.next_desc;
        let mut i = head;
        for k in 0..n {
            let (addr, len, w) = (Self::addr(input)?, Self::len(input)?, input.u8()?);
            let mut flags = if w & 1 != 0 { VRING_DESC_F_WRITE } else { 0 } as u16;
            let next = (i + 1) % dq.size.max(1);
            if k + 1 < n {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(dq, i, addr, len, flags, next);
            i = next;
        }
        self.queues[q].next_desc = i;
        self.publish(q, head);
        Some(())
    }

    /// An indirect table of 1 to 8 descriptors in the data area, referenced by one
    /// descriptor, published.
    fn indirect(&mut self, input: &mut Input) -> Option<()> {
        let q = self.queue(input)?;
        let n = input.u8()? % 8 + 1;
        let table = DATA + u64::from(input.u16()?) * 16;
        for k in 0..u64::from(n) {
            let (addr, len, w) = (Self::addr(input)?, Self::len(input)?, input.u8()?);
            let mut flags = if w & 1 != 0 { VRING_DESC_F_WRITE } else { 0 } as u16;
            if k + 1 < u64::from(n) {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if w & 2 != 0 {
                u16::from(w)
            } else {
                k as u16 + 1
            };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            let _ = self.mem.write_slice(&d, GuestAddress(table + 16 * k));
        }
        let dq = self.queues[q];
        let head = dq.next_desc;
        let flags = VRING_DESC_F_INDIRECT as u16 | input.u8()? as u16 & 3;
        self.write_desc(dq, head, table, u32::from(n) * 16, flags, 0);
        self.queues[q].next_desc = (head + 1) % dq.size.max(1);
        self.publish(q, head);
        Some(())
    }

    fn publish(&mut self, q: usize, head: u16) {
        let dq = &mut self.queues[q];
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size.max(1));
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let idx = dq.avail_idx;
        let at = dq.avail + 2;
        let _ = self.mem.write_obj(idx, GuestAddress(at));
    }

    /// One operation of the program; None when the input ran out.
    fn step(&mut self, input: &mut Input, host: &mut dyn HostSide) -> Option<()> {
        match input.u8()? % 12 {
            0 | 1 => self.chain(input)?,
            2 => self.indirect(input)?,
            3 => {
                // A raw descriptor: anything in any slot.
                let q = self.queue(input)?;
                let dq = self.queues[q];
                let at = dq.desc + 16 * u64::from(input.u16()? % dq.size.max(1));
                let _ = self.mem.write_slice(input.bytes(16)?, GuestAddress(at));
            }
            4 => {
                let q = self.queue(input)?;
                let head = input.u16()?;
                self.publish(q, head);
            }
            5 => {
                // The driver area's flags and idx, raw.
                let q = self.queue(input)?;
                let at = self.queues[q].avail;
                let _ = self.mem.write_slice(input.bytes(4)?, GuestAddress(at));
            }
            6 | 7 => {
                let q = u32::from(input.u8()? % (MAX_QUEUES as u8 + 1));
                self.write32(VIRTIO_MMIO_QUEUE_NOTIFY, q);
            }
            8 => {
                let at = DATA + u64::from(input.u16()?) * 8;
                let n = usize::from(input.u8()?);
                let _ = self.mem.write_slice(input.up_to(n), GuestAddress(at));
            }
            9 => self.register(input)?,
            10 => host.event(input),
            _ => self.bring_up(input),
        }
        Some(())
    }

    /// A register access anywhere in the window, of any width.
    fn register(&mut self, input: &mut Input) -> Option<()> {
        let op = input.u8()?;
        let offset = u64::from(input.u16()? % 0x200);
        let width = [1, 2, 4, 8][usize::from(op >> 1 & 3)];
        if op & 1 == 0 {
            let mut b = [0u8; 8];
            self.dev.read(offset, &mut b[..width]);
        } else {
            let v = input.u64()?.to_le_bytes();
            self.dev.write(offset, &v[..width]);
        }
        Some(())
    }
}

/// Runs the program in `input` against `device` (whose host end is `host`), after a
/// bring-up unless `raw` (then the program starts at reset, registers untouched).
fn run(
    input: &mut Input,
    device: Arc<Mutex<dyn VirtioDevice>>,
    host: &mut dyn HostSide,
    raw: bool,
) {
    let mut d = Driver::new(device);
    if !raw {
        d.bring_up(input);
    }
    let mut steps = 0;
    while steps < 256 && d.step(input, host).is_some() {
        steps += 1;
    }
    // A reset must always be possible and leave the device quiet.
    d.write32(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.read32(VIRTIO_MMIO_STATUS), 0, "status after reset");
}
