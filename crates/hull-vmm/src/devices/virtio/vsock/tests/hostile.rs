//! A hostile guest and a confused host. Each test checks the device neither panics nor
//! hangs (every test runs under a watchdog), answers as documented (RST, drop, closed
//! stream), and that a good connection still works afterwards.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::super::{CONN_BUF_SIZE, MAX_CONNECT_LINE, MAX_PENDING_HOST};
use super::*;

/// A host-initiated connection to guest port 1 for a hostile test to hurt or spare.
fn with_conn() -> (VsGuest, UnixStream, u32) {
    let mut v = VsGuest::new();
    let (s, local) = v.established_from_host(1);
    (v, s, local)
}

/// The connection still carries bytes both ways.
fn still_works(v: &mut VsGuest, s: &mut UnixStream, local: u32) {
    v.send(guest_hdr(OP_RW, 1, local), b"alive?");
    let mut b = [0u8; 6];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"alive?");
    s.write_all(b"alive!").unwrap();
    assert_eq!(v.guest_read(1, 6), b"alive!");
}

/// A fresh connection still works (for tests that killed the first).
fn new_conn_works(v: &mut VsGuest) {
    let (mut s, local) = v.established_from_host(2);
    v.send(guest_hdr(OP_RW, 2, local), b"fresh");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"fresh");
}

fn expect_rst(v: &mut VsGuest, src_port: u32, dst_port: u32) {
    let p = v.one_packet();
    assert_eq!(p.hdr.op, OP_RST, "{p:?}");
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (src_port, dst_port));
}

#[test]
fn truncated_header_is_dropped() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(1);
    let hdr = guest_hdr(OP_RW, 1, local).to_bytes();
    let at = v.tx_bytes(&hdr);
    v.send_chain(&[(at, 20, false)]);
    // Header split over two descriptors but still short.
    v.send_chain(&[(at, 20, false), (at + 20, 10, false)]);
    assert!(v.rx_packets().is_empty());
    still_works(&mut v, &mut s, local);
    // A complete header split over descriptors is fine (documented layout).
    let mut h = guest_hdr(OP_RW, 1, local);
    h.len = 3;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend(b"abc");
    let at = v.tx_bytes(&bytes);
    v.send_chain(&[(at, 30, false), (at + 30, 16, false), (at + 46, 1, false)]);
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
}

#[test]
fn len_disagreeing_with_the_chain_resets_the_connection() {
    for (len, present) in [(100u32, 50usize), (10, 50), (1, 0)] {
        let (mut v, mut s, local) = with_conn();
        v.post_rx(1);
        let mut h = guest_hdr(OP_RW, 1, local);
        h.len = len;
        v.send_as_is(h, &pattern(present));
        expect_rst(&mut v, local, 1);
        assert_eq!(
            read_to_eof(&mut s),
            b"",
            "nothing of the bad packet reached the host"
        );
        new_conn_works(&mut v);
    }
}

#[test]
fn len_over_the_cap_resets_without_reading() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(1);
    let big = pattern(MAX_PAYLOAD + 1);
    v.send(guest_hdr(OP_RW, 1, local), &big);
    expect_rst(&mut v, local, 1);
    assert_eq!(read_to_eof(&mut s), b"");
    // A header claiming 4 GiB with no payload.
    v.post_rx(1);
    let mut h = guest_hdr(OP_RW, 77, 88);
    h.len = u32::MAX;
    v.send_as_is(h, &[]);
    expect_rst(&mut v, 88, 77);
    new_conn_works(&mut v);
}

#[test]
fn wrong_type_is_reset() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(1);
    let mut h = guest_hdr(OP_REQUEST, 500, 600);
    h.type_ = 2; // SEQPACKET, not offered
    v.send(h, &[]);
    expect_rst(&mut v, 600, 500);
    still_works(&mut v, &mut s, local);
}

#[test]
fn wrong_cids() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(2);
    // A src_cid not the guest's: dropped, even on a live connection's ports.
    for cid in [0, 2, 4, u64::MAX] {
        let mut h = guest_hdr(OP_RW, 1, local);
        h.src_cid = cid;
        v.send(h, b"spoof");
    }
    assert!(v.rx_packets().is_empty());
    // A dst_cid not the host: RST, from the address the guest named.
    let mut h = guest_hdr(OP_REQUEST, 700, 800);
    h.dst_cid = 7;
    v.send(h, &[]);
    let p = v.one_packet();
    assert_eq!((p.hdr.op, p.hdr.src_cid, p.hdr.dst_cid), (OP_RST, 7, CID));
    // An RST to elsewhere is not answered.
    let mut h = guest_hdr(OP_RST, 700, 800);
    h.dst_cid = 7;
    v.send(h, &[]);
    assert!(v.rx_packets().is_empty());
    still_works(&mut v, &mut s, local);
}

