//! The shim is the subreaper of what `hull` leaves running (a container's init, a VM's
//! proxy, an exec's process or its stand-in) and the parent of every `hull` command it
//! runs, so one thread reaps them all: `waitpid(-1)` would otherwise steal a command's
//! status from whoever waits for it. A command is spawned under the lock the reaper
//! holds while it reaps, so its exit is always recognised as a command's; every other
//! exit goes to the exit channel.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// A process that is not a `hull` command has exited.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: i32,
    /// The exit code, or 128 + the signal that ended it.
    pub status: i32,
    pub at: SystemTime,
}

pub struct Reaper {
    /// The running and finished `hull` commands: pid -> status once reaped.
    commands: Mutex<HashMap<i32, Option<i32>>>,
    done: Condvar,
    exits: Mutex<Sender<Exit>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder leaves data that is still consistent for our uses.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reaper {
    pub fn new(exits: Sender<Exit>) -> Arc<Reaper> {
        Arc::new(Reaper {
            commands: Mutex::new(HashMap::new()),
            done: Condvar::new(),
            exits: Mutex::new(exits),
        })
    }

    /// Spawns a command whose exit `wait` returns. Never wait on the `Child` itself.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        let mut commands = lock(&self.commands);
        let child = cmd.spawn()?;
        commands.insert(child.id() as i32, None);
        Ok(child)
    }

    /// The exit status of a command started with `spawn`.
    pub fn wait(&self, pid: u32) -> i32 {
        let pid = pid as i32;
        let mut commands = lock(&self.commands);
        loop {
            match commands.get(&pid) {
                Some(Some(status)) => {
                    let status = *status;
                    commands.remove(&pid);
                    return status;
                }
                Some(None) => {
                    commands = self.done.wait(commands).unwrap_or_else(|e| e.into_inner())
                }
                None => return -1,
            }
        }
    }

    /// Reaps every child that has exited; run on each SIGCHLD.
    fn reap(&self) {
        let mut commands = lock(&self.commands);
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            match commands.get(&pid) {
                Some(_) => {
                    commands.insert(pid, Some(status));
                    self.done.notify_all();
                }
                None => {
                    let exit = Exit {
                        pid,
                        status,
                        at: SystemTime::now(),
                    };
                    let _ = lock(&self.exits).send(exit);
                }
            }
        }
    }
}

/// The signals the reaper thread takes: SIGCHLD, and the ones the shim ignores (as Go
/// shims do: containerd ends a shim through Shutdown, never by a signal).
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread; threads spawned afterwards inherit
/// the mask, so only `run`'s `sigwait` sees them. (Children get a clean mask: std's
/// spawn resets it.)
pub fn block_signals() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// The reaper thread's loop.
pub fn run(reaper: Arc<Reaper>) {
    let set = handled();
    // A child may have exited before the first sigwait.
    reaper.reap();
    loop {
        // The others are ignored, as Go shims ignore them.
        if let Ok(Signal::SIGCHLD) = set.wait() {
            reaper.reap();
        }
    }
}
