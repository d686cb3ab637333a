//! `hull vmm` confines itself once the VM is built and before its first vCPU runs
//! (Firecracker's jailer, done from inside): everything the VM needs is open by then
//! (/dev/kvm, the kernel and disks, the taps, the sockets it listens on), so the
//! process gives up the rest. It enters new mount, IPC, UTS and network namespaces,
//! pivots into `root` (bound read-only, nosuid, nodev, noexec; the host's tree is
//! detached), drops to an unprivileged uid and gid of its own with no supplementary
//! groups and no capabilities (the bounding set emptied too), sets no_new_privs, and
//! caps its open files, file size (a guest flooding its serial console meets EFBIG, not
//! the host's disk) and processes. The threads started afterwards inherit all of it,
//! and each installs its seccomp allowlist on top.
//!
//! `root` should be the directory of the VM's sockets (its relative paths still work)
//! and hold nothing the VMM may not read.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, VmmError};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The directory that becomes `/`.
    pub root: PathBuf,
    /// Neither may be 0, unless `keep_ids`.
    pub uid: u32,
    pub gid: u32,
    /// Rootless: the VMM runs as root of a user namespace that maps only the user
    /// (hull's rootless proxy), where no other id exists to become. It keeps its ids and
    /// clears its capabilities instead, and leaves RLIMIT_NPROC alone (it would count
    /// the user's processes host-wide). Refused outside such a namespace.
    #[serde(default)]
    pub keep_ids: bool,
}

/// Open files: the VM's own (a few per device, one per vsock connection) with room.
pub const NOFILE: u64 = 4096;
/// The largest file the VMM may write (its serial log).
pub const FSIZE: u64 = 64 << 20;
/// Processes and threads of the jail's uid: the vCPUs, the VMM thread, the teardown
/// helper.
pub const NPROC: u64 = 512;

fn fail(what: &str) -> VmmError {
    VmmError::Jail(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| VmmError::Jail(format!("{}: a NUL in the path", p.display())))
}

/// Confines the calling process as `config` says. Only while it is single-threaded:
/// a new mount namespace needs a filesystem context of its own.
pub fn enter(config: &JailConfig) -> Result<()> {
    if config.keep_ids {
        if !in_a_one_id_user_namespace() {
            return Err(VmmError::Jail(
                "keep_ids is for root of a user namespace that maps one id (rootless)".into(),
            ));
        }
    } else if config.uid == 0 || config.gid == 0 {
        return Err(VmmError::Jail("uid and gid 0 are not a jail".into()));
    }
    let root = std::fs::canonicalize(&config.root)
        .map_err(|e| VmmError::Jail(format!("{}: {e}", config.root.display())))?;
    let root_c = cstr(&root)?;
    // SAFETY: plain system calls on this process; every pointer is a NUL-terminated
    // string or null, alive for the call.
    unsafe {
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
        if libc::unshare(flags) != 0 {
            return Err(fail("unshare mount, IPC, UTS and network namespaces"));
        }
        let none = std::ptr::null();
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ) != 0
        {
            return Err(fail("make / private"));
        }
        let bind = libc::MS_BIND | libc::MS_REC;
        if libc::mount(root_c.as_ptr(), root_c.as_ptr(), none, bind, none.cast()) != 0 {
            return Err(fail("bind the jail root"));
        }
        let ro = libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        if libc::mount(none, root_c.as_ptr(), none, ro, none.cast()) != 0 {
            return Err(fail("make the jail root read-only"));
        }
        if libc::chdir(root_c.as_ptr()) != 0 {
            return Err(fail("enter the jail root"));
        }
        let dot = c".".as_ptr();
        if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
            // The old root is stacked under the new one at "/": detach it.
            if libc::umount2(dot, libc::MNT_DETACH) != 0 {
                return Err(fail("detach the host's root"));
            }
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // A host running from its initramfs (rootfs cannot be pivoted away, as in
            // the nested test bed's L1): move the jail over "/" and chroot into it, as
            // switch_root does. Without CAP_SYS_CHROOT, which goes below, the process
            // cannot leave a chroot.
            if libc::mount(dot, c"/".as_ptr(), none, libc::MS_MOVE, none.cast()) != 0 {
                return Err(fail("move the jail root over /"));
            }
            if libc::chroot(dot) != 0 {
                return Err(fail("chroot"));
            }
        } else {
            return Err(fail("pivot_root"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(fail("chdir /"));
        }
        let name = b"hull-vmm";
        if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
            return Err(fail("sethostname"));
        }
    }
    limits(!config.keep_ids)?;
    if config.keep_ids {
        return clear_capabilities();
    }
    drop_privileges(config.uid, config.gid)
}

/// Whether this process is root of a user namespace whose uid map is one line of one id.
fn in_a_one_id_user_namespace() -> bool {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // "0 0 1" would be the host's root: not a rootless namespace.
    root && fields.len() == 3 && fields[0] == "0" && fields[1] != "0" && fields[2] == "1"
}

/// Rootless: the bounding set emptied, no capability left in any set, no_new_privs.
fn clear_capabilities() -> Result<()> {
    // linux/capability.h: _LINUX_CAPABILITY_VERSION_3, two 32-bit words per set.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: prctl with integer arguments; capset reads the header and the two data
    // words, which live for the call.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
        {
            return Err(fail("clear the ambient capabilities"));
        }
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(fail("capset"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(fail("no_new_privs"));
        }
    }
    Ok(())
}

fn limits(nproc: bool) -> Result<()> {
    let all = [
        (libc::RLIMIT_NOFILE, NOFILE, "RLIMIT_NOFILE"),
        (libc::RLIMIT_FSIZE, FSIZE, "RLIMIT_FSIZE"),
        (libc::RLIMIT_NPROC, NPROC, "RLIMIT_NPROC"),
    ];
    for (resource, value, what) in all.into_iter().take(if nproc { 3 } else { 2 }) {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct, which lives for the call.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(fail(what));
        }
    }
    // A write past RLIMIT_FSIZE fails with EFBIG instead of killing the VMM.
    // SAFETY: setting a signal's disposition to ignored has no handler to be unsafe.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(fail("ignore SIGXFSZ"));
    }
    Ok(())
}

fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: plain system calls on this process's credentials.
    unsafe {
        // Every capability out of the bounding set while CAP_SETPCAP is still held;
        // EINVAL past the kernel's last capability ends the loop.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(fail("setresgid"));
        }
        // Leaving uid 0 clears the permitted, effective and ambient capabilities.
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(fail("setresuid"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(fail("no_new_privs"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_ids_is_refused_outside_a_one_id_user_namespace() {
        // The test runs as root of the host's namespace (or as a user): either way not
        // root of a namespace that maps one id, and enter() refuses before it changes
        // anything.
        let config = JailConfig {
            root: "/nonexistent".into(),
            uid: 0,
            gid: 0,
            keep_ids: true,
        };
        let e = enter(&config).unwrap_err().to_string();
        assert!(e.contains("keep_ids"), "{e}");
    }
}
