//! /dev inside the container: the default device nodes every container gets, the
//! `linux.devices` of config.json, and the usual symlinks. In a user namespace mknod is
//! refused, so nodes become bind mounts of the host's, as runc does.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{self, Mode, SFlag};
use nix::unistd::{self, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::secure::{create_file_in_root, mkdir_all_in_root, proc_path, relative};
use crate::error::{Error, Result};

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices runtime-spec requires in every container.
pub fn defaults() -> Vec<Device> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| Device {
        path: p.into(),
        kind: 'c',
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

pub fn from_spec(d: &LinuxDevice) -> Device {
    let kind = match d.typ() {
        LinuxDeviceType::B => 'b',
        LinuxDeviceType::P => 'p',
        _ => 'c',
    };
    Device {
        path: d.path().clone(),
        kind,
        major: d.major(),
        minor: d.minor(),
        mode: d.file_mode().unwrap_or(0o666),
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    }
}

pub fn create_all(rootfd: &OwnedFd, devices: &[Device], userns: bool) -> Result<()> {
    // The modes in config.json are absolute; the umask must not trim them.
    let old = stat::umask(Mode::empty());
    let r = devices.iter().try_for_each(|d| create(rootfd, d, userns));
    stat::umask(old);
    r
}

fn create(rootfd: &OwnedFd, d: &Device, userns: bool) -> Result<()> {
    let fail =
        |what: &str, e: Errno| Error::Setup(format!("device {}: {what}: {e}", d.path.display()));
    let rel = relative(&d.path);
    if !rel.starts_with("dev") {
        return Err(Error::Setup(format!(
            "device {}: linux.devices paths must be under /dev",
            d.path.display()
        )));
    }
    if userns {
        let host = Path::new("/").join(&rel);
        let spot = create_file_in_root(rootfd, &d.path, Mode::from_bits_truncate(0o644))
            .map_err(|e| fail("create bind target", e))?;
        return mount(
            Some(&host),
            &proc_path(&spot),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail(&format!("bind host {}", host.display()), e));
    }
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel
        .file_name()
        .ok_or_else(|| fail("no file name", Errno::EINVAL))?;
    let dir = mkdir_all_in_root(rootfd, parent, Mode::from_bits_truncate(0o755))
        .map_err(|e| fail("create parent", e))?;
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let dev = stat::makedev(d.major as u64, d.minor as u64);
    // A stale file from the image is replaced, as runc does.
    let _ = unistd::unlinkat(dir.as_fd(), name, unistd::UnlinkatFlags::NoRemoveDir);
    // O_PATH fds work as dirfd for the *at calls.
    stat::mknodat(
        dir.as_fd(),
        name,
        kind,
        Mode::from_bits_truncate(d.mode & 0o7777),
        dev,
    )
    .map_err(|e| fail("mknod", e))?;
    unistd::fchownat(
        dir.as_fd(),
        name,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fail("chown", e))
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx, /dev/core as runc creates them.
pub fn symlinks(rootfd: &OwnedFd) -> Result<()> {
    let dev = mkdir_all_in_root(rootfd, Path::new("/dev"), Mode::from_bits_truncate(0o755))
        .map_err(|e| Error::Setup(format!("/dev: {e}")))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        if name == "ptmx" {
            let _ = unistd::unlinkat(dev.as_fd(), name, unistd::UnlinkatFlags::NoRemoveDir);
        }
        match unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::Setup(format!("/dev/{name} -> {target}: {e}"))),
        }
    }
    Ok(())
}
