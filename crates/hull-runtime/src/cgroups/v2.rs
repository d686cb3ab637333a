//! cgroup v2: one hierarchy; controllers are enabled per level in cgroup.subtree_control.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::{
    read, read_opt, v1, v2_devices, write, write_if_exists, CgroupError, CgroupVersion, Group,
    Hierarchy,
};

/// Enabled on unified hosts when available even without a limit, so stats and `hull ps`
/// see memory, cpu, io, pids and hugetlb usage (runc enables every controller).
pub(crate) const ACCOUNTING: &[&str] = &["cpu", "io", "memory", "pids", "hugetlb"];

/// cgroup v2 has no "shares": map v1's 2..262144 onto cpu.weight's 1..10000 (as runc).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Map blkio weight 10..1000 onto io.weight 1..10000 (as runc).
pub(crate) fn blkio_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// The controllers the set fields of `r` need on a unified host.
pub(crate) fn required_controllers(r: &LinuxResources) -> Result<Vec<String>, CgroupError> {
    let mut out = Vec::new();
    for g in Group::ALL {
        if !g.is_set(r) {
            continue;
        }
        match g.v2_controller() {
            Some("") => {}
            Some(c) => out.push(c.to_owned()),
            None => {
                return Err(CgroupError::ControllerMissing {
                    controller: g.v1_controller().to_owned(),
                    field: g.field(),
                    layout: CgroupVersion::V2,
                })
            }
        }
    }
    if let Some(map) = r.unified() {
        out.extend(unified_controllers(map)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Controllers named by the keys of `linux.resources.unified` ("memory.high" → memory).
pub(crate) fn unified_controllers(
    map: &HashMap<String, String>,
) -> Result<Vec<String>, CgroupError> {
    let mut out = Vec::new();
    for key in map.keys() {
        if key.is_empty() || key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err(CgroupError::InvalidResource {
                field: "unified",
                reason: format!("{key:?} is not a cgroup file name like memory.high"),
            });
        }
        let c = key.split('.').next().unwrap_or_default();
        if c != "cgroup" && !out.iter().any(|o| o == c) {
            out.push(c.to_owned());
        }
    }
    Ok(out)
}

/// Make `required` (an error if impossible) and `optional` (where possible) controllers
/// available to `h`: write "+c" into the cgroup.subtree_control of each ancestor that
/// lacks them, from the hierarchy's root down. Nothing is ever disabled.
///
/// Reading subtree_control takes no lock: a controller another process is enabling
/// shows there before the kernel has made its files in the children (it does that
/// under cgroup_mutex, after). A create that found everything enabled then wrote
/// `cpu.weight` and got ENOENT (1 run in 6 of five VM pods started at once in the
/// nested test bed). So when nothing was written, the wanted controllers are written
/// to the parent once more: a no-op, but under cgroup_mutex, so it returns only after
/// any enabling in flight has made its files.
pub(crate) fn enable(
    h: &Hierarchy,
    required: &[String],
    optional: &[&str],
    layout: CgroupVersion,
) -> Result<(), CgroupError> {
    if required.is_empty() && optional.is_empty() {
        return Ok(());
    }
    let available = read(&h.mount, "cgroup.controllers")?;
    let available: Vec<&str> = available.split_whitespace().collect();
    if let Some(c) = required.iter().find(|c| !available.contains(&c.as_str())) {
        return Err(CgroupError::ControllerMissing {
            controller: c.clone(),
            field: field_for(c),
            layout,
        });
    }
    let mut optional: Vec<&str> = optional
        .iter()
        .copied()
        .filter(|c| available.contains(c) && !required.iter().any(|r| r == c))
        .collect();
    let levels = ancestors(h);
    let mut wrote = false;
    // The last level's subtree_control, as read: the parent's.
    let mut parent_enabled = String::new();
    for level in &levels {
        let level = level.as_path();
        parent_enabled = read(level, "cgroup.subtree_control")?;
        let enabled: Vec<&str> = parent_enabled.split_whitespace().collect();
        let missing_req: Vec<&str> = required
            .iter()
            .map(String::as_str)
            .filter(|c| !enabled.contains(c))
            .collect();
        let missing_opt: Vec<&str> = optional
            .iter()
            .copied()
            .filter(|c| !enabled.contains(c))
            .collect();
        if missing_req.is_empty() && missing_opt.is_empty() {
            continue;
        }
        let plus = |list: &[&str]| {
            list.iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let all: Vec<&str> = missing_req.iter().chain(&missing_opt).copied().collect();
        let Err(e) = write(level, "cgroup.subtree_control", &plus(&all)) else {
            wrote = true;
            continue;
        };
        if missing_opt.is_empty() {
            return Err(enable_error(e, level, &missing_req));
        }
        // An optional controller that cannot be had here cannot be had below either.
        tracing::debug!(level = %level.display(), error = %e, "accounting controllers not enabled");
        optional.clear();
        if !missing_req.is_empty() {
            write(level, "cgroup.subtree_control", &plus(&missing_req))
                .map_err(|e| enable_error(e, level, &missing_req))?;
            wrote = true;
        }
    }
    if let Some(parent) = levels.last().filter(|_| !wrote) {
        settle(parent, &parent_enabled, required, &optional);
    }
    Ok(())
}

/// Writes the wanted controllers that `parent` has `enabled` back to it (see `enable`).
/// Only a wait: a parent this process may not write (a rootless user's, above its
/// delegation) had everything enabled already, and the create goes on.
fn settle(parent: &Path, enabled: &str, required: &[String], optional: &[&str]) {
    let again: Vec<String> = enabled
        .split_whitespace()
        .filter(|c| required.iter().any(|r| r == c) || optional.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if again.is_empty() {
        return;
    }
    if let Err(e) = write(parent, "cgroup.subtree_control", &again.join(" ")) {
        tracing::debug!(error = %e, "cgroup.subtree_control written again");
    }
}

fn enable_error(e: CgroupError, level: &Path, controllers: &[&str]) -> CgroupError {
    match e {
        CgroupError::Write { source, .. } => CgroupError::Enable {
            path: level.join("cgroup.subtree_control"),
            controllers: controllers.join(","),
            source,
        },
        e => e,
    }
}

fn field_for(controller: &str) -> &'static str {
    Group::ALL
        .iter()
        .find(|g| g.v2_controller() == Some(controller))
        .map_or("unified", |g| g.field())
}

/// The mount point and every directory below it down to the container's parent.
fn ancestors(h: &Hierarchy) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = h
        .dir
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(&h.mount))
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

/// Set one group of `r` in the cgroup2 directory of `h`.
pub(crate) fn set(
    g: Group,
    h: &Hierarchy,
    r: &LinuxResources,
    layout: CgroupVersion,
) -> Result<(), CgroupError> {
    let dir = &h.dir;
    match g {
        Group::Devices => v2_devices::apply(dir, r.devices().as_deref().unwrap_or_default()),
        Group::Cpuset => {
            let Some(c) = r.cpu() else { return Ok(()) };
            if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                write(dir, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                write(dir, "cpuset.mems", mems)?;
            }
            Ok(())
        }
        Group::Memory => r.memory().as_ref().map_or(Ok(()), |m| set_memory(dir, m)),
        Group::Cpu => r.cpu().as_ref().map_or(Ok(()), |c| set_cpu(dir, c, layout)),
        Group::Pids => r
            .pids()
            .as_ref()
            .map_or(Ok(()), |p| write(dir, "pids.max", &v1::pids_max(p.limit()))),
        Group::Blkio => r.block_io().as_ref().map_or(Ok(()), |b| set_io(dir, b)),
        Group::Hugetlb => {
            for l in r.hugepage_limits().iter().flatten() {
                let size = v1::page_size(l)?;
                let v = max_or(l.limit());
                write(dir, &format!("hugetlb.{size}.max"), &v)?;
                write_if_exists(dir, &format!("hugetlb.{size}.rsvd.max"), &v)?;
            }
            Ok(())
        }
        Group::Rdma => v1::set_rdma(dir, r),
        Group::NetCls | Group::NetPrio => Err(CgroupError::ControllerMissing {
            controller: g.v1_controller().to_owned(),
            field: g.field(),
            layout,
        }),
    }
}

/// Negative values mean "no limit" in the spec; cgroup2 spells that "max".
fn max_or(v: i64) -> String {
    if v < 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// memory.swap.max: the spec's swap is memory+swap (v1 style), cgroup2 limits swap alone.
pub(crate) fn swap_max(
    limit: Option<i64>,
    swap: Option<i64>,
) -> Result<Option<String>, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidResource {
        field: "memory.swap",
        reason: reason.to_owned(),
    };
    match (limit, swap) {
        // Unlimited memory with swap unset: unlimited swap too (v1 behaviour).
        (Some(-1), None) => Ok(Some("max".to_owned())),
        (_, None) | (_, Some(0)) => Ok(None),
        (_, Some(-1)) => Ok(Some("max".to_owned())),
        (None, Some(_)) | (Some(-1), Some(_)) => Err(invalid("a swap limit needs a memory limit")),
        (Some(l), Some(s)) if l < 0 || s < l => {
            Err(invalid("memory+swap must be at least the memory limit"))
        }
        (Some(l), Some(s)) => Ok(Some((s - l).to_string())),
    }
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    if let Some(v) = swap_max(m.limit(), m.swap())? {
        // Without swap accounting the file is absent; "no swap limit" and "no swap" are
        // then what the container gets anyway.
        if !write_if_exists(dir, "memory.swap.max", &v)? && v != "max" && v != "0" {
            write(dir, "memory.swap.max", &v)?;
        }
    }
    if let Some(l) = m.limit() {
        write(dir, "memory.max", &max_or(l))?;
    }
    if let Some(r) = m.reservation() {
        write(dir, "memory.low", &max_or(r))?;
    }
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        tracing::warn!(
            "linux.resources.memory.kernel/kernelTCP have no cgroup v2 equivalent; ignored"
        );
    }
    if m.swappiness().is_some() || m.disable_oom_killer() == Some(true) {
        tracing::warn!("linux.resources.memory.swappiness/disableOOMKiller have no cgroup v2 equivalent; ignored");
    }
    Ok(())
}

/// cpu.max: "max" when the quota is unset or negative; the period only if given.
pub(crate) fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    if quota.is_none() && period.is_none() {
        return None;
    }
    let mut s = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_owned(),
    };
    if let Some(p) = period {
        s.push_str(&format!(" {p}"));
    }
    Some(s)
}

