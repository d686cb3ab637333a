//! virtio-console driven as Linux drives it: registers through the MMIO transport, two
//! split rings built by hand in guest memory, and a real Unix socket client. The test
//! plays the event loop: it waits with poll(2) for `host_event_fd()` to become
//! readable before each `process_host_events()`.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_bindings::virtio_mmio::*;

use super::*;
use crate::devices::virtio::console::{Console, ConsoleError, QUEUE_SIZE};

/// Ring addresses of receiveq0 and transmitq0 (256 entries each), below the data area.
const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x3000, 0x4000), (0x5000, 0x7000, 0x8000)];
/// rx buffers in the first MiB of data, tx buffers in the two after.
const RX_AREA: u64 = DATA;
const TX_AREA: u64 = DATA + (1 << 20);
const TX_SLOT: u64 = 0x10000;
const TX_SLOTS: u64 = 32;

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "hull-console-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct ConGuest {
    g: Guest,
    dev: Arc<Mutex<Console>>,
    rx: DriverQueue,
    tx: DriverQueue,
    path: PathBuf,
    rx_seen: u16,
    rx_next: u64,
    tx_slot: u64,
    /// The rx chains posted and not yet used: head and buffers.
    rx_chains: Vec<(u16, Vec<(u64, u32)>)>,
    _dir: TempDir,
    _watchdog: Watchdog,
}

impl ConGuest {
    /// A running device (driver OK, both queues ready) listening in a new temp dir.
    fn new() -> ConGuest {
        let watchdog = Watchdog::arm(Duration::from_secs(60));
        let dir = TempDir::new();
        let path = dir.0.join("console.sock");
        let dev = Arc::new(Mutex::new(Console::new(&path).unwrap()));
        let shared: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
        let mut g = Guest::shared(shared, DATA_END, RINGS[0]);
        g.bring_up(&RINGS);
        ConGuest {
            g,
            dev,
            rx: DriverQueue::new(256, RINGS[0].0, RINGS[0].1, RINGS[0].2),
            tx: DriverQueue::new(256, RINGS[1].0, RINGS[1].1, RINGS[1].2),
            path,
            rx_seen: 0,
            rx_next: RX_AREA,
            tx_slot: 0,
            rx_chains: Vec::new(),
            _dir: dir,
            _watchdog: watchdog,
        }
    }

