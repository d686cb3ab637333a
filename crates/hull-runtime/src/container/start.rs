//! `hull start`: release the init waiting on the exec fifo, then run poststart hooks.

use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use super::Container;
use crate::error::{Error, Result};
use crate::hooks;
use crate::state::Status;

pub fn start(root: &Path, id: &str) -> Result<()> {
    start_container(Container::load(root, id)?)
}

pub fn start_container(mut c: Container) -> Result<()> {
    c.require("start", &[Status::Created])?;
    let fifo_path = c.dir.fifo();
    // Non-blocking open: a reader needs no writer; the init opens its end when ready.
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        what: "cannot open exec fifo (was the container already started?)",
        path: fifo_path.clone(),
        source: e.into(),
    })?;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => {
                if !c.state.init_alive() {
                    return Err(Error::Child(
                        "the container's init exited before it could be started".into(),
                    ));
                }
            }
            Ok(_) => {
                let mut b = [0u8; 1];
                match nix::unistd::read(&fifo, &mut b) {
                    Ok(1) => break,
                    Ok(_) | Err(nix::Error::EAGAIN) => {
                        if !c.state.init_alive() {
                            return Err(Error::Child(
                                "the container's init exited before it could be started".into(),
                            ));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => return Err(Error::Sync(e.into())),
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::Sync(e.into())),
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    c.state.started = true;
    c.dir.mark_started()?;
    wait_for_exec(&fifo)?;
    poststart(&c);
    Ok(())
}

/// The init holds its end of the fifo until execve closes it: end-of-file means the
/// user's program has replaced hull. An init whose startContainer hook failed writes a
/// byte first. (Whether the init is still alive says nothing: a program that exits at
/// once may already have been reaped by the engine's subreaper.)
fn wait_for_exec(fifo: &std::os::fd::OwnedFd) -> Result<()> {
    let _ = nix::fcntl::fcntl(fifo, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
    let mut b = [0u8; 16];
    let mut failed = false;
    loop {
        match nix::unistd::read(fifo, &mut b) {
            Ok(0) => break,
            Ok(_) => failed = true,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::Sync(e.into())),
        }
    }
    if failed {
        return Err(Error::Child(
            "the container's init exited before running the process: a startContainer hook failed"
                .into(),
        ));
    }
    Ok(())
}

/// Poststart hooks run after the user's process started; a failure is logged, not fatal
/// (runtime-spec: the lifecycle continues as if the hook had succeeded).
pub fn poststart(c: &Container) {
    let json = c.oci_json(Status::Running);
    let h = c.state.config.hooks().as_ref();
    if let Err(e) = hooks::run_all(
        "poststart",
        h.and_then(|h| h.poststart().as_ref()),
        json.as_bytes(),
    ) {
        tracing::warn!("{e}");
        eprintln!("hull: warning: {e}");
    }
}