fn set_cpu(dir: &Path, c: &LinuxCpu, layout: CgroupVersion) -> Result<(), CgroupError> {
    if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
        return Err(CgroupError::Unsupported {
            field: "cpu.realtimeRuntime/realtimePeriod",
            layout,
            reason: "cgroup v2 has no realtime CPU budget",
        });
    }
    if let Some(s) = c.shares() {
        write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    if let Some(v) = cpu_max(c.quota(), c.period()) {
        write(dir, "cpu.max", &v)?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.max.burst", &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

/// One io.max line per device: "8:0 rbps=N wbps=N riops=N wiops=N".
pub(crate) fn io_max_lines(b: &LinuxBlockIo) -> Vec<String> {
    let mut per_dev: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for (key, list) in [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ] {
        for t in list.iter().flatten() {
            let line = per_dev
                .entry((t.major(), t.minor()))
                .or_insert_with(|| format!("{}:{}", t.major(), t.minor()));
            line.push_str(&format!(" {key}={}", t.rate()));
        }
    }
    per_dev.into_values().collect()
}

fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // BFQ takes blkio's own 1..1000 scale and per-device weights; io.weight needs mapping.
    let bfq = dir.join("io.bfq.weight").exists();
    if let Some(w) = b.weight() {
        if bfq {
            write(dir, "io.bfq.weight", &w.to_string())?;
        } else {
            write(dir, "io.weight", &blkio_to_io_weight(w).to_string())?;
        }
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let (file, w) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_to_io_weight(w))
            };
            write(dir, file, &format!("{}:{} {w}", wd.major(), wd.minor()))?;
        }
    }
    if b.leaf_weight().is_some() {
        tracing::warn!("linux.resources.blockIO.leafWeight has no cgroup v2 equivalent; ignored");
    }
    for line in io_max_lines(b) {
        write(dir, "io.max", &line)?;
    }
    Ok(())
}