    /// Posts one rx chain (not notified); returns its head.
    fn add_rx_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.rx.add_chain(&self.g.mem, bufs);
        self.rx.publish(&self.g.mem, head);
        self.rx_chains
            .push((head, bufs.iter().map(|&(a, l, _)| (a, l)).collect()));
        head
    }

    /// Posts `n` rx buffers of `len` bytes each, as Linux does (one writable
    /// descriptor per chain), and notifies queue 0.
    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            if self.rx_next + u64::from(len) > TX_AREA {
                self.rx_next = RX_AREA;
            }
            let at = self.rx_next;
            self.rx_next += u64::from(len);
            fill(&self.g.mem, at, u64::from(len), GUARD);
            self.add_rx_chain(&[(at, len, true)]);
        }
        self.g.notify(0);
    }

    /// The rx entries used since the last call: (head, used length, bytes).
    fn rx_used(&mut self) -> Vec<(u16, u32, Vec<u8>)> {
        let now = self.rx.used_idx(&self.g.mem);
        let mut out = Vec::new();
        while self.rx_seen != now {
            let (id, len) = self.rx.used(&self.g.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let k = self
                .rx_chains
                .iter()
                .position(|(h, _)| u32::from(*h) == id)
                .expect("used head was posted");
            let (head, bufs) = self.rx_chains.remove(k);
            let total: u32 = bufs.iter().map(|b| b.1).sum();
            assert!(len <= total, "used length {len} over the chain's {total}");
            // Only the used bytes: a refused chain may name memory that is not there.
            let mut bytes = Vec::new();
            for (a, l) in bufs {
                let take = (len as usize - bytes.len()).min(l as usize);
                bytes.extend(self.g.bytes(a, take));
            }
            out.push((head, len, bytes));
        }
        out
    }

    /// The bytes delivered to the guest since the last call, in order.
    fn rx_bytes(&mut self) -> Vec<u8> {
        self.rx_used().into_iter().flat_map(|(_, _, b)| b).collect()
    }

    fn next_tx_slot(&mut self) -> u64 {
        let at = TX_AREA + (self.tx_slot % TX_SLOTS) * TX_SLOT;
        self.tx_slot += 1;
        at
    }

    /// Publishes a tx chain and notifies queue 1; returns its head and the used index
    /// before it.
    fn send_chain(&mut self, bufs: &[Buf]) -> (u16, u16) {
        let before = self.tx.used_idx(&self.g.mem);
        let head = self.tx.add_chain(&self.g.mem, bufs);
        self.tx.publish(&self.g.mem, head);
        self.g.notify(1);
        (head, before)
    }

    /// Sends `data` in one tx chain of one descriptor; checks it was completed
    /// (length 0: the device wrote nothing into it).
    fn send(&mut self, data: &[u8]) {
        let at = self.next_tx_slot();
        assert!(data.len() as u64 <= TX_SLOT);
        self.g.mem.write_slice(data, GuestAddress(at)).unwrap();
        self.g
            .transmit(&mut self.tx, 1, &[(at, data.len() as u32, false)]);
    }

    fn assert_tx_done(&mut self, head: u16, before: u16) {
        assert_eq!(
            self.tx.used_idx(&self.g.mem),
            before.wrapping_add(1),
            "tx completed"
        );
        assert_eq!(self.tx.used(&self.g.mem, before), (u32::from(head), 0));
    }

    /// Waits (poll(2), up to `timeout`) for the host fd to become readable; if it does,
    /// runs `process_host_events` and returns true.
    fn host_event(&mut self, timeout: Duration) -> bool {
        let fd = self.dev.lock().unwrap().host_event_fd();
        if !host_fd_readable(fd, timeout) {
            return false;
        }
        self.dev.lock().unwrap().process_host_events().unwrap();
        true
    }

    /// Serves host events until `done` holds; fails after five seconds.
    fn host_until(&mut self, what: &str, mut done: impl FnMut(&mut ConGuest) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.host_event(Duration::from_millis(200));
        }
    }

    /// The host fd stays quiet: no host work pending (no busy loop).
    fn host_quiet(&mut self) {
        assert!(
            !self.host_event(Duration::from_millis(100)),
            "host fd readable with nothing to do"
        );
    }

    /// A client connects and the device takes it.
    fn connect(&mut self) -> UnixStream {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        self.host_until("the client accepted", |g| {
            g.dev.lock().unwrap().has_client()
        });
        s
    }

    /// Host events until the guest got `n` bytes; returns them.
    fn guest_read(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        self.host_until("host bytes in the guest", |g| {
            got.extend(g.rx_bytes());
            got.len() >= n
        });
        assert_eq!(got.len(), n, "no more than was sent");
        got
    }

    fn needs_reset(&mut self) -> bool {
        self.g.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }
}

fn read_exact(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Bytes that tell position: a chunk out of order or repeated shows.
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect()
}

