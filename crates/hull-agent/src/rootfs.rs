//! A container's root filesystem in its bundle: the image layers the host gave (disks of
//! the VM, or images attached after boot) stacked read-only under a tmpfs the container
//! writes to, or one writable ext4 disk. `containers.rs` unmounts it with the bundle.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hull_proto::{Layer, Rootfs};
use nix::mount::{mount, MsFlags};

use crate::images::Images;

/// overlayfs stacks at most this many lower layers (OVL_MAX_STACK).
const MAX_LAYERS: usize = 500;

/// The disk whose virtio serial the host named.
fn find_disk(serial: &str) -> Result<PathBuf> {
    for e in std::fs::read_dir("/sys/block")
        .context("read /sys/block")?
        .flatten()
    {
        let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if s.trim() == serial {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    bail!("no disk with serial {serial:?} in this VM")
}

/// Read-only layers get a tmpfs overlay on top, so the container can write, even when it
/// asked for a read-only root: the runtime creates the mount points first and makes the
/// root read-only after, as it does on a host (a file volume's mount point may not
/// exist in the image). An ext4 disk is mounted writable as it is.
pub(crate) fn mount_rootfs(bundle: &Path, rootfs: &Rootfs, images: &Images) -> Result<()> {
    match rootfs.fstype.as_str() {
        "erofs" => {}
        "ext4" => {
            let [Layer::Disk { serial }] = rootfs.layers.as_slice() else {
                bail!("an ext4 rootfs is one disk of the VM");
            };
            let dev = find_disk(serial)?;
            let target = bundle.join("rootfs");
            return mount(
                Some(&dev),
                &target,
                Some("ext4"),
                MsFlags::empty(),
                None::<&str>,
            )
            .with_context(|| format!("mount {} (ext4)", dev.display()));
        }
        t => bail!("rootfs type {t:?} is not supported: use erofs or ext4"),
    }
    if rootfs.layers.is_empty() || rootfs.layers.len() > MAX_LAYERS {
        bail!(
            "a rootfs of {} layers: overlayfs stacks 1 to {MAX_LAYERS}",
            rootfs.layers.len()
        );
    }
    let mut lowers = Vec::with_capacity(rootfs.layers.len());
    for (i, layer) in rootfs.layers.iter().enumerate() {
        match layer {
            Layer::Image { name } => lowers.push(images.mount_of(name)?),
            Layer::Disk { serial } => {
                let dev = find_disk(serial)?;
                let dir = bundle.join(".lower").join(i.to_string());
                std::fs::create_dir_all(&dir)?;
                mount(
                    Some(&dev),
                    &dir,
                    Some("erofs"),
                    MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .with_context(|| format!("mount {} (erofs)", dev.display()))?;
                lowers.push(dir);
            }
        }
    }
    overlay(bundle, &lowers)
}

/// The bundle's rootfs: the read-only layers (top first) under a tmpfs the container
/// writes to.
fn overlay(bundle: &Path, lowers: &[PathBuf]) -> Result<()> {
    let target = bundle.join("rootfs");
    let rw = bundle.join(".rw");
    std::fs::create_dir_all(&rw)?;
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mount tmpfs for the overlay")?;
    std::fs::create_dir_all(rw.join("upper"))?;
    std::fs::create_dir_all(rw.join("work"))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
        rw.join("upper").display(),
        rw.join("work").display()
    );
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .context("mount the rootfs overlay")?;
    Ok(())
}