/// Write `linux.resources.unified` as given; keys were checked by `unified_controllers`.
pub(crate) fn set_unified(h: &Hierarchy, r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(map) = r.unified() else {
        return Ok(());
    };
    unified_controllers(map)?;
    let mut keys: Vec<_> = map.iter().collect();
    keys.sort();
    for (k, v) in keys {
        write(&h.dir, k, v)?;
    }
    Ok(())
}

/// cgroup.freeze, then wait for "frozen 1"/"frozen 0" in cgroup.events.
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    while is_frozen(dir)? != frozen {
        if start.elapsed() > Duration::from_secs(2) {
            if frozen {
                let _ = write(dir, "cgroup.freeze", "0");
            }
            return Err(CgroupError::FreezeTimeout {
                path: dir.join("cgroup.events"),
                state: if frozen { "frozen" } else { "thawed" },
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    Ok(())
}

pub(crate) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    let Some(events) = read_opt(dir, "cgroup.events")? else {
        return Ok(false);
    };
    Ok(events.lines().any(|l| l.trim() == "frozen 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxThrottleDeviceBuilder};

    /// A parent that already has every wanted controller gets them written once more
    /// (the wait for an enabling in flight), and only those it has.
    #[test]
    fn an_enabled_parent_is_written_again_with_what_it_has() {
        let root = std::env::temp_dir().join(format!("hull-v2-settle-{}", std::process::id()));
        let parent = root.join("pod");
        std::fs::create_dir_all(parent.join("c1")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids io\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "cpu memory pids io\n").unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        let h = Hierarchy {
            controllers: String::new(),
            mount: root.clone(),
            dir: parent.join("c1"),
            path: "/pod/c1".into(),
            created: Vec::new(),
        };
        let done = enable(
            &h,
            &["cpu".to_string()],
            &["memory", "hugetlb"],
            CgroupVersion::V2,
        );
        let again = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap();
        let top = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        done.unwrap();
        assert_eq!(again, "+cpu +memory");
        assert_eq!(
            top, "cpu memory pids io\n",
            "the root had them: not written"
        );
    }

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn blkio_weight_matches_runc() {
        assert_eq!(blkio_to_io_weight(0), 0);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn cpu_max_strings() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).unwrap(),
            "50000 100000"
        );
        assert_eq!(cpu_max(Some(-1), None).unwrap(), "max");
        assert_eq!(cpu_max(None, Some(20_000)).unwrap(), "max 20000");
        assert_eq!(cpu_max(Some(30_000), None).unwrap(), "30000");
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_max(Some(100), Some(300)).unwrap().unwrap(), "200");
        assert_eq!(swap_max(Some(100), Some(100)).unwrap().unwrap(), "0");
        assert_eq!(swap_max(Some(100), Some(-1)).unwrap().unwrap(), "max");
        assert_eq!(swap_max(Some(-1), None).unwrap().unwrap(), "max");
        assert_eq!(swap_max(Some(100), None).unwrap(), None);
        assert!(swap_max(None, Some(100)).is_err());
        assert!(swap_max(Some(200), Some(100)).is_err());
    }

    #[test]
    fn io_max_groups_per_device() {
        let t = |maj: i64, min: i64, rate: u64| {
            LinuxThrottleDeviceBuilder::default()
                .major(maj)
                .minor(min)
                .rate(rate)
                .build()
                .unwrap()
        };
        let b = LinuxBlockIoBuilder::default()
            .throttle_read_bps_device(vec![t(8, 0, 100), t(8, 16, 5)])
            .throttle_write_iops_device(vec![t(8, 0, 7)])
            .build()
            .unwrap();
        assert_eq!(
            io_max_lines(&b),
            vec!["8:0 rbps=100 wiops=7", "8:16 rbps=5"]
        );
    }

    #[test]
    fn unified_keys() {
        let mut m = HashMap::new();
        m.insert("memory.high".to_owned(), "1G".to_owned());
        m.insert("cgroup.max.depth".to_owned(), "2".to_owned());
        assert_eq!(unified_controllers(&m).unwrap(), vec!["memory"]);
        m.insert("../escape".to_owned(), "x".to_owned());
        assert!(unified_controllers(&m).is_err());
    }
}
