//! `--preserve-fds` for a VM container. An fd cannot cross into a VM; its bytes can.
//! The guest process gets a pipe as fd 3 + i (a socket pair when bytes go both ways),
//! and the proxy relays it to the host fd: what the host fd yields is written to the
//! process, what the process writes goes to the host fd, each until its end.
//!
//! Which way bytes go is the host fd's: read-only fds (and FIFOs opened so) are
//! inputs, write-only ones outputs, connected stream sockets and read-write
//! terminals or FIFOs both. A read-write regular file is an output only: reading it
//! as well would move the offset the writes use. Refused, with the reason: directories
//! (a directory fd is a way out of any root: CVE-2024-21626), listening sockets
//! (socket activation needs a listener in the guest), and datagram sockets (a byte
//! stream loses their boundaries).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use hull_proto::{ExtraFd, StreamId, MAX_EXTRA_FDS};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};
use serde::{Deserialize, Serialize};

use super::relay;
use crate::client::AgentClient;
use crate::error::{Result, SandboxError};

/// Which way one preserved fd's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direction {
    /// The process reads the fd: host bytes go in.
    pub input: bool,
    /// The process writes the fd: its bytes come out.
    pub output: bool,
}

pub struct Preserved {
    pub fd: OwnedFd,
    pub direction: Direction,
}

/// Takes this process's fds 3 .. 3 + `count`, checked, and marks them close-on-exec
/// (the VMM and hooks must not inherit them; the relays hold them).
pub fn take(count: i32) -> Result<Vec<Preserved>> {
    let count = usize::try_from(count).unwrap_or(0);
    if count > MAX_EXTRA_FDS {
        return Err(refused(format!(
            "--preserve-fds {count}: a VM container can be handed at most {MAX_EXTRA_FDS}"
        )));
    }
    let mut taken = Vec::with_capacity(count);
    for number in 3..3 + count as i32 {
        // SAFETY: F_GETFD only reads the flags of fd `number`, open or not.
        if unsafe { libc::fcntl(number, libc::F_GETFD) } < 0 {
            return Err(refused(format!(
                "--preserve-fds {count}: fd {number} is not open"
            )));
        }
        // SAFETY: the caller handed fds 3 .. 3 + count to this process for the
        // container; nothing else in hull holds these numbers.
        let fd = unsafe { OwnedFd::from_raw_fd(number) };
        let direction = classify(fd.as_fd(), number)?;
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| refused(format!("fd {number}: F_SETFD: {e}")))?;
        taken.push(Preserved { fd, direction });
    }
    Ok(taken)
}

fn classify(fd: BorrowedFd, number: i32) -> Result<Direction> {
    let st = fstat(fd).map_err(|e| refused(format!("fd {number}: fstat: {e}")))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| refused(format!("fd {number}: F_GETFL: {e}")))?;
    let mode = flags & libc::O_ACCMODE;
    let by_mode = Direction {
        input: mode != libc::O_WRONLY,
        output: mode != libc::O_RDONLY,
    };
    match kind {
        SFlag::S_IFDIR => Err(refused(format!(
            "fd {number} is a directory: no directory of the host can reach a VM container through an fd (bind-mount it instead)"
        ))),
        SFlag::S_IFSOCK => {
            if getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
                return Err(refused(format!(
                    "fd {number} is a listening socket: socket activation cannot reach a VM container (publish a port instead)"
                )));
            }
            match getsockopt(&fd, sockopt::SockType) {
                Ok(nix::sys::socket::SockType::Stream) => Ok(Direction {
                    input: true,
                    output: true,
                }),
                _ => Err(refused(format!(
                    "fd {number} is a socket that is not a connected stream: only byte streams reach a VM container"
                ))),
            }
        }
        SFlag::S_IFREG => Ok(Direction {
            input: mode == libc::O_RDONLY,
            output: mode != libc::O_RDONLY,
        }),
        _ => Ok(by_mode),
    }
}

fn refused(why: String) -> SandboxError {
    SandboxError::Vm(why)
}

/// The relays of a process's preserved fds: outputs run from the start (their
/// streams are subscribed before the process exists); inputs start once it does.
pub struct Relays {
    inputs: Vec<(StreamId, OwnedFd)>,
    pub outputs: Vec<JoinHandle<()>>,
}

/// Streams for `preserved`, in order, as the agent's request names them.
pub fn plan(agent: &AgentClient, preserved: Vec<Preserved>) -> Result<(Vec<ExtraFd>, Relays)> {
    let mut extra = Vec::with_capacity(preserved.len());
    let mut relays = Relays {
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    for p in preserved {
        let mut e = ExtraFd::default();
        if p.direction.output {
            let stream = agent.stream();
            let to =
                p.fd.try_clone()
                    .map_err(|e| refused(format!("dup a preserved fd: {e}")))?;
            relays
                .outputs
                .push(relay::out_of_agent(agent.subscribe(stream), to));
            e.output = Some(stream);
        }
        if p.direction.input {
            let stream = agent.stream();
            relays.inputs.push((stream, p.fd));
            e.input = Some(stream);
        }
        extra.push(e);
    }
    Ok((extra, relays))
}

impl Relays {
    /// The input relays run until the handles are dropped.
    pub fn start_inputs(&mut self, agent: &Arc<AgentClient>) -> Vec<relay::InputRelay> {
        self.inputs
            .drain(..)
            .map(|(stream, fd)| relay::into_agent(agent.clone(), stream, fd))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_follow_the_host_fd() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            classify(r.as_fd(), 3).unwrap(),
            Direction {
                input: true,
                output: false
            }
        );
        assert_eq!(
            classify(w.as_fd(), 4).unwrap(),
            Direction {
                input: false,
                output: true
            }
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let both = classify(a.as_fd(), 5).unwrap();
        assert!(both.input && both.output);
        let dir = std::fs::File::open("/").unwrap();
        let e = classify(dir.as_fd(), 6).unwrap_err().to_string();
        assert!(e.contains("fd 6 is a directory"), "{e}");
        let listener = std::os::unix::net::UnixListener::bind(
            std::env::temp_dir().join(format!("hull-preserved-{}", std::process::id())),
        )
        .unwrap();
        let e = classify(listener.as_fd(), 7).unwrap_err().to_string();
        assert!(e.contains("listening socket"), "{e}");
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("hull-preserved-{}", std::process::id())),
        );
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let rw = classify(file.as_fd(), 8).unwrap();
        assert!(
            rw.input && rw.output,
            "a read-write character device: both ways"
        );
    }
}
