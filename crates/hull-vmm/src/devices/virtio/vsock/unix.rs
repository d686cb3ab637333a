//! A non-blocking connect to a Unix stream socket, which std does not offer:
//! `UnixStream::connect` blocks while the listener's backlog is full, and the device
//! must never block the thread serving the guest.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to `path`. A full backlog (EAGAIN) is a failure like any other: the guest
/// gets an RST and may retry.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: an all-zero sockaddr_un is a valid (unnamed) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the terminator.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        // A non-blocking Unix connect completes at once or fails: EINPROGRESS does
        // not happen for AF_UNIX, EAGAIN means the backlog is full.
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
