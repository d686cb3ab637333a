//! A malicious driver: bad queue configurations, bad rings, bad descriptor chains.
//! Each test checks that the device neither hangs nor panics, writes nothing outside
//! what it is allowed to, completes (or drops) the bad request as documented, and
//! serves the next good request where it is meant to keep working.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::blk::{blk, request, write_header, BUF, HDR, STATUS};
use super::*;
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::INT_CONFIG_CHANGE;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const OK: (u8, u32) = (0, 513);

/// A blk device on an 8-entry queue, and a check that it still reads sector 0.
fn blk8() -> (Guest, TempImage) {
    let img = TempImage::new(&super::blk::image_bytes(16));
    let g = Guest::running(Block::new(img.path(), false, "h").unwrap(), 8);
    (g, img)
}

fn still_serves(g: &mut Guest, img: &TempImage) {
    let rd = BUF + 0x10000;
    assert_eq!(request(g, VIRTIO_BLK_T_IN, 0, &[(rd, 512, true)]), OK);
    assert_eq!(g.bytes(rd, 512), img.content()[..512]);
}

/// Publishes `head` (whose descriptors the test wrote by hand) and notifies; returns
/// the used element if the device produced one.
fn submit_raw(g: &mut Guest, head: u16) -> Option<(u32, u32)> {
    let before = g.q.used_idx(&g.mem);
    g.q.publish(&g.mem, head);
    g.notify(0);
    let after = g.q.used_idx(&g.mem);
    if after == before {
        assert_eq!(g.take_irq(), None, "no used entry, no interrupt");
        return None;
    }
    assert_eq!(after, before.wrapping_add(1));
    assert_eq!(g.take_irq(), Some(1));
    g.write32(VIRTIO_MMIO_INTERRUPT_ACK, 1);
    Some(g.q.used(&g.mem, before))
}

/// A request (header, one data buffer, status) whose descriptors are written by
/// `descs`, then checks the chain was completed with length 0 and nothing written.
fn refused_chain(descs: &[(u16, u64, u32, u16, u16)]) {
    refused_chain_with_bait(descs, &[]);
}

/// `bait`: descriptors written at table positions beyond the queue (index, addr, len,
/// flags, next), which would complete the chain if the device followed a link there.
fn refused_chain_with_bait(
    descs: &[(u16, u64, u32, u16, u16)],
    bait: &[(u64, u64, u32, u16, u16)],
) {
    let (mut g, img) = blk8();
    let before = img.content();
    write_header(&g, VIRTIO_BLK_T_IN, 0);
    for &(i, addr, len, flags, next) in descs {
        g.q.set_desc(&g.mem, i, addr, len, flags, next);
    }
    let mut written = vec![(HDR, 16)];
    for &(i, addr, len, flags, next) in bait {
        let at = DESC + 16 * i;
        g.mem.write_obj(addr, GuestAddress(at)).unwrap();
        g.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        g.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        g.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        written.push((at, 16));
    }
    assert_eq!(
        submit_raw(&mut g, descs[0].0),
        Some((u32::from(descs[0].0), 0))
    );
    g.assert_untouched(&written);
    assert_eq!(img.content(), before);
    assert_eq!(g.status(), RUNNING);
    still_serves(&mut g, &img);
}

#[test]
fn descriptor_loops_are_refused() {
    // header -> data -> status -> header ...
    refused_chain(&[
        (0, HDR, 16, NEXT, 1),
        (1, BUF, 512, WRITE | NEXT, 2),
        (2, STATUS, 1, WRITE | NEXT, 0),
    ]);
    // A descriptor linking to itself.
    refused_chain(&[(3, STATUS, 1, WRITE | NEXT, 3)]);
}