#[test]
fn identity_and_features() {
    let dir = TempDir::new();
    let mut g = Guest::new(Console::new(&dir.0.join("c.sock")).unwrap());
    assert_eq!(g.read32(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_CONSOLE);
    assert_eq!(VIRTIO_ID_CONSOLE, 3);
    // VERSION_1 only: no SIZE, MULTIPORT or EMERG_WRITE.
    assert_eq!(g.device_features(), 1 << VIRTIO_F_VERSION_1);
    for q in 0..2 {
        g.write32(VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    }
    g.write32(VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(g.read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "two queues only");
    // No configuration space (no cols/rows/max_nr_ports).
    let mut b = [0xffu8; 4];
    g.dev.read(0x100, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn host_bytes_reach_the_guest() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    g.post_rx(1, 4096);
    c.write_all(b"hello, guest").unwrap();
    let got = g.guest_read(12);
    assert_eq!(got, b"hello, guest");
    // Only the 12 bytes were written into the 4 KiB buffer.
    g.g.assert_untouched(&[(RX_AREA, 12)]);
    assert_eq!(g.g.take_irq(), Some(1));
    g.host_quiet();
}

#[test]
fn host_bytes_span_buffers_in_order() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    // Three 16-byte buffers, then one chain of two writable descriptors.
    g.post_rx(3, 16);
    let (a, b) = (DATA + 0x8000, DATA + 0x9000);
    g.add_rx_chain(&[(a, 8, true), (b, 32, true)]);
    g.g.notify(0);
    let data = pattern(80, 1);
    c.write_all(&data).unwrap();
    let mut used = Vec::new();
    g.host_until("all 80 bytes", |g| {
        used.extend(g.rx_used());
        used.iter().map(|u| u.1).sum::<u32>() == 80
    });
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, [16, 16, 16, 32]);
    let got: Vec<u8> = used.into_iter().flat_map(|u| u.2).collect();
    assert_eq!(got, data);
    // The two-descriptor chain: 8 bytes in the first, 24 in the second.
    assert_eq!(g.g.bytes(a, 8), data[48..56]);
    assert_eq!(g.g.bytes(b, 24), data[56..80]);
    assert_eq!(g.g.bytes(b + 24, 8), [GUARD; 8]);
}

#[test]
fn no_rx_buffers_no_reading() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    c.set_nonblocking(true).unwrap();
    // With no rx buffers, the device reads nothing: the client's writes fill the
    // socket buffer and then block, however often the device is served.
    let mut sent = Vec::new();
    let chunk = 4096;
    loop {
        assert!(
            sent.len() < 16 << 20,
            "the device drained the socket unbounded"
        );
        let data = pattern(chunk, sent.len() / chunk);
        match c.write(&data) {
            Ok(n) => sent.extend_from_slice(&data[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("client write: {e}"),
        }
        g.host_event(Duration::ZERO);
    }
    assert!(!sent.is_empty());
    // Nothing pending that the device could do: the fd is quiet, nothing used.
    g.host_quiet();
    assert!(g.rx_used().is_empty());
    // Buffers, in batches: every byte arrives, in order, and the client can write
    // again.
    let mut got = Vec::new();
    g.host_until("the client's backlog in the guest", |g| {
        got.extend(g.rx_bytes());
        if got.len() < sent.len() {
            g.post_rx(32, 4096);
        }
        got.len() >= sent.len()
    });
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes reordered or altered");
    c.write_all(b"more").unwrap();
    g.post_rx(1, 4096);
    assert_eq!(g.guest_read(4), b"more");
}

#[test]
fn guest_bytes_reach_the_host_in_order() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    g.send(b"one ");
    g.send(b"two ");
    g.send(b"three ");
    // One chain of three descriptors.
    let (a, b, d) = (TX_AREA, TX_AREA + 0x100, TX_AREA + 0x300);
    for (at, s) in [(a, &b"four"[..]), (b, b"-and-"), (d, b"five")] {
        g.g.mem.write_slice(s, GuestAddress(at)).unwrap();
    }
    let (head, before) = g.send_chain(&[(a, 4, false), (b, 5, false), (d, 4, false)]);
    g.assert_tx_done(head, before);
    let want = b"one two three four-and-five";
    assert_eq!(read_exact(&mut c, want.len()), want);
    g.host_quiet();
}

#[test]
fn a_slow_host_holds_the_guest_back() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    // 64 KiB chains while the client reads nothing: the device completes chains
    // while the socket takes them, then holds one and takes no more.
    let len = TX_SLOT as usize;
    let mut heads = Vec::new();
    let mut sent = Vec::new();
    let blocked = loop {
        assert!(
            heads.len() < TX_SLOTS as usize,
            "the device never held back"
        );
        let data = pattern(len, heads.len());
        let at = g.next_tx_slot();
        g.g.mem.write_slice(&data, GuestAddress(at)).unwrap();
        sent.extend_from_slice(&data);
        let (head, before) = g.send_chain(&[(at, len as u32, false)]);
        heads.push(head);
        if g.tx.used_idx(&g.g.mem) == before {
            break before;
        }
    };
    // A further chain is not taken either, and the device waits on the socket.
    let at = g.next_tx_slot();
    let data = pattern(100, 999);
    g.g.mem.write_slice(&data, GuestAddress(at)).unwrap();
    sent.extend_from_slice(&data);
    g.send_chain(&[(at, 100, false)]);
    assert_eq!(g.tx.used_idx(&g.g.mem), blocked);
    // The host reads; the device goes on as the socket drains.
    let reader = std::thread::spawn(move || (read_exact(&mut c, sent.len()) == sent, c));
    g.host_until("every tx chain completed", |g| {
        g.tx.used_idx(&g.g.mem) == blocked.wrapping_add(2)
    });
    // The client stays connected (its hang-up would be host work).
    let (in_order, _c) = reader.join().unwrap();
    assert!(in_order, "host got the bytes in order");
    assert_eq!(
        g.tx.used(&g.g.mem, blocked).0,
        u32::from(*heads.last().unwrap())
    );
    g.host_quiet();
}

#[test]
fn a_new_client_after_a_hangup() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    // What the client wrote just before going still reaches the guest.
    c.write_all(b"bye").unwrap();
    drop(c);
    g.host_until("the hang-up noticed", |g| {
        !g.dev.lock().unwrap().has_client()
    });
    g.post_rx(1, 64);
    assert_eq!(g.guest_read(3), b"bye");
    g.host_quiet();
    // With no client, guest output is dropped (and completed).
    g.send(b"into the void");
    // A new client: it gets what the guest sends from now on, and only that.
    let mut c2 = g.connect();
    g.send(b"hi again");
    assert_eq!(read_exact(&mut c2, 8), b"hi again");
    c2.write_all(b"back").unwrap();
    g.post_rx(1, 64);
    assert_eq!(g.guest_read(4), b"back");
}

