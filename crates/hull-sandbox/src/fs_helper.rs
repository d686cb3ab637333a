//! QEMU's 9p shares through `virtfs-proxy-helper` (Debian's qemu-system-common ships it
//! with QEMU 7.2): the helper, root with the capabilities file operations need, chroots
//! into the shared directory and does the guest's file operations there, while QEMU
//! speaks 9p to the guest and forwards them over a socket. So QEMU itself, the large
//! and exposed part (every device model), runs jailed as for any other VM: its own uid,
//! `-chroot` into an empty directory, no capabilities; only the helper, small and
//! chrooted into what the guest may see anyway, keeps root's file powers, as Kata's
//! virtiofsd does. A helper ends when QEMU closes its socket, or with the proxy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Result, SandboxError};

/// Where Debian's qemu-system-common puts it.
pub const HELPER: &str = "/usr/lib/qemu/virtfs-proxy-helper";

/// A running helper, and QEMU's end of its socket (`sock_fd=`; made inheritable by
/// `inheritable` once every helper has started, so that no helper holds another's).
pub struct FsHelper {
    pub child: Child,
    pub qemu_end: OwnedFd,
}

impl FsHelper {
    pub fn inheritable(&self) -> Result<()> {
        nix::fcntl::fcntl(
            &self.qemu_end,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map(drop)
        .map_err(|e| SandboxError::Vm(format!("the 9p helper's socket: {e}")))
    }
}

/// Starts the helper for `dir`.
pub fn start(dir: &Path) -> Result<FsHelper> {
    if !Path::new(HELPER).exists() {
        return Err(SandboxError::Tool(format!(
            "{HELPER} is missing: hull shares directories with a VM through it, so that QEMU never holds root for them (Debian's qemu-system-common ships it up to QEMU 8.0, which dropped 9p's proxy backend); without it a VM container cannot bind a host directory"
        )));
    }
    let (qemu_end, helper_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SandboxError::Vm(format!("socketpair for the 9p helper: {e}")))?;
    let fd = helper_end.as_raw_fd();
    let mut cmd = Command::new(HELPER);
    cmd.args(["--nodaemon", "--fd", "3", "--path"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec: dup2 (which leaves the copy inheritable),
    // close_range, prctl and unshare, all async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Nothing of the proxy's but its socket: a tap it held would outlive QEMU.
            if libc::dup2(fd, 3) < 0
                || libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| SandboxError::Tool(format!("cannot run {HELPER}: {e}")))?;
    drop(helper_end);
    Ok(FsHelper { child, qemu_end })
}
