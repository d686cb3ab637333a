//! process.terminal: a pty whose master goes to the caller's --console-socket (as runc
//! sends it) and whose slave becomes the container's stdio, controlling terminal and
//! /dev/console.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, unlockpt};
use nix::sys::stat::Mode;
use nix::unistd;
use oci_spec::runtime::Box as ConsoleSize;

use crate::error::{Error, Result};
use crate::fdpass;
use crate::rootfs::secure::open_no_symlinks;

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Setup(format!("terminal: {what}: {e}"))
}

/// /dev/console of the container's root, created if missing, opened without following
/// any symlink: a symlink there (to /proc/sys/kernel/core_pattern, or out of the root)
/// would have the pty mounted wherever it points. hull refuses it rather than remove a
/// file from the image, which may be a bind of the host's /dev.
fn console_target() -> Result<OwnedFd> {
    let path = Path::new("/dev/console");
    let refused = |reason: String| Error::Refused {
        path: path.into(),
        reason,
    };
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open /", e))?;
    let dev = open_no_symlinks(&root, Path::new("/dev"), OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|e| refused(format!("cannot open /dev without following a symlink: {e}")))?;
    // O_EXCL|O_NOFOLLOW: an existing file or symlink is left alone, and checked below.
    match nix::fcntl::openat(
        &dev,
        "console",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(fail("create /dev/console", e)),
    }
    let fd = open_no_symlinks(&dev, Path::new("console"), OFlag::O_PATH)
        .map_err(|e| fail("open /dev/console", e))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| fail("stat /dev/console", e))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFCHR => Ok(fd),
        libc::S_IFLNK => Err(refused(
            "it is a symlink in the image; hull mounts the terminal only onto a plain file there"
                .into(),
        )),
        _ => Err(refused(
            "it is neither a file nor a character device; hull mounts the terminal only onto one"
                .into(),
        )),
    }
}

/// Opens a pty in the container's devpts, hands the master to `socket`, and makes the
/// slave stdin/stdout/stderr. Call after pivot_root, after setsid.
pub fn setup(socket: &OwnedFd, size: Option<ConsoleSize>, mount_console: bool) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| fail("open /dev/ptmx (is devpts mounted at /dev/pts?)", e))?;
    grantpt(&master).map_err(|e| fail("grantpt", e))?;
    unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
    // The slave from the master itself (TIOCGPTPEER), not by its /dev/pts/N name, which a
    // process of the container could swap for a symlink (CVE-2025-52565).
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd we then own.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(fail(
            "open the pty's slave (TIOCGPTPEER)",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd from the ioctl above.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave) };
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
        let target = console_target()?;
        // From the slave we opened, onto the file we checked: no path is looked up
        // again, so /dev/pts/N or /dev/console swapped for a symlink meanwhile changes
        // nothing (CVE-2025-52565).
        crate::rootfs::secure::bind_fd(&slave, &target)
            .map_err(|e| fail("bind the pty onto /dev/console", e))?;
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
