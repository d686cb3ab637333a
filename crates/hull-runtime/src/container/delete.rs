//! `hull delete`: remove a stopped (or, with --force, any) container: processes, cgroup,
//! state directory, then the poststop hooks.

use std::path::Path;

use super::{kill, Container};
use crate::error::{Error, Result};
use crate::hooks;
use crate::state::{StateDir, Status};

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    match load_for_delete(root, id, force)? {
        Some(c) => delete_container(&c, force),
        None => Ok(()),
    }
}

/// The container `delete` acts on; None when `force` made what could not be loaded a
/// finished deletion, whatever the isolation.
pub fn load_for_delete(root: &Path, id: &str, force: bool) -> Result<Option<Container>> {
    match Container::load(root, id) {
        Ok(c) => Ok(Some(c)),
        // A state dir without a readable state.json (hull killed mid-create) is removable.
        Err(Error::CorruptState { .. }) if force => StateDir::new(root, id).remove().map(|()| None),
        // `delete --force` of what is not there is done already (runc exits 0 too).
        Err(Error::NotFound(_)) if force => {
            crate::spec::validate_id(id)?;
            StateDir::new(root, id).remove().map(|()| None)
        }
        Err(e) => Err(e),
    }
}

/// `delete` of a container the caller has loaded.
pub fn delete_container(c: &Container, force: bool) -> Result<()> {
    let status = c.status();
    match status {
        Status::Stopped => {}
        // runtime-spec: deleting a container that is not stopped is an error (runc
        // deletes created ones anyway; the validation suite checks the spec's rule).
        Status::Creating | Status::Created | Status::Running | Status::Paused if force => {
            kill::kill_and_wait(c)
        }
        _ => {
            return Err(Error::NotStopped {
                id: c.id().into(),
                status,
            })
        }
    }
    destroy(c)
}

/// Tears down what a container left and runs poststop hooks.
pub fn destroy(c: &Container) -> Result<()> {
    // Orphans of the container (with no pid namespace) may still be in its cgroup.
    if let Ok(pids) = c.state.cgroup.pids() {
        if !pids.is_empty() {
            kill::kill_and_wait(c);
        }
    }
    let cg = c.state.cgroup.destroy();
    let dir = c.dir.remove();
    let json = c.oci_json(Status::Stopped);
    let h = c.state.config.hooks().as_ref();
    if let Err(e) = hooks::run_all(
        "poststop",
        h.and_then(|h| h.poststop().as_ref()),
        json.as_bytes(),
    ) {
        // runtime-spec: a failing poststop hook is a warning; deletion goes on.
        tracing::warn!("{e}");
        eprintln!("hull: warning: {e}");
    }
    cg?;
    dir
}

/// For a caller that still holds a half-started container: kill, then destroy.
pub fn destroy_after_kill(c: &Container) -> Result<()> {
    kill::kill_and_wait(c);
    destroy(c)
}
