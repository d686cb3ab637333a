//! The foreground side of `hull run` and `hull exec`: forward signals to the container's
//! process, relay its terminal when hull holds the pty, reap, and return its exit code.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::error::{Error, Result};

/// Signals hull relays to the container rather than acting on.
fn forwarded() -> SigSet {
    let mut set = SigSet::all();
    for s in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
    ] {
        set.remove(s);
    }
    set
}

/// A socketpair standing in for --console-socket when hull itself relays the terminal:
/// the init sends the pty master on one end, `receive_pty` takes it from the other.
pub fn pty_relay_pair() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::Setup(format!("socketpair: {e}")))
}

pub fn receive_pty(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 64];
    match crate::fdpass::recv_fd(sock.as_fd(), &mut buf) {
        Ok((_, Some(fd))) => Ok(fd),
        Ok((_, None)) => Err(Error::Child("the container sent no pty".into())),
        Err(e) => Err(Error::Sync(e)),
    }
}

/// Blocks the forwarded signals so they queue for the signalfd; call before forking the
/// container so none is lost in between. Children unblock before exec.
pub fn block_signals() -> Result<()> {
    forwarded()
        .thread_block()
        .map_err(|e| Error::Setup(format!("sigprocmask: {e}")))
}

/// Restores an empty signal mask and default SIGPIPE (Rust ignores it, and an ignored
/// signal would stay ignored across execve).
pub fn reset_signals_for_exec() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: restoring the default disposition of SIGPIPE has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}

fn copy_winsize(master: &OwnedFd) {
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read or write one winsize struct at a valid pointer.
    unsafe {
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Waits for `pid` (a child of this process, hull being its subreaper), forwarding
/// signals and relaying `pty` if given. Returns the exit code as a shell reports it.
pub fn wait(pid: i32, pty: Option<OwnedFd>) -> Result<i32> {
    let sfd = SignalFd::with_flags(&forwarded(), SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::Setup(format!("signalfd: {e}")))?;
    let _raw = pty.as_ref().map(|m| {
        copy_winsize(m);
        RawMode::enter()
    });
    let mut stdin_open = pty.is_some();
    let mut pty_open = pty.is_some();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Reap first: a child that exited before the signalfd existed sent no SIGCHLD to it.
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) if ws.pid() == Some(Pid::from_raw(pid)) => {
                    if let Some(m) = &pty {
                        drain(m, &mut buf);
                    }
                    if let Some(code) = exit_code(ws) {
                        return Ok(code);
                    }
                }
                Ok(_) => {}
            }
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let stdin = std::io::stdin();
        if let Some(m) = &pty {
            if pty_open {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            }
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(Error::Setup(format!("poll: {e}"))),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGCHLD {
                    continue;
                }
                if sig == libc::SIGWINCH {
                    if let Some(m) = &pty {
                        copy_winsize(m);
                    }
                }
                // SAFETY: kill(2) with a raw signal number to our own child.
                unsafe { libc::kill(pid, sig) };
            }
        }
        let mut i = 1;
        if let Some(m) = &pty {
            if pty_open {
                if ready[i] {
                    match unistd::read(m, &mut buf) {
                        Ok(0) | Err(nix::Error::EIO) => pty_open = false,
                        Ok(n) => write_all(libc::STDOUT_FILENO, &buf[..n]),
                        Err(_) => {}
                    }
                }
                i += 1;
            }
            if stdin_open && ready[i] {
                match unistd::read(std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => write_all(m.as_raw_fd(), &buf[..n]),
                }
            }
        }
    }
}

fn drain(m: &OwnedFd, buf: &mut [u8]) {
    let _ = nix::fcntl::fcntl(
        m,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    while let Ok(n) = unistd::read(m, buf) {
        if n == 0 {
            break;
        }
        write_all(libc::STDOUT_FILENO, &buf[..n]);
    }
}

fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: write(2) from a valid slice to a raw fd we do not own.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        b = &b[n as usize..];
    }
}
