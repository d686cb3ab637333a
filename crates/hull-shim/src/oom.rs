//! OOM kills, for TaskOOM (CRI's OOMKilled reason comes from it). A namespace
//! container's cgroup is on this host: its kill count is read from cgroupfs (memory.events
//! on v2, memory.oom_control on v1), at each look of the shim's poller and at the init's
//! exit, before TaskExit. A VM container's cgroup is in the guest: `hull events` reports
//! its kills as runc's "oom" lines while the container runs.

use std::path::PathBuf;

/// Where the memory controller's hierarchy is mounted: (mount point, cgroup v2?).
fn memory_hierarchy() -> Option<(PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut unified = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let (fstype, opts) = (fields.get(sep + 1)?, fields.get(sep + 3).unwrap_or(&""));
        if *fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
            return Some((PathBuf::from(fields[4]), false));
        }
        if *fstype == "cgroup2" {
            unified = Some(PathBuf::from(fields[4]));
        }
    }
    unified.map(|p| (p, true))
}

/// The OOM kills so far in the cgroup at `cgroups_path` (absolute, cgroupfs).
pub fn kills(cgroups_path: &str) -> Option<u64> {
    let (mount, v2) = memory_hierarchy()?;
    let dir = mount.join(cgroups_path.trim_start_matches('/'));
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok())?
    })
}

/// One line of `hull events` is an OOM kill.
pub fn is_oom_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"] == "oom")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_lines() {
        assert!(is_oom_line(r#"{"type":"oom","id":"c"}"#));
        assert!(!is_oom_line(r#"{"type":"stats","id":"c","data":{}}"#));
    }
}
