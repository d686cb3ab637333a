//! CVE-2019-5736: a container process that reaches hull's binary through
//! /proc/<pid>/exe (or a `#!/proc/self/exe` interpreter) must find a copy it cannot
//! write, never a writable path to the file on the host. Commands that enter a container
//! re-execute hull first, from one of:
//! - a read-only bind mount of the binary that is in no mount namespace, so nothing can
//!   reach or remount it (open_tree(2) and mount_setattr(2); see `read_only_clone`);
//! - else a sealed memfd copy (no CAP_SYS_ADMIN, or mounts refused), which costs a copy
//!   of the binary and measured ~6 ms per container here.
//!
//! No re-exec is needed when the installed binary already cannot be written: on a
//! read-only mount, or marked immutable (`chattr +i`; clearing that needs
//! CAP_LINUX_IMMUTABLE, which containers do not get). That saves up to ~1 ms per container.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{self, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{self, MFdFlags};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

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
    if is_sealed() {
        return Ok(());
    }
    let exe = match read_only_clone() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(
                "read-only clone of own binary failed ({e}); copying to a sealed memfd"
            );
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

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Opens the binary through a read-only bind mount that no mount namespace holds: a
/// clone made by open_tree(2) outside every namespace, made read-only, opened, and
/// dissolved when its fd closes. Neither a remount nor another clone can reach a mount
/// that is in no namespace, so the container cannot make it writable. Unlike a bind
/// in a private namespace (runc's `try_bindfd`), this copies no mount table and needs
/// no trip back to the host's namespace afterwards.
fn read_only_clone() -> Result<OwnedFd> {
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd we then own.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io(
            "open_tree of own binary",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the syscall returned a fresh fd.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr`, whose size is passed along.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io(
            "mount_setattr read-only",
            std::io::Error::last_os_error(),
        ));
    }
    // The tree fd is O_PATH; a real open through it pins the mount after the tree fd's
    // close dissolves it.
    nix::fcntl::open(
        format!("/proc/self/fd/{}", tree.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open the read-only clone of own binary", e))
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
