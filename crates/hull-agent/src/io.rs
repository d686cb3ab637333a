//! A process's standard I/O inside the guest: pipes (or a pty) whose far ends become the
//! process's fds 0-2, and whose near ends the server relays to hull-proto streams.
//!
//! hull-runtime gives a container the creating process's own fds 0-2 (as runc does), so
//! the agent lends its fds 0-2 for the duration of the call. It is single-threaded, and
//! its log writes to a separate copy of the console.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use hull_proto::{ProcessIo, StreamId};
use nix::fcntl::{FcntlArg, OFlag};

/// The agent's ends of a process's I/O.
#[derive(Default)]
pub struct NearEnds {
    pub stdin: Option<(OwnedFd, StreamId)>,
    pub outputs: Vec<(OwnedFd, StreamId)>,
}

pub struct Plumbing {
    pub near: NearEnds,
    /// What the process gets as fds 0, 1, 2.
    pub far: [OwnedFd; 3],
}

fn dev_null() -> Result<OwnedFd> {
    Ok(std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?
        .into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")
}

pub fn set_nonblocking(fd: &impl AsFd) -> Result<()> {
    let flags = nix::fcntl::fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL")?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags)).context("F_SETFL")?;
    Ok(())
}

/// Pipes for the streams `io` names; /dev/null for the others. With a terminal the
/// runtime gives the process a pty instead, so fds 0-2 are /dev/null here.
pub fn plumb(io: &ProcessIo) -> Result<Plumbing> {
    let mut near = NearEnds::default();
    if io.terminal {
        return Ok(Plumbing {
            near,
            far: [dev_null()?, dev_null()?, dev_null()?],
        });
    }
    let stdin = match io.stdin {
        Some(s) => {
            let (r, w) = pipe()?;
            near.stdin = Some((w, s));
            r
        }
        None => dev_null()?,
    };
    let mut output = |stream: Option<StreamId>| -> Result<OwnedFd> {
        match stream {
            Some(s) => {
                let (r, w) = pipe()?;
                set_nonblocking(&r)?;
                near.outputs.push((r, s));
                Ok(w)
            }
            None => dev_null(),
        }
    };
    let stdout = output(io.stdout)?;
    let stderr = output(io.stderr)?;
    Ok(Plumbing {
        near,
        far: [stdin, stdout, stderr],
    })
}

/// Runs `f` with `far` as this process's fds 0-2, then puts the originals back.
pub fn with_stdio<T>(far: &[OwnedFd; 3], f: impl FnOnce() -> T) -> Result<T> {
    let mut saved = Vec::with_capacity(3);
    for fd in 0..3 {
        let copy = nix::fcntl::fcntl(unsafe_borrow(fd), FcntlArg::F_DUPFD_CLOEXEC(10))
            .context("save fds 0-2")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd owned by nobody else.
        saved.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) });
    }
    for (i, fd) in far.iter().enumerate() {
        dup_onto(fd, i as i32)?;
    }
    let r = f();
    for (i, fd) in saved.iter().enumerate() {
        dup_onto(fd, i as i32)?;
    }
    Ok(r)
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fds 0-2 stay open for the agent's whole life (the console, or a lent copy).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn dup_onto(fd: &OwnedFd, target: i32) -> Result<()> {
    // SAFETY: dup2 onto 0-2, which the agent owns; no Rust object holds those numbers.
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("dup2 onto fds 0-2");
    }
    Ok(())
}
