//! CVE-2019-5736: a container process that reaches hull's binary through
//! /proc/<pid>/exe (or a `#!/proc/self/exe` interpreter) must find a copy it cannot
//! write, never a writable path to the file on the host. Commands that enter a container
//! re-execute hull first, from one of:
//! - a read-only bind mount of the binary, made in a private mount namespace and detached
//!   before the re-exec, so no namespace can reach or remount it (runc's `try_bindfd`);
//!   it costs a few mount calls;
//! - else a sealed memfd copy (no CAP_SYS_ADMIN, or mounts refused), which costs a copy
//!   of the binary and measured ~6 ms per container here.
//!
//! No re-exec is needed when the installed binary already cannot be written: on a
//! read-only mount, or marked immutable (`chattr +i`; clearing that needs
//! CAP_LINUX_IMMUTABLE, which containers do not get). That saves ~1.5 ms per container.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{self, FcntlArg, OFlag, SealFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{self, CloneFlags};
use nix::sys::memfd::{self, MFdFlags};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// Set across the re-exec: the fd of the mount namespace to return to.
const HOST_NS_ENV: &str = "_HULL_HOST_MNTNS_FD";

fn io(what: &'static str, e: impl Into<std::io::Error>) -> Error {
    Error::Io {
        what,
        path: "/proc/self/exe".into(),
        source: e.into(),
    }
}

/// Whether the running binary can no longer be written through /proc/self/exe.
pub fn is_sealed() -> bool {
    if let Ok(st) = nix::sys::statvfs::statvfs("/proc/self/exe") {
        if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return true;
        }
    }
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    if matches!(fcntl::fcntl(&exe, FcntlArg::F_GET_SEALS), Ok(s) if SealFlag::from_bits_truncate(s).contains(SEALS))
    {
        return true;
    }
    is_immutable(&exe)
}

/// FS_IMMUTABLE_FL from FS_IOC_GETFLAGS: not even root can open the file for writing.
pub fn is_immutable(file: &File) -> bool {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through a valid pointer.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    r == 0 && flags & FS_IMMUTABLE_FL != 0
}

/// Re-executes the current process from a write-proof copy of its binary, with the same
/// argv and environment; returns once running from one.
pub fn ensure_sealed() -> Result<()> {
    if let Some(fd) = std::env::var_os(HOST_NS_ENV) {
        return_to_host_namespace(fd.to_str().and_then(|s| s.parse().ok()))?;
    }
    if is_sealed() {
        return Ok(());
    }
    let exe = match read_only_bind() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("read-only bind of own binary failed ({e}); copying to a sealed memfd");
            sealed_memfd()?
        }
    };
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_encoded_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.into_encoded_bytes();
            b.push(b'=');
            b.extend(v.into_encoded_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let err = nix::unistd::fexecve(exe.as_fd(), &args, &env).unwrap_err();
    Err(io("cannot re-execute from a sealed copy", err))
}

fn return_to_host_namespace(fd: Option<i32>) -> Result<()> {
    // SAFETY: the environment is only read and written here, before any thread exists.
    unsafe { std::env::remove_var(HOST_NS_ENV) };
    let fd = fd.ok_or_else(|| io("bad host namespace fd", std::io::ErrorKind::InvalidData))?;
    // SAFETY: the fd was opened by our pre-exec self and inherited on purpose.
    let ns = unsafe { OwnedFd::from_raw_fd(fd) };
    // setns resets the working directory to the namespace's root; relative paths given
    // on the command line (--bundle .) must keep their meaning.
    let cwd = std::env::current_dir().map_err(|e| io("getcwd", e))?;
    sched::setns(&ns, CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("cannot return to the host mount namespace", e))?;
    std::env::set_current_dir(&cwd).map_err(|e| io("cannot return to the working directory", e))
}

/// Opens the binary through a read-only bind mount made in a private mount namespace,
/// then detaches the mount. The caller's mount namespace is kept in an inherited fd so
/// the re-executed process returns to it (hooks must run in the runtime's namespace).
fn read_only_bind() -> Result<OwnedFd> {
    let host = nix::fcntl::open("/proc/self/ns/mnt", OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| io("open own mount namespace", e))?;
    sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("unshare mount namespace", e))?;
    let r = (|| {
        // Nothing done here may propagate to the host's mounts.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )?;
        let path = std::fs::read_link("/proc/self/exe")
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        mount(
            None::<&str>,
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
        let fd = nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        umount2(&path, MntFlags::MNT_DETACH)?;
        Ok::<_, nix::Error>(fd)
    })();
    match r {
        Ok(fd) => {
            // SAFETY: single-threaded at this point; the variable is read after exec.
            unsafe { std::env::set_var(HOST_NS_ENV, host.as_raw_fd().to_string()) };
            // Deliberately inherited across the exec.
            std::mem::forget(host);
            Ok(fd)
        }
        Err(e) => {
            let _ = sched::setns(&host, CloneFlags::CLONE_NEWNS);
            Err(io("read-only bind of own binary", e))
        }
    }
}

fn sealed_memfd() -> Result<OwnedFd> {
    let exe = File::open("/proc/self/exe").map_err(|e| io("cannot open own binary", e))?;
    let len = exe
        .metadata()
        .map_err(|e| io("cannot stat own binary", e))?
        .len() as usize;
    let mfd = memfd::memfd_create(c"hull", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| io("memfd_create", e))?;
    let mut done = 0;
    while done < len {
        match nix::sys::sendfile::sendfile(&mfd, &exe, None, len - done) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io("cannot copy own binary", e)),
        }
    }
    fcntl::fcntl(&mfd, FcntlArg::F_ADD_SEALS(SEALS)).map_err(|e| io("cannot seal copy", e))?;
    Ok(mfd)
}
