//! Cgroups: where a container's cgroup lives on this host, creating it, setting
//! `linux.resources`, joining it, freezing, statistics and removal.
//!
//! Three host layouts are handled: unified (cgroup2 only), legacy v1, and hybrid (v1
//! controllers plus a cgroup2 hierarchy at /sys/fs/cgroup/unified). Like runc's `fs`
//! driver hull writes the cgroup files itself; systemd is not asked.
//!
//! Order of use: `resolve` → `create` (parent, before the fork) → `add_task(child pid)`
//! before the child unshares its cgroup namespace → ... → `destroy` after every process
//! of the container is gone.

mod devices;
mod error;
mod fs;
mod group;
mod path;
mod rootless;
mod stats;
mod stats_parse;
mod unset;
mod v1;
mod v2;
mod v2_devices;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use error::CgroupError;
use fs::{collect_pids, mkdir_recording, remove_leaf, remove_shared};
pub(crate) use fs::{read, read_opt, write, write_if_exists};
pub(crate) use group::Group;
pub use rootless::NotDelegated;
pub use stats::{
    Blkio, BlkioEntry, Cpu, CpuSet, CpuUsage, Hugetlb, IntelRdt, Memory, MemoryEntry,
    NetworkInterface, Pids, Psi, PsiData, Stats, Throttling,
};

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Legacy: one hierarchy per controller (group).
    V1,
    /// Unified: one cgroup2 hierarchy.
    V2,
    /// v1 controllers plus a cgroup2 hierarchy at /sys/fs/cgroup/unified.
    Hybrid,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
            CgroupVersion::Hybrid => "hybrid",
        })
    }
}

/// The container's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// As /proc/self/cgroup names it: "cpu,cpuacct", "name=systemd"; "" for cgroup2.
    controllers: String,
    /// Where the hierarchy is mounted, e.g. /sys/fs/cgroup/memory.
    mount: PathBuf,
    /// The container's directory, e.g. /sys/fs/cgroup/memory/hull/c1.
    dir: PathBuf,
    /// The container's path inside the hierarchy, e.g. /hull/c1.
    path: String,
    /// Directories `create` made, parents first; `destroy` removes exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    created: Vec<PathBuf>,
}

impl Hierarchy {
    /// "cpu,cpuacct", "name=systemd", or "" for the cgroup2 hierarchy.
    pub fn controllers(&self) -> &str {
        &self.controllers
    }
    /// The hierarchy's mount point on the host.
    pub fn mount_point(&self) -> &Path {
        &self.mount
    }
    /// The container's cgroup directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The container's path inside this hierarchy.
    pub fn path(&self) -> &str {
        &self.path
    }
    fn has(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

/// A container's cgroup across all hierarchies of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    version: CgroupVersion,
    /// v1 hierarchies (empty on unified hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    v1: Vec<Hierarchy>,
    /// The cgroup2 hierarchy (unified hosts, and the v2 half of hybrid ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unified: Option<Hierarchy>,
}

/// The `oom_kill` count in the text of an [`oom_kills_file`](Cgroup::oom_kills_file)
/// (memory.events or memory.oom_control); 0 where it has none.
pub fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroup {
    /// Resolve where the container's cgroup lives from `linux.cgroupsPath` (None or empty:
    /// the container id, relative). Absolute paths start at each hierarchy's root, relative
    /// ones at hull's own cgroup in that hierarchy, like runc's fs driver.
    pub fn resolve(cgroups_path: Option<&str>, id: &str) -> Result<Cgroup, CgroupError> {
        let mountinfo = read_host("/proc/self/mountinfo")?;
        let own = read_host("/proc/self/cgroup")?;
        path::detect(&mountinfo, &own)?.place(cgroups_path, id)
    }

    /// Create the directories and apply `resources`. On failure, whatever this call
    /// created is removed again before the error is returned.
    /// Records, before anything is made, the directories `create` will make (those
    /// missing now, parents first), so that the caller can save that record first: a
    /// hull killed half-way through `create` then leaves nothing `destroy` cannot find.
    pub fn plan_dirs(&mut self) {
        for h in self.all_mut() {
            let mut missing = Vec::new();
            let mut cur = h.dir.clone();
            while cur != h.mount && !cur.exists() {
                missing.push(cur.clone());
                match cur.parent() {
                    Some(p) => cur = p.to_path_buf(),
                    None => break,
                }
            }
            missing.reverse();
            h.created = missing;
        }
    }

    pub fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let resources = resources.map(unset::zero_means_unset);
        let result = self.create_inner(resources.as_ref());
        if result.is_err() {
            match self.destroy() {
                Ok(()) => self.all_mut().for_each(|h| h.created.clear()),
                // Keep the record so a later destroy can finish the job.
                Err(e) => tracing::warn!(error = %e, "undoing a failed cgroup create"),
            }
        }
        result
    }

