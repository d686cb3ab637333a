//! The engine's end of `--console-socket`: receiving the pty master, reading it.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::fs::File;
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

/// Receives one fd sent with SCM_RIGHTS on the first connection to `listener`.
pub fn receive_fd(listener: &UnixListener) -> File {
    listener.set_nonblocking(false).unwrap();
    let (stream, _) = listener
        .accept()
        .expect("runtime connects to the console socket");
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg on the console socket");
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us and nothing else owns it.
                return unsafe { File::from_raw_fd(fd) };
            }
        }
    }
    panic!("expected an SCM_RIGHTS fd on the console socket");
}

/// Reads the pty master until the slave side closes (EIO) or `timeout`.
pub fn read_master(master: &mut File, timeout: Duration) -> String {
    let fd = master.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "pty never closed; got {:?}",
                    String::from_utf8_lossy(&out)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read pty master: {e}"),
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Runs the shell command `command` on a fresh pty (util-linux `script`), as a user at
/// a terminal would; its exit code, and what the terminal showed. script's input stays
/// open until the command is done: at its end script would close the terminal under
/// the command (a hang-up, and another exit code, now and then).
pub fn on_a_terminal(command: &str, env: &[(&str, &std::path::Path)]) -> (Option<i32>, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("script");
    cmd.args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("script (util-linux)");
    let input = child.stdin.take();
    let mut shown = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    let status = child.wait().unwrap();
    drop(input);
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    (status.code(), shown + &stderr)
}
