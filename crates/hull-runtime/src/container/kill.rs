//! `hull kill`: signal the init through a pidfd (a reused pid is never signalled), or
//! with `--all` every process of the container's cgroup.

use std::path::Path;

use nix::sys::signal::{kill as kill_pid, Signal};
use nix::unistd::Pid;

use super::Container;
use crate::error::{Error, Result};
use crate::signal::{pidfd_open, pidfd_send};
use crate::state::Status;

pub fn kill(root: &Path, id: &str, signal: i32, all: bool) -> Result<()> {
    kill_container(&Container::load(root, id)?, signal, all)
}

pub fn kill_container(c: &Container, signal: i32, all: bool) -> Result<()> {
    let status = c.require("kill", &[Status::Created, Status::Running, Status::Paused])?;
    if all {
        return signal_all(c, signal, status == Status::Paused);
    }
    signal_init(c, signal)
}

/// Signals the init; errors if the recorded pid now belongs to another process.
pub(crate) fn signal_init(c: &Container, signal: i32) -> Result<()> {
    let pidfd = pidfd_open(c.state.pid).map_err(|_| Error::WrongState {
        id: c.id().into(),
        action: "kill",
        status: Status::Stopped,
    })?;
    // Checked after the pidfd pins the process: the start time proves it is our init.
    if !c.state.init_alive() {
        return Err(Error::WrongState {
            id: c.id().into(),
            action: "kill",
            status: Status::Stopped,
        });
    }
    pidfd_send(&pidfd, signal).map_err(|source| Error::Signal {
        id: c.id().into(),
        signal,
        source,
    })
}

/// Every process of the cgroup, frozen while signalled so none can fork away (as runc).
pub(crate) fn signal_all(c: &Container, signal: i32, paused: bool) -> Result<()> {
    let cg = &c.state.cgroup;
    if !paused {
        let _ = cg.freeze();
    }
    let pids = super::procs::of(c);
    if let Ok(pids) = &pids {
        for &p in pids {
            // SAFETY: kill(2) with a raw signal number (real-time signals have no Signal).
            unsafe { libc::kill(p, signal) };
        }
    }
    // A SIGKILLed frozen task dies only once thawed; a paused container stays paused.
    if !paused || signal == Signal::SIGKILL as i32 {
        let _ = cg.thaw();
    }
    pids.map(drop)
}

/// SIGKILL everything and wait (bounded) until the init is gone.
pub(crate) fn kill_and_wait(c: &Container) {
    let _ = signal_all(c, Signal::SIGKILL as i32, true);
    if c.state.init_alive() {
        let _ = kill_pid(Pid::from_raw(c.state.pid), Signal::SIGKILL);
    }
    if let Ok(fd) = pidfd_open(c.state.pid) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(2000u16));
    }
    // Reap it if it is our child (`hull run` as subreaper).
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(c.state.pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}
