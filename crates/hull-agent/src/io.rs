//! A process's standard I/O inside the guest: pipes (or a pty) whose far ends become the
//! process's fds 0-2, and whose near ends the server relays to hull-proto streams.
//!
//! hull-runtime gives a container the creating process's own fds 0-2 (as runc does),
//! and with `--preserve-fds` its fds 3 and up, so the agent lends those fds for the
//! duration of the call. It is single-threaded, its log writes to a separate copy of
//! the console, and fds 3 to 3 + MAX_EXTRA_FDS hold nothing but empty placeholders
//! (`reserve_extra_fds`), so that lending them hides nothing of the agent's.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use hull_proto::{ExtraFd, ProcessIo, StreamId, MAX_EXTRA_FDS};
use nix::fcntl::{FcntlArg, OFlag};

/// The agent's ends of a process's I/O: what it writes (stdin, and preserved fds the
/// process reads) and what it reads (outputs).
#[derive(Default)]
pub struct NearEnds {
    pub inputs: Vec<(OwnedFd, StreamId)>,
    pub outputs: Vec<(OwnedFd, StreamId)>,
}

pub struct Plumbing {
    pub near: NearEnds,
    /// What the process gets as fds 0, 1, 2, 3, ...
    pub far: Vec<OwnedFd>,
}

static RESERVED: AtomicBool = AtomicBool::new(false);

/// Fills fds 3 to 3 + MAX_EXTRA_FDS with close-on-exec placeholders, so that every fd
/// the agent opens later lands above them. Called first thing in PID 1, before /dev
/// exists: the placeholder is an empty memfd.
pub fn reserve_extra_fds() -> Result<()> {
    let first = placeholder()?;
    for fd in 3..3 + MAX_EXTRA_FDS as i32 {
        if fd == first.as_raw_fd() {
            continue;
        }
        // SAFETY: fcntl F_GETFD only reads the flags of fd number `fd`, open or not.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            bail!("fd {fd} is already open: the agent must reserve fds 3 to {} before it opens anything", 2 + MAX_EXTRA_FDS);
        }
        dup_onto_cloexec(&first, fd)?;
    }
    // The first placeholder sits at 3 itself; it stays there.
    std::mem::forget(first);
    RESERVED.store(true, Ordering::SeqCst);
    Ok(())
}

fn placeholder() -> Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    memfd_create(c"hull-reserved-fd", MFdFlags::MFD_CLOEXEC).context("memfd_create")
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
        let mut far = vec![dev_null()?, dev_null()?, dev_null()?];
        far.extend(extra_fds(&io.extra, &mut near)?);
        return Ok(Plumbing { near, far });
    }
    let stdin = match io.stdin {
        Some(s) => {
            let (r, w) = pipe()?;
            near.inputs.push((w, s));
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
    let mut far = vec![stdin, stdout, stderr];
    far.extend(extra_fds(&io.extra, &mut near)?);
    Ok(Plumbing { near, far })
}

/// The process's fds 3, 4, ...: a pipe each way there is one, a socket pair when bytes
/// go both ways (so that one fd reads and writes, as the host's does).
fn extra_fds(extra: &[ExtraFd], near: &mut NearEnds) -> Result<Vec<OwnedFd>> {
    if extra.len() > MAX_EXTRA_FDS {
        bail!(
            "{} preserved fds asked for; a process in the guest can be given at most {MAX_EXTRA_FDS}",
            extra.len()
        );
    }
    if !extra.is_empty() && !RESERVED.load(Ordering::SeqCst) {
        bail!("this agent did not reserve fds 3 and up, so it cannot hand a process preserved fds");
    }
    let mut far = Vec::with_capacity(extra.len());
    for (i, e) in extra.iter().enumerate() {
        let fd = match (e.input, e.output) {
            (Some(input), Some(output)) => {
                use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
                let (ours, theirs) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .context("socketpair")?;
                let reader = ours.try_clone().context("dup a socket")?;
                set_nonblocking(&reader)?;
                near.inputs.push((ours, input));
                near.outputs.push((reader, output));
                theirs
            }
            (Some(input), None) => {
                let (r, w) = pipe()?;
                near.inputs.push((w, input));
                r
            }
            (None, Some(output)) => {
                let (r, w) = pipe()?;
                set_nonblocking(&r)?;
                near.outputs.push((r, output));
                w
            }
            (None, None) => bail!(
                "preserved fd {} has neither an input nor an output stream",
                3 + i
            ),
        };
        far.push(fd);
    }
    Ok(far)
}

/// Runs `f` with `far` as this process's fds 0, 1, 2, 3, ..., then puts the originals
/// back (the placeholders for fds 3 and up).
pub fn with_fds<T>(far: &[OwnedFd], f: impl FnOnce() -> T) -> Result<T> {
    let mut saved = Vec::with_capacity(3);
    for fd in 0..3 {
        let copy = nix::fcntl::fcntl(unsafe_borrow(fd), FcntlArg::F_DUPFD_CLOEXEC(10))
            .context("save fds 0-2")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd owned by nobody else.
        saved.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) });
    }
    // The far ends sit above the reserved range, so no dup2 here overwrites another.
    for (i, fd) in far.iter().enumerate() {
        dup_onto(fd, i as i32)?;
    }
    let r = f();
    for (i, fd) in saved.iter().enumerate() {
        dup_onto(fd, i as i32)?;
    }
    if far.len() > 3 {
        let p = placeholder()?;
        for i in 3..far.len() {
            dup_onto_cloexec(&p, i as i32)?;
        }
    }
    Ok(r)
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fds 0-2 stay open for the agent's whole life (the console, or a lent copy).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn dup_onto_cloexec(fd: &OwnedFd, target: i32) -> Result<()> {
    // SAFETY: dup3 onto a reserved placeholder number, which no Rust object owns.
    let r = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("dup3 onto fd {target}"));
    }
    Ok(())
}

fn dup_onto(fd: &OwnedFd, target: i32) -> Result<()> {
    // SAFETY: dup2 onto 0-2 or a reserved placeholder, which the agent owns; no Rust
    // object holds those numbers.
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if r < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("dup2 onto fd {target}"));
    }
    Ok(())
}
