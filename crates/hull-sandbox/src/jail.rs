//! Every VMM hull starts runs as a uid and gid of its own, claimed here for as long as
//! the VM lives: 1610612736 (0x6000_0000) + n, n the lowest free slot of 65536. A slot
//! is a file in `/run/hull-vm/jail-ids/` that its claimer holds an exclusive flock on;
//! the lock goes with the claimer, whatever kills it, so a slot is never leaked and
//! never given twice while held. hull-vmm confines itself with it (hull-vmm's `jail`);
//! QEMU through `-chroot`, `-runas`, `-sandbox` and the namespaces `confine_qemu` gives.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{io_err, Result, SandboxError};

pub const ID_BASE: u32 = 0x6000_0000;
const SLOTS: u32 = 1 << 16;
const SLOT_DIR: &str = "/run/hull-vm/jail-ids";

/// A claimed uid/gid; the claim ends when this is dropped.
#[derive(Debug)]
pub struct JailId {
    pub uid: u32,
    pub gid: u32,
    _claim: Option<File>,
}

impl JailId {
    pub fn claim() -> Result<JailId> {
        Self::claim_in(Path::new(SLOT_DIR))
    }

    /// The ids a VMM runs as: a claimed slot as root. Rootless, the user itself, root
    /// of the proxy's user namespace (proxy_ns.rs), where no other id is mapped:
    /// the VMM keeps the namespaces, the chroot, the limits and the filters,
    /// and holds no privilege on the host.
    pub fn for_vmm() -> Result<JailId> {
        if hull_runtime::rootless::active() {
            return Ok(JailId {
                uid: 0,
                gid: 0,
                _claim: None,
            });
        }
        Self::claim()
    }

    /// Whether the VMM keeps the caller's ids (rootless).
    pub fn is_own(&self) -> bool {
        self._claim.is_none()
    }

    fn claim_in(dir: &Path) -> Result<JailId> {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        for n in 0..SLOTS {
            let path = dir.join(n.to_string());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("cannot open", &path))?;
            // SAFETY: flock on an fd this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                let id = ID_BASE + n;
                return Ok(JailId {
                    uid: id,
                    gid: id,
                    _claim: Some(file),
                });
            }
        }
        Err(SandboxError::Vm(format!(
            "all {SLOTS} VMM uids are in use ({})",
            dir.display()
        )))
    }
}

/// What the QEMU child does between fork and exec, on top of hull's usual: new mount,
/// IPC, UTS and network namespaces (QEMU gets its taps as fds and talks over Unix
/// sockets, which need none of the host's), a private mount tree, and limits on open
/// files, processes and file size (its files are its console log; shared directories
/// are the 9p helpers'). Only async-signal-safe system calls.
///
/// `chroot_dir` is the directory QEMU's `-chroot` will enter. Rootless, QEMU keeps
/// CAP_SYS_CHROOT of its user namespace after the chroot (it drops capabilities only
/// when it changes uid), and a root it can write to would let it chroot again below
/// and climb out: the directory is bound read-only over itself here first.
pub fn confine_qemu(own_ids: bool, chroot_dir: &std::ffi::CStr) -> std::io::Result<()> {
    let last = || Err(std::io::Error::last_os_error());
    // SAFETY: plain system calls on the child between fork and exec; the pointers are
    // C strings prepared before the fork, static ones, or null.
    unsafe {
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
        if libc::unshare(flags) != 0 {
            return last();
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
            return last();
        }
        if own_ids {
            let dir = chroot_dir.as_ptr();
            let ro = libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            if libc::mount(dir, dir, none, libc::MS_BIND, none.cast()) != 0
                || libc::mount(none, dir, none, ro, none.cast()) != 0
            {
                return last();
            }
        }
        // No allocation here: a fixed table.
        let limits = [
            (libc::RLIMIT_NOFILE, 4096),
            (libc::RLIMIT_NPROC, 1024),
            (libc::RLIMIT_FSIZE, 64 << 20),
        ];
        if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
            return last();
        }
        for (resource, value) in limits {
            let l = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::setrlimit(resource, &l) != 0 {
                return last();
            }
        }
        // The bounding set limits what QEMU, exec'd as root, starts with: what its
        // -chroot and -runas need.
        let keep: &[u32] = if own_ids {
            &KEEP_CAPS_ROOTLESS
        } else {
            &KEEP_CAPS
        };
        for cap in 0..64u32 {
            if !keep.contains(&cap) && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                break;
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return last();
        }
    }
    Ok(())
}

/// CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT: for -runas and -chroot.
const KEEP_CAPS: [u32; 3] = [6, 7, 18];
/// Rootless, no -runas (no other id exists in the proxy's user namespace): CAP_SYS_CHROOT.
const KEEP_CAPS_ROOTLESS: [u32; 1] = [18];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_slot_is_not_given_twice_and_a_dropped_one_is_given_again() {
        let dir = std::env::temp_dir().join(format!("hull-jail-ids-{}", crate::random_u64()));
        let a = JailId::claim_in(&dir).unwrap();
        let b = JailId::claim_in(&dir).unwrap();
        assert_eq!((a.uid, b.uid), (ID_BASE, ID_BASE + 1));
        assert_eq!(a.gid, a.uid);
        drop(a);
        let c = JailId::claim_in(&dir).unwrap();
        assert_eq!(c.uid, ID_BASE);
        drop((b, c));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