#[test]
fn packets_for_unknown_connections_are_reset() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(8);
    for op in [
        OP_RW,
        OP_RESPONSE,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        0,
        99,
    ] {
        v.send(guest_hdr(op, 1234, 4321), b"");
        expect_rst(&mut v, 4321, 1234);
    }
    v.send(guest_hdr(OP_RST, 1234, 4321), &[]);
    assert!(v.rx_packets().is_empty(), "an RST is never answered");
    // An unknown op on a live connection resets it.
    v.send(guest_hdr(42, 1, local), &[]);
    expect_rst(&mut v, local, 1);
    assert_eq!(read_to_eof(&mut s), b"");
    new_conn_works(&mut v);
}

#[test]
fn tx_chain_with_a_writable_descriptor_is_dropped() {
    let (mut v, mut s, local) = with_conn();
    v.post_rx(1);
    let mut h = guest_hdr(OP_RW, 1, local);
    h.len = 4;
    let mut bytes = h.to_bytes().to_vec();
    bytes.extend(b"evil");
    let at = v.tx_bytes(&bytes);
    let before = v.g.bytes(at, bytes.len());
    v.send_chain(&[(at, 44, false), (at + 44, 4, true)]);
    v.send_chain(&[(at, 48, true)]);
    assert_eq!(v.g.bytes(at, bytes.len()), before, "nothing written");
    assert!(v.rx_packets().is_empty());
    still_works(&mut v, &mut s, local);
}

#[test]
fn rx_chain_with_a_readable_descriptor_is_returned_empty() {
    let mut v = VsGuest::new();
    let base = DATA + 0x280000;
    fill(&v.g.mem, base, 0x3000, GUARD);
    let bad = v.add_rx_chain(&[(base, 44, true), (base + 0x100, 4096, false)]);
    let bad2 = v.add_rx_chain(&[(base + 0x2000, 20, true)]); // no room for a header
    v.g.notify(0);
    assert!(
        v.rx_used_raw().is_empty(),
        "nothing to deliver: buffers kept"
    );
    // The REQUEST skips the bad buffers and lands in the good one.
    v.post_rx(1);
    let mut s = v.host_connect(1);
    let req = v.host_packets("REQUEST").remove(0);
    assert_eq!(req.hdr.op, OP_REQUEST);
    assert_eq!(v.rx_refused, [bad, bad2]);
    assert!(
        v.g.bytes(base, 0x3000).iter().all(|&b| b == GUARD),
        "nothing written"
    );
    let local = req.hdr.src_port;
    v.send(guest_hdr(OP_RESPONSE, 1, local), &[]);
    assert_eq!(read_line(&mut s), format!("OK {local}"));
    still_works(&mut v, &mut s, local);
}

#[test]
fn a_guest_exceeding_its_credit_is_reset() {
    let (mut v, mut s, local) = with_conn();
    // No rx buffers: the device cannot have told the guest of any progress, so the
    // guest's credit is exactly CONN_BUF_SIZE, sent in full here.
    let chunk = pattern(MAX_PAYLOAD);
    for _ in 0..(CONN_BUF_SIZE as usize / MAX_PAYLOAD) {
        v.send(guest_hdr(OP_RW, 1, local), &chunk);
    }
    v.send(guest_hdr(OP_RW, 1, local), b"x");
    v.post_rx(1);
    expect_rst(&mut v, local, 1);
    let got = read_to_eof(&mut s);
    assert!(got.len() <= CONN_BUF_SIZE as usize, "never the extra byte");
    assert!(got.iter().zip(chunk.iter().cycle()).all(|(a, b)| a == b));
    new_conn_works(&mut v);
}

