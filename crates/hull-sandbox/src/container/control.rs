//! The control socket of a VM container's proxy: `ctl.sock` in its state directory, a
//! SOCK_SEQPACKET listener. Later hull commands (start, kill, exec, ps, pause, resume,
//! events, update) each connect, send one request as one JSON packet and read the
//! answer. An exec's stdio fds ride on its request (SCM_RIGHTS) and the connection
//! stays open until the exec's exit status comes back; resizes and signals for that
//! exec follow on it. Packets keep the framing, so no length prefix is needed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SandboxError};

/// The socket's name in the container's state directory (short: the directory may
/// already be long, and a socket path has 107 bytes).
pub const SOCKET: &str = "ctl.sock";

/// At most this many fds travel with one request: a pod member's payload and its
/// rootfs's images, then (as an exec's) its stdio and its preserved fds.
const MAX_FDS: usize = 4 + crate::layers::MAX_LAYERS + hull_proto::MAX_EXTRA_FDS;
/// The largest request or answer (a process JSON with a long environment).
const MAX_PACKET: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    /// Fds: stdin, stdout, stderr (with `terminal`, the terminal twice), then one for
    /// each of `preserved`.
    Exec {
        process: String,
        terminal: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preserved: Vec<super::preserved::Direction>,
    },
    /// On an exec's connection: its terminal's new size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// On an exec's connection: a signal for that exec.
    Signal {
        signal: i32,
    },
    Pids,
    Pause,
    Resume,
    Stats,
    Update {
        resources: String,
    },
    /// A pod member's container, into this proxy's VM (pod.rs). Fds: the payload (a
    /// memfd holding the guest's config.json and files), the rootfs image, then as
    /// for Exec. The connection then belongs to the member's stand-in.
    Add {
        id: String,
        terminal: bool,
        /// How many of the fds after the payload are rootfs images (top layer first).
        layers: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preserved: Vec<super::preserved::Direction>,
    },
    /// Removes a pod member from the VM (only inside `For`).
    Delete,
    /// `request` for the pod member `container` instead of the proxy's own.
    For {
        container: String,
        request: Box<Control>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlReply {
    Done,
    /// The exec runs; its pid in the guest.
    Started {
        pid: i32,
    },
    Exited {
        status: i32,
        /// A container init's: the OOM kills its guest cgroup counted by then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oom_kills: Option<u64>,
    },
    Pids {
        pids: Vec<i32>,
    },
    /// To a member's stand-in while its init runs: the OOM kills its guest cgroup has
    /// counted, each time the count grows.
    OomKills {
        count: u64,
    },
    Stats {
        json: String,
        #[serde(default)]
        oom_kills: u64,
    },
    Error {
        message: String,
    },
}

fn sock_err(what: &str) -> impl FnOnce(Errno) -> SandboxError + '_ {
    move |e| SandboxError::Vm(format!("control socket: {what}: {e}"))
}

fn seqpacket() -> Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sock_err("socket"))
}

/// Binds the listener at `dir/ctl.sock` (through the directory's fd, so the path's
/// length does not matter).
pub fn listen(dir: &Path) -> Result<OwnedFd> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new(&short_path(dir)?.join(SOCKET)).map_err(sock_err("address"))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(sock_err("bind"))?;
    socket::listen(&fd, socket::Backlog::new(64).map_err(sock_err("backlog"))?)
        .map_err(sock_err("listen"))?;
    Ok(fd)
}

/// Accepts one connection.
pub fn accept(listener: BorrowedFd) -> Result<OwnedFd> {
    loop {
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e) => return Err(sock_err("accept")(e)),
        }
    }
}

/// Connects to the proxy of the container whose state directory is `dir`.
pub fn connect(dir: &Path) -> Result<OwnedFd> {
    let fd = seqpacket()?;
    let path = short_path(dir)?.join(SOCKET);
    let addr = UnixAddr::new(&path).map_err(sock_err("address"))?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(|e| {
        SandboxError::Vm(format!(
            "cannot reach the container's proxy at {}: {e} (has it stopped?)",
            dir.join(SOCKET).display()
        ))
    })?;
    Ok(fd)
}

