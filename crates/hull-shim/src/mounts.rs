//! The snapshotter's mounts (overlayfs layers, or a bind of one directory) made at the
//! bundle's `rootfs`, where `hull create` finds the root (and, for a VM, images it).

use std::path::Path;

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Flags and filesystem data of a containerd mount's options (`mount(8)` names).
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "suid" | "dev" | "exec" | "async" | "defaults" => {}
            _ => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// One page is what mount(2) copies of the data; containerd shortens a longer overlay
/// lowerdir by chdir to the layers' parent, which a threaded shim cannot do safely.
const MAX_DATA: usize = 4095;

pub fn mount_all(mounts: &[Mount], rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(rootfs)?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, rootfs) {
            if i > 0 {
                unmount_all(rootfs);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, rootfs: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fail = |e: nix::Error| {
        Error::Internal(format!(
            "mount {} ({}) at {}: {e}",
            m.source,
            m.type_,
            rootfs.display()
        ))
    };
    if data.len() > MAX_DATA {
        return Err(Error::InvalidArgument(format!(
            "{} mount options of {} bytes (too many layers): more than mount(2) takes",
            m.type_,
            data.len()
        )));
    }
    if m.type_ == "bind" || flags.contains(MsFlags::MS_BIND) {
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            rootfs,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .map_err(fail)?;
        // A bind takes the other flags only on a remount.
        let rest = flags - MsFlags::MS_REC - MsFlags::MS_BIND;
        if !rest.is_empty() {
            let re = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest;
            mount(None::<&str>, rootfs, None::<&str>, re, None::<&str>).map_err(fail)?;
        }
        return Ok(());
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(
        Some(m.source.as_str()),
        rootfs,
        Some(m.type_.as_str()),
        flags,
        data,
    )
    .map_err(fail)
}

/// Unmounts everything stacked at `path` (detached: a VMM may still hold files).
pub fn unmount_all(path: &Path) {
    for _ in 0..32 {
        if umount2(path, MntFlags::MNT_DETACH).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["index=off", "ro", "lowerdir=/a:/b", "nosuid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, d) = parse_options(&o);
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(d, "index=off,lowerdir=/a:/b");
    }
}
