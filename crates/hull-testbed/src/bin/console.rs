//! `hull-testbed-console SOCKET SIZE [WHEN=SIZE]...`: an engine's end of
//! `--console-socket`, for checks in L1, where no test harness runs. It listens on
//! SOCKET, takes the pty master that hull sends, sets the window to SIZE (`ROWSxCOLS`),
//! and, each time the container's output first contains WHEN, sets the next size: a
//! resize while the container runs. It prints what the pty gave until the container
//! closed it (or 120 s), and exits 0, or 1 when a size was never asked for.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
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
    let [socket, first, rest @ ..] = args.as_slice() else {
        bail!("usage: hull-testbed-console SOCKET ROWSxCOLS [WHEN=ROWSxCOLS]...");
    };
    let mut later = Vec::new();
    for r in rest {
        let (when, s) = r.split_once('=').context("say WHEN=ROWSxCOLS")?;
        later.push((when.to_string(), size(s)?));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).with_context(|| format!("bind {socket}"))?;
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
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    let mut later = later.into_iter().peekable();
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
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
        if let Some((when, ws)) = later.peek() {
            if String::from_utf8_lossy(&out).contains(when.as_str()) {
                set_size(&master, ws)?;
                later.next();
            }
        }
    }
    let _ = std::fs::remove_file(socket);
    std::io::stdout().write_all(&out)?;
    Ok(if later.peek().is_some() { 1 } else { 0 })
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
