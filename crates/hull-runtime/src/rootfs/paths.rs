//! maskedPaths and readonlyPaths, applied after pivot_root so they name paths as the
//! container sees them (mostly under its own /proc and /sys).

use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::SFlag;

use super::mounts::{current_flags, remount_bind};
use super::secure::{open_in_root, proc_path};
use crate::error::{Error, Result};

fn root() -> Result<std::os::fd::OwnedFd> {
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Setup(format!("open /: {e}")))
}

/// Hides each path: /dev/null over files, an empty read-only tmpfs over directories.
pub fn mask(paths: &[String]) -> Result<()> {
    let root = root()?;
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
            mount(
                Some("/dev/null"),
                &proc_path(&fd),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
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
