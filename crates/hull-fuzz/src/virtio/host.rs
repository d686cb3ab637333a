//! The devices under test and their host ends: a SOCK_SEQPACKET pair standing in for
//! net's tap (whole frames per read and write, as a tap's), unix clients of vsock's
//! and the console's listening sockets.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hull_vmm::devices::virtio::{Block, Console, Net, Rng, Vsock};

use super::{run, HostSide, NoHost};
use crate::input::Input;

/// A socket path in the scratch directory not used before by this process.
fn fresh_path(kind: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    crate::scratch().join(format!("{kind}-{}.sock", N.fetch_add(1, Ordering::Relaxed)))
}

/// Register accesses from reset on, no bring-up: the transport's state machine alone,
/// in front of a device whose queues are simple (virtio-rng).
pub fn mmio(data: &[u8]) {
    let mut input = Input::new(data);
    run(
        &mut input,
        Arc::new(Mutex::new(Rng::new())),
        &mut NoHost,
        true,
    );
}

/// virtio-blk over a 64 KiB image, writable or not as the first byte says.
pub fn blk(data: &[u8]) {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        let p = crate::scratch().join("disk.img");
        std::fs::write(&p, vec![0x5a; 64 << 10]).expect("write the disk image");
        p
    });
    let mut input = Input::new(data);
    let Some(mode) = input.u8() else { return };
    let dev = Block::new(image, mode & 1 != 0, "hull-fuzz").expect("virtio-blk");
    run(&mut input, Arc::new(Mutex::new(dev)), &mut NoHost, false);
}

struct NetHost {
    dev: Arc<Mutex<Net>>,
    tap: OwnedFd,
}

impl HostSide for NetHost {
    fn event(&mut self, input: &mut Input) {
        let n = usize::from(input.u16().unwrap_or(0) % 2048);
        let frame = input.up_to(n);
        // SAFETY: send(2) of a borrowed buffer on a socket this struct owns.
        unsafe {
            libc::send(
                self.tap.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let _ = self
            .dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .process_host_events();
        drain_fd(&self.tap);
    }
}

/// Reads whatever is waiting on a non-blocking fd, so the device never finds it full
/// unless the program makes it so within one step.
fn drain_fd(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: recv(2) into a local buffer of the given length, on an fd we own.
    while unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    } > 0
    {}
}

/// virtio-net whose tap is the fuzzer's: host events inject a frame of its bytes.
pub fn net(data: &[u8]) {
    let mut fds = [0; 2];
    let flags = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair(2) writes two fds into the local array.
    if unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) } != 0 {
        panic!("socketpair: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (dev_end, tap) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let mut input = Input::new(data);
    let mac = input
        .u8()
        .map(|b| [0x02, 0, 0, 0, 0, b])
        .filter(|m| m[5] & 1 == 0);
    let dev = Arc::new(Mutex::new(Net::new(dev_end, mac).expect("virtio-net")));
    let mut host = NetHost {
        dev: dev.clone(),
        tap,
    };
    run(&mut input, dev, &mut host, false);
}

/// Host processes at a unix socket: connect, write, close, then the device's
/// host-event pass, then whatever the device sent them is read.
struct Clients {
    path: PathBuf,
    clients: Vec<UnixStream>,
    process: Box<dyn FnMut()>,
}

impl HostSide for Clients {
    fn event(&mut self, input: &mut Input) {
        let op = input.u8().unwrap_or(0);
        match op % 4 {
            0 if self.clients.len() < 8 => {
                if let Ok(s) = UnixStream::connect(&self.path) {
                    let _ = s.set_nonblocking(true);
                    self.clients.push(s);
                }
            }
            1 if !self.clients.is_empty() => {
                let i = usize::from(op >> 2) % self.clients.len();
                self.clients.remove(i);
            }
            2 if !self.clients.is_empty() => {
                let i = usize::from(op >> 2) % self.clients.len();
                let port = input.u32().unwrap_or(0) % 2048;
                let _ = writeln!(self.clients[i], "CONNECT {port}");
            }
            _ if !self.clients.is_empty() => {
                let i = usize::from(op >> 2) % self.clients.len();
                let n = usize::from(input.u16().unwrap_or(0) % 4096);
                let _ = self.clients[i].write_all(input.up_to(n));
            }
            _ => {}
        }
        (self.process)();
        let mut buf = [0u8; 4096];
        for c in &mut self.clients {
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// virtio-vsock (guest CID 3) whose host side is up to 8 clients of its socket.
pub fn vsock(data: &[u8]) {
    let path = fresh_path("vsock");
    let dev = Arc::new(Mutex::new(Vsock::new(3, &path).expect("virtio-vsock")));
    let d = dev.clone();
    let mut host = Clients {
        path,
        clients: Vec::new(),
        process: Box::new(move || {
            let _ = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_host_events();
        }),
    };
    run(&mut Input::new(data), dev, &mut host, false);
}

/// The virtio console whose host side is clients of its socket (one is served).
pub fn console(data: &[u8]) {
    let path = fresh_path("console");
    let dev = Arc::new(Mutex::new(Console::new(&path).expect("virtio-console")));
    let d = dev.clone();
    let mut host = Clients {
        path,
        clients: Vec::new(),
        process: Box::new(move || {
            let _ = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_host_events();
        }),
    };
    run(&mut Input::new(data), dev, &mut host, false);
}
