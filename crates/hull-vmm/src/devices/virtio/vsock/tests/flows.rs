//! The protocol as a well-behaved guest and host use it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_mmio::*;

use super::super::{VsockError, CONN_BUF_SIZE};
use super::*;
use crate::devices::bus::MmioDevice;

#[test]
fn identity_features_and_config() {
    let mut v = VsGuest::new();
    let g = &mut v.g;
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_VSOCK);
    assert_eq!(g.device_features(), 1 << VIRTIO_F_VERSION_1);
    for (q, max) in [(0, 64), (1, 256), (2, 256)] {
        g.write32(VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), max);
    }
    g.write32(VIRTIO_MMIO_QUEUE_SEL, 3);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    let mut cid = [0u8; 8];
    g.dev.read(0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    let mut lo = [0u8; 4];
    g.dev.read(0x100, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), CID as u32);
    g.dev.read(0x104, &mut lo);
    assert_eq!(lo, [0; 4]);
    // Notifying the event queue is harmless.
    v.g.notify(2);
    assert_eq!(v.g.status(), crate::devices::virtio::tests::RUNNING);
}

#[test]
fn socket_path_lifecycle() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    let dev = Vsock::new(CID, &path).unwrap();
    assert!(path.exists());
    // Bound already: a clear error, and the existing socket stays.
    let e = Vsock::new(CID, &path).err().expect("second bind fails");
    assert!(matches!(e, VsockError::Bind { .. }), "{e}");
    assert!(e.to_string().contains("v.sock"), "{e}");
    assert!(path.exists());
    drop(dev);
    assert!(!path.exists(), "removed on drop");
    // Any existing file is refused, not replaced.
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(
        Vsock::new(CID, &path),
        Err(VsockError::Bind { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cid, &dir.0.join("c")),
            Err(VsockError::InvalidCid(_))
        ));
    }
}

#[test]
fn host_initiated_connection_carries_bytes_both_ways() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(1024);
    assert!(local >= 1 << 30, "host ports come from the high range");
    assert_eq!(v.dev.lock().unwrap().connection_count(), 1);

    // host → guest, with the device's credit on the packet.
    s.write_all(b"hello").unwrap();
    v.post_rx(1);
    let p = v.host_packets("hello").remove(0);
    assert_eq!(p.hdr.op, OP_RW);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (local, 1024));
    assert_eq!(p.hdr.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(p.data, b"hello");

    // guest → host.
    v.send(guest_hdr(OP_RW, 1024, local), b"world");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"world");

    // More than one rx buffer's worth: split in 4 KiB packets, in order.
    let big = pattern(10_000);
    s.write_all(&big).unwrap();
    assert_eq!(v.guest_read(1024, big.len()), big);

    // A large guest packet (64 KiB, the cap) arrives whole.
    let big = pattern(MAX_PAYLOAD);
    v.send(guest_hdr(OP_RW, 1024, local), &big);
    let mut got = vec![0u8; big.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, big);
    v.host_quiet();
}

#[test]
fn host_to_guest_respects_the_guest_credit() {
    let mut v = VsGuest::new();
    v.post_rx(4);
    let mut s = v.host_connect(80);
    let req = v.host_packets("REQUEST").remove(0);
    let local = req.hdr.src_port;
    let mut resp = guest_hdr(OP_RESPONSE, 80, local);
    resp.buf_alloc = 1000;
    v.send(resp, &[]);
    assert_eq!(read_line(&mut s), format!("OK {local}"));

    let data = pattern(3000);
    s.write_all(&data).unwrap();
    assert_eq!(v.guest_read(80, 1000), data[..1000]);
    // Out of credit: rx buffers are there, the host has bytes, nothing moves, and the
    // host fd is not left readable (no busy loop).
    v.post_rx(4);
    v.host_quiet();
    assert!(v.rx_packets().is_empty());

    for round in 1..3 {
        let mut upd = guest_hdr(OP_CREDIT_UPDATE, 80, local);
        upd.buf_alloc = 1000;
        upd.fwd_cnt = 1000 * round;
        v.send(upd, &[]);
        let start = 1000 * round as usize;
        assert_eq!(v.guest_read(80, 1000), data[start..start + 1000]);
        v.host_quiet();
    }
}

