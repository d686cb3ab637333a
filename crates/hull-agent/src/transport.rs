//! The byte stream to the host: a virtio-serial port named `hull.agent` (QEMU without
//! vhost-vsock), a console when the cmdline says `hull.console=hvcN` (hull-vmm), or a
//! vsock listener when it says `hull.vsock=PORT`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const PORT_NAME: &str = "hull.agent";

pub struct Stream {
    pub fd: OwnedFd,
    pub name: String,
    /// A write returns before the host has the bytes: vsock sends from a workqueue,
    /// which a reboot does not wait for. A virtio-serial write is kicked to the VMM
    /// before it returns, and a console's waits for the VMM to take it.
    pub queued_writes: bool,
}

pub fn open() -> Result<Stream> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(name) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hull.console="))
    {
        return console(name);
    }
    if let Some(port) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hull.vsock="))
    {
        let port: u32 = port.parse().context("hull.vsock= is not a port number")?;
        return vsock(port);
    }
    serial_port()
}

/// A virtio console port (hvcN, hull-vmm's console): a tty, so it is put in raw mode
/// to carry bytes as they are.
fn console(name: &str) -> Result<Stream> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    use std::os::unix::fs::OpenOptionsExt;
    if name.contains('/') {
        bail!("hull.console={name}: not a device name");
    }
    let dev = Path::new("/dev").join(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dev.exists() {
        if Instant::now() > deadline {
            bail!(
                "{} did not appear: the host gave the VM no console port for the agent",
                dev.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&dev)
        .with_context(|| format!("open {}", dev.display()))?;
    let mut t = tcgetattr(&file).with_context(|| format!("tcgetattr {}", dev.display()))?;
    cfmakeraw(&mut t);
    tcsetattr(&file, SetArg::TCSANOW, &t)
        .with_context(|| format!("raw mode on {}", dev.display()))?;
    Ok(Stream {
        fd: file.into(),
        name: dev.display().to_string(),
        queued_writes: false,
    })
}

fn serial_port() -> Result<Stream> {
    // Ports are registered asynchronously by the virtio-console driver.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(dev) = find_port(Path::new("/sys/class/virtio-ports"))? {
            let file = File::options()
                .read(true)
                .write(true)
                .open(&dev)
                .with_context(|| format!("open {}", dev.display()))?;
            return Ok(Stream {
                fd: file.into(),
                name: dev.display().to_string(),
                queued_writes: false,
            });
        }
        if Instant::now() > deadline {
            bail!("no virtio-serial port named {PORT_NAME} and no hull.vsock= on the cmdline: the host gave the VM no channel to the agent");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_port(class: &Path) -> Result<Option<std::path::PathBuf>> {
    let Ok(entries) = std::fs::read_dir(class) else {
        return Ok(None);
    };
    for e in entries.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Ok(Some(Path::new("/dev").join(e.file_name())));
        }
    }
    Ok(None)
}

fn vsock(port: u32) -> Result<Stream> {
    use nix::sys::socket::{
        accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("vsock socket")?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port),
    )
    .with_context(|| format!("bind vsock port {port}"))?;
    listen(&listener, Backlog::new(1).unwrap_or(Backlog::MAXCONN)).context("listen on vsock")?;
    let fd = accept(std::os::fd::AsRawFd::as_raw_fd(&listener)).context("accept on vsock")?;
    // SAFETY: accept returned a new fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(Stream {
        fd,
        name: format!("vsock port {port}"),
        queued_writes: true,
    })
}
