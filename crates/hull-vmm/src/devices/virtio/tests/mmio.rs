//! The transport: identification, register widths, the status handshake, feature
//! negotiation, queue configuration and reset.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::blk::{blk, BUF as BLK_BUF};
use super::*;
use crate::devices::virtio::mmio::{
    cmdline_entry, MAGIC_VALUE, MMIO_WINDOW, QUEUE_NOTIFY_OFFSET, VENDOR_ID,
};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{INT_CONFIG_CHANGE, INT_USED_BUFFER};

const BUF: u64 = DATA + 0x1000;
const ACK_DRIVER: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

fn rng() -> Guest {
    Guest::new(Rng::new())
}

#[test]
fn identifies_as_virtio_mmio_version_2() {
    let mut g = rng();
    assert_eq!(g.read32(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(MAGIC_VALUE.to_le_bytes(), *b"virt");
    assert_eq!(g.read32(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
    assert_eq!(g.read32(VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(g.read32(VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(g.status(), 0);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    g.write32(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 0);
    // Linux stops looking for queues where QueueNumMax reads 0.
    g.write32(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 0);
    // Write-only and unknown registers read 0.
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    assert_eq!(g.read32(0x0f0), 0);
}

#[test]
fn the_transport_fits_the_mmio_bus_and_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<IrqTrigger>();
    shareable::<std::sync::Arc<std::sync::Mutex<dyn crate::devices::virtio::VirtioDevice>>>();
    let g = rng();
    let _: Box<dyn MmioDevice> = Box::new(g.dev);
    assert_eq!(QUEUE_NOTIFY_OFFSET, 0x50);
}

#[test]
fn cmdline_entry_names_window_and_irq() {
    assert_eq!(MMIO_WINDOW, 0x1000);
    assert_eq!(
        cmdline_entry(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
    assert_eq!(
        cmdline_entry(0xd000_1000, 6),
        "virtio_mmio.device=4K@0xd0001000:6"
    );
}

#[test]
fn registers_ignore_accesses_of_other_widths() {
    let mut g = rng();
    for len in [1, 2, 8] {
        let mut b = vec![0xffu8; len];
        g.dev.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert!(b.iter().all(|&x| x == 0), "{len}-byte read of MagicValue");
    }
    let mut b = [0xffu8; 4];
    g.dev.read(2, &mut b);
    assert_eq!(b, [0; 4], "misaligned 32-bit read");
    // Status: 1-, 2- and 8-byte writes and a misaligned one change nothing.
    g.dev.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    g.dev.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0]);
    g.dev
        .write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
    g.dev
        .write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    assert_eq!(g.status(), 0);
    // A running device is not notified by a narrow write.
    g.negotiate();
    assert!(g.setup_queue(64, DESC, AVAIL, USED));
    g.driver_ok();
    let head = g.q.add_chain(&g.mem, &[(BUF, 16, true)]);
    g.q.publish(&g.mem, head);
    g.dev.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &[0, 0]);
    assert_eq!(g.q.used_idx(&g.mem), 0);
    assert_eq!(g.take_irq(), None);
    g.notify(0);
    assert_eq!(g.q.used(&g.mem, 0), (u32::from(head), 16));
}

#[test]
fn config_space_allows_narrow_accesses_within_bounds() {
    let (mut g, _img) = blk(false);
    let capacity = super::blk::SECTORS;
    let read = |g: &mut Guest, off: u64, len: usize| {
        let mut b = vec![0xee; len];
        g.dev.read(0x100 + off, &mut b);
        b
    };
    assert_eq!(read(&mut g, 0, 8), capacity.to_le_bytes());
    assert_eq!(read(&mut g, 0, 2), capacity.to_le_bytes()[..2]);
    assert_eq!(read(&mut g, 1, 1), [(capacity >> 8) as u8]);
    // The blk config space here is 16 bytes: reads past or across its end give 0.
    assert_eq!(
        read(&mut g, 12, 4),
        super::super::blk::SEG_MAX.to_le_bytes()
    );
    assert_eq!(read(&mut g, 12, 8), [0; 8]);
    assert_eq!(read(&mut g, 16, 4), [0; 4]);
    assert_eq!(read(&mut g, 0xeff, 1), [0]);
    // Other widths give 0.
    assert_eq!(read(&mut g, 0, 3), [0; 3]);
    // Writes to the read-only config space change nothing.
    g.dev.write(0x100, &[0xff; 8]);
    g.dev.write(0x10e, &[0xff; 8]);
    assert_eq!(read(&mut g, 0, 8), capacity.to_le_bytes());
}

#[test]
fn features_ok_is_refused_for_features_not_offered() {
    let mut g = rng();
    let offered = g.device_features();
    assert_eq!(offered, 1 << VIRTIO_F_VERSION_1);
    assert_eq!(offered & 1 << VIRTIO_RING_F_INDIRECT_DESC, 0);
    assert_eq!(offered & 1 << VIRTIO_RING_F_EVENT_IDX, 0);
    g.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    g.add_status(VIRTIO_CONFIG_S_DRIVER);
    let refused = [
        offered | 1 << VIRTIO_RING_F_INDIRECT_DESC,
        offered | 1 << VIRTIO_RING_F_EVENT_IDX,
        offered | 1 << 63,
        // A modern transport wants a modern driver.
        0,
    ];
    for f in refused {
        g.write_driver_features(f);
        g.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(g.status(), ACK_DRIVER, "features {f:#x}");
    }
    // A feature bit in a page beyond the second.
    g.write_driver_features(offered);
    g.write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    g.write32(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    g.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(g.status(), ACK_DRIVER);
    // Device features beyond the second page read 0.
    g.write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_FEATURES), 0);
    // Without FEATURES_OK there is no DRIVER_OK.
    g.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(g.status(), ACK_DRIVER);
    assert!(!g.dev.is_activated());
    // After a reset, a correct negotiation succeeds.
    g.negotiate();
    assert_eq!(g.dev.acked_features(), offered);
}

#[test]
fn features_are_frozen_by_features_ok() {
    let mut g = rng();
    let f = g.negotiate();
    g.write_driver_features(0);
    g.write_driver_features(u64::MAX);
    assert_eq!(g.dev.acked_features(), f);
    assert_eq!(g.status(), OK_STATUS);
}

#[test]
fn status_follows_the_handshake_order() {
    let mut g = rng();
    g.write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(g.status(), 0, "DRIVER before ACKNOWLEDGE");
    g.write32(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(
        g.status(),
        VIRTIO_CONFIG_S_ACKNOWLEDGE,
        "FEATURES_OK before DRIVER"
    );
    g.add_status(VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(g.status(), ACK_DRIVER);
    // Bits are not cleared except by reset; the driver cannot set NEEDS_RESET.
    g.write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(g.status(), ACK_DRIVER);
    g.add_status(VIRTIO_CONFIG_S_NEEDS_RESET);
    assert_eq!(g.status(), ACK_DRIVER);
    // FAILED sticks (Linux sets it when probing fails), and reset clears it.
    g.add_status(VIRTIO_CONFIG_S_FAILED);
    assert_eq!(g.status(), ACK_DRIVER | VIRTIO_CONFIG_S_FAILED);
    g.write32(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(g.status(), 0);
}

#[test]
fn queue_registers_are_frozen_while_ready_and_after_driver_ok() {
    let mut g = rng();
    g.negotiate();
    assert!(g.setup_queue(16, DESC, AVAIL, USED));
    // Ready: size and addresses no longer change.
    g.write32(VIRTIO_MMIO_QUEUE_NUM, 8);
    g.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    g.write32(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 1);
    g.write32(VIRTIO_MMIO_QUEUE_USED_LOW, 0x9000);
    g.driver_ok();
    // Running: QueueReady cannot be withdrawn, nor anything rewritten.
    g.write32(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 1);
    g.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    g.write32(VIRTIO_MMIO_QUEUE_USED_LOW, 0x9000);
    g.write32(VIRTIO_MMIO_QUEUE_NUM, 4);
    // Still the queue as first configured: 16 entries at DESC/AVAIL/USED.
    for i in 0..20u64 {
        assert_eq!(g.submit(&[(BUF + 64 * i, 32, true)]).1, 32);
    }
    assert_eq!(g.q.used_idx(&g.mem), 20);
    g.assert_untouched(&[(BUF, 64 * 20)]);
}

#[test]
fn queue_ready_can_be_withdrawn_before_driver_ok() {
    let mut g = rng();
    g.negotiate();
    assert!(g.setup_queue(16, DESC, AVAIL, USED));
    g.write32(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 0);
    // Reconfigured elsewhere, then used there.
    let (d, a, u) = (0x5000, 0x6000, 0x7000);
    assert!(g.setup_queue(8, d, a, u));
    g.driver_ok();
    assert_eq!(g.submit(&[(BUF, 8, true)]).1, 8);
    assert_eq!(g.q.used_idx(&g.mem), 1);
}

#[test]
fn registers_of_queues_that_do_not_exist_are_ignored() {
    let mut g = rng();
    g.negotiate();
    g.write32(VIRTIO_MMIO_QUEUE_SEL, 7);
    g.write32(VIRTIO_MMIO_QUEUE_NUM, 16);
    g.write32(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
    g.write32(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert!(g.setup_queue(16, DESC, AVAIL, USED));
    g.driver_ok();
    assert_eq!(g.submit(&[(BUF, 8, true)]).1, 8);
}

#[test]
fn notify_before_driver_ok_is_ignored() {
    let mut g = rng();
    g.negotiate();
    assert!(g.setup_queue(16, DESC, AVAIL, USED));
    let head = g.q.add_chain(&g.mem, &[(BUF, 32, true)]);
    g.q.publish(&g.mem, head);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), 0);
    assert_eq!(g.take_irq(), None);
    g.assert_untouched(&[]);
    // Once running, the chain made available earlier is served.
    g.driver_ok();
    g.notify(0);
    assert_eq!(g.q.used(&g.mem, 0), (u32::from(head), 32));
    assert_eq!(g.take_irq(), Some(1));
}

#[test]
fn notify_of_a_queue_that_does_not_exist_is_ignored() {
    let mut g = Guest::running(Rng::new(), 16);
    let head = g.q.add_chain(&g.mem, &[(BUF, 32, true)]);
    g.q.publish(&g.mem, head);
    for q in [1, 2, 64, 0xffff, 0xffff_ffff] {
        g.notify(q);
    }
    assert_eq!(g.q.used_idx(&g.mem), 0);
    assert_eq!(g.take_irq(), None);
    assert_eq!(g.status(), RUNNING);
    g.notify(0);
    assert_eq!(g.q.used(&g.mem, 0), (u32::from(head), 32));
}

#[test]
fn interrupt_ack_clears_only_the_acknowledged_bits() {
    let mut g = Guest::running(Rng::new(), 16);
    let head = g.q.add_chain(&g.mem, &[(BUF, 32, true)]);
    g.q.publish(&g.mem, head);
    g.notify(0);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_BUFFER);
    g.write32(VIRTIO_MMIO_INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_BUFFER);
    g.write32(VIRTIO_MMIO_INTERRUPT_ACK, 0xffff_ffff);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // The status register is read-only.
    g.write32(VIRTIO_MMIO_INTERRUPT_STATUS, 3);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(g.take_irq(), Some(1));
}

#[test]
fn reset_clears_everything_and_a_full_reinit_works() {
    let (mut g, img) = blk(false);
    let (status, len) = super::blk::request(&mut g, VIRTIO_BLK_T_IN, 0, &[(BLK_BUF, 512, true)]);
    assert_eq!((status, len), (0, 513));
    // Leave an interrupt pending, then reset.
    let head = g.q.add_chain(
        &g.mem,
        &[(super::blk::HDR, 16, false), (super::blk::STATUS, 1, true)],
    );
    super::blk::write_header(&g, VIRTIO_BLK_T_FLUSH, 0);
    g.q.publish(&g.mem, head);
    g.notify(0);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_BUFFER);
    g.write32(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(g.status(), 0);
    assert_eq!(g.read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(g.dev.acked_features(), 0);
    assert!(!g.dev.is_activated());
    // A reset device serves nothing.
    let used_before = g.q.used_idx(&g.mem);
    let head = g.q.add_chain(
        &g.mem,
        &[(super::blk::HDR, 16, false), (super::blk::STATUS, 1, true)],
    );
    g.q.publish(&g.mem, head);
    g.notify(0);
    assert_eq!(g.q.used_idx(&g.mem), used_before);
    // Full re-init on other rings; indexes start from 0 again.
    let _ = g.take_irq();
    g.negotiate();
    assert!(g.setup_queue(32, 0x5000, 0x6000, 0x7000));
    g.driver_ok();
    let rd = BLK_BUF + 0x1000;
    assert_eq!(
        super::blk::request(&mut g, VIRTIO_BLK_T_IN, 1, &[(rd, 512, true)]),
        (0, 513)
    );
    assert_eq!(g.q.used_idx(&g.mem), 1);
    assert_eq!(g.bytes(rd, 512), img.content()[512..1024]);
}
