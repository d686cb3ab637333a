//! A process's stdio between containerd's fifos and what `hull create`/`exec` hands
//! the container: stdout and stderr are the fifos themselves (opened read-write, so an
//! open never blocks and a write never meets a missing reader); stdin goes through a
//! pipe fed by a relay thread, since the fifo alone would read as EOF before
//! containerd's writer opens it; a terminal's master comes back over `--console-socket`
//! and is copied both ways.

use std::fs::{File, OpenOptions};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::error::{Error, Result};
use crate::hull::ChildIo;

/// containerd's view of a process's stdio: fifo paths ("" for none) and a terminal.
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the shim keeps of a running process's stdio.
#[derive(Default)]
pub struct Live {
    stdin: Option<StdinRelay>,
    /// The terminal's master, for ResizePty.
    console: Option<File>,
    /// Closed by the terminal's copier when it has passed on the last output.
    output_done: Option<std::sync::mpsc::Receiver<()>>,
}

/// How long an exit waits for its terminal's last output. The copier ends when the
/// last slave closes; a background process that keeps one open holds it up, not the
/// exit.
pub const TERMINAL_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Live {
    /// Waits (up to `timeout`) until the terminal's output has reached containerd's
    /// fifo: TaskExit before it, and `ctr run -t` finished without the last lines it
    /// had yet to copy (seen under load: `stty size`'s answer was lost).
    pub fn drain_output(&mut self, timeout: std::time::Duration) {
        if let Some(done) = self.output_done.take() {
            let _ = done.recv_timeout(timeout);
        }
    }

    /// CloseIO: the process reads EOF once what containerd wrote has been passed on.
    pub fn close_stdin(&mut self) {
        if let Some(r) = self.stdin.as_mut() {
            r.close();
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(master) = &self.console else {
            return Err(Error::FailedPrecondition(
                "the process has no terminal".into(),
            ));
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }
}

/// Opened before hull runs; `finish` once it succeeded.
pub struct Prepared {
    console: Option<Console>,
    stdin: Option<StdinRelay>,
}

/// The listening end of `--console-socket`, removed when dropped.
struct Console {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open_rw(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::Internal(format!("open {path}: {e}")))
}

fn fifo_or_null(path: &str) -> Result<Stdio> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    Ok(open_rw(path)?.into())
}

impl Prepared {
    /// The fds for hull, and what to finish once it ran. `console` is where to listen
    /// for the terminal's master, when there is one.
    pub fn new(p: &IoPaths, console: Option<PathBuf>) -> Result<(ChildIo, Prepared)> {
        if p.terminal {
            let path = console.ok_or_else(|| Error::Internal("no console socket path".into()))?;
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|e| Error::Internal(format!("bind {}: {e}", path.display())))?;
            let io = ChildIo {
                stdin: Stdio::null(),
                stdout: Stdio::null(),
                stderr: Stdio::null(),
            };
            let console = Some(Console { listener, path });
            return Ok((
                io,
                Prepared {
                    console,
                    stdin: None,
                },
            ));
        }
        let (stdin, relay) = if p.stdin.is_empty() {
            (Stdio::null(), None)
        } else {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
            let relay = StdinRelay::start(&p.stdin, File::from(w))?;
            (Stdio::from(r), Some(relay))
        };
        let io = ChildIo {
            stdin,
            stdout: fifo_or_null(&p.stdout)?,
            stderr: fifo_or_null(&p.stderr)?,
        };
        Ok((
            io,
            Prepared {
                console: None,
                stdin: relay,
            },
        ))
    }

    /// The console path to pass as `--console-socket`.
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|c| c.path.as_path())
    }

    /// After hull returned: a terminal's master has arrived; copy it both ways.
    pub fn finish(mut self, p: &IoPaths) -> Result<Live> {
        let Some(console) = self.console.take() else {
            return Ok(Live {
                stdin: self.stdin.take(),
                ..Live::default()
            });
        };
        let master = receive_fd(&console.listener)?;
        let mut output_done = None;
        if !p.stdout.is_empty() {
            let out = open_rw(&p.stdout)?;
            let from = master.try_clone()?;
            let (done, done_rx) = std::sync::mpsc::channel::<()>();
            std::thread::Builder::new()
                .name("tty-out".into())
                .spawn(move || {
                    copy_out(from, out);
                    drop(done);
                })?;
            output_done = Some(done_rx);
        }
        let stdin = if p.stdin.is_empty() {
            None
        } else {
            Some(StdinRelay::start(&p.stdin, master.try_clone()?)?)
        };
        Ok(Live {
            stdin,
            console: Some(master),
            output_done,
        })
    }
}

/// The pty master hull sent (it connected and sent before it returned).
fn receive_fd(listener: &UnixListener) -> Result<File> {
    listener.set_nonblocking(true)?;
    let (stream, _) = listener.accept().map_err(|e| {
        Error::Internal(format!("hull sent no terminal to the console socket: {e}"))
    })?;
    stream.set_nonblocking(false)?;
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::Internal("no fd on the console socket".into()))
}

/// The terminal's output to containerd, until the last slave closes (EIO).
fn copy_out(mut master: File, mut out: File) {
    let mut buf = [0u8; 32 * 1024];
    loop {
        match master.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies containerd's stdin fifo into the process's stdin until the fifo's writer
/// closes it or CloseIO; the process reads EOF when the relay ends.
struct StdinRelay {
    stop: Option<OwnedFd>,
}

impl StdinRelay {
    fn start(fifo: &str, dest: File) -> Result<StdinRelay> {
        // Non-blocking: an open for reading would wait for containerd's writer.
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(fifo)
            .map_err(|e| Error::Internal(format!("open {fifo}: {e}")))?;
        let (stop_r, stop_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || relay(src, dest, stop_r))?;
        Ok(StdinRelay { stop: Some(stop_w) })
    }

    fn close(&mut self) {
        self.stop.take();
    }
}

impl Drop for StdinRelay {
    fn drop(&mut self) {
        self.close();
    }
}

fn relay(mut src: File, mut dest: File, stop: OwnedFd) {
    let mut buf = [0u8; 32 * 1024];
    let mut stopping = false;
    loop {
        if !stopping {
            let mut fds = [
                PollFd::new(src.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            // Linux reports a fifo's hang-up only once a writer has come and gone.
            stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
            let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            if !ready && !stopping {
                continue;
            }
        }
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if dest.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            // Nothing more for now: on CloseIO, what was written has been passed on.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && stopping => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
