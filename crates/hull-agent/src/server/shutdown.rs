//! The agent's way out: Ctrl-Alt-Del's stop of the containers, their deletion, and the
//! wait for the host to have the shutdown reply before the guest powers off.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{Server, CAD_GRACE};
use crate::containers::Key;

impl Server {
    /// The reply to Shutdown is written, but on vsock it is only queued: the guest's
    /// driver sends from a workqueue, and a reboot right after `write` can end the VM
    /// before it runs, so the host never gets the reply (2 runs in 4, then 3 in 3, of
    /// `hull run --isolation vm` under hull-vmm exited 1 with "the agent went away
    /// before answering shutdown"). The host hangs up once it has the reply; until then
    /// (at most `limit`) the agent does not power off. Anything else it sends is dropped.
    pub(super) fn wait_for_hangup(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "the host did not hang up within {limit:?} of the shutdown reply; powering off"
                );
                return;
            }
            let mut fds = [PollFd::new(self.host.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::from(left.as_millis().min(u16::MAX as u128) as u16);
            match poll(&mut fds, ms) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
                Ok(_) => {}
                Err(_) => return,
            }
            match self.host.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Ctrl-Alt-Del: SIGTERM to every process of every container, once.
    pub(super) fn stop_containers(&mut self) {
        if self.stopping_until.is_some() {
            return;
        }
        tracing::info!(
            "Ctrl-Alt-Del: asking the containers to stop (SIGTERM, SIGKILL after {} s)",
            CAD_GRACE.as_secs()
        );
        self.stopping_until = Some(Instant::now() + CAD_GRACE);
        let inits: Vec<Key> = self
            .sandbox
            .procs
            .iter()
            .filter(|(k, p)| k.1.is_none() && p.exit.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in inits {
            if let Err(e) = self.sandbox.signal(&key, libc::SIGTERM, true) {
                tracing::warn!("Ctrl-Alt-Del: SIGTERM to container {}: {e:#}", key.0);
            }
        }
    }

    pub(super) fn stop_all(&mut self) {
        for id in self.sandbox.ids() {
            if let Err(e) = self.sandbox.delete(&id, true) {
                tracing::warn!("shutdown: delete {id}: {e:#}");
            }
        }
    }
}