#[test]
fn guest_refusing_a_host_connection_closes_the_host_stream() {
    let mut v = VsGuest::new();
    v.post_rx(1);
    let mut s = v.host_connect(9999);
    let req = v.host_packets("REQUEST").remove(0);
    assert_eq!(req.hdr.op, OP_REQUEST);
    v.send(guest_hdr(OP_RST, 9999, req.hdr.src_port), &[]);
    assert_eq!(read_to_eof(&mut s), b"", "closed without an OK");
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
    // The RST is not answered.
    v.post_rx(1);
    assert!(v.rx_packets().is_empty());
}

#[test]
fn guest_initiated_connection_reaches_the_host_listener() {
    let mut v = VsGuest::new();
    let l = v.listen(5000);
    let mut s = v.established_from_guest(&l, 40000, 5000);
    v.send(guest_hdr(OP_RW, 40000, 5000), b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong!").unwrap();
    assert_eq!(v.guest_read(40000, 5), b"pong!");
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut v = VsGuest::new();
    v.post_rx(1);
    v.send(guest_hdr(OP_REQUEST, 40001, 5001), &[]);
    let p = v.one_packet();
    assert_eq!(p.hdr.op, OP_RST);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (5001, 40001));
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn host_close_sends_the_guest_a_shutdown() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(7);
    // Bytes written before the close still arrive, then SHUTDOWN(both).
    s.write_all(b"last words").unwrap();
    drop(s);
    v.post_rx(4);
    let mut got = Vec::new();
    v.host_until("SHUTDOWN", |g| {
        got.extend(g.rx_packets());
        got.iter().any(|p| p.hdr.op == OP_SHUTDOWN)
    });
    assert_eq!(got[0].hdr.op, OP_RW);
    assert_eq!(got[0].data, b"last words");
    let last = got.last().unwrap();
    assert_eq!(last.hdr.op, OP_SHUTDOWN);
    assert_eq!(last.hdr.flags, SHUTDOWN_BOTH);
    assert_eq!((last.hdr.src_port, last.hdr.dst_port), (local, 7));
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
    // Linux answers with an RST; it is dropped without a reply.
    v.send(guest_hdr(OP_RST, 7, local), &[]);
    assert!(v.rx_packets().is_empty());
    v.host_quiet();
}

#[test]
fn host_half_close_keeps_the_other_direction() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(8);
    s.shutdown(Shutdown::Write).unwrap();
    v.post_rx(1);
    let p = v.host_packets("SHUTDOWN(send)").remove(0);
    assert_eq!((p.hdr.op, p.hdr.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    v.send(guest_hdr(OP_RW, 8, local), b"reply");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"reply");
    // The guest is done too: the host sees EOF, the guest an RST.
    v.post_rx(1);
    let mut sh = guest_hdr(OP_SHUTDOWN, 8, local);
    sh.flags = SHUTDOWN_SEND;
    v.send(sh, &[]);
    assert_eq!(read_to_eof(&mut s), b"");
    assert_eq!(v.one_packet().hdr.op, OP_RST);
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn guest_shutdown_and_rst_give_the_host_eof() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(9);
    v.send(guest_hdr(OP_RW, 9, local), b"bye");
    let mut sh = guest_hdr(OP_SHUTDOWN, 9, local);
    sh.flags = SHUTDOWN_BOTH;
    v.post_rx(1);
    v.send(sh, &[]);
    assert_eq!(read_to_eof(&mut s), b"bye", "data first, then EOF");
    let p = v.one_packet();
    assert_eq!(
        (p.hdr.op, p.hdr.src_port, p.hdr.dst_port),
        (OP_RST, local, 9)
    );

    let (mut s, local) = v.established_from_host(10);
    v.send(guest_hdr(OP_RST, 10, local), &[]);
    assert_eq!(read_to_eof(&mut s), b"");
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn credit_request_is_answered_with_a_credit_update() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(11);
    v.send(guest_hdr(OP_RW, 11, local), &pattern(3000));
    let mut b = vec![0u8; 3000];
    s.read_exact(&mut b).unwrap();
    v.post_rx(1);
    v.send(guest_hdr(OP_CREDIT_REQUEST, 11, local), &[]);
    let p = v.one_packet();
    assert_eq!(p.hdr.op, OP_CREDIT_UPDATE);
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (local, 11));
    assert_eq!(p.hdr.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(p.hdr.fwd_cnt, 3000);
}

