//! Images the host attaches after boot (a pod's later containers' rootfs layers): each
//! on an nbd device the kernel makes for it (nbd.rs), whose socket the router relays to
//! the host, mounted read-only (erofs) under /run/hull-images/<name>; a container's
//! bundle stacks its layers under a tmpfs overlay.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hull_proto::StreamId;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::router::Router;

/// More would be a host asking the guest to hold more devices than any image has layers
/// (overlayfs stacks at most 500 lowers; container images rarely pass 50).
const MAX_ATTACHED: usize = 512;

struct Attached {
    index: u32,
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
        if self.attached.len() >= MAX_ATTACHED {
            bail!("{MAX_ATTACHED} images are attached to this VM already");
        }
        let (sock, relay) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for an nbd device")?;
        router.add(stream, relay.as_fd())?;
        drop(relay);
        // The kernel holds its own reference to the socket from here.
        let index = crate::nbd::connect(sock.as_raw_fd(), size)?;
        drop(sock);
        let a = Attached {
            index,
            mount: self.dir.join(name),
        };
        if let Err(e) = mount_image(&a) {
            disconnect(&a);
            return Err(e);
        }
        self.attached.insert(name.to_string(), a);
        Ok(())
    }

    pub fn detach(&mut self, name: &str) -> Result<()> {
        let a = self
            .attached
            .remove(name)
            .ok_or_else(|| anyhow!("no image {name:?} is attached to this VM"))?;
        let _ = umount2(&a.mount, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&a.mount);
        disconnect(&a);
        Ok(())
    }
}

/// Mounts the device once devtmpfs has its node (made asynchronously after connect).
fn mount_image(a: &Attached) -> Result<()> {
    let dev = format!("/dev/nbd{}", a.index);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&dev).exists() {
        if Instant::now() > deadline {
            bail!("{dev} did not appear within 10 s of its connect");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::create_dir_all(&a.mount).with_context(|| format!("mkdir {}", a.mount.display()))?;
    mount(
        Some(Path::new(&dev)),
        &a.mount,
        Some("erofs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .with_context(|| format!("mount {dev} (erofs) on {}", a.mount.display()))
}

/// Ends the device: the kernel shuts its socket down, the router sees that and ends the
/// stream for the host.
fn disconnect(a: &Attached) {
    if let Err(e) = crate::nbd::disconnect(a.index) {
        tracing::warn!("nbd{}: {e:#}", a.index);
    }
}
