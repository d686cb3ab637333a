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

/// One look at a container: its `events --stats` line, and its OOM kills so far (which
/// `events` reports as runc does, an "oom" event each time the count grows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub json: String,
    pub oom_kills: u64,
}

pub fn sample(root: &Path, id: &str) -> Result<Sample> {
    sample_of(&Container::load(root, id)?)
}

pub fn sample_of(c: &Container) -> Result<Sample> {
    let json = stats_of(c)?;
    let oom_kills = c.state.cgroup.oom_kills()?;
    Ok(Sample { json, oom_kills })
}

/// runc's OOM event line.
pub fn oom_event(id: &str) -> String {
    serde_json::to_string(&Event {
        kind: "oom",
        id,
        data: None,
    })
    .unwrap_or_default()
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
