//! `hull pause` / `hull resume`: the freezer.

use std::path::Path;

use super::Container;
use crate::error::Result;
use crate::state::Status;

pub fn pause(root: &Path, id: &str) -> Result<()> {
    pause_container(&Container::load(root, id)?)
}

pub fn pause_container(c: &Container) -> Result<()> {
    c.require("pause", &[Status::Running, Status::Created])?;
    Ok(c.state.cgroup.freeze()?)
}

pub fn resume(root: &Path, id: &str) -> Result<()> {
    resume_container(&Container::load(root, id)?)
}

pub fn resume_container(c: &Container) -> Result<()> {
    c.require("resume", &[Status::Paused])?;
    Ok(c.state.cgroup.thaw()?)
}