#[test]
fn a_half_closed_client_still_gets_output() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    g.post_rx(1, 64);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    g.host_until("the EOF read", |g| g.host_event(Duration::from_millis(50)));
    // EOF is not a hang-up: the client keeps the slot and the guest's output, and the
    // device stops watching its input (no busy loop on the EOF).
    assert!(g.dev.lock().unwrap().has_client());
    g.host_quiet();
    assert!(g.rx_used().is_empty(), "no rx buffer used for an EOF");
    g.send(b"after eof");
    assert_eq!(read_exact(&mut c, 9), b"after eof");
    // Its close then frees the slot.
    drop(c);
    g.host_until("the close noticed", |g| !g.dev.lock().unwrap().has_client());
    let _c2 = g.connect();
}

#[test]
fn a_hangup_releases_a_held_tx_chain() {
    let mut g = ConGuest::new();
    let c = g.connect();
    let len = TX_SLOT as u32;
    let held = loop {
        assert!(g.tx_slot < TX_SLOTS, "the device never held back");
        let at = g.next_tx_slot();
        let (_, before) = g.send_chain(&[(at, len, false)]);
        if g.tx.used_idx(&g.g.mem) == before {
            break before;
        }
    };
    // The host goes away: the held chain is completed (its rest dropped), and the
    // guest's output goes on being taken.
    drop(c);
    g.host_until("the held chain completed", |g| {
        g.tx.used_idx(&g.g.mem) == held.wrapping_add(1)
    });
    g.send(b"nobody listens");
    assert!(!g.dev.lock().unwrap().has_client());
    assert!(!g.needs_reset());
}

#[test]
fn a_client_outlives_a_driver_reset() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    // The driver resets; the host writes meanwhile: nothing is read for want of a
    // driver, and nothing busy-loops.
    g.g.write32(VIRTIO_MMIO_STATUS, 0);
    c.write_all(b"held for the next driver").unwrap();
    g.host_quiet();
    assert!(g.dev.lock().unwrap().has_client());
    // A new driver (same rings, cleared) gets the bytes and can write back.
    g.g.bring_up(&RINGS);
    g.rx = DriverQueue::new(256, RINGS[0].0, RINGS[0].1, RINGS[0].2);
    g.tx = DriverQueue::new(256, RINGS[1].0, RINGS[1].1, RINGS[1].2);
    g.rx_seen = 0;
    g.rx_chains.clear();
    g.post_rx(1, 64);
    assert_eq!(g.guest_read(24), b"held for the next driver");
    g.send(b"hello again");
    assert_eq!(read_exact(&mut c, 11), b"hello again");
}