#[test]
fn next_indexes_outside_the_queue_are_refused() {
    for next in [8, 9, 0xffff] {
        // Where a device ignoring the queue size would find a fitting status byte.
        let bait = (u64::from(next), STATUS, 1, WRITE, 0);
        refused_chain_with_bait(
            &[
                (0, HDR, 16, NEXT, 1),
                (1, BUF, 512, WRITE | NEXT, next),
                (2, STATUS, 1, WRITE, 0),
            ],
            &[bait],
        );
    }
    // A head outside the queue with bait there is dropped, not served.
    let (mut g, img) = blk8();
    write_header(&g, VIRTIO_BLK_T_IN, 0);
    g.q.set_desc(&g.mem, 1, STATUS, 1, WRITE, 0);
    let at = DESC + 16 * 8;
    g.mem.write_obj(HDR, GuestAddress(at)).unwrap();
    g.mem.write_obj(16u32, GuestAddress(at + 8)).unwrap();
    g.mem.write_obj(NEXT, GuestAddress(at + 12)).unwrap();
    g.mem.write_obj(1u16, GuestAddress(at + 14)).unwrap();
    assert_eq!(submit_raw(&mut g, 8), None);
    g.assert_untouched(&[(HDR, 16)]);
    still_serves(&mut g, &img);
}

#[test]
fn buffers_outside_guest_memory_are_refused() {
    let cases = [
        // Crossing the end of memory.
        (MEM_SIZE - 256, 512),
        // Entirely beyond it.
        (MEM_SIZE, 512),
        (MEM_SIZE + 0x10_0000, 1),
        (1 << 40, 512),
    ];
    for (addr, len) in cases {
        refused_chain(&[
            (0, HDR, 16, NEXT, 1),
            (1, addr, len, WRITE | NEXT, 2),
            (2, STATUS, 1, WRITE, 0),
        ]);
        // The status byte out of memory.
        refused_chain(&[(0, HDR, 16, NEXT, 1), (1, addr.max(MEM_SIZE), 1, WRITE, 0)]);
        // The header out of memory.
        refused_chain(&[(0, addr, len, NEXT, 1), (1, STATUS, 1, WRITE, 0)]);
    }
}

#[test]
fn address_plus_length_overflow_is_refused() {
    for (addr, len) in [
        (u64::MAX - 0xff, 0x200),
        (u64::MAX, 1),
        (u64::MAX - 511, 512),
    ] {
        refused_chain(&[
            (0, HDR, 16, NEXT, 1),
            (1, addr, len, WRITE | NEXT, 2),
            (2, STATUS, 1, WRITE, 0),
        ]);
    }
}

#[test]
fn zero_length_descriptors_are_refused() {
    refused_chain(&[
        (0, HDR, 16, NEXT, 1),
        (1, BUF, 0, WRITE | NEXT, 2),
        (2, STATUS, 1, WRITE, 0),
    ]);
    refused_chain(&[(0, HDR, 0, NEXT, 1), (1, STATUS, 1, WRITE, 0)]);
    refused_chain(&[(0, HDR, 16, NEXT, 1), (1, STATUS, 0, WRITE, 0)]);
    // And on the rng.
    let mut g = Guest::running(Rng::new(), 8);
    g.q.set_desc(&g.mem, 0, BUF, 0, WRITE, 0);
    assert_eq!(submit_raw(&mut g, 0), Some((0, 0)));
    g.assert_untouched(&[]);
}

