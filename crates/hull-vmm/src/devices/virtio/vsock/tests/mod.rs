//! virtio-vsock driven as Linux drives it: registers through the MMIO transport, three
//! split rings built by hand in guest memory (rx buffers as Linux 6.1 posts them: a
//! 44-byte header descriptor and a 4 KiB one; tx packets as header + payload
//! descriptors), and real Unix sockets on the host side. The test plays the event loop:
//! it waits for `host_event_fd()` to become readable before each
//! `process_host_events()`.

mod flows;
mod hostile;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::{Vsock, QUEUE_SIZE, RX_QUEUE_SIZE};
use crate::devices::virtio::tests::{
    fill, host_fd_readable, DriverQueue, Guest, Watchdog, DATA, GUARD,
};
use crate::devices::virtio::VirtioDevice;

pub const CID: u64 = 3;
/// What the test guest advertises as its receive buffer, unless a test says otherwise.
pub const GUEST_BUF: u32 = 1 << 20;
pub const RX_BUF: u32 = 4096;

/// Ring addresses of the three queues (256 entries each), below the data area.
const RINGS: [(u64, u64, u64); 3] = [
    (0x1000, 0x3000, 0x4000),
    (0x5000, 0x7000, 0x8000),
    (0x9000, 0xb000, 0xc000),
];
/// rx slots: 128 of 8 KiB (header at +0, buffer at +0x40) in the first MiB of data.
const RX_AREA: u64 = DATA;
const RX_SLOT: u64 = 0x2000;
const RX_SLOTS: u64 = 128;
/// tx slots: 16 of 0x11000 bytes (header at +0, payload at +0x40) after that.
const TX_AREA: u64 = DATA + (1 << 20);
const TX_SLOT: u64 = 0x11000;
const TX_SLOTS: u64 = 16;

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "hull-vsock-{}-{}",
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

pub struct VsGuest {
    pub g: Guest,
    pub dev: Arc<Mutex<Vsock>>,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub path: PathBuf,
    rx_seen: u16,
    rx_slot: u64,
    tx_slot: u64,
    /// Buffers of the rx chains posted and not yet used, by head.
    rx_chains: HashMap<u16, Vec<(u64, u32)>>,
    /// Heads of rx chains the device gave back empty (refused).
    pub rx_refused: Vec<u16>,
    pub _dir: TempDir,
    _watchdog: Watchdog,
}

/// A packet as the guest got it.
#[derive(Debug)]
pub struct Pkt {
    pub hdr: Header,
    pub data: Vec<u8>,
}

pub fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

