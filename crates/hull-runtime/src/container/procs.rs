//! The processes of a container: those of its cgroup, or, for a container without one
//! (created rootless with nothing delegated), those of its pid namespace.

use std::path::Path;

use nix::sched::CloneFlags;

use super::Container;
use crate::cgroups::CgroupError;
use crate::error::Result;
use crate::namespaces::Plan;

/// Every process of the container, as host pids.
pub fn of(c: &Container) -> Result<Vec<i32>> {
    match c.state.cgroup.pids() {
        Err(CgroupError::NoCgroup { .. }) => Ok(in_pid_namespace(c)),
        r => Ok(r?),
    }
}

/// Without a cgroup a container with its own pid namespace still has a set of
/// processes the kernel keeps: those whose pid namespace is the init's. One that shares
/// another's pid namespace is only known by its init.
fn in_pid_namespace(c: &Container) -> Vec<i32> {
    let init = c.state.pid;
    let plan = Plan::from_linux(c.state.config.linux().as_ref());
    let own_pidns = plan.new.contains(CloneFlags::CLONE_NEWPID);
    let ns = |pid: &str| std::fs::read_link(Path::new("/proc").join(pid).join("ns/pid")).ok();
    let Some(init_ns) = ns(&init.to_string()) else {
        return Vec::new();
    };
    if !own_pidns {
        return vec![init];
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![init];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|p| ns(&p.to_string()).as_ref() == Some(&init_ns))
        .collect()
}
