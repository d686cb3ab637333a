//! Passing one file descriptor over a Unix socket (SCM_RIGHTS).
//!
//! Used for the console socket (the pty master goes to the caller, as runc's
//! `--console-socket` does), for the seccomp notify fd, and between hull's own processes.
//! Works on SOCK_STREAM and SOCK_SEQPACKET sockets.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// Sends `payload` with `fd` attached, as one `sendmsg`.
///
/// The payload must not be empty: on a stream socket the kernel drops ancillary data
/// that rides on zero bytes, so the fd would silently never arrive.
pub fn send_fd(sock: BorrowedFd, payload: &[u8], fd: BorrowedFd) -> io::Result<()> {
    if payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_fd: an fd needs at least one byte of payload to travel with",
        ));
    }
    let fds = [fd.as_raw_fd()];
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    // MSG_NOSIGNAL: a peer that went away must be an error here, not a SIGPIPE that kills
    // the runtime between two steps of its undo list.
    let flags = MsgFlags::MSG_NOSIGNAL;
    let sent = loop {
        let iov = [IoSlice::new(payload)];
        match socket::sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, flags, None) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    // A stream socket may take the payload in pieces; the fd went with the first piece,
    // so the rest is plain data. (SOCK_SEQPACKET is all-or-nothing and never gets here.)
    send_all(sock.as_raw_fd(), &payload[sent..], flags)
}

fn send_all(sock: RawFd, mut rest: &[u8], flags: MsgFlags) -> io::Result<()> {
    while !rest.is_empty() {
        match socket::send(sock, rest, flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receives one message into `buf` and the fd attached to it, if any.
///
/// `(0, None)` is end of file. The received fd is close-on-exec. A message that did not
/// fit into `buf`, or that carried more than one fd, is an `InvalidData` error (the fds
/// that did arrive are closed): silently dropping either would desynchronise the caller's
/// protocol.
pub fn recv_fd(sock: BorrowedFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // Room for one fd more than we accept, so that a second one is seen and closed
    // rather than left to the kernel's silent truncation.
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 2]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => other?,
        };

        let mut fds: Vec<OwnedFd> = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in our table for this
                    // message; nothing else refers to it, so we are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let flags = msg.flags;
        let n = msg.bytes;
        if flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("recv_fd: message larger than the {}-byte buffer", buf.len()),
            ));
        }
        if flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "recv_fd: message carried more than one fd",
            ));
        }
        return Ok((n, fds.pop()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn pair(ty: SockType) -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC).unwrap()
    }

    fn roundtrip(ty: SockType) {
        let (a, b) = pair(ty);
        let (pr, pw) = nix::unistd::pipe().unwrap();
        send_fd(a.as_fd(), b"hello", pw.as_fd()).unwrap();
        drop(pw);

        let mut buf = [0u8; 64];
        let (n, fd) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let fd = fd.expect("an fd was attached");
        let cloexec = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(cloexec & libc::FD_CLOEXEC, 0, "received fd must be CLOEXEC");

        // The received fd is the pipe's write end: what goes in comes out of `pr`.
        let mut w = std::fs::File::from(fd);
        w.write_all(b"through").unwrap();
        drop(w);
        let mut got = String::new();
        std::fs::File::from(pr).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
    }

    #[test]
    fn passes_fd_over_stream_socketpair() {
        roundtrip(SockType::Stream);
    }

    #[test]
    fn passes_fd_over_seqpacket_socketpair() {
        roundtrip(SockType::SeqPacket);
    }

    #[test]
    fn plain_message_has_no_fd_and_eof_is_zero() {
        let (a, b) = pair(SockType::Stream);
        socket::send(a.as_raw_fd(), b"x", MsgFlags::empty()).unwrap();
        let mut buf = [0u8; 8];
        let (n, fd) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!((n, fd.is_none()), (1, true));
        drop(a);
        let (n, fd) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!((n, fd.is_none()), (0, true));
    }

    #[test]
    fn empty_payload_is_refused() {
        let (a, _b) = pair(SockType::Stream);
        let err = send_fd(a.as_fd(), b"", a.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn truncated_seqpacket_message_is_an_error() {
        let (a, b) = pair(SockType::SeqPacket);
        send_fd(a.as_fd(), b"longer than four", a.as_fd()).unwrap();
        let mut buf = [0u8; 4];
        let err = recv_fd(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