impl VsGuest {
    /// A running device (driver OK, three queues ready) listening in a new temp dir.
    pub fn new() -> VsGuest {
        let watchdog = Watchdog::arm(Duration::from_secs(60));
        let dir = TempDir::new();
        let path = dir.0.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &path).unwrap()));
        let shared: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
        let mut g = Guest::shared(shared, DATA + (3 << 20) - 0x1000, RINGS[0]);
        g.bring_up(&RINGS);
        VsGuest {
            g,
            dev,
            rx: DriverQueue::new(RX_QUEUE_SIZE, RINGS[0].0, RINGS[0].1, RINGS[0].2),
            tx: DriverQueue::new(QUEUE_SIZE, RINGS[1].0, RINGS[1].1, RINGS[1].2),
            path,
            rx_seen: 0,
            rx_slot: 0,
            tx_slot: 0,
            rx_chains: HashMap::new(),
            rx_refused: Vec::new(),
            _dir: dir,
            _watchdog: watchdog,
        }
    }

    /// Posts `n` rx chains as Linux 6.1 does and notifies queue 0.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let base = RX_AREA + (self.rx_slot % RX_SLOTS) * RX_SLOT;
            self.rx_slot += 1;
            fill(&self.g.mem, base, RX_SLOT, GUARD);
            let bufs = [(base, HDR_LEN as u32, true), (base + 0x40, RX_BUF, true)];
            self.add_rx_chain(&bufs);
        }
        self.g.notify(0);
    }

    /// Posts one rx chain of arbitrary buffers (not notified).
    pub fn add_rx_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.rx.add_chain(&self.g.mem, bufs);
        self.rx.publish(&self.g.mem, head);
        self.rx_chains
            .insert(head, bufs.iter().map(|&(a, l, _)| (a, l)).collect());
        head
    }

    /// The rx entries used since the last call, raw: (head, used len).
    pub fn rx_used_raw(&mut self) -> Vec<(u16, u32)> {
        let now = self.rx.used_idx(&self.g.mem);
        let mut out = Vec::new();
        while self.rx_seen != now {
            let (id, len) = self.rx.used(&self.g.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            out.push((id as u16, len));
        }
        out
    }

    /// The packets the device put in rx buffers since the last call.
    pub fn rx_packets(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        for (head, len) in self.rx_used_raw() {
            let bufs = self.rx_chains.remove(&head).expect("used head was posted");
            if len == 0 {
                self.rx_refused.push(head);
                continue;
            }
            let mut bytes = Vec::new();
            for (a, l) in bufs {
                bytes.extend(self.g.bytes(a, l as usize));
            }
            assert!(
                len as usize >= HDR_LEN,
                "used length {len} shorter than a header"
            );
            let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(
                len,
                HDR_LEN as u32 + hdr.len,
                "used length matches the header"
            );
            assert_eq!(hdr.dst_cid, CID);
            assert_eq!(hdr.type_, TYPE_STREAM);
            let data = bytes[HDR_LEN..len as usize].to_vec();
            out.push(Pkt { hdr, data });
        }
        out
    }

    /// Exactly one packet arrived; returns it.
    pub fn one_packet(&mut self) -> Pkt {
        let mut p = self.rx_packets();
        assert_eq!(p.len(), 1, "expected one packet, got {p:?}");
        p.pop().unwrap()
    }

    /// Publishes a tx chain and notifies queue 1; checks it was completed (length 0).
    pub fn send_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        self.g.transmit(&mut self.tx, 1, bufs);
    }

    fn tx_slot(&mut self) -> u64 {
        let base = TX_AREA + (self.tx_slot % TX_SLOTS) * TX_SLOT;
        self.tx_slot += 1;
        base
    }

    /// Sends a packet as Linux does: header descriptor, then payload descriptor.
    pub fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        self.send_as_is(hdr, payload);
    }

    /// Sends `hdr` unchanged (its `len` may lie) with `payload`.
    pub fn send_as_is(&mut self, hdr: Header, payload: &[u8]) {
        let base = self.tx_slot();
        self.g
            .mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        let mut bufs = vec![(base, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            assert!(payload.len() as u64 <= TX_SLOT - 0x40);
            self.g
                .mem
                .write_slice(payload, GuestAddress(base + 0x40))
                .unwrap();
            bufs.push((base + 0x40, payload.len() as u32, false));
        }
        self.send_chain(&bufs);
    }

    /// Writes raw bytes in a tx slot; returns their address.
    pub fn tx_bytes(&mut self, bytes: &[u8]) -> u64 {
        let base = self.tx_slot();
        self.g.mem.write_slice(bytes, GuestAddress(base)).unwrap();
        base
    }

    /// Waits (poll(2), up to `timeout`) for the host fd to become readable; if it does,
    /// runs `process_host_events` and returns true.
    pub fn host_event(&mut self, timeout: Duration) -> bool {
        let fd = self.dev.lock().unwrap().host_event_fd();
        if !host_fd_readable(fd, timeout) {
            return false;
        }
        self.dev.lock().unwrap().process_host_events().unwrap();
        true
    }

    /// Serves host events until `done` holds (checked after each round); fails after
    /// five seconds.
    pub fn host_until(&mut self, what: &str, mut done: impl FnMut(&mut VsGuest) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.host_event(Duration::from_millis(200));
        }
    }

    /// Host events until at least one packet arrived; returns what arrived.
    pub fn host_packets(&mut self, what: &str) -> Vec<Pkt> {
        let mut got = Vec::new();
        self.host_until(what, |g| {
            got.extend(g.rx_packets());
            !got.is_empty()
        });
        got
    }

    /// The host fd stays quiet for a while: no host work pending (no busy loop).
    pub fn host_quiet(&mut self) {
        assert!(
            !self.host_event(Duration::from_millis(100)),
            "host fd readable with nothing to do"
        );
    }

    /// A host process connects to U and asks for guest port `port`.
    pub fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s
    }

    /// A full host-initiated connection to guest port `port`: CONNECT, REQUEST seen,
    /// RESPONSE sent, OK read. Returns the host stream and the host's local port.
    pub fn established_from_host(&mut self, port: u32) -> (UnixStream, u32) {
        // One buffer, for the REQUEST: no spare buffer lets the device tell the guest
        // anything a test did not ask for.
        self.post_rx(1);
        let mut s = self.host_connect(port);
        let req = self.host_packets("the REQUEST").remove(0);
        assert_eq!(req.hdr.op, OP_REQUEST);
        assert_eq!(req.hdr.dst_port, port);
        let local = req.hdr.src_port;
        self.send(guest_hdr(OP_RESPONSE, port, local), &[]);
        assert_eq!(read_line(&mut s), format!("OK {local}"));
        (s, local)
    }

    /// A guest-initiated connection from guest port `gport` to host port `hport`, with
    /// the test listening at `U_hport`. Returns the accepted host stream.
    pub fn established_from_guest(
        &mut self,
        l: &UnixListener,
        gport: u32,
        hport: u32,
    ) -> UnixStream {
        self.post_rx(1);
        self.send(guest_hdr(OP_REQUEST, gport, hport), &[]);
        let p = self.one_packet();
        assert_eq!(p.hdr.op, OP_RESPONSE);
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (hport, gport));
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    pub fn listen(&self, port: u32) -> UnixListener {
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{port}"));
        UnixListener::bind(Path::new(&p)).unwrap()
    }

    /// Collects host→guest payload on the connection to guest port `gport` until
    /// `n` bytes came, posting rx buffers as needed.
    pub fn guest_read(&mut self, gport: u32, n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        self.host_until("host data in the guest", |g| {
            for p in g.rx_packets() {
                assert_eq!(p.hdr.op, OP_RW, "{p:?}");
                assert_eq!(p.hdr.dst_port, gport);
                assert!(p.data.len() <= RX_BUF as usize);
                data.extend(p.data);
            }
            if data.len() < n {
                g.post_rx(4);
            }
            data.len() >= n
        });
        assert_eq!(data.len(), n, "no more than was sent");
        data
    }
}

pub fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).unwrap();
        if b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

/// Reads until EOF (within the stream's read timeout); returns what came before it.
pub fn read_to_eof(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("EOF within the timeout");
    v
}

/// The device closed the stream: EOF, or ECONNRESET when it closed with bytes of ours
/// unread (Unix sockets report that). Returns what came before.
pub fn read_to_closed(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    match s.read_to_end(&mut v) {
        Ok(_) => v,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => v,
        Err(e) => panic!("stream not closed within the timeout: {e}"),
    }
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}
