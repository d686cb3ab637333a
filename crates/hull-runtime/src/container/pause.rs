//! `hull pause` / `hull resume`: the freezer.

use std::path::Path;

use super::Container;
use crate::error::Result;
use crate::state::Status;

pub fn pause(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.require("pause", &[Status::Running, Status::Created])?;
    Ok(c.state.cgroup.freeze()?)
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.require("resume", &[Status::Paused])?;
    Ok(c.state.cgroup.thaw()?)
}
