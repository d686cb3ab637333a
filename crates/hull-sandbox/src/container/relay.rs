//! Stdio between host fds (whatever `create` or `exec` was handed: conmon's pipes,
//! containerd's fifos, a pty) and the agent's streams, byte for byte, EOF both ways.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use hull_proto::StreamId;
use nix::sys::termios::{self, SetArg, Termios};

use crate::client::AgentClient;

/// Copies `from` into the process's stdin stream; its end (or an error) closes stdin.
/// Dropping the returned handle stops the copy and closes `from` (the process it fed
/// is gone): a blocking read could not be interrupted otherwise, and an exec's relay
/// would hold a host pipe or socket open for as long as the container runs.
pub fn into_agent(agent: Arc<AgentClient>, stream: StreamId, from: OwnedFd) -> InputRelay {
    let (stop_r, stop_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("stdin relay: pipe2: {e}; closing stdin");
            let _ = agent.send_stdin(stream, &[]);
            return InputRelay { _stop: None };
        }
    };
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut from = File::from(from);
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                if !wait_readable(from.as_fd(), stop_r.as_fd()) {
                    return;
                }
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if agent.send_stdin(stream, &buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // EIO: the terminal's other side is gone.
                    Err(_) => break,
                }
            }
            let _ = agent.send_stdin(stream, &[]);
        });
    InputRelay {
        _stop: Some(stop_w),
    }
}

/// Keeps an input relay going; dropped, it stops it.
pub struct InputRelay {
    _stop: Option<OwnedFd>,
}

/// Whether `from` has something (data, EOF or an error) before `stop` is closed.
fn wait_readable(from: BorrowedFd, stop: BorrowedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [
            PollFd::new(from, PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(_) => return true,
            Ok(_) => {}
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return false;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return true;
        }
    }
}

/// Writes what the stream carries to `to` until the stream ends; then `to` is closed,
/// so the reader sees EOF. A reader that went away (EPIPE) costs the rest of the data,
/// as it would with the process writing to the pipe itself.
pub fn out_of_agent(rx: Receiver<Vec<u8>>, to: OwnedFd) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut to = File::from(to);
        let mut broken = false;
        for chunk in rx {
            if chunk.is_empty() {
                break;
            }
            if !broken && to.write_all(&chunk).is_err() {
                broken = true;
            }
        }
    })
}

/// The signals a stand-in for a guest process (the proxy for the init, an exec's
/// waiter) passes on to that process; SIGWINCH becomes a resize of its terminal.
pub fn passed_on() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// The size of the terminal `fd`, if it is one.
pub fn window_size(fd: BorrowedFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some((ws.ws_row, ws.ws_col))
}

/// A host terminal in raw mode while the guest's pty owns the line discipline (echo,
/// line editing, ^C): otherwise both would, twice. Restored on drop.
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    /// None when `fd` is not a terminal.
    pub fn enter(fd: BorrowedFd) -> Option<RawTerminal> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal {
            fd: fd.try_clone_to_owned().ok()?,
            saved,
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// A new pty pair: (master, slave). The master goes to `--console-socket`; the slave
/// stays on the host side of the relay, raw: the guest's own pty does the terminal's
/// work (echo, newline translation, Ctrl-C), and doing it twice printed "\r\r\n" and
/// would echo every key twice.
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let mut raw = termios::tcgetattr(&pty.slave)?;
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &raw)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok((pty.master, pty.slave))
}

/// Makes `tty` the caller's controlling terminal (after setsid), so that a window size
/// change on the master's side arrives as SIGWINCH.
pub fn take_controlling_terminal(tty: BorrowedFd) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no pointer.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Points 0, 1 and 2 at /dev/null: a process that handed its stdio on must not keep
/// the engine's pipes open (their reader would never see EOF).
pub fn stdio_to_null() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto 0..2, which std's stdin/stdout/stderr handles refer to by
        // number only; nothing owns them as OwnedFd.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
