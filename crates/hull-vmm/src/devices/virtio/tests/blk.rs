//! virtio-blk requests, well-formed and not, through the transport.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::blk::{Block, SEG_MAX};
use crate::devices::virtio::VirtioError;

pub const HDR: u64 = DATA;
pub const STATUS: u64 = DATA + 0x100;
pub const BUF: u64 = DATA + 0x1000;
pub const SECTORS: u64 = 256;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Known content: every byte depends on its sector and its place in it.
pub fn image_bytes(sectors: u64) -> Vec<u8> {
    (0..sectors * 512)
        .map(|j| (j / 512) as u8 ^ (j % 251) as u8)
        .collect()
}

pub fn blk(read_only: bool) -> (Guest, TempImage) {
    let img = TempImage::new(&image_bytes(SECTORS));
    let dev = Block::new(img.path(), read_only, "hull-rootfs").unwrap();
    (Guest::running(dev, 256), img)
}

pub fn write_header(g: &Guest, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    g.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Header, `data`, status byte; returns (status byte, used length).
pub fn request(g: &mut Guest, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    write_header(g, kind, sector);
    let mut chain = vec![(HDR, 16, false)];
    chain.extend_from_slice(data);
    chain.push((STATUS, 1, true));
    let (_, len) = g.submit(&chain);
    (g.bytes(STATUS, 1)[0], len)
}

fn sectors(img: &[u8], first: u64, n: u64) -> &[u8] {
    &img[(first * 512) as usize..((first + n) * 512) as usize]
}

#[test]
fn reads_a_sector() {
    let (mut g, img) = blk(false);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 3, &[(BUF, 512, true)]),
        (OK, 513)
    );
    assert_eq!(g.bytes(BUF, 512), sectors(&img.content(), 3, 1));
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF, 512)]);
}

#[test]
fn reads_across_descriptors() {
    let (mut g, img) = blk(false);
    let b2 = BUF + 0x2000;
    let data = [(BUF, 512, true), (b2, 1024, true)];
    assert_eq!(request(&mut g, VIRTIO_BLK_T_IN, 1, &data), (OK, 1537));
    let content = img.content();
    assert_eq!(g.bytes(BUF, 512), sectors(&content, 1, 1));
    assert_eq!(g.bytes(b2, 1024), sectors(&content, 2, 2));
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF, 512), (b2, 1024)]);
}

#[test]
fn reads_the_last_sector_and_large_requests() {
    let (mut g, img) = blk(false);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, SECTORS - 1, &[(BUF, 512, true)]),
        (OK, 513)
    );
    assert_eq!(g.bytes(BUF, 512), sectors(&img.content(), SECTORS - 1, 1));
    // The whole disk in one descriptor: larger than the bounce buffer.
    let all = (SECTORS * 512) as u32;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 0, &[(BUF, all, true)]),
        (OK, all + 1)
    );
    assert_eq!(g.bytes(BUF, all as usize), img.content());
}

#[test]
fn writes_then_reads_back() {
    let (mut g, img) = blk(false);
    let before = img.content();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    g.mem.write_slice(&pattern, GuestAddress(BUF)).unwrap();
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 5, &[(BUF, 1024, false)]),
        (OK, 1)
    );
    let after = img.content();
    assert_eq!(sectors(&after, 5, 2), &pattern[..]);
    assert_eq!(sectors(&after, 0, 5), sectors(&before, 0, 5));
    assert_eq!(
        sectors(&after, 7, SECTORS - 7),
        sectors(&before, 7, SECTORS - 7)
    );
    let back = BUF + 0x4000;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 5, &[(back, 1024, true)]),
        (OK, 1025)
    );
    assert_eq!(g.bytes(back, 1024), pattern);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF, 1024), (back, 1024)]);
}

#[test]
fn flushes() {
    let (mut g, _img) = blk(false);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    g.assert_untouched(&[(HDR, 16), (STATUS, 1)]);
}

#[test]
fn get_id_returns_the_serial() {
    let (mut g, _img) = blk(false);
    let (status, len) = request(&mut g, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, true)]);
    assert_eq!((status, len), (OK, 21));
    let mut want = b"hull-rootfs".to_vec();
    want.resize(20, 0);
    assert_eq!(g.bytes(BUF, 20), want);
    // A larger buffer still gets 20 bytes and no more.
    let big = BUF + 0x1000;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_GET_ID, 0, &[(big, 512, true)]),
        (OK, 21)
    );
    assert_eq!(g.bytes(big, 20), want);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF, 20), (big, 20)]);
}

