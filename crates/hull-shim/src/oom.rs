//! OOM kills, for TaskOOM (CRI's OOMKilled reason comes from it), read at each look of
//! the shim's poller and at the init's exit, before TaskExit. A namespace container's
//! cgroup is on this host: its kill count is read from cgroupfs (memory.events on v2,
//! memory.oom_control on v1). A VM container's cgroup is in the guest: its proxy (or, for
//! a pod member, its stand-in) writes the count into the container's state directory as
//! the guest's agent reports each kill, and last before it exits.

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

/// The file in a VM container's state directory that holds its guest cgroup's OOM
/// kills (hull-sandbox's `OOM_KILLS`).
const VM_OOM_KILLS: &str = "oom-kills";

/// A VM container's OOM kills so far, from its state directory.
pub fn vm_kills(state_dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join(VM_OOM_KILLS))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_counts() {
        let dir = std::env::temp_dir().join(format!("hull-shim-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(vm_kills(&dir), None);
        std::fs::write(dir.join(VM_OOM_KILLS), "3\n").unwrap();
        assert_eq!(vm_kills(&dir), Some(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
