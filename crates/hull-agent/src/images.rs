//! Images the host attaches after boot (a pod's later containers' rootfs): each on an
//! nbd device of the guest kernel, whose socket the router relays to the host, mounted
//! read-only (erofs) under /run/hull-images/<name>; a container's bundle lays its tmpfs
//! overlay on that. NBD_DO_IT blocks for the device's life, so a child process of the
//! agent makes that call (the agent stays single-threaded).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hull_proto::StreamId;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::router::Router;

// linux/nbd.h: _IO(0xab, n).
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_SET_SIZE: libc::c_ulong = 0xab02;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;
const NBD_FLAG_HAS_FLAGS: libc::c_ulong = 1 << 0;
const NBD_FLAG_READ_ONLY: libc::c_ulong = 1 << 1;
const BLOCK_SIZE: libc::c_ulong = 4096;

struct Attached {
    index: u32,
    dev: File,
    /// The child blocked in NBD_DO_IT.
    child: Pid,
    mount: PathBuf,
}

pub struct Images {
    dir: PathBuf,
    attached: HashMap<String, Attached>,
}

impl Default for Images {
    fn default() -> Self {
        Images {
            dir: PathBuf::from("/run/hull-images"),
            attached: HashMap::new(),
        }
    }
}

fn nbd_ioctl(dev: &File, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the nbd ioctls used here take an integer argument (an fd, a size or
    // flags), never a pointer.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), request as _, arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Images {
    /// Where `name` is mounted.
    pub fn mount_of(&self, name: &str) -> Result<PathBuf> {
        self.attached
            .get(name)
            .map(|a| a.mount.clone())
            .ok_or_else(|| anyhow!("no image {name:?} is attached to this VM"))
    }

    pub fn attach(
        &mut self,
        router: &Router,
        name: &str,
        stream: StreamId,
        size: u64,
    ) -> Result<()> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("image name {name:?}: letters and digits only");
        }
        if self.attached.contains_key(name) {
            bail!("image {name} is attached already");
        }
        let index = self.free_index()?;
        let (sock, relay) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for an nbd device")?;
        router.add(stream, relay.as_fd())?;
        drop(relay);
        let path = format!("/dev/nbd{index}");
        let dev = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {path}"))?;
        let setup = [
            (NBD_SET_BLKSIZE, BLOCK_SIZE, "NBD_SET_BLKSIZE"),
            (NBD_SET_SIZE, size as libc::c_ulong, "NBD_SET_SIZE"),
            (
                NBD_SET_FLAGS,
                NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY,
                "NBD_SET_FLAGS",
            ),
            (
                NBD_SET_SOCK,
                sock.as_raw_fd() as libc::c_ulong,
                "NBD_SET_SOCK",
            ),
        ];
        for (request, arg, what) in setup {
            nbd_ioctl(&dev, request, arg).with_context(|| format!("{what} on {path}"))?;
        }
        // The kernel holds the socket now.
        drop(sock);
        let child = do_it(&dev)?;
        let mut a = Attached {
            index,
            dev,
            child,
            mount: self.dir.join(name),
        };
        if let Err(e) = wait_started(&a).and_then(|()| mount_image(&a, &path)) {
            disconnect(&mut a);
            return Err(e);
        }
        self.attached.insert(name.to_string(), a);
        Ok(())
    }

    pub fn detach(&mut self, name: &str) -> Result<()> {
        let mut a = self
            .attached
            .remove(name)
            .ok_or_else(|| anyhow!("no image {name:?} is attached to this VM"))?;
        let _ = umount2(&a.mount, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&a.mount);
        disconnect(&mut a);
        Ok(())
    }

    /// The lowest nbd device neither attached here nor still running.
    fn free_index(&self) -> Result<u32> {
        let used: Vec<u32> = self.attached.values().map(|a| a.index).collect();
        for i in 0.. {
            let sys = PathBuf::from(format!("/sys/block/nbd{i}"));
            if !sys.exists() {
                break;
            }
            if !used.contains(&i) && !sys.join("pid").exists() {
                return Ok(i);
            }
        }
        bail!(
            "no free nbd device: {} images are attached to this VM",
            used.len()
        )
    }
}

/// A child that runs the device until it is disconnected. It keeps nothing of the
/// agent's but the device: the agent's pipes must close when the agent closes them.
fn do_it(dev: &File) -> Result<Pid> {
    // SAFETY: the agent is single-threaded; the child makes one ioctl and exits.
    match unsafe { nix::unistd::fork() }.context("fork for NBD_DO_IT")? {
        ForkResult::Child => {
            crate::router::close_all_but(&[dev.as_raw_fd() as RawFd]);
            let code = match nbd_ioctl(dev, NBD_DO_IT, 0) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::debug!("NBD_DO_IT: {e}");
                    1
                }
            };
            // SAFETY: _exit ends this child without running the agent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// The device runs once its `pid` attribute exists (NBD_DO_IT made it).
fn wait_started(a: &Attached) -> Result<()> {
    let pid_attr = PathBuf::from(format!("/sys/block/nbd{}/pid", a.index));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid_attr.exists() {
        if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(a.child, Some(WaitPidFlag::WNOHANG))
        {
            bail!("nbd{}: NBD_DO_IT failed", a.index);
        }
        if Instant::now() > deadline {
            bail!("nbd{} did not start within 10 s", a.index);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn mount_image(a: &Attached, dev: &str) -> Result<()> {
    std::fs::create_dir_all(&a.mount).with_context(|| format!("mkdir {}", a.mount.display()))?;
    mount(
        Some(Path::new(dev)),
        &a.mount,
        Some("erofs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("mount {dev} (erofs) on {}", a.mount.display()))
}

/// Ends the device: its DO_IT child returns, the router sees the socket close and ends
/// the stream for the host.
fn disconnect(a: &mut Attached) {
    let _ = nbd_ioctl(&a.dev, NBD_DISCONNECT, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(a.child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = nix::sys::signal::kill(a.child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(a.child, None);
                break;
            }
            _ => break,
        }
    }
    let _ = nbd_ioctl(&a.dev, NBD_CLEAR_SOCK, 0);
}
