//! The router: a child process that takes over the host's byte stream once the first
//! image is attached (images.rs). It relays every frame between the host and the
//! agent's loop unchanged, except the frames of image streams, whose bytes it passes
//! between the host and the kernel's nbd sockets itself.
//!
//! Why a process of its own: the agent's loop blocks in hull-runtime (a container's
//! create waits for its init, which reads its rootfs; a mount reads the superblock), and
//! those reads go to the host through the nbd socket. Served by the loop they would
//! wait for the loop: a deadlock. A thread would break the agent's rule that it is
//! single-threaded because hull-runtime forks. The router never blocks on the agent:
//! what the host sends it buffers, so image blocks flow while the agent is busy.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};
use hull_proto::{encode_frame, Frame, FrameDecoder, StreamId};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::unistd::{ForkResult, Pid};

/// Above this much waiting for the host, the router stops reading the agent and the
/// nbd sockets (the host always reads: its reader thread never blocks).
const HIGH: usize = 4 << 20;

/// The agent's handle on the router.
pub struct Router {
    ctl: OwnedFd,
    pub pid: Pid,
}

/// Forks the router over `host`; returns it and the agent's new end of the stream.
pub fn spawn(host: BorrowedFd) -> Result<(Router, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair for the router")?;
    let (ctl, ctl_theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair for the router's control")?;
    // SAFETY: the agent is single-threaded; the child runs the router loop and exits.
    match unsafe { nix::unistd::fork() }.context("fork the router")? {
        ForkResult::Child => {
            let keep = [host.as_raw_fd(), theirs.as_raw_fd(), ctl_theirs.as_raw_fd()];
            close_all_but(&keep);
            let code = match route(host, theirs.as_fd(), ctl_theirs.as_fd()) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("router: {e:#}");
                    1
                }
            };
            // SAFETY: _exit ends this child without running the agent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok((Router { ctl, pid: child }, ours)),
    }
}

/// Closes every fd but 0-2 and `keep`: the agent's pipes to its containers must not
/// stay open here (a container would never see its stdin end).
pub fn close_all_but(keep: &[RawFd]) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing an fd number this process has; nothing here uses it again.
            unsafe { libc::close(fd) };
        }
    }
}

