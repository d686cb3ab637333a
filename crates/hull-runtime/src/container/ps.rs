//! `hull ps`: the processes in the container's cgroup.

use std::path::Path;

use super::Container;
use crate::error::Result;
use crate::state::Status;

pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    pids_of(&Container::load(root, id)?)
}

pub fn pids_of(c: &Container) -> Result<Vec<i32>> {
    c.require("ps", &[Status::Created, Status::Running, Status::Paused])?;
    let mut p = super::procs::of(c)?;
    p.sort_unstable();
    Ok(p)
}