    fn create_inner(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        for h in self.all_mut() {
            mkdir_recording(h)?;
        }
        if let Some(h) = self.v1.iter().find(|h| h.has("cpuset")) {
            v1::inherit_cpuset(h)?;
        }
        if self.version == CgroupVersion::V2 {
            if let Some(u) = &self.unified {
                let required = resources.map(v2::required_controllers).transpose()?;
                v2::enable(
                    u,
                    &required.unwrap_or_default(),
                    v2::ACCOUNTING,
                    self.version,
                )?;
            }
        }
        match resources {
            Some(r) => self.apply_inner(r),
            None => Ok(()),
        }
    }

    /// Join `pid` to the container's cgroup in every hierarchy (on hybrid hosts also the
    /// unified one, as runc does).
    pub fn add_task(&self, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for h in self.all() {
            write(&h.dir, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// Set `resources` (also used by `hull update` on a running container).
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let resources = &unset::zero_means_unset(resources);
        if self.version == CgroupVersion::V2 {
            if let Some(u) = &self.unified {
                v2::enable(u, &v2::required_controllers(resources)?, &[], self.version)?;
            }
        }
        self.apply_inner(resources)
    }

    fn apply_inner(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2 {
            let u = self.unified()?;
            for g in Group::ALL {
                if g.is_set(r) {
                    v2::set(*g, u, r, self.version)?;
                }
            }
            return v2::set_unified(u, r);
        }
        for g in Group::ALL {
            if !g.is_set(r) {
                continue;
            }
            if let Some(h) = self.v1.iter().find(|h| h.has(g.v1_controller())) {
                v1::set(*g, &h.dir, r)?;
            } else if let (Some(u), Some(c)) = (&self.unified, g.v2_controller()) {
                // Hybrid: the controller may live in the v2 half (hugetlb on some hosts).
                if !c.is_empty() {
                    v2::enable(u, &[c.to_string()], &[], self.version)?;
                }
                v2::set(*g, u, r, self.version)?;
            } else {
                return Err(CgroupError::ControllerMissing {
                    controller: g.v1_controller().to_string(),
                    field: g.field(),
                    layout: self.version,
                });
            }
        }
        match (&self.unified, r.unified()) {
            (Some(u), Some(map)) if !map.is_empty() => {
                v2::enable(u, &v2::unified_controllers(map)?, &[], self.version)?;
                v2::set_unified(u, r)
            }
            (None, Some(map)) if !map.is_empty() => Err(CgroupError::Unsupported {
                field: "unified",
                layout: self.version,
                reason: "the host has no cgroup2 hierarchy",
            }),
            _ => Ok(()),
        }
    }

    /// Freeze every process of the container and wait until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => v1::set_frozen(dir, true),
            Freezer::V2(dir) => v2::set_frozen(dir, true),
        }
    }

