//! virtio-rng: buffers filled, bounded, and refused when not device-writable.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_mmio::*;

use super::*;
use crate::devices::virtio::rng::{Rng, MAX_BYTES_PER_REQUEST};

const BUF: u64 = DATA + 0x1000;

fn rng() -> Guest {
    Guest::running(Rng::new(), 64)
}

/// Random bytes over `n` >= 64 are all GUARD with probability 256^-n.
fn randomised(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b != GUARD) && bytes.iter().any(|&b| b != 0)
}

#[test]
fn identity_and_features() {
    let mut g = Guest::new(Rng::new());
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
    assert_eq!(g.device_features(), 1 << VIRTIO_F_VERSION_1);
    // No configuration space.
    let mut b = [0xffu8; 4];
    g.dev.read(0x100, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn fills_a_buffer() {
    let mut g = rng();
    let (_, len) = g.submit(&[(BUF, 4096, true)]);
    assert_eq!(len, 4096);
    assert!(randomised(&g.bytes(BUF, 4096)));
    g.assert_untouched(&[(BUF, 4096)]);
    // And again: the bytes differ from the first request's.
    let second = BUF + 0x2000;
    assert_eq!(g.submit(&[(second, 64, true)]).1, 64);
    assert_ne!(g.bytes(second, 64), g.bytes(BUF, 64));
}

#[test]
fn fills_every_buffer_of_a_chain() {
    let mut g = rng();
    let (a, b) = (BUF, BUF + 0x1000);
    assert_eq!(g.submit(&[(a, 100, true), (b, 200, true)]).1, 300);
    assert!(randomised(&g.bytes(a, 100)));
    assert!(randomised(&g.bytes(b, 200)));
    g.assert_untouched(&[(a, 100), (b, 200)]);
}

#[test]
fn a_huge_buffer_gets_at_most_the_cap() {
    let mut g = rng();
    let (_, len) = g.submit(&[(BUF, 1 << 20, true)]);
    assert_eq!(len as usize, MAX_BYTES_PER_REQUEST);
    assert!(randomised(&g.bytes(BUF + 0xff00, 0x100)));
    g.assert_untouched(&[(BUF, MAX_BYTES_PER_REQUEST as u64)]);
    // The cap spans descriptors too.
    let (a, b) = (BUF, BUF + 0x20000);
    fill(&g.mem, a, 0x20000, GUARD);
    let half = (MAX_BYTES_PER_REQUEST / 2 + 16) as u32;
    let (_, len) = g.submit(&[(a, half, true), (b, half, true)]);
    assert_eq!(len as usize, MAX_BYTES_PER_REQUEST);
    let second = MAX_BYTES_PER_REQUEST as u64 - u64::from(half);
    g.assert_untouched(&[(a, u64::from(half)), (b, second)]);
}

#[test]
fn device_readable_buffers_are_refused() {
    let mut g = rng();
    assert_eq!(g.submit(&[(BUF, 64, false)]).1, 0);
    assert_eq!(g.submit(&[(BUF, 64, true), (BUF + 0x100, 64, false)]).1, 0);
    g.assert_untouched(&[]);
    assert_eq!(g.submit(&[(BUF, 64, true)]).1, 64);
}
