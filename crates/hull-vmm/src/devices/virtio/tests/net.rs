//! virtio-net driven as Linux drives it, through the MMIO transport and hand-built
//! rings, with a SOCK_SEQPACKET socket pair standing in for the tap (its reads and
//! writes are whole frames, as a tap's are). The test plays the event loop: it polls
//! `host_event_fd()` before each `process_host_events()`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::net::{Net, NetStats, HDR_LEN, MAX_FRAME};

const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x3000, 0x4000), (0x5000, 0x7000, 0x8000)];
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
/// Receive buffers in the first MiB of data, transmit buffers after.
const RX_AREA: u64 = DATA;
const TX_AREA: u64 = DATA + (1 << 20);
/// What Linux posts per receive chain without offloads: header plus 1518 bytes.
const RX_LEN: u32 = (HDR_LEN + 1518) as u32;

struct NetGuest {
    g: Guest,
    dev: Arc<Mutex<Net>>,
    rx: DriverQueue,
    tx: DriverQueue,
    rx_seen: u16,
    rx_next: u64,
    /// The other end of the "tap": what the host network sees.
    host: OwnedFd,
    _watchdog: Watchdog,
}

/// An Ethernet frame of `len` bytes: broadcast destination, the guest's source, an
/// experimental ethertype, and a payload pattern seeded by `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(MAC);
    f.extend([0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

impl NetGuest {
    fn new(mac: Option<[u8; 6]>) -> NetGuest {
        let mut n = NetGuest::prepared(mac);
        n.g.driver_ok();
        n
    }

    /// A device whose driver has negotiated and made both queues ready, short of
    /// DRIVER_OK.
    fn prepared(mac: Option<[u8; 6]>) -> NetGuest {
        let watchdog = Watchdog::arm(Duration::from_secs(60));
        let (dev_end, host) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(Net::new(dev_end, mac).unwrap()));
        let shared: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
        let mut g = Guest::shared(shared, DATA_END, RINGS[0]);
        g.prepare(&RINGS);
        NetGuest {
            g,
            dev,
            rx: DriverQueue::new(256, RINGS[0].0, RINGS[0].1, RINGS[0].2),
            tx: DriverQueue::new(256, RINGS[1].0, RINGS[1].1, RINGS[1].2),
            rx_seen: 0,
            rx_next: RX_AREA,
            host,
            _watchdog: watchdog,
        }
    }

    fn stats(&self) -> NetStats {
        self.dev.lock().unwrap().stats()
    }

    /// Posts one receive chain and notifies queue 0; returns its head.
    fn post_rx_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.rx.add_chain(&self.g.mem, bufs);
        self.rx.publish(&self.g.mem, head);
        self.g.notify(0);
        head
    }

    /// Posts `n` receive buffers of RX_LEN bytes, one descriptor each, as Linux does.
    fn post_rx(&mut self, n: usize) -> Vec<(u16, u64)> {
        (0..n)
            .map(|_| {
                let at = self.rx_next;
                self.rx_next += u64::from(RX_LEN);
                (self.post_rx_chain(&[(at, RX_LEN, true)]), at)
            })
            .collect()
    }

    /// Receive entries used since the last call: (head, used length).
    fn rx_used(&mut self) -> Vec<(u32, u32)> {
        let now = self.rx.used_idx(&self.g.mem);
        let mut out = Vec::new();
        while self.rx_seen != now {
            out.push(self.rx.used(&self.g.mem, self.rx_seen));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Publishes a transmit chain and notifies queue 1; checks it was completed with
    /// length 0 at once.
    fn transmit(&mut self, bufs: &[Buf]) {
        self.g.transmit(&mut self.tx, 1, bufs);
    }

    /// Writes a virtio header and `frame` at TX_AREA + `slot` * 64 KiB, split into
    /// descriptors at the given cut points; returns the chain.
    fn tx_chain(&self, slot: u64, frame: &[u8], cuts: &[usize]) -> Vec<Buf> {
        let at = TX_AREA + slot * 0x1_0000;
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(frame);
        self.g.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let mut chain = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([bytes.len()].iter()) {
            chain.push((at + start as u64, (end - start) as u32, false));
            start = end;
        }
        chain
    }

    /// Waits up to `timeout` for the device's host fd; if readable, serves it.
    fn host_event(&mut self, timeout: Duration) -> bool {
        let fd = self.dev.lock().unwrap().host_event_fd();
        if !host_fd_readable(fd, timeout) {
            return false;
        }
        self.dev.lock().unwrap().process_host_events().unwrap();
        true
    }

    fn host_send(&self, frame: &[u8]) {
        send(self.host.as_raw_fd(), frame, MsgFlags::empty()).unwrap();
    }

    /// The next frame the guest sent, or None if there is none.
    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME + 100];
        match recv(self.host.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The header and frame the device wrote at `at`, used length `len`.
    fn received(&self, at: u64, len: u32) -> (Vec<u8>, Vec<u8>) {
        let bytes = self.g.bytes(at, len as usize);
        (bytes[..HDR_LEN].to_vec(), bytes[HDR_LEN..].to_vec())
    }
}

/// The header of every received frame: no flags, no GSO, one buffer.
fn rx_header() -> Vec<u8> {
    let mut h = vec![0u8; HDR_LEN];
    h[10] = 1;
    h
}

#[test]
fn the_mac_is_offered_in_the_config_space() {
    let mut n = NetGuest::new(Some(MAC));
    assert_eq!(n.g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
    let f = n.g.device_features();
    assert_eq!(f, 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_F_VERSION_1);
    let mut mac = [0u8; 6];
    n.g.dev.read(0x100, &mut mac[..4]);
    n.g.dev.read(0x104, &mut mac[4..]);
    assert_eq!(mac, MAC);
    // Past the MAC: nothing (reads as zeros), and no write sticks.
    let mut past = [0xffu8; 2];
    n.g.dev.read(0x106, &mut past);
    assert_eq!(past, [0, 0]);
    n.g.dev.write(0x100, &[1, 2]);
    n.g.dev.read(0x100, &mut mac[..4]);
    assert_eq!(mac[..4], MAC[..4]);

    let mut n = NetGuest::new(None);
    assert_eq!(n.g.device_features(), 1 << VIRTIO_F_VERSION_1);
}

#[test]
fn frames_cross_both_ways() {
    let mut n = NetGuest::new(Some(MAC));
    let posted = n.post_rx(4);
    // Host to guest: a minimal frame and a full-size one, each in its own chain.
    let (small, full) = (frame(60, 1), frame(1514, 2));
    n.host_send(&small);
    n.host_send(&full);
    while n.stats().rx_frames < 2 {
        assert!(n.host_event(Duration::from_secs(5)), "frames not delivered");
    }
    let used = n.rx_used();
    assert_eq!(used.len(), 2);
    for ((head, len), (&(posted_head, at), sent)) in
        used.iter().zip(posted.iter().zip([&small, &full]))
    {
        assert_eq!(*head, u32::from(posted_head));
        assert_eq!(*len as usize, HDR_LEN + sent.len());
        let (hdr, got) = n.received(at, *len);
        assert_eq!(hdr, rx_header());
        assert_eq!(&got, sent);
    }
    let written: Vec<(u64, u64)> = posted[..2]
        .iter()
        .zip([&small, &full])
        .map(|(&(_, at), f)| (at, (HDR_LEN + f.len()) as u64))
        .collect();
    n.g.assert_untouched(
        &written
            .iter()
            .copied()
            .chain([(TX_AREA, 1 << 20)])
            .collect::<Vec<_>>(),
    );

    // Guest to host: header and frame split over three descriptors, the cut inside
    // the header too (Linux puts the header in its own descriptor or not).
    let out = frame(300, 3);
    let chain = n.tx_chain(0, &out, &[5, 40]);
    n.transmit(&chain);
    assert_eq!(n.host_recv().as_deref(), Some(&out[..]));
    assert_eq!(n.host_recv(), None, "one frame per chain");
    let s = n.stats();
    assert_eq!(
        (s.rx_frames, s.rx_dropped, s.tx_frames, s.tx_dropped),
        (2, 0, 1, 0)
    );
}

#[test]
fn hostile_transmit_chains_are_dropped_and_completed() {
    let mut n = NetGuest::new(Some(MAC));
    // A device-writable buffer in a transmit chain.
    let mut chain = n.tx_chain(0, &frame(100, 0), &[]);
    chain[0].2 = true;
    n.transmit(&chain);
    // Shorter than the header plus an Ethernet header.
    n.transmit(&n.tx_chain(1, &frame(14, 0)[..13], &[]));
    // Longer than any frame: two descriptors of 40000 bytes.
    n.transmit(&[
        (TX_AREA + 0x20000, 40000, false),
        (TX_AREA + 0x30000, 40000, false),
    ]);
    // A buffer outside guest memory, and one wrapping the address space.
    n.transmit(&[(MEM_SIZE - 8, 100, false)]);
    n.transmit(&[(u64::MAX - 10, 100, false)]);
    // A zero-length descriptor.
    n.transmit(&[(TX_AREA, 0, false)]);
    assert_eq!(n.host_recv(), None, "nothing reached the host");
    assert_eq!(n.stats().tx_dropped, 6);
    // A good frame still goes.
    let good = frame(64, 9);
    n.transmit(&n.tx_chain(2, &good, &[]));
    assert_eq!(n.host_recv().as_deref(), Some(&good[..]));
    // The device wrote nothing anywhere.
    n.g.assert_untouched(&[(TX_AREA, 0x40000)]);
}

#[test]
fn hostile_receive_chains_cost_the_guest_not_the_frames() {
    let mut n = NetGuest::new(Some(MAC));
    let f1 = frame(100, 1);
    n.host_send(&f1);
    // A chain with a device-readable buffer is completed empty; the frame waits.
    let bad = n.post_rx_chain(&[(RX_AREA, 200, true), (RX_AREA + 200, 200, false)]);
    n.host_event(Duration::from_millis(200));
    assert_eq!(n.rx_used(), vec![(u32::from(bad), 0)]);
    assert_eq!(n.stats().rx_frames, 0);
    // A chain too small for the frame: the frame is dropped, the chain kept and used
    // by the next frame that fits.
    let small = n.post_rx_chain(&[(RX_AREA + 0x1000, 20, true), (RX_AREA + 0x2000, 30, true)]);
    while n.stats().rx_dropped < 1 {
        assert!(n.host_event(Duration::from_secs(5)), "frame not taken");
    }
    assert_eq!(n.rx_used(), vec![]);
    let f2 = frame(30, 2);
    n.host_send(&f2);
    while n.stats().rx_frames < 1 {
        assert!(n.host_event(Duration::from_secs(5)), "frame not delivered");
    }
    // 42 bytes across the 20- and 30-byte buffers.
    assert_eq!(n.rx_used(), vec![(u32::from(small), 42)]);
    let mut got = n.g.bytes(RX_AREA + 0x1000, 20);
    got.extend(n.g.bytes(RX_AREA + 0x2000, 22));
    assert_eq!(got[..HDR_LEN], rx_header()[..]);
    assert_eq!(got[HDR_LEN..], f2[..]);
    n.g.assert_untouched(&[(RX_AREA + 0x1000, 20), (RX_AREA + 0x2000, 22)]);
}

#[test]
fn without_receive_buffers_frames_wait_in_the_tap() {
    let mut n = NetGuest::new(None);
    // Activation with no receive buffers: the first look finds none.
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(80 + i, i as u8)).collect();
    for f in &frames {
        n.host_send(f);
    }
    n.dev.lock().unwrap().process_host_events().unwrap();
    // Starved: the tap is no longer watched, so its fd stays quiet (no busy loop)
    // though frames wait.
    assert!(
        !n.host_event(Duration::from_millis(100)),
        "host fd readable while starved"
    );
    let posted = n.post_rx(3);
    let used = n.rx_used();
    assert_eq!(used.len(), 3, "the rx notification delivers what waited");
    for ((head, len), ((posted_head, at), f)) in
        used.into_iter().zip(posted.into_iter().zip(&frames))
    {
        assert_eq!(head, u32::from(posted_head));
        assert_eq!(n.received(at, len).1, *f);
    }
    // A driver reset leaves frames in the tap for the next driver; the reset's wake-up
    // is served once, then the fd is quiet.
    n.g.write32(VIRTIO_MMIO_STATUS, 0);
    n.host_send(&frame(90, 7));
    n.dev.lock().unwrap().process_host_events().unwrap();
    assert!(
        !n.host_event(Duration::from_millis(100)),
        "host fd readable without a driver"
    );
    n.g.bring_up(&RINGS);
    n.rx = DriverQueue::new(256, RINGS[0].0, RINGS[0].1, RINGS[0].2);
    n.rx_seen = 0;
    let (_, at) = n.post_rx(1)[0];
    assert_eq!(n.rx_used().len(), 1);
    assert_eq!(n.received(at, (HDR_LEN + 90) as u32).1, frame(90, 7));
}

#[test]
fn a_tap_that_goes_away_is_left_alone() {
    let mut n = NetGuest::new(Some(MAC));
    n.post_rx(2);
    let host = std::mem::replace(
        &mut n.host,
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK,
        )
        .unwrap()
        .0,
    );
    drop(host);
    // The hang-up is served once; then the fd is quiet, not readable forever.
    assert!(n.host_event(Duration::from_secs(5)));
    assert!(
        !n.host_event(Duration::from_millis(100)),
        "busy loop on a dead tap"
    );
    // Transmits are completed and counted as dropped.
    n.transmit(&n.tx_chain(0, &frame(64, 0), &[]));
    assert_eq!(n.stats().tx_dropped, 1);
    assert_eq!(n.rx_used(), vec![]);
}

#[test]
fn receive_buffers_given_before_driver_ok_are_used_without_a_notify() {
    let mut n = NetGuest::prepared(None);
    // The event loop has served the driver's reset: nothing is pending.
    n.dev.lock().unwrap().process_host_events().unwrap();
    let head = n.rx.add_chain(&n.g.mem, &[(RX_AREA, RX_LEN, true)]);
    n.rx.publish(&n.g.mem, head);
    n.g.driver_ok();
    let f = frame(70, 4);
    n.host_send(&f);
    // Nothing notified queue 0: the activation's wake-up has the device watch the tap.
    while n.stats().rx_frames < 1 {
        assert!(n.host_event(Duration::from_secs(5)), "frame not delivered");
    }
    assert_eq!(n.rx_used(), vec![(u32::from(head), (HDR_LEN + 70) as u32)]);
    assert_eq!(n.received(RX_AREA, (HDR_LEN + 70) as u32).1, f);
}

#[test]
fn a_receive_queue_the_guest_broke_is_not_served_nor_spun_on() {
    let mut n = NetGuest::new(None);
    n.post_rx(1);
    n.host_send(&frame(60, 5));
    while n.stats().rx_frames < 1 {
        assert!(n.host_event(Duration::from_secs(5)), "frame not delivered");
    }
    // The avail index jumps more than a queue ahead: the device needs a reset.
    n.rx.set_avail_idx(&n.g.mem, n.rx.avail_idx.wrapping_add(1000));
    n.g.notify(0);
    assert_ne!(n.g.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // A frame waits in the tap; the device must not watch it (a busy loop).
    n.host_send(&frame(60, 6));
    n.dev.lock().unwrap().process_host_events().unwrap();
    assert!(
        !n.host_event(Duration::from_millis(100)),
        "host fd readable for a broken queue"
    );
    assert_eq!(n.stats().rx_frames, 1);
}
