//! maskedPaths and readonlyPaths, applied after pivot_root so they name paths as the
//! container sees them (mostly under its own /proc and /sys).

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::SFlag;

use super::mounts::{current_flags, remount_bind};
use super::secure::{bind_fd, open_in_root, open_no_symlinks, proc_path};
use crate::error::{Error, Result};

fn root() -> Result<std::os::fd::OwnedFd> {
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Setup(format!("open /: {e}")))
}

/// The container's /dev/null, opened without following any symlink and checked to be
/// the null device (char 1:3): masks are bound from it, and a symlink there (to
/// /proc/sys/kernel/core_pattern, say) would make a masked file a writable window onto
/// the host (CVE-2025-31133).
fn dev_null(root: &OwnedFd) -> Result<OwnedFd> {
    let path = Path::new("/dev/null");
    let fd = open_no_symlinks(root, path, OFlag::O_PATH).map_err(|e| Error::Refused {
        path: path.into(),
        reason: format!("maskedPaths are bound from it, and it cannot be opened without following a symlink: {e}"),
    })?;
    let st =
        nix::sys::stat::fstat(&fd).map_err(|e| Error::Setup(format!("stat /dev/null: {e}")))?;
    let kind = st.st_mode & libc::S_IFMT;
    let rdev = (
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev),
    );
    if kind != libc::S_IFCHR || rdev != (1, 3) {
        return Err(Error::Refused {
            path: path.into(),
            reason: format!(
                "maskedPaths are bound from it, and it is {} instead of the null device (char 1:3)",
                describe(kind, rdev)
            ),
        });
    }
    Ok(fd)
}

fn describe(kind: u32, (major, minor): (u64, u64)) -> String {
    match kind {
        libc::S_IFLNK => "a symlink".into(),
        libc::S_IFREG => "a regular file".into(),
        libc::S_IFDIR => "a directory".into(),
        libc::S_IFCHR => format!("char device {major}:{minor}"),
        libc::S_IFBLK => format!("block device {major}:{minor}"),
        _ => "a special file".into(),
    }
}

/// Hides each path: /dev/null over files, an empty read-only tmpfs over directories.
pub fn mask(paths: &[String]) -> Result<()> {
    let root = root()?;
    let mut null = None;
    for p in paths {
        let fd = match open_in_root(&root, Path::new(p), OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::Setup(format!("maskedPaths {p}: {e}"))),
        };
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::Setup(format!("maskedPaths {p}: {e}")))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let r = if is_dir {
            mount(
                Some("tmpfs"),
                &proc_path(&fd),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            if null.is_none() {
                null = Some(dev_null(&root)?);
            }
            bind_fd(null.as_ref().expect("just set"), &fd)
        };
        r.map_err(|e| Error::Setup(format!("maskedPaths {p}: {e}")))?;
    }
    Ok(())
}

/// Makes each path a read-only bind mount of itself.
pub fn readonly(paths: &[String]) -> Result<()> {
    let root = root()?;
    for p in paths {
        let fd = match open_in_root(&root, Path::new(p), OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::Setup(format!("readonlyPaths {p}: {e}"))),
        };
        let fail = |e: Errno| Error::Setup(format!("readonlyPaths {p}: {e}"));
        let path = proc_path(&fd);
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail)?;
        let top = open_in_root(&root, Path::new(p), OFlag::O_PATH).map_err(fail)?;
        let keep = current_flags(&top).map_err(fail)?;
        remount_bind(&top, keep | MsFlags::MS_RDONLY).map_err(fail)?;
    }
    Ok(())
}
