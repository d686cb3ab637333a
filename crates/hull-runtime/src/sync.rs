//! The channel between `hull create` and the processes it forks: short typed messages
//! over a SOCK_SEQPACKET socketpair, so each send is one message and a dead peer reads
//! as end-of-file instead of a hang.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::error::{Error, Result};
use crate::fdpass;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Parent to stage 1: the cgroup is joined, go on.
    Go,
    /// Stage 1 to parent: a new user namespace exists, write its id maps.
    MapRequest,
    /// Parent to stage 1: maps written.
    MapsDone,
    /// Stage 1 to parent: the pid (in the parent's namespace) of the process it forked.
    Pid(i32),
    /// Init to parent: mounts are done, run the prestart and createRuntime hooks.
    MountsReady,
    /// Parent to init: hooks done; carries the state JSON for the container's own hooks.
    HooksDone(String),
    /// Init to parent: the seccomp notify fd is attached; send it to the listener.
    SeccompFd,
    /// Parent to init: listener served.
    SeccompDone,
    /// Init to parent: everything is set up; now waiting on the exec fifo.
    Ready,
    /// Any child to parent: setup failed with this message.
    Error(String),
}

const MAX_MSG: usize = 256 * 1024;

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Msg::Go => (1, vec![]),
            Msg::MapRequest => (2, vec![]),
            Msg::MapsDone => (3, vec![]),
            Msg::Pid(p) => (4, p.to_le_bytes().to_vec()),
            Msg::MountsReady => (5, vec![]),
            Msg::HooksDone(s) => (6, s.as_bytes().to_vec()),
            Msg::SeccompFd => (7, vec![]),
            Msg::SeccompDone => (8, vec![]),
            Msg::Ready => (9, vec![]),
            Msg::Error(e) => {
                let mut b = e.as_bytes().to_vec();
                b.truncate(4096);
                (10, b)
            }
        };
        let mut out = Vec::with_capacity(1 + payload.len());
        out.push(tag);
        out.extend_from_slice(&payload);
        out
    }

    fn decode(b: &[u8]) -> Result<Msg> {
        let bad = || Error::Sync(std::io::Error::other(format!("bad message {b:?}")));
        let (&tag, rest) = b.split_first().ok_or_else(bad)?;
        Ok(match tag {
            1 => Msg::Go,
            2 => Msg::MapRequest,
            3 => Msg::MapsDone,
            4 => Msg::Pid(i32::from_le_bytes(rest.try_into().map_err(|_| bad())?)),
            5 => Msg::MountsReady,
            6 => Msg::HooksDone(String::from_utf8_lossy(rest).into_owned()),
            7 => Msg::SeccompFd,
            8 => Msg::SeccompDone,
            9 => Msg::Ready,
            10 => Msg::Error(String::from_utf8_lossy(rest).into_owned()),
            _ => return Err(bad()),
        })
    }
}

/// One end of the socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair; both ends close on exec.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Sync(e.into()))?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        socket::send(self.fd.as_raw_fd(), &msg.encode(), MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(|e| Error::Sync(e.into()))
    }

    pub fn send_with_fd(&self, msg: &Msg, fd: BorrowedFd) -> Result<()> {
        fdpass::send_fd(self.fd.as_fd(), &msg.encode(), fd).map_err(Error::Sync)
    }

    /// Next message; a closed peer is `Error::ChildGone`.
    pub fn recv(&self) -> Result<Msg> {
        self.recv_with_fd().map(|(m, _)| m)
    }

    pub fn recv_with_fd(&self) -> Result<(Msg, Option<OwnedFd>)> {
        // A SEQPACKET peek with MSG_TRUNC tells the message's size: a buffer of exactly
        // that, rather than one for the largest message (whose zeroing was RSS).
        let len = loop {
            match socket::recv(
                self.fd.as_raw_fd(),
                &mut [0u8; 1],
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) => return Err(Error::ChildGone),
                Ok(n) => break n.min(MAX_MSG),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(Error::Sync(e.into())),
            }
        };
        let mut buf = vec![0u8; len];
        loop {
            match fdpass::recv_fd(self.fd.as_fd(), &mut buf) {
                Ok((0, _)) => return Err(Error::ChildGone),
                Ok((n, fd)) => return Ok((Msg::decode(&buf[..n])?, fd)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Sync(e)),
            }
        }
    }

    /// Waits for exactly `want`; an `Error` message becomes `Error::Child`.
    pub fn expect(&self, want: Msg) -> Result<()> {
        match self.recv()? {
            m if m == want => Ok(()),
            Msg::Error(e) => Err(Error::Child(e)),
            other => Err(Error::Sync(std::io::Error::other(format!(
                "expected {want:?}, got {other:?}"
            )))),
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Ends a forked child: an error is reported to the parent first. Never unwinds into
    /// the frames the child inherited from its parent.
    pub fn finish_child(&self, r: Result<()>) -> ! {
        let code = match r {
            Ok(()) => 0,
            Err(e) => {
                let _ = self.send(&Msg::Error(e.to_string()));
                1
            }
        };
        // SAFETY: _exit ends this forked process without running inherited destructors.
        unsafe { libc::_exit(code) }
    }

    /// Stage 1's last act: fork the process that waits for the parent's Go and then runs
    /// `body`, and report its pid.
    pub fn fork_and_report(
        &self,
        body: impl FnOnce() -> Result<std::convert::Infallible>,
    ) -> Result<()> {
        // SAFETY: called only from hull's single-threaded children.
        match unsafe { nix::unistd::fork() }.map_err(|e| Error::Setup(format!("fork: {e}")))? {
            nix::unistd::ForkResult::Child => {
                let Err(e) = self.expect(Msg::Go).and_then(|()| body());
                self.finish_child(Err(e))
            }
            nix::unistd::ForkResult::Parent { child } => self.send(&Msg::Pid(child.as_raw())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let (a, b) = Channel::pair().unwrap();
        for m in [
            Msg::Go,
            Msg::Pid(1234),
            Msg::Error("boom".into()),
            Msg::Ready,
        ] {
            a.send(&m).unwrap();
            assert_eq!(b.recv().unwrap(), m);
        }
        drop(a);
        assert!(matches!(b.recv(), Err(Error::ChildGone)));
    }
}