    /// Undo `freeze`.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => v1::set_frozen(dir, false),
            Freezer::V2(dir) => v2::set_frozen(dir, false),
        }
    }

    /// Whether the container is (completely) frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => v1::is_frozen(dir),
            Freezer::V2(dir) => v2::is_frozen(dir),
        }
    }

    /// Every process in the container's cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        if self.is_empty() {
            return Err(CgroupError::NoCgroup {
                what: "listing its processes",
            });
        }
        let dir = match self.version {
            CgroupVersion::V2 => &self.unified()?.dir,
            _ => {
                let pick = ["freezer", "pids", "devices", "memory", "cpu"]
                    .iter()
                    .find_map(|c| self.v1.iter().find(|h| h.has(c)));
                match pick.or(self.v1.first()) {
                    Some(h) => &h.dir,
                    None => &self.unified()?.dir,
                }
            }
        };
        let mut pids = Vec::new();
        collect_pids(dir, &mut pids)?;
        Ok(pids)
    }

    /// Resource usage, shaped like the "data" object of runc's `events --stats`.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        if self.is_empty() {
            return Err(CgroupError::NoCgroup {
                what: "resource usage",
            });
        }
        let mut s = Stats::default();
        if self.version == CgroupVersion::V2 {
            stats::read_v2(&self.unified()?.dir, &mut s)?;
            return Ok(s);
        }
        stats::read_v1(&self.v1, &mut s)?;
        let v1_hugetlb = self.v1.iter().any(|h| h.has("hugetlb"));
        if let (false, Some(u)) = (v1_hugetlb, &self.unified) {
            stats::read_v2_hugetlb(&u.dir, &mut s)?;
        }
        Ok(s)
    }

    /// How many times the kernel's OOM killer has killed a task of this cgroup:
    /// memory.events (v2) or memory.oom_control (v1, kernels since 4.13); 0 where
    /// neither says.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(file) = self.oom_kills_file()? else {
            return Ok(0);
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(CgroupError::Read { path: file, source }),
        };
        Ok(oom_kill_count(&text))
    }

    /// The file whose `oom_kill` line counts the OOM killer's kills (memory.events on
    /// v2, which poll(2) reports with POLLPRI when it changes); None without a memory
    /// controller.
    pub fn oom_kills_file(&self) -> Result<Option<PathBuf>, CgroupError> {
        if self.is_empty() {
            Ok(None)
        } else if self.version == CgroupVersion::V2 {
            Ok(Some(self.unified()?.dir.join("memory.events")))
        } else {
            Ok(self
                .v1
                .iter()
                .find(|h| h.has("memory"))
                .map(|h| h.dir.join("memory.oom_control")))
        }
    }

    /// Remove the directories `create` made, deepest first. A cgroup whose tasks are still
    /// leaving is retried for about a second; a missing directory is fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        // One deadline for all hierarchies: a busy cgroup is busy in each of them.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut first_err = None;
        for h in self.all() {
            for (i, dir) in h.created.iter().enumerate().rev() {
                let leaf = i + 1 == h.created.len() && *dir == h.dir;
                let r = if leaf {
                    remove_leaf(dir, deadline)
                } else {
                    remove_shared(dir)
                };
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The host's cgroup layout.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The container's path inside the hierarchy (what /proc/<pid>/cgroup shows): the
    /// cgroup2 one where there is one, else the first v1 hierarchy's. With a relative
    /// `cgroupsPath` v1 hierarchies may differ; see `hierarchies`.
    pub fn path(&self) -> &str {
        self.unified
            .as_ref()
            .or(self.v1.first())
            .map_or("/", |h| h.path.as_str())
    }

    /// Every hierarchy the container joins: the v1 ones, then the cgroup2 one.
    pub fn hierarchies(&self) -> impl Iterator<Item = &Hierarchy> {
        self.all()
    }

    fn all(&self) -> impl Iterator<Item = &Hierarchy> {
        self.v1.iter().chain(self.unified.iter())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Hierarchy> {
        self.v1.iter_mut().chain(self.unified.iter_mut())
    }

    fn unified(&self) -> Result<&Hierarchy, CgroupError> {
        self.unified.as_ref().ok_or(CgroupError::NotMounted)
    }

    fn freezer(&self) -> Result<Freezer<'_>, CgroupError> {
        if self.is_empty() {
            return Err(CgroupError::NoCgroup {
                what: "pause and resume (the freezer)",
            });
        }
        if let Some(h) = self.v1.iter().find(|h| h.has("freezer")) {
            return Ok(Freezer::V1(&h.dir));
        }
        // cgroup2 freezes without a controller, also in the v2 half of a hybrid host.
        match &self.unified {
            Some(u) => Ok(Freezer::V2(&u.dir)),
            None => Err(CgroupError::NoFreezer {
                layout: self.version,
            }),
        }
    }
}

enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

fn read_host(path: &'static str) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::HostInfo { path, source })
}