#[test]
fn get_id_with_a_full_length_serial() {
    let img = TempImage::new(&image_bytes(1));
    let serial = "abcdefghijklmnopqrst";
    let mut g = Guest::running(Block::new(img.path(), true, serial).unwrap(), 8);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, true)]),
        (OK, 21)
    );
    assert_eq!(g.bytes(BUF, 20), serial.as_bytes());
}

#[test]
fn read_only_disk_refuses_writes() {
    let (mut g, img) = blk(true);
    let f = g.device_features();
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & 1 << VIRTIO_BLK_F_FLUSH, 0);
    let before = img.content();
    fill(&g.mem, BUF, 512, 0x11);
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]),
        (IOERR, 1)
    );
    assert_eq!(img.content(), before);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, &[]), (UNSUPP, 1));
    // Reads still work.
    let rd = BUF + 0x1000;
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 2, &[(rd, 512, true)]),
        (OK, 513)
    );
    assert_eq!(g.bytes(rd, 512), sectors(&before, 2, 1));
}

#[test]
fn requests_beyond_capacity_are_ioerr() {
    let (mut g, img) = blk(false);
    let before = img.content();
    let cases: &[(u32, u64, u32)] = &[
        (VIRTIO_BLK_T_IN, SECTORS, 512),
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024),
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, 512),
        (VIRTIO_BLK_T_OUT, SECTORS, 512),
        (VIRTIO_BLK_T_OUT, u64::MAX - 1, 1024),
    ];
    for &(kind, sector, len) in cases {
        let writable = kind == VIRTIO_BLK_T_IN;
        let r = request(&mut g, kind, sector, &[(BUF, len, writable)]);
        assert_eq!(r, (IOERR, 1), "type {kind} sector {sector:#x} len {len}");
    }
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1)]);
}

#[test]
fn data_length_must_be_whole_sectors() {
    let (mut g, img) = blk(false);
    let before = img.content();
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 0, &[(BUF, 511, true)]),
        (IOERR, 1)
    );
    let split = [(BUF, 256, true), (BUF + 0x1000, 257, true)];
    assert_eq!(request(&mut g, VIRTIO_BLK_T_IN, 0, &split), (IOERR, 1));
    fill(&g.mem, BUF + 0x2000, 513, 0x22);
    let out = [(BUF + 0x2000, 513, false)];
    assert_eq!(request(&mut g, VIRTIO_BLK_T_OUT, 0, &out), (IOERR, 1));
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF + 0x2000, 513)]);
}

#[test]
fn unknown_types_are_unsupported() {
    let (mut g, img) = blk(false);
    let before = img.content();
    for kind in [
        VIRTIO_BLK_T_SCSI_CMD,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0xdead_beef,
    ] {
        assert_eq!(
            request(&mut g, kind, 0, &[(BUF, 512, true)]),
            (UNSUPP, 1),
            "type {kind}"
        );
    }
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1)]);
}

#[test]
fn identity_features_and_config_space() {
    let img = TempImage::new(&image_bytes(SECTORS));
    let mut g = Guest::new(Block::new(img.path(), false, "x").unwrap());
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    let f = g.device_features();
    let want = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_FLUSH;
    assert_eq!(f, want);
    let mut cap = [0; 8];
    g.dev.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    // As Linux reads a 64-bit field: two 32-bit halves.
    assert_eq!(g.read32(0x100), SECTORS as u32);
    assert_eq!(g.read32(0x104), 0);
    assert_eq!(g.read32(0x10c), SEG_MAX);
}

#[test]
fn data_buffers_of_the_wrong_direction_are_ioerr() {
    let (mut g, img) = blk(false);
    let before = img.content();
    // IN into a device-readable buffer.
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, false)]),
        (IOERR, 1)
    );
    // IN with one good and one bad buffer writes neither.
    let mixed = [(BUF, 512, true), (BUF + 0x1000, 512, false)];
    assert_eq!(request(&mut g, VIRTIO_BLK_T_IN, 0, &mixed), (IOERR, 1));
    // OUT from a device-writable buffer.
    fill(&g.mem, BUF + 0x2000, 512, 0x33);
    let out = [(BUF + 0x2000, 512, true)];
    assert_eq!(request(&mut g, VIRTIO_BLK_T_OUT, 0, &out), (IOERR, 1));
    // GET_ID into a device-readable buffer.
    assert_eq!(
        request(&mut g, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, false)]),
        (IOERR, 1)
    );
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1), (BUF + 0x2000, 512)]);
}

