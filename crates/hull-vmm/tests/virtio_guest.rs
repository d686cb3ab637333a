//! Tiny guests that drive hull-vmm's virtio-mmio devices through their registers, as
//! Linux's drivers do, on this host's KVM. The guests are assembly in tests/guests/,
//! assembled here with binutils' `as` (scripts/install-deps installs it with gcc).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_vmm::config::{
    BlockConfig, ConsoleConfig, MacAddr, NetConfig, SerialOut, VmConfig, VsockConfig,
};
use hull_vmm::machine::{Machine, Outcome};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The flat binary of a guest in tests/guests/, wrapped as a PVH kernel.
fn guest(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(name);
    let obj = dir.join("guest.o");
    let bin = dir.join("guest.bin");
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (binutils is needed: scripts/install-deps)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let includes = src.parent().unwrap();
    run(Command::new("as")
        .arg("--32")
        .arg("-I")
        .arg(includes)
        .arg("-o")
        .arg(&obj)
        .arg(&src));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&obj)
        .arg(&bin));
    let kernel = dir.join("kernel");
    let code = std::fs::read(&bin).unwrap();
    std::fs::write(&kernel, hull_vmm::tiny::pvh_elf(&code)).unwrap();
    kernel
}

#[test]
fn a_guest_reads_a_sector_through_virtio_blk() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-blk-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let mut image = vec![0u8; 4 * 512];
    image[512..520].copy_from_slice(b"hull-vmm");
    std::fs::write(d.0.join("disk"), &image).unwrap();
    let config = VmConfig {
        kernel: guest(&d.0, "blk_read.S"),
        initramfs: None,
        cmdline: "hull.test".into(),
        vcpus: 1,
        memory_mib: 16,
        memory_backend: Default::default(),
        hugepages: Default::default(),
        serial: SerialOut::File(d.0.join("serial")),
        block: vec![BlockConfig {
            path: d.0.join("disk"),
            read_only: true,
            serial: "disk0".into(),
        }],
        rng: true,
        vsock: None,
        console: None,
        net: Vec::new(),
        free_page_reporting: false,
        shutdown_grace_ms: 3000,
        deferred_teardown: false,
        seccomp: true,
        jail: None,
    };
    let machine = Machine::build(&config).unwrap();
    assert_eq!(
        machine.cmdline,
        "hull.test virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
    );
    assert_eq!(machine.run().unwrap(), Outcome::Reset);
    // Status 0 (VIRTIO_BLK_S_OK), then the sector's first bytes.
    assert_eq!(
        std::fs::read_to_string(d.0.join("serial")).unwrap(),
        "0hull-vmm"
    );
}

#[test]
fn pages_a_guest_reports_free_are_dropped_and_read_back_as_zero() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-balloon-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let config = VmConfig {
        kernel: guest(&d.0, "balloon_report.S"),
        initramfs: None,
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 16,
        memory_backend: Default::default(),
        hugepages: Default::default(),
        serial: SerialOut::File(d.0.join("serial")),
        block: vec![],
        rng: false,
        vsock: None,
        console: None,
        net: Vec::new(),
        free_page_reporting: true,
        shutdown_grace_ms: 3000,
        deferred_teardown: false,
        seccomp: true,
        jail: None,
    };
    let machine = Machine::build(&config).unwrap();
    assert_eq!(machine.cmdline, "virtio_mmio.device=4K@0xd0000000:5");
    assert_eq!(machine.run().unwrap(), Outcome::Reset);
    // Z: the reported 64 KiB read back as zero; K: the page after it kept its bytes.
    assert_eq!(std::fs::read_to_string(d.0.join("serial")).unwrap(), "ZK");
}

#[test]
fn a_guest_talks_to_a_host_listener_over_vsock() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-vsock-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let uds = d.0.join("vsock.sock");
    // Guest connections to host port 5000 land on the path with `_5000` appended.
    let listener = UnixListener::bind(d.0.join("vsock.sock_5000")).unwrap();
    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut hi = [0u8; 2];
        stream.read_exact(&mut hi).unwrap();
        stream.write_all(b"yo").unwrap();
        hi
    });
    let config = vsock_vm(&d.0, "vsock_echo.S", &uds);
    let machine = Machine::build(&config).unwrap();
    assert!(uds.exists(), "the hybrid vsock socket is not there");
    assert_eq!(machine.run().unwrap(), Outcome::Reset);
    assert_eq!(&host.join().unwrap(), b"hi");
    // R: the device answered the guest's REQUEST once the host listener accepted.
    assert_eq!(std::fs::read_to_string(d.0.join("serial")).unwrap(), "Ryo");
    assert!(!uds.exists(), "the hybrid vsock socket was left behind");
}

#[test]
fn the_host_connects_to_a_guest_listener_through_the_hybrid_socket() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-vsock-serve-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let uds = d.0.join("vsock.sock");
    let config = vsock_vm(&d.0, "vsock_serve.S", &uds);
    let machine = Machine::build(&config).unwrap();
    let vm = std::thread::spawn(move || machine.run());
    // What hull's agent client does (hull-sandbox client.rs): CONNECT, then OK <port>;
    // until the guest driver is up the device closes such streams, and the client
    // tries again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut host, port) = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no OK from the device"
        );
        match connect_port(&uds, 1024) {
            Ok(ok) => break ok,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    assert!(port >= 1 << 30, "local port {port}");
    host.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    host.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(vm.join().unwrap().unwrap(), Outcome::Reset);
    assert_eq!(
        std::fs::read_to_string(d.0.join("serial")).unwrap(),
        "Aping"
    );
}