#[test]
fn indirect_descriptors_are_refused() {
    // A well-formed indirect table (header, data, status) the device must not follow:
    // INDIRECT_DESC is not offered.
    let (mut g, img) = blk8();
    write_header(&g, VIRTIO_BLK_T_IN, 0);
    let table = DATA + 0x8000;
    let entries: [(u64, u32, u16, u16); 3] = [
        (HDR, 16, NEXT, 1),
        (BUF, 512, WRITE | NEXT, 2),
        (STATUS, 1, WRITE, 0),
    ];
    for (i, (addr, len, flags, next)) in entries.into_iter().enumerate() {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        g.mem
            .write_slice(&d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    g.q.set_desc(&g.mem, 0, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    assert_eq!(submit_raw(&mut g, 0), Some((0, 0)));
    g.assert_untouched(&[(HDR, 16), (table, 48)]);
    // Indirect in the middle of a chain.
    g.q.set_desc(&g.mem, 1, HDR, 16, NEXT, 2);
    g.q.set_desc(&g.mem, 2, table, 48, VRING_DESC_F_INDIRECT as u16 | NEXT, 3);
    g.q.set_desc(&g.mem, 3, STATUS, 1, WRITE, 0);
    assert_eq!(submit_raw(&mut g, 1), Some((1, 0)));
    g.assert_untouched(&[(HDR, 16), (table, 48)]);
    still_serves(&mut g, &img);
}

#[test]
fn head_indexes_outside_the_queue_are_dropped() {
    let (mut g, img) = blk8();
    for head in [8, 1000, 0xffff] {
        // No used entry can name such a head; the avail entry is consumed.
        assert_eq!(submit_raw(&mut g, head), None);
    }
    assert_eq!(g.status(), RUNNING);
    g.assert_untouched(&[]);
    still_serves(&mut g, &img);
    assert_eq!(g.q.used_idx(&g.mem), 1);
}

#[test]
fn a_full_ring_is_served() {
    // The avail index may run exactly a queue ahead.
    let (mut g, _img) = blk8();
    write_header(&g, VIRTIO_BLK_T_IN, 0);
    for i in 0..4u16 {
        let d = 2 * i;
        g.q.set_desc(&g.mem, d, HDR, 16, NEXT, d + 1);
        g.q.set_desc(&g.mem, d + 1, STATUS + u64::from(i), 1, WRITE, 0);
    }
    for k in 0..8u16 {
        let slot = AVAIL + 4 + 2 * u64::from(k);
        g.mem.write_obj(2 * (k % 4), GuestAddress(slot)).unwrap();
    }
    g.q.set_avail_idx(&g.mem, 8);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), 8);
    for k in 0..8 {
        assert_eq!(g.q.used(&g.mem, k), (u32::from(2 * (k % 4)), 1));
    }
    assert_eq!(g.status(), RUNNING);
}

#[test]
fn an_avail_index_too_far_ahead_needs_a_reset() {
    let (mut g, img) = blk8();
    let before = img.content();
    write_header(&g, VIRTIO_BLK_T_OUT, 0);
    fill(&g.mem, BUF, 512, 0x55);
    g.q.add_chain(
        &g.mem,
        &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)],
    );
    for idx in [9u16, 0x8000, 0xffff] {
        g.q.set_avail_idx(&g.mem, idx);
        g.notify(0);
        assert_eq!(g.q.used_idx(&g.mem), 0);
    }
    assert_eq!(g.status(), RUNNING | VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(g.take_irq(), Some(1), "one config interrupt");
    // Even a sane index is not served until the reset.
    g.q.set_avail_idx(&g.mem, 1);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), 0);
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (BUF, 512)]);
    // Reset and a full re-init bring it back.
    g.negotiate();
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert!(g.setup_queue(8, DESC, AVAIL, USED));
    g.driver_ok();
    still_serves(&mut g, &img);
}

#[test]
fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
    let img = TempImage::new(&super::blk::image_bytes(16));
    let mut g = Guest::new(Block::new(img.path(), false, "h").unwrap());
    g.negotiate();
    for size in [0, 3, 100, 255, 512, 0x1_0000, 0xffff_ffff] {
        assert!(!g.setup_queue(size, DESC, AVAIL, USED), "size {size}");
    }
    assert!(g.setup_queue(1, DESC, AVAIL, USED));
    g.write32(VIRTIO_MMIO_QUEUE_READY, 0);
    assert!(g.setup_queue(256, DESC, AVAIL, USED));
    g.driver_ok();
    still_serves(&mut g, &img);
}

#[test]
fn misaligned_rings_are_refused() {
    let mut g = Guest::new(Rng::new());
    g.negotiate();
    let cases = [
        (DESC + 8, AVAIL, USED),
        (DESC + 1, AVAIL, USED),
        (DESC, AVAIL + 1, USED),
        (DESC, AVAIL, USED + 2),
        (DESC, AVAIL, USED + 1),
    ];
    for (d, a, u) in cases {
        assert!(!g.setup_queue(16, d, a, u), "{d:#x} {a:#x} {u:#x}");
    }
    // The smallest alignments the spec allows are accepted.
    assert!(g.setup_queue(16, DESC + 16, AVAIL + 2, USED + 4));
    g.driver_ok();
    assert_eq!(g.submit(&[(BUF, 16, true)]).1, 16);
}