#[test]
fn header_must_be_one_readable_16_byte_descriptor() {
    let (mut g, img) = blk(false);
    let before = img.content();
    let status = (STATUS, 1, true);
    let data = (BUF, 512, true);
    write_header(&g, VIRTIO_BLK_T_IN, 0);
    let chains: [&[Buf]; 4] = [
        &[(HDR, 16, true), data, status],
        &[(HDR, 8, false), data, status],
        &[(HDR, 8, false), (HDR + 8, 8, false), data, status],
        &[status],
    ];
    for chain in chains {
        let (_, len) = g.submit(chain);
        assert_eq!((g.bytes(STATUS, 1)[0], len), (IOERR, 1), "{chain:?}");
    }
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (STATUS, 1)]);
    // The queue still serves.
    assert_eq!(request(&mut g, VIRTIO_BLK_T_IN, 0, &[data]), (OK, 513));
}

#[test]
fn status_must_be_one_writable_byte() {
    let (mut g, img) = blk(false);
    let before = img.content();
    write_header(&g, VIRTIO_BLK_T_OUT, 0);
    fill(&g.mem, BUF, 512, 0x44);
    let out = (BUF, 512, false);
    let chains: [&[Buf]; 3] = [
        &[(HDR, 16, false), out, (STATUS, 1, false)],
        &[(HDR, 16, false), out, (STATUS, 2, true)],
        &[(HDR, 16, false), out],
    ];
    for chain in chains {
        assert_eq!(g.submit(chain).1, 0, "{chain:?}");
    }
    // Nothing executed: the OUT did not reach the file, no status byte was written.
    assert_eq!(img.content(), before);
    g.assert_untouched(&[(HDR, 16), (BUF, 512)]);
    assert_eq!(request(&mut g, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn requests_wrap_around_a_small_ring() {
    let img = TempImage::new(&image_bytes(SECTORS));
    let mut g = Guest::running(Block::new(img.path(), false, "w").unwrap(), 4);
    let content = img.content();
    for i in 0..11u64 {
        let buf = BUF + 0x1000 * i;
        let s = i % SECTORS;
        assert_eq!(
            request(&mut g, VIRTIO_BLK_T_IN, s, &[(buf, 512, true)]),
            (OK, 513)
        );
        assert_eq!(g.bytes(buf, 512), sectors(&content, s, 1));
    }
    assert_eq!(g.q.used_idx(&g.mem), 11);
}

#[test]
fn queue_is_served_without_the_notify_register() {
    // The path a KVM ioeventfd takes: the event loop calls process_queue itself.
    let (mut g, img) = blk(false);
    write_header(&g, VIRTIO_BLK_T_IN, 4);
    let head = g.q.add_chain(
        &g.mem,
        &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
    );
    g.q.publish(&g.mem, head);
    let device = g.dev.device();
    assert_eq!(device.lock().unwrap().process_queue(0).unwrap(), 1);
    assert_eq!(g.q.used(&g.mem, 0), (u32::from(head), 513));
    assert_eq!(g.bytes(STATUS, 1)[0], OK);
    assert_eq!(g.bytes(BUF, 512), sectors(&img.content(), 4, 1));
    assert_eq!(g.take_irq(), Some(1));
    // Nothing more to do; no second interrupt.
    assert_eq!(device.lock().unwrap().process_queue(0).unwrap(), 0);
    assert_eq!(g.take_irq(), None);
    assert!(device.lock().unwrap().process_queue(1).is_err());
}

#[test]
fn construction_errors() {
    let missing = std::env::temp_dir().join("hull-virtio-blk-does-not-exist.img");
    assert!(matches!(
        Block::new(&missing, true, "x"),
        Err(VirtioError::OpenImage { .. })
    ));
    let img = TempImage::new(&image_bytes(1));
    assert!(matches!(
        Block::new(img.path(), true, "abcdefghijklmnopqrstu"),
        Err(VirtioError::SerialTooLong(_))
    ));
    // A partial last sector is not exposed.
    let odd = TempImage::new(&[7u8; 1000]);
    assert_eq!(Block::new(odd.path(), true, "x").unwrap().capacity(), 1);
}