/// The host half of a hybrid vsock connection: the stream and the local port it got.
fn connect_port(uds: &Path, port: u32) -> std::io::Result<(UnixStream, u32)> {
    let mut host = UnixStream::connect(uds)?;
    host.set_read_timeout(Some(Duration::from_secs(20)))?;
    host.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        host.read_exact(&mut byte)?;
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let local = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an OK line: {line:?}")))?;
    Ok((host, local))
}

/// A VM of one vCPU with a vsock device on `uds` and nothing else, running a guest
/// from tests/guests/.
fn vsock_vm(dir: &Path, guest_source: &str, uds: &Path) -> VmConfig {
    VmConfig {
        kernel: guest(dir, guest_source),
        initramfs: None,
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 16,
        memory_backend: Default::default(),
        hugepages: Default::default(),
        serial: SerialOut::File(dir.join("serial")),
        block: vec![],
        rng: false,
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.to_path_buf(),
        }),
        console: None,
        net: Vec::new(),
        free_page_reporting: false,
        shutdown_grace_ms: 3000,
        deferred_teardown: false,
        seccomp: true,
        jail: None,
    }
}

#[test]
fn a_guest_and_a_host_client_talk_over_virtio_console() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-console-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let socket = d.0.join("console.sock");
    let mut config = vsock_vm(&d.0, "console_echo.S", &d.0.join("unused.sock"));
    config.vsock = None;
    config.console = Some(ConsoleConfig {
        socket: socket.clone(),
    });
    let machine = Machine::build(&config).unwrap();
    assert_eq!(machine.cmdline, "virtio_mmio.device=4K@0xd0000000:5");
    let vm = std::thread::spawn(move || machine.run());
    let mut host = UnixStream::connect(&socket).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"from the host").unwrap();
    let mut hello = [0u8; 5];
    host.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    assert_eq!(vm.join().unwrap().unwrap(), Outcome::Reset);
    assert_eq!(
        std::fs::read_to_string(d.0.join("serial")).unwrap(),
        "from the host"
    );
    assert!(!socket.exists(), "the console socket was left behind");
}

/// A tap the test made (`ip tuntap add`), deleted on drop.
struct Tap(String);

impl Tap {
    fn new(name: &str) -> Tap {
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = Tap(name.to_string());
        // The host stack stays quiet on it: no IPv6 autoconfiguration traffic.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        ip(&["link", "set", "dev", name, "up"]);
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.0])
            .status();
    }
}

/// A raw packet socket on interface `name`: what the host network sees of the tap.
fn packet_socket(name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is ours.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll is valid; bind reads `size_of` bytes of it.
    let r = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex;
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind to {name}: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval, which `tv` is.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

#[test]
fn a_guest_echoes_an_ethernet_frame_through_virtio_net_on_a_tap() {
    use std::os::fd::AsRawFd;
    if !Path::new("/dev/net/tun").exists() {
        println!("virtio-net tap test not run: this host has no /dev/net/tun (modprobe tun)");
        return;
    }
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-net-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let tap = Tap::new(&format!("hvt{}", std::process::id() % 1_000_000));
    let guest_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x2a];
    let host_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    let mut config = vsock_vm(&d.0, "net_echo.S", &d.0.join("unused.sock"));
    config.vsock = None;
    config.net = vec![NetConfig {
        tap: Some(tap.0.clone()),
        tap_fd: None,
        guest_mac: Some(MacAddr(guest_mac)),
    }];
    let machine = Machine::build(&config).unwrap();
    assert_eq!(machine.cmdline, "virtio_mmio.device=4K@0xd0000000:5");
    let vm = std::thread::spawn(move || machine.run());

    let sock = packet_socket(&tap.0);
    let mut sent = vec![0xff; 6];
    sent.extend(host_mac);
    sent.extend([0x88, 0xb5]);
    sent.extend(b"hull-vmm virtio-net says hello to the guest, 46+");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let echo = 'wait: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no echo from the guest"
        );
        // Until the guest's driver is up, frames wait in the tap or are dropped by it
        // (no carrier before hull-vmm attached): send again until one comes back.
        // SAFETY: `sent` is valid for reads of its length.
        unsafe { libc::send(sock.as_raw_fd(), sent.as_ptr().cast(), sent.len(), 0) };
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let frame = &buf[..n as usize];
            if frame.len() >= 14 && frame[6..12] == guest_mac {
                break 'wait frame.to_vec();
            }
        }
    };
    // To the sender, from the guest's MAC (read from the config space), the rest as sent.
    assert_eq!(echo[..6], host_mac);
    assert_eq!(echo[12..], sent[12..]);
    assert_eq!(vm.join().unwrap().unwrap(), Outcome::Reset);
    assert_eq!(std::fs::read_to_string(d.0.join("serial")).unwrap(), "!");
}
