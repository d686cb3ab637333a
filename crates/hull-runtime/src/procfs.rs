//! The procfs that hull writes through, and hull's init kept out of reach of the
//! container while it still holds the runtime's privileges and fds.
//!
//! Everything hull writes or reads under /proc on the container's behalf (sysctls,
//! oom_score_adj, LSM labels, setgroups, timens offsets) goes through a handle of the
//! procfs hull itself ran on, opened before any of the container's mounts exist, checked
//! to be a procfs root, and resolved without crossing a mount or following any symlink.
//! A fake /proc in the rootfs (CVE-2019-16884, CVE-2023-27561) or a mount racing over one
//! of those files (CVE-2025-52881) therefore cannot redirect a write.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// The inode number of every procfs root (fs/proc/root.c).
const PROC_ROOT_INO: u64 = 1;

/// Beneath the handle, on its mount only, no symlinks, no magic links: `self` is never
/// used, the caller's own pid is spelled out instead.
const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_XDEV)
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// An O_PATH handle of a verified procfs root.
#[derive(Debug)]
pub struct ProcFs {
    root: OwnedFd,
}

fn proc_err(what: &'static str, path: impl Into<PathBuf>, source: Errno) -> Error {
    Error::Proc {
        what,
        path: path.into(),
        source,
    }
}

/// Fails unless `fd` is the root of a procfs: the filesystem magic alone would also
/// accept a bind mount of some /proc subdirectory.
pub fn verify_root(fd: impl AsFd, path: &Path) -> Result<()> {
    let fs = nix::sys::statfs::fstatfs(&fd).map_err(|e| proc_err("statfs", path, e))?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(Error::NotProcfs {
            path: path.into(),
            reason: "it is not a procfs",
        });
    }
    let st = nix::sys::stat::fstat(&fd).map_err(|e| proc_err("stat", path, e))?;
    if st.st_ino != PROC_ROOT_INO {
        return Err(Error::NotProcfs {
            path: path.into(),
            reason: "it is a part of a procfs, not its root",
        });
    }
    Ok(())
}

impl ProcFs {
    /// Opens the /proc of the caller's current mount namespace and root. Call it before
    /// the container's mounts exist or its namespaces are joined.
    pub fn open() -> Result<ProcFs> {
        let root = fcntl::open(
            "/proc",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| proc_err("open", "/proc", e))?;
        verify_root(&root, Path::new("/proc"))?;
        Ok(ProcFs { root })
    }

    /// The handle, for `openat` of `<pid>/fd/N` and the like.
    pub fn fd(&self) -> &OwnedFd {
        &self.root
    }

    /// The caller's pid as this procfs numbers it (its pid namespace may be an ancestor
    /// of the caller's, so getpid(2) would be the wrong number).
    fn my_pid(&self) -> Result<String> {
        let link = fcntl::readlinkat(&self.root, "self")
            .map_err(|e| proc_err("readlink", "/proc/self", e))?;
        link.into_string()
            .map_err(|_| proc_err("readlink", "/proc/self", Errno::EINVAL))
    }

    fn open_at(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(RESOLVE);
        let shown = Path::new("/proc").join(rel);
        loop {
            match fcntl::openat2(&self.root, rel, how) {
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(proc_err("open", shown, e)),
                Ok(fd) => return Ok(fd),
            }
        }
    }

    /// Opens `/proc/<own pid>/<rel>`.
    pub fn open_self(&self, rel: &str, flags: OFlag) -> Result<OwnedFd> {
        let rel = Path::new(&self.my_pid()?).join(rel);
        self.open_at(&rel, flags)
    }

    /// Writes `data` to `/proc/<own pid>/<rel>` in one write(2), as procfs wants.
    pub fn write_self(&self, rel: &str, data: &[u8]) -> Result<()> {
        let fd = self.open_self(rel, OFlag::O_WRONLY)?;
        write_all(&fd, data, &Path::new("/proc/self").join(rel))
    }

    /// Reads `/proc/<own pid>/<rel>`.
    pub fn read_self(&self, rel: &str) -> Result<String> {
        let fd = self.open_self(rel, OFlag::O_RDONLY)?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).map_err(|e| {
            proc_err(
                "read",
                Path::new("/proc/self").join(rel),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
        Ok(s)
    }

    /// Writes `data` to `/proc/sys/<rel>`; which namespace's value it sets follows the
    /// caller's namespaces, not this procfs's.
    pub fn write_sys(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let rel = Path::new("sys").join(rel);
        let fd = self.open_at(&rel, OFlag::O_WRONLY)?;
        write_all(&fd, data, &Path::new("/proc").join(rel))
    }
}

fn write_all(fd: &OwnedFd, data: &[u8], shown: &Path) -> Result<()> {
    match nix::unistd::write(fd, data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(proc_err("short write to", shown, Errno::EIO)),
        Err(e) => Err(proc_err("write", shown, e)),
    }
}

/// CVE-2016-9962: while hull runs inside the container's namespaces with host fds and
/// privileges, no process of the container may ptrace it or open its /proc/<pid>
/// files (fd, environ, mem). execve of the user's program makes it dumpable again.
pub fn make_undumpable() -> Result<()> {
    set_dumpable(false)
}

fn set_dumpable(on: bool) -> Result<()> {
    nix::sys::prctl::set_dumpable(on).map_err(|e| proc_err("prctl PR_SET_DUMPABLE", "", e))
}

/// Runs `f` dumpable when in a user namespace: an undumpable process's /proc/<pid>
/// files belong to the host's root, which the container's root cannot write
/// (oom_score_adj, timens_offsets). Until `Ready` no process of the container exists
/// to take advantage of the moment, unless it joins an existing pid namespace.
pub fn dumpable_for<T>(userns: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !userns {
        return f();
    }
    set_dumpable(true)?;
    let r = f();
    set_dumpable(false)?;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_proc_is_a_procfs_root() {
        let p = ProcFs::open().unwrap();
        assert!(p.read_self("status").unwrap().contains("CapBnd"));
        // A subdirectory of a procfs is not accepted as one.
        let sub = fcntl::open("/proc/sys", OFlag::O_PATH, Mode::empty()).unwrap();
        assert!(matches!(
            verify_root(&sub, Path::new("/proc/sys")),
            Err(Error::NotProcfs { .. })
        ));
        let tmp = fcntl::open("/tmp", OFlag::O_PATH, Mode::empty()).unwrap();
        assert!(verify_root(&tmp, Path::new("/tmp")).is_err());
    }

    #[test]
    fn no_symlinks_on_the_way() {
        let p = ProcFs::open().unwrap();
        // `self` is a symlink: reaching a file through it is refused.
        assert!(matches!(
            p.open_at(Path::new("self/status"), OFlag::O_RDONLY),
            Err(Error::Proc {
                source: Errno::ELOOP,
                ..
            })
        ));
    }
}