impl Router {
    /// Hands the router the relay end of an nbd socket, for `stream`.
    pub fn add(&self, stream: StreamId, sock: BorrowedFd) -> Result<()> {
        let bytes = stream.to_be_bytes();
        let fds = [sock.as_raw_fd()];
        sendmsg::<UnixAddr>(
            self.ctl.as_raw_fd(),
            &[std::io::IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .context("hand an image socket to the router")?;
        Ok(())
    }
}

struct Block {
    stream: StreamId,
    sock: File,
    out: Vec<u8>,
    /// The host ended the stream: close once `out` is written.
    closing: bool,
    done: bool,
}

#[derive(Default)]
struct Buffers {
    to_host: Vec<u8>,
    to_agent: Vec<u8>,
    blocks: Vec<Block>,
    /// Image streams that ended: late frames for them are dropped.
    retired: Vec<StreamId>,
}

impl Buffers {
    fn host_frame(&mut self, f: Frame) {
        if let Some(b) = self.blocks.iter_mut().find(|b| b.stream == f.stream) {
            if f.payload.is_empty() {
                b.closing = true;
            } else {
                b.out.extend_from_slice(&f.payload);
            }
        } else if !self.retired.contains(&f.stream) {
            encode_frame(f.stream, &f.payload, &mut self.to_agent);
        }
    }
}

/// The router's two ends of the agent's channel, each with its frame decoder.
struct Ends {
    host: File,
    agent: File,
    from_host: FrameDecoder,
    from_agent: FrameDecoder,
}

impl Ends {
    /// Host bytes: image frames to their sockets, the rest to the agent. Ok(false) at
    /// the host's end of file, once what the agent is owed is flushed.
    fn host_readable(&mut self, b: &mut Buffers, buf: &mut [u8]) -> Result<bool> {
        match read_some(&mut self.host, buf)? {
            Some(0) => {
                flush(&mut self.agent, &b.to_agent);
                Ok(false)
            }
            Some(n) => {
                self.from_host.push(&buf[..n]);
                while let Some(f) = self.from_host.next_frame()? {
                    b.host_frame(f);
                }
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// Agent frames, whole, to the host. Ok(false) at the agent's end of file.
    fn agent_readable(&mut self, b: &mut Buffers, buf: &mut [u8]) -> Result<bool> {
        match read_some(&mut self.agent, buf)? {
            Some(0) => {
                flush(&mut self.host, &b.to_host);
                Ok(false)
            }
            Some(n) => {
                self.from_agent.push(&buf[..n]);
                while let Some(f) = self.from_agent.next_frame()? {
                    encode_frame(f.stream, &f.payload, &mut b.to_host);
                }
                Ok(true)
            }
            None => Ok(true),
        }
    }
}

fn flags(read: bool, write: bool) -> PollFlags {
    let mut f = PollFlags::empty();
    f.set(PollFlags::POLLIN, read);
    f.set(PollFlags::POLLOUT, write);
    f
}

fn route(host: BorrowedFd, agent: BorrowedFd, ctl: BorrowedFd) -> Result<()> {
    for fd in [host, agent] {
        crate::io::set_nonblocking(&fd)?;
    }
    // SAFETY: the fds are this process's own from here on (close_all_but kept them).
    let (host, agent) = unsafe {
        (
            File::from_raw_fd(host.as_raw_fd()),
            File::from_raw_fd(agent.as_raw_fd()),
        )
    };
    let mut ends = Ends {
        host,
        agent,
        from_host: FrameDecoder::new(),
        from_agent: FrameDecoder::new(),
    };
    let mut b = Buffers::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut ctl_open = true;
    let input = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    loop {
        let reading = b.to_host.len() < HIGH;
        let mut fds = vec![
            PollFd::new(ends.host.as_fd(), flags(true, !b.to_host.is_empty())),
            PollFd::new(ends.agent.as_fd(), flags(reading, !b.to_agent.is_empty())),
            PollFd::new(ctl, flags(ctl_open, false)),
        ];
        for blk in &b.blocks {
            let f = flags(reading && !blk.closing, !blk.out.is_empty());
            fds.push(PollFd::new(blk.sock.as_fd(), f));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let rev: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if rev[0].intersects(input) && !ends.host_readable(&mut b, &mut buf)? {
            return Ok(());
        }
        if rev[0].contains(PollFlags::POLLOUT) {
            write_some(&mut ends.host, &mut b.to_host)?;
        }
        if rev[1].intersects(input) && !ends.agent_readable(&mut b, &mut buf)? {
            return Ok(());
        }
        if rev[1].contains(PollFlags::POLLOUT) {
            write_some(&mut ends.agent, &mut b.to_agent)?;
        }
        if rev[2].intersects(input) {
            match receive_block(ctl) {
                Ok(Some(blk)) => b.blocks.push(blk),
                Ok(None) => ctl_open = false,
                Err(e) => tracing::warn!("router: {e:#}"),
            }
        }
        blocks(&mut b, &rev[3..], &mut buf);
    }
}

/// Moves bytes between the nbd sockets and the host's buffer; forgets ended streams.
fn blocks(b: &mut Buffers, rev: &[PollFlags], buf: &mut [u8]) {
    let input = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    for (blk, r) in b.blocks.iter_mut().zip(rev) {
        if r.intersects(input) && !blk.closing {
            match read_some(&mut blk.sock, buf) {
                Ok(Some(0)) | Err(_) => blk.done = true,
                Ok(Some(n)) => encode_frame(blk.stream, &buf[..n], &mut b.to_host),
                Ok(None) => {}
            }
        }
        if r.contains(PollFlags::POLLOUT) && write_some(&mut blk.sock, &mut blk.out).is_err() {
            blk.done = true;
        }
        if blk.closing && blk.out.is_empty() {
            blk.done = true;
        }
    }
    for blk in b.blocks.iter().filter(|blk| blk.done) {
        // The end, for the host's server of this image (unless the host ended it).
        if !blk.closing {
            encode_frame(blk.stream, &[], &mut b.to_host);
        }
        b.retired.push(blk.stream);
    }
    b.blocks.retain(|blk| !blk.done);
}

fn receive_block(ctl: BorrowedFd) -> Result<Option<Block>> {
    let mut bytes = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
    let msg = recvmsg::<UnixAddr>(
        ctl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receive an image socket")?;
    let mut fd = None;
    for c in msg.cmsgs().context("control data")? {
        if let ControlMessageOwned::ScmRights(list) = c {
            // SAFETY: the kernel installed these fds for us; nothing else owns them.
            fd = list
                .into_iter()
                .next()
                .map(|f| unsafe { OwnedFd::from_raw_fd(f) });
        }
    }
    if msg.bytes == 0 && fd.is_none() {
        return Ok(None);
    }
    let fd = fd.context("an image socket message without its socket")?;
    crate::io::set_nonblocking(&fd)?;
    Ok(Some(Block {
        stream: StreamId::from_be_bytes(bytes),
        sock: File::from(fd),
        out: Vec::new(),
        closing: false,
        done: false,
    }))
}

/// Some(n) bytes read (0: end of file), None when nothing is there now.
fn read_some(r: &mut File, buf: &mut [u8]) -> Result<Option<usize>> {
    match r.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e).context("read"),
    }
}

fn write_some(w: &mut File, out: &mut Vec<u8>) -> Result<()> {
    match w.write(out) {
        Ok(n) => {
            out.drain(..n);
            Ok(())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(e).context("write"),
    }
}

/// What is left for a peer, before the router ends (which the peer sees as EOF).
fn flush(w: &mut File, out: &[u8]) {
    let mut rest = out;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !rest.is_empty() && std::time::Instant::now() < deadline {
        match w.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
