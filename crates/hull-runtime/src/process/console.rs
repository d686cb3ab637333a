//! process.terminal: a pty whose master goes to the caller's --console-socket (as runc
//! sends it) and whose slave becomes the container's stdio, controlling terminal and
//! /dev/console.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use nix::unistd;
use oci_spec::runtime::Box as ConsoleSize;

use crate::error::{Error, Result};
use crate::fdpass;

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Setup(format!("terminal: {what}: {e}"))
}

/// Opens a pty in the container's devpts, hands the master to `socket`, and makes the
/// slave stdin/stdout/stderr. Call after pivot_root, after setsid.
pub fn setup(socket: &OwnedFd, size: Option<ConsoleSize>, mount_console: bool) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| fail("open /dev/ptmx (is devpts mounted at /dev/pts?)", e))?;
    grantpt(&master).map_err(|e| fail("grantpt", e))?;
    unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| fail("ptsname", e))?;
    let slave = nix::fcntl::open(
        Path::new(&name),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("open {name}"), e))?;
    if let Some(sz) = size {
        let ws = libc::winsize {
            ws_row: sz.height() as u16,
            ws_col: sz.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    fdpass::send_fd(socket.as_fd(), b"/dev/ptmx", master.as_fd())
        .map_err(|e| fail("send the pty master to the console socket", e))?;
    drop(master);
    if mount_console {
        let target = Path::new("/dev/console");
        if !target.exists() {
            std::fs::File::create(target).map_err(|e| fail("create /dev/console", e))?;
        }
        mount(
            Some(Path::new(&name)),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind /dev/console", e))?;
    }
    unistd::dup2_stdin(&slave).map_err(|e| fail("dup2", e))?;
    unistd::dup2_stdout(&slave).map_err(|e| fail("dup2", e))?;
    unistd::dup2_stderr(&slave).map_err(|e| fail("dup2", e))?;
    // SAFETY: TIOCSCTTY on our own session's new terminal; arg 0 means do not steal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(fail(
            "set controlling terminal",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