#[test]
fn requests_over_the_connection_limit_are_reset() {
    let mut v = VsGuest::new();
    v.dev.lock().unwrap().set_max_connections(4);
    let l = v.listen(6000);
    v.post_rx(10);
    for port in 1..=10 {
        v.send(guest_hdr(OP_REQUEST, port, 6000), &[]);
    }
    let p = v.rx_packets();
    let ops: Vec<u16> = p.iter().map(|p| p.hdr.op).collect();
    assert_eq!(ops, [[OP_RESPONSE; 4].as_slice(), &[OP_RST; 6]].concat());
    assert_eq!(v.dev.lock().unwrap().connection_count(), 4);
    // A REQUEST for a live connection resets it.
    v.post_rx(1);
    v.send(guest_hdr(OP_REQUEST, 1, 6000), &[]);
    expect_rst(&mut v, 6000, 1);
    assert_eq!(v.dev.lock().unwrap().connection_count(), 3);
    // A host CONNECT under the limit is asked of the guest; one over it is closed.
    v.post_rx(1);
    let _s4 = v.host_connect(5);
    assert_eq!(v.host_packets("REQUEST for the 4th")[0].hdr.op, OP_REQUEST);
    assert_eq!(v.dev.lock().unwrap().connection_count(), 4);
    let mut s = v.host_connect(6);
    assert!(v.host_event(Duration::from_secs(2)));
    assert_eq!(read_to_eof(&mut s), b"");
    drop(l);
}

#[test]
fn garbage_connect_lines_close_the_host_stream() {
    let mut v = VsGuest::new();
    v.post_rx(4);
    let cases: [&[u8]; 6] = [
        b"CONNECT abc\n",
        b"HELLO 5\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 5 6\n",
        &[b'C'; MAX_CONNECT_LINE + 8],
        b"\xff\xfe\n",
    ];
    for line in cases {
        let mut s = UnixStream::connect(&v.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line).unwrap();
        assert!(v.host_event(Duration::from_secs(2)));
        assert_eq!(
            read_to_closed(&mut s),
            b"",
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    // No newline, then EOF.
    let mut s = UnixStream::connect(&v.path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"CONNECT 5").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    v.host_until("the half line dropped", |g| {
        !g.host_event(Duration::from_millis(50))
    });
    assert_eq!(read_to_closed(&mut s), b"");
    assert!(v.rx_packets().is_empty(), "the guest heard nothing");
    assert_eq!(v.dev.lock().unwrap().connection_count(), 0);
    // A host that connects and says nothing costs a pending slot, no more.
    let idle: Vec<UnixStream> = (0..MAX_PENDING_HOST)
        .map(|_| UnixStream::connect(&v.path).unwrap())
        .collect();
    v.host_until("idle streams accepted", |g| {
        !g.host_event(Duration::from_millis(50))
    });
    let mut over = UnixStream::connect(&v.path).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(v.host_event(Duration::from_secs(2)));
    assert_eq!(
        read_to_closed(&mut over),
        b"",
        "over the pending limit: closed"
    );
    drop(idle);
    v.host_until("idle streams gone", |g| {
        !g.host_event(Duration::from_millis(50))
    });
    new_conn_works(&mut v);
}

#[test]
fn a_flood_of_bad_packets_without_rx_buffers_stalls_only_tx() {
    let mut v = VsGuest::new();
    let (mut s, local) = v.established_from_host(1);
    // Each packet for no connection owes an RST; with no rx buffers they pile up to
    // the cap, then tx waits for the guest.
    let mut completed = 0;
    let mut stalled = false;
    for i in 0..1100u32 {
        let before = v.tx.used_idx(&v.g.mem);
        let at = v.tx_bytes(&guest_hdr(OP_RW, 10_000 + i, 20_000).to_bytes());
        let head = v.tx.add_chain(&v.g.mem, &[(at, 44, false)]);
        v.tx.publish(&v.g.mem, head);
        v.g.notify(1);
        if v.tx.used_idx(&v.g.mem) == before {
            stalled = true;
            break;
        }
        completed += 1;
    }
    assert!(stalled, "tx stops once the RST backlog is full");
    assert_eq!(completed, super::super::MAX_CONNECTIONS);
    // Rx buffers drain the RSTs and tx resumes by itself.
    let mut rsts = 0;
    while rsts < completed + 1 {
        // Two descriptors a chain: as many chains as the ring holds.
        v.post_rx(usize::from(super::super::RX_QUEUE_SIZE) / 2);
        let p = v.rx_packets();
        assert!(!p.is_empty());
        assert!(p.iter().all(|p| p.hdr.op == OP_RST));
        rsts += p.len();
    }
    assert_eq!(rsts, completed + 1);
    // The connection survived all that.
    v.send(guest_hdr(OP_RW, 1, local), b"ok");
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}