#[test]
fn a_second_client_is_closed_at_once() {
    let mut g = ConGuest::new();
    let mut c1 = g.connect();
    let mut c2 = UnixStream::connect(&g.path).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(g.host_event(Duration::from_secs(5)));
    // The second reads EOF: it was accepted and closed.
    let mut b = [0u8; 1];
    assert_eq!(c2.read(&mut b).unwrap(), 0);
    // The first still works both ways.
    g.send(b"still you");
    assert_eq!(read_exact(&mut c1, 9), b"still you");
    c1.write_all(b"ok").unwrap();
    g.post_rx(1, 64);
    assert_eq!(g.guest_read(2), b"ok");
    g.host_quiet();
}

#[test]
fn hostile_chains_are_completed_empty() {
    let mut g = ConGuest::new();
    let mut c = g.connect();
    let buf = TX_AREA;
    g.g.mem.write_slice(b"secret", GuestAddress(buf)).unwrap();
    // tx: a device-writable descriptor, alone or after a readable one.
    for chain in [
        vec![(buf, 6, true)],
        vec![(buf, 6, false), (buf + 0x100, 6, true)],
        // Zero length, and outside guest memory: the walker refuses them.
        vec![(buf, 0, false)],
        vec![(MEM_SIZE - 2, 6, false)],
        vec![(u64::MAX - 2, 6, false)],
    ] {
        let (head, before) = g.send_chain(&chain);
        g.assert_tx_done(head, before);
    }
    // A chain whose next index is outside the queue.
    let head = g.tx.add_chain(&g.g.mem, &[(buf, 6, false)]);
    let flags = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    g.tx.set_desc(&g.g.mem, head, buf, 6, flags, 999);
    let before = g.tx.used_idx(&g.g.mem);
    g.tx.publish(&g.g.mem, head);
    g.g.notify(1);
    g.assert_tx_done(head, before);
    // None of it reached the host.
    g.send(b"clean");
    assert_eq!(read_exact(&mut c, 5), b"clean");

    // rx: a device-readable descriptor, zero length, outside memory; then a good one.
    let rbuf = RX_AREA;
    let bad = [
        g.add_rx_chain(&[(rbuf, 64, false)]),
        g.add_rx_chain(&[(rbuf, 64, true), (rbuf + 0x100, 64, false)]),
        g.add_rx_chain(&[(rbuf, 0, true)]),
        g.add_rx_chain(&[(MEM_SIZE - 8, 64, true)]),
    ];
    let good = g.add_rx_chain(&[(rbuf + 0x1000, 64, true)]);
    g.g.notify(0);
    c.write_all(b"data").unwrap();
    let mut used = Vec::new();
    g.host_until("the good rx chain", |g| {
        used.extend(g.rx_used());
        used.iter().any(|u| u.0 == good)
    });
    let empty: Vec<u16> = used.iter().filter(|u| u.1 == 0).map(|u| u.0).collect();
    assert_eq!(empty, bad);
    assert_eq!(used.last().unwrap(), &(good, 4, b"data".to_vec()));
    // Nothing written outside the good chain's 4 bytes.
    g.g.assert_untouched(&[(rbuf + 0x1000, 4), (TX_AREA, 0x10000)]);
    assert!(!g.needs_reset());
    g.host_quiet();
}

#[test]
fn the_socket_path_is_owned() {
    let dir = TempDir::new();
    let path = dir.0.join("c.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    let e = Console::new(&path)
        .err()
        .expect("an existing path is refused");
    assert!(matches!(e, ConsoleError::PathExists(_)));
    assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
    // And left alone.
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();

    let console = Console::new(&path).unwrap();
    assert!(path.exists());
    let _client = UnixStream::connect(&path).unwrap();
    drop(console);
    assert!(!path.exists(), "socket removed on drop");
    assert!(UnixStream::connect(&path).is_err());
}
