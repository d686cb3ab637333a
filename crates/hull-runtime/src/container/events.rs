//! `hull events`: resource usage as runc prints it, once (`--stats`) or every interval
//! until the container stops.

use std::path::Path;

use serde::Serialize;

use super::Container;
use crate::cgroups::Stats;
use crate::error::Result;
use crate::state::Status;

#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Stats>,
}

pub fn stats(root: &Path, id: &str) -> Result<String> {
    stats_of(&Container::load(root, id)?)
}

pub fn stats_of(c: &Container) -> Result<String> {
    c.require(
        "events",
        &[Status::Created, Status::Running, Status::Paused],
    )?;
    event_json(c)
}

fn event_json(c: &Container) -> Result<String> {
    let data = c.state.cgroup.stats()?;
    Ok(serde_json::to_string(&Event {
        kind: "stats",
        id: c.id(),
        data: Some(data),
    })
    .unwrap_or_default())
}