#[test]
fn the_device_grants_credit_as_the_host_reads() {
    // A guest that sends its whole credit and waits must get a CREDIT_UPDATE once the
    // host drained the bytes (Linux never asks for one).
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(12);
    let chunk = pattern(MAX_PAYLOAD);
    for _ in 0..(CONN_BUF_SIZE as usize / MAX_PAYLOAD) {
        v.send(guest_hdr(OP_RW, 12, local), &chunk);
    }
    let reader = std::thread::spawn(move || {
        let mut b = vec![0u8; CONN_BUF_SIZE as usize];
        s.read_exact(&mut b).unwrap();
        s
    });
    v.post_rx(1);
    let mut fwd = 0;
    // Updated once the guest's free credit could have fallen under 64 KiB with bytes
    // drained: it may send a full packet again.
    v.host_until("a CREDIT_UPDATE", |g| {
        for p in g.rx_packets() {
            assert_eq!(p.hdr.op, OP_CREDIT_UPDATE);
            assert!(p.hdr.fwd_cnt > fwd);
            fwd = p.hdr.fwd_cnt;
            g.post_rx(1);
        }
        fwd as usize >= MAX_PAYLOAD && reader.is_finished()
    });
    let mut s = reader.join().unwrap();
    v.send(guest_hdr(OP_RW, 12, local), &chunk);
    let mut b = vec![0u8; MAX_PAYLOAD];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, chunk);
    assert_eq!(v.dev.lock().unwrap().connection_count(), 1);
}

#[test]
fn device_reset_closes_every_connection() {
    let mut v = VsGuest::new();
    let (mut s, _) = v.established_from_host(13);
    v.g.write32(VIRTIO_MMIO_STATUS, 0);
    // The reset ran where the guest's status write did (a vCPU thread, no close on its
    // allowlist): the host stream closes once the VMM thread's loop sees the fd wake.
    assert!(
        v.host_event(Duration::from_secs(2)),
        "no wake-up after the reset"
    );
    assert_eq!(read_to_eof(&mut s), b"");
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
    // With the driver gone, a CONNECT is closed unanswered.
    let mut s = v.host_connect(13);
    assert!(v.host_event(Duration::from_secs(2)));
    assert_eq!(read_to_closed(&mut s), b"");
}

#[test]
fn host_hangup_after_guest_stopped_receiving_still_ends_the_connection() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(14);
    let mut sh = guest_hdr(OP_SHUTDOWN, 14, local);
    sh.flags = SHUTDOWN_RCV;
    v.send(sh, &[]);
    // The guest still sends; the host still reads.
    v.send(guest_hdr(OP_RW, 14, local), b"more");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"more");
    // Host bytes are not read for a guest that takes none; the hang-up is still seen.
    s.write_all(b"unwanted").unwrap();
    v.host_quiet();
    drop(s);
    v.post_rx(1);
    let p = v.host_packets("SHUTDOWN").remove(0);
    assert_eq!((p.hdr.op, p.hdr.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
    v.host_quiet();
}