/// `dir` itself if short enough for a socket address, else `/proc/self/fd/N` of an
/// O_PATH fd of it (leaked for the process's life: a command makes one or two).
fn short_path(dir: &Path) -> Result<std::path::PathBuf> {
    if dir.as_os_str().len() + SOCKET.len() + 2 < 100 {
        return Ok(dir.to_path_buf());
    }
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SandboxError::Vm(format!("cannot open {}: {e}", dir.display())))?;
    let raw: RawFd = fd.as_raw_fd();
    std::mem::forget(fd);
    Ok(format!("/proc/self/fd/{raw}").into())
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd, msg: &T, fds: &[BorrowedFd]) -> Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|e| SandboxError::Vm(format!("encode: {e}")))?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    loop {
        let iov = [IoSlice::new(&bytes)];
        match socket::sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(sock_err("send")(e)),
        }
    }
}

/// The length of the next packet, once there is one (0 at end of file). A buffer of
/// MAX_PACKET for every receive stayed in the heap of each thread that waits on a
/// connection (a proxy has several for as long as its containers run): glibc serves
/// 256 KiB from the heap once a free has raised its mmap threshold, and calloc then
/// writes all of it.
fn next_packet_len(sock: BorrowedFd) -> Result<usize> {
    loop {
        match socket::recv(
            sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(0),
            Err(e) => return Err(sock_err("receive")(e)),
        }
    }
}

/// Receives one message and the fds that came with it; None at end of file.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd) -> Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; next_packet_len(sock)?.clamp(1, MAX_PACKET)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().map_err(sock_err("control data"))? {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        // SAFETY: the kernel installed these fds for us; nothing else owns them.
                        fds.extend(list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                let truncated = m
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (m.bytes, fds, truncated);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(sock_err("receive")(e)),
        }
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(SandboxError::Vm(
            "control socket: a message or its fds did not fit".into(),
        ));
    }
    let msg = serde_json::from_slice(&buf[..n])
        .map_err(|e| SandboxError::Vm(format!("control socket: malformed message: {e}")))?;
    Ok(Some((msg, fds)))
}

/// One request, one answer.
pub fn call(dir: &Path, request: &Control) -> Result<ControlReply> {
    let sock = connect(dir)?;
    send(sock.as_fd(), request, &[])?;
    match recv::<ControlReply>(sock.as_fd())? {
        Some((ControlReply::Error { message }, _)) => Err(SandboxError::Vm(message)),
        Some((reply, _)) => Ok(reply),
        None => Err(SandboxError::Vm(
            "the container's proxy closed the connection without answering".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_a_socket_pair() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let msg = Control::Exec {
            process: "{}".into(),
            terminal: false,
            preserved: vec![],
        };
        send(a.as_fd(), &msg, &[r.as_fd(), w.as_fd()]).unwrap();
        let (got, fds) = recv::<Control>(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        nix::unistd::write(&fds[1], b"x").unwrap();
        let mut one = [0u8; 1];
        nix::unistd::read(&r, &mut one).unwrap();
        assert_eq!(&one, b"x");
        drop(a);
        assert!(recv::<Control>(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn a_long_state_directory_still_gets_a_socket() {
        let base = std::env::temp_dir().join(format!("hull-ctl-{}", std::process::id()));
        let long = base.join("x".repeat(90));
        std::fs::create_dir_all(&long).unwrap();
        let l = listen(&long).unwrap();
        let c = connect(&long).unwrap();
        let s = accept(l.as_fd()).unwrap();
        send(c.as_fd(), &Control::Pids, &[]).unwrap();
        assert_eq!(
            recv::<Control>(s.as_fd()).unwrap().unwrap().0,
            Control::Pids
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