#[test]
fn rings_outside_guest_memory_are_refused() {
    let mut g = Guest::new(Rng::new());
    g.negotiate();
    let cases = [
        // The descriptor table's last entry crosses the end of memory.
        (MEM_SIZE - 16 * 16 + 16, AVAIL, USED),
        (MEM_SIZE, AVAIL, USED),
        (DESC, MEM_SIZE - 4, USED),
        (DESC, AVAIL, MEM_SIZE - 8),
        (DESC | 1 << 32, AVAIL, USED),
        (DESC, AVAIL, u64::MAX - 3),
        (u64::MAX - 15, AVAIL, USED),
        // virtio-queue takes an avail ring at 0 for none.
        (DESC, 0, USED),
    ];
    for (d, a, u) in cases {
        assert!(!g.setup_queue(16, d, a, u), "{d:#x} {a:#x} {u:#x}");
    }
    // Up against the end of memory is fine.
    assert!(g.setup_queue(16, MEM_SIZE - 16 * 16, AVAIL, USED));
    g.driver_ok();
    assert_eq!(g.submit(&[(BUF, 16, true)]).1, 16);
}

#[test]
fn driver_ok_without_a_ready_queue_needs_a_reset() {
    let mut g = Guest::new(Rng::new());
    g.negotiate();
    // The driver ignores that QueueReady did not stick.
    assert!(!g.setup_queue(16, DESC + 1, AVAIL, USED));
    g.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!g.dev.is_activated());
    assert_ne!(g.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(g.take_irq(), Some(1));
    // Notifying an inactive device does nothing.
    g.q = DriverQueue::new(16, DESC, AVAIL, USED);
    let head = g.q.add_chain(&g.mem, &[(BUF, 16, true)]);
    g.q.publish(&g.mem, head);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), 0);
    g.assert_untouched(&[]);
    // Reset clears DEVICE_NEEDS_RESET; then all is well.
    g.write32(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(g.status(), 0);
    g.negotiate();
    assert!(g.setup_queue(16, DESC, AVAIL, USED));
    g.driver_ok();
    assert_eq!(g.submit(&[(BUF, 16, true)]).1, 16);
}

#[test]
fn a_chain_as_long_as_the_queue_is_served() {
    // Not a loop: every descriptor of a 4-entry queue, once.
    let mut g = Guest::running(Rng::new(), 4);
    let bufs: Vec<Buf> = (0..4).map(|i| (BUF + 0x100 * i, 8, true)).collect();
    assert_eq!(g.submit(&bufs).1, 32);
}

#[test]
fn a_wild_blk_request_batch_leaves_the_disk_and_memory_intact() {
    // Many bad chains in one notify, between good ones: each gets its own used entry.
    let (mut g, img) = blk(false);
    let before = img.content();
    write_header(&g, VIRTIO_BLK_T_OUT, 1);
    fill(&g.mem, BUF, 512, 0x66);
    let bad: [&[(u64, u32, u16)]; 4] = [
        &[(HDR, 16, NEXT), (BUF, 512, NEXT), (STATUS, 1, NEXT)],
        &[
            (HDR, 16, NEXT),
            (MEM_SIZE - 1, 512, NEXT),
            (STATUS, 1, WRITE),
        ],
        &[(HDR, 16, NEXT), (BUF, 0, NEXT), (STATUS, 1, WRITE)],
        &[
            (HDR, 16, WRITE | NEXT),
            (BUF, 512, NEXT),
            (STATUS, 1, WRITE),
        ],
    ];
    let mut heads = Vec::new();
    let mut d = 0u16;
    for chain in bad {
        heads.push(d);
        for &(addr, len, flags) in chain {
            g.q.set_desc(&g.mem, d, addr, len, flags, d + 1);
            d += 1;
        }
        let slot = AVAIL + 4 + 2 * u64::from(g.q.avail_idx);
        g.mem
            .write_obj(heads[heads.len() - 1], GuestAddress(slot))
            .unwrap();
        g.q.avail_idx += 1;
    }
    g.q.set_avail_idx(&g.mem, g.q.avail_idx);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), 4);
    // 1st: the status descriptor links on into the 2nd chain, out of memory: refused.
    // 2nd, 3rd: refused (memory, zero length). 4th: writable header, IOERR status.
    let used: Vec<_> = (0..4).map(|k| g.q.used(&g.mem, k)).collect();
    assert_eq!(used[0], (u32::from(heads[0]), 0));
    assert_eq!(used[1], (u32::from(heads[1]), 0));
    assert_eq!(used[2], (u32::from(heads[2]), 0));
    assert_eq!(used[3], (u32::from(heads[3]), 1));
    assert_eq!(g.bytes(STATUS, 1)[0], 1);
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (BUF, 512), (STATUS, 1)]);
}
