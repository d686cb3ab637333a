//! The six hook kinds of config.json. Each hook gets the container's state JSON on stdin
//! and is killed when its timeout passes.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

pub fn run_all(kind: &'static str, hooks: Option<&Vec<Hook>>, state: &[u8]) -> Result<()> {
    for (i, h) in hooks.into_iter().flatten().enumerate() {
        run(h, state).map_err(|reason| Error::Hook {
            kind,
            index: i,
            path: h.path().clone(),
            reason,
        })?;
    }
    Ok(())
}

fn run(h: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    // A hook must not outlive a hull that was killed while waiting for it.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state);
    }
    let status = match h.timeout() {
        Some(t) if t <= 0 => return Err(format!("timeout {t} must be positive")),
        Some(t) => match wait_timeout(child.id() as i32, t) {
            Ok(true) => child.wait().map_err(|e| e.to_string())?,
            Ok(false) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {t} s"));
            }
            Err(e) => return Err(e),
        },
        None => child.wait().map_err(|e| e.to_string())?,
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}

/// Waits up to `secs` for `pid` to exit without reaping it.
fn wait_timeout(pid: i32, secs: i64) -> std::result::Result<bool, String> {
    let fd = crate::signal::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = (secs.saturating_mul(1000)).min(i32::MAX as i64) as i32;
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
}
