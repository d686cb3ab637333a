//! One file per verb, as youki lays it out: a reader finds `hull kill` in kill.rs.

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod kill;
pub mod list;
pub mod pause;
pub mod procs;
pub mod ps;
pub mod run;
pub mod start;
pub mod supervise;
pub mod update;

use std::path::Path;

use crate::error::{Error, Result};
use crate::state::{ContainerState, StateDir, Status};

/// A container that exists in the state directory.
#[derive(Debug)]
pub struct Container {
    pub dir: StateDir,
    pub state: ContainerState,
}

impl Container {
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        crate::spec::validate_id(id)?;
        let dir = StateDir::new(root, id);
        let state = dir.load(id)?;
        Ok(Container { dir, state })
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The live status: what the kernel says now, not what was last written.
    pub fn status(&self) -> Status {
        let s = &self.state;
        if s.pid == 0 {
            // Still being created, unless the creating process died on the way.
            return if creator_alive(s) {
                Status::Creating
            } else {
                Status::Stopped
            };
        }
        if matches!(s.init_stat(), None | Some('Z')) {
            return Status::Stopped;
        }
        // A VM container's processes are frozen in the guest; the host cgroup holds
        // the proxy and the VMM, which keep running.
        let paused = match s.isolation {
            crate::state::Isolation::Namespace => s.cgroup.is_frozen().unwrap_or(false),
            crate::state::Isolation::Vm => self.dir.path.join(crate::state::PAUSED_MARK).exists(),
        };
        if paused {
            return Status::Paused;
        }
        if s.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    /// The state JSON given to hooks and printed by `hull state`.
    pub fn oci_json(&self, status: Status) -> String {
        serde_json::to_string(&self.state.oci(status)).unwrap_or_default()
    }

    pub fn require(&self, action: &'static str, allowed: &[Status]) -> Result<Status> {
        let status = self.status();
        if allowed.contains(&status) {
            Ok(status)
        } else {
            Err(Error::WrongState {
                id: self.id().to_string(),
                action,
                status,
            })
        }
    }
}

fn creator_alive(s: &ContainerState) -> bool {
    s.creator
        .is_some_and(|(pid, start)| crate::state::process_start_time(pid) == Some(start))
}
