//! `hull-testbed-console SOCKET SIZE [WHEN=SIZE]... -- CMD...`: an engine's end of
//! `--console-socket`, for checks in L1, where no test harness runs. It listens on
//! SOCKET, runs CMD (which hands SOCKET to hull), takes the pty master that hull sends,
//! sets the window to SIZE (`ROWSxCOLS`), and, each time the container's output first
//! contains WHEN, sets the next size: a resize while the container runs. Like conmon it
//! is a subreaper, so the detached processes hull leaves (the proxy, an exec's
//! stand-in) are its children, and it prints each one's exit status
//! (`reaped PID exit N`, 128+N for signal N). Then it prints what the pty gave until it
//! closed or no process that could write to it is left (or 120 s), after a `--- pty` line, and exits 0, or 1 when a size was never asked for.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

const LIMIT: Duration = Duration::from_secs(120);

fn size(s: &str) -> Result<libc::winsize> {
    let (rows, cols) = s
        .split_once('x')
        .with_context(|| format!("{s:?}: say ROWSxCOLS"))?;
    Ok(libc::winsize {
        ws_row: rows.parse().with_context(|| format!("rows in {s:?}"))?,
        ws_col: cols.parse().with_context(|| format!("columns in {s:?}"))?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    })
}

fn set_size(master: &File, ws: &libc::winsize) -> Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize through a valid pointer; the fd is ours.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, ws) } != 0 {
        bail!("TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn receive_fd(listener: &UnixListener) -> Result<File> {
    let (stream, _) = listener.accept().context("accept on the console socket")?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .context("recvmsg on the console socket")?;
    for cmsg in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us and nothing else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    bail!("no fd came with the console socket's message")
}

fn run() -> Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--");
    let (ours, cmd) = match split {
        Some(i) if i + 1 < args.len() => (&args[..i], &args[i + 1..]),
        _ => bail!("usage: hull-testbed-console SOCKET ROWSxCOLS [WHEN=ROWSxCOLS]... -- CMD..."),
    };
    let [socket, first, rest @ ..] = ours else {
        bail!("usage: hull-testbed-console SOCKET ROWSxCOLS [WHEN=ROWSxCOLS]... -- CMD...");
    };
    let mut later = Vec::new();
    for r in rest {
        let (when, s) = r.split_once('=').context("say WHEN=ROWSxCOLS")?;
        later.push((when.to_string(), size(s)?));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).with_context(|| format!("bind {socket}"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .spawn()
        .with_context(|| format!("run {}", cmd[0]))?;
    let mut master = receive_fd(&listener)?;
    set_size(&master, &size(first)?)?;
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fd = master.as_raw_fd();
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
    let deadline = Instant::now() + LIMIT;
    let mut exits = Exits {
        child,
        cmd_status: None,
        reaped: Vec::new(),
    };
    let (out, unmet) = watch(&mut master, later, &mut exits, deadline)?;
    let _ = std::fs::remove_file(socket);
    while exits.reap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{} exit {}", cmd[0], exits.cmd_status.unwrap_or(-1));
    for line in exits.reaped {
        println!("{line}");
    }
    println!("--- pty");
    std::io::stdout().write_all(&out)?;
    Ok(if unmet { 1 } else { 0 })
}

/// Reads the pty until it closes, or every process that could write to it is gone
/// (the proxy may keep the slave open for the container's life after an exec ended),
/// setting each later size once its text appeared. Returns the output and whether a
/// size was never set.
fn watch(
    master: &mut File,
    later: Vec<(String, libc::winsize)>,
    exits: &mut Exits,
    deadline: Instant,
) -> Result<(Vec<u8>, bool)> {
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut later = later.into_iter().peekable();
    loop {
        let gone = exits.cmd_status.is_some() && !exits.reap();
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if gone {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("hull-testbed-console: the pty stayed open for {LIMIT:?}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The container closed its end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => bail!("read the pty master: {e}"),
        }
        if exits.cmd_status.is_none() {
            exits.reap();
        }
        if let Some((when, ws)) = later.peek() {
            if String::from_utf8_lossy(&out).contains(when.as_str()) {
                set_size(master, ws)?;
                later.next();
            }
        }
    }
    Ok((out, later.peek().is_some()))
}

/// CMD and the processes left to us as subreaper, as they exit.
struct Exits {
    child: Child,
    cmd_status: Option<i32>,
    /// `reaped PID exit N` for each other process.
    reaped: Vec<String>,
}

impl Exits {
    /// Collects exits without blocking; true while any child is left.
    fn reap(&mut self) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes one int through a valid pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == 0 {
                return true;
            }
            if pid < 0 {
                return false;
            }
            let code = match libc::WIFEXITED(status) {
                true => libc::WEXITSTATUS(status),
                false => 128 + libc::WTERMSIG(status),
            };
            if pid as u32 == self.child.id() {
                self.cmd_status = Some(code);
            } else {
                self.reaped.push(format!("reaped {pid} exit {code}"));
            }
        }
    }
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull-testbed-console: {e:#}");
            std::process::exit(2);
        }
    }
}
