//! cgroup v1: one hierarchy per controller (group), one file per setting.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxResources,
    LinuxThrottleDevice,
};

use super::{devices, read, write, write_if_exists, CgroupError, Group, Hierarchy};

/// Set one group of `r` in its v1 hierarchy directory `dir`.
pub(crate) fn set(g: Group, dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    match g {
        Group::Devices => set_devices(dir, r.devices().as_deref().unwrap_or_default()),
        Group::Cpuset => {
            let Some(c) = r.cpu() else { return Ok(()) };
            set_cpuset(dir, c)
        }
        Group::Memory => match r.memory() {
            Some(m) => set_memory(dir, m),
            None => Ok(()),
        },
        Group::Cpu => match r.cpu() {
            Some(c) => set_cpu(dir, c),
            None => Ok(()),
        },
        Group::Pids => match r.pids() {
            Some(p) => write(dir, "pids.max", &pids_max(p.limit())),
            None => Ok(()),
        },
        Group::Blkio => match r.block_io() {
            Some(b) => set_blkio(dir, b),
            None => Ok(()),
        },
        Group::Hugetlb => set_hugetlb(dir, r.hugepage_limits().as_deref().unwrap_or_default()),
        Group::NetCls | Group::NetPrio => match r.network() {
            Some(n) => set_network(g, dir, n),
            None => Ok(()),
        },
        Group::Rdma => set_rdma(dir, r),
    }
}

pub(crate) fn pids_max(limit: i64) -> String {
    if limit <= 0 {
        "max".to_owned()
    } else {
        limit.to_string()
    }
}

/// A new cpuset cgroup starts with empty cpus and mems, and no task can join it until
/// both are set: copy them from the parent into every directory hull made, top down.
/// A parent that another create made a moment ago may still be empty (containers
/// created at once under one new parent): it is filled the same way first, from the
/// nearest ancestor that has values, as runc's cpuset does; the writes are idempotent.
pub(crate) fn inherit_cpuset(h: &Hierarchy) -> Result<(), CgroupError> {
    for dir in &h.created {
        let Some(parent) = dir.parent() else { continue };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = cpuset_value(&h.mount, parent, file)?;
            write(dir, file, &value)?;
        }
    }
    Ok(())
}

/// `dir`'s value of `file`, set from its ancestors' first if it is empty.
fn cpuset_value(mount: &Path, dir: &Path, file: &str) -> Result<String, CgroupError> {
    let value = read(dir, file)?.trim().to_string();
    if !value.is_empty() {
        return Ok(value);
    }
    let parent = match dir.parent() {
        Some(p) if dir != mount && p.starts_with(mount) => p,
        _ => {
            return Err(CgroupError::Parse {
                path: dir.join(file),
                content: String::new(),
                reason: "the hierarchy's root cpuset is empty, so no cgroup can inherit it",
            })
        }
    };
    let inherited = cpuset_value(mount, parent, file)?;
    write(dir, file, &inherited)?;
    Ok(inherited)
}

fn set_devices(
    dir: &Path,
    rules: &[oci_spec::runtime::LinuxDeviceCgroup],
) -> Result<(), CgroupError> {
    for rule in devices::normalize(rules)? {
        let (file, line) = devices::v1_line(&rule);
        write(dir, file, &line)?;
    }
    Ok(())
}

fn set_cpuset(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    // mems before cpus would not matter to the kernel; cpus first matches runc.
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory.limit_in_bytes";
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    let limit = m.limit();
    let mut swap = m.swap();
    // Unlimited memory with swap unset means unlimited memory+swap too (runc).
    if limit == Some(-1) && swap.is_none() && dir.join(MEMSW).exists() {
        swap = Some(-1);
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // memsw must stay >= memory at every step: raise memsw first when growing,
            // lower memory first when shrinking.
            let current = read(dir, LIMIT)?;
            let current: u64 = current.trim().parse().map_err(|_| CgroupError::Parse {
                path: dir.join(LIMIT),
                content: current.clone(),
                reason: "not a number",
            })?;
            if s == -1 || i128::from(current) < i128::from(s) {
                write(dir, MEMSW, &s.to_string())?;
                write(dir, LIMIT, &l.to_string())?;
            } else {
                write(dir, LIMIT, &l.to_string())?;
                write(dir, MEMSW, &s.to_string())?;
            }
        }
        (l, s) => {
            if let Some(l) = l {
                write(dir, LIMIT, &l.to_string())?;
            }
            if let Some(s) = s {
                write(dir, MEMSW, &s.to_string())?;
            }
        }
    }
    if let Some(r) = m.reservation() {
        write(dir, "memory.soft_limit_in_bytes", &r.to_string())?;
    }
    // Kernel memory limits are deprecated; newer kernels drop the files.
    if let Some(k) = m.kernel() {
        write_if_exists(dir, "memory.kmem.limit_in_bytes", &k.to_string())?;
    }
    if let Some(k) = m.kernel_tcp() {
        write_if_exists(dir, "memory.kmem.tcp.limit_in_bytes", &k.to_string())?;
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(CgroupError::InvalidResource {
                field: "memory.swappiness",
                reason: format!("{s} is above 100"),
            });
        }
        write(dir, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        write(dir, "memory.oom_control", "1")?;
    }
    Ok(())
}

fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(s) = c.shares() {
        write(dir, "cpu.shares", &s.to_string())?;
    }
    let mut period_pending = None;
    if let Some(p) = c.period() {
        match write(dir, "cpu.cfs_period_us", &p.to_string()) {
            Ok(()) => {}
            // A shorter period can exceed the parent's quota with the old quota: the
            // kernel says EINVAL; retry after the quota is set.
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && c.quota().is_some() =>
            {
                period_pending = Some(p);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(q) = c.quota() {
        write(dir, "cpu.cfs_quota_us", &q.to_string())?;
    }
    if let Some(p) = period_pending {
        write(dir, "cpu.cfs_period_us", &p.to_string())?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    // The runtime must fit the period: set the period first.
    if let Some(p) = c.realtime_period() {
        write(dir, "cpu.rt_period_us", &p.to_string())?;
    }
    if let Some(r) = c.realtime_runtime() {
        write(dir, "cpu.rt_runtime_us", &r.to_string())?;
    }
    if let Some(i) = c.idle() {
        write_if_exists(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

fn throttle_lines(list: &Option<Vec<LinuxThrottleDevice>>) -> impl Iterator<Item = String> + '_ {
    list.iter()
        .flatten()
        .map(|t| format!("{}:{} {}", t.major(), t.minor(), t.rate()))
}

fn set_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // CFQ offers blkio.weight; with BFQ only blkio.bfq.weight exists.
    let bfq = !dir.join("blkio.weight").exists() && dir.join("blkio.bfq.weight").exists();
    let prefix = if bfq { "blkio.bfq." } else { "blkio." };
    if let Some(w) = b.weight() {
        write(dir, &format!("{prefix}weight"), &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight() {
        write(dir, "blkio.leaf_weight", &w.to_string())?;
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let line = format!("{}:{} {w}", wd.major(), wd.minor());
            write(dir, &format!("{prefix}weight_device"), &line)?;
        }
        if let Some(w) = wd.leaf_weight() {
            let line = format!("{}:{} {w}", wd.major(), wd.minor());
            write(dir, "blkio.leaf_weight_device", &line)?;
        }
    }
    for (file, list) in [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for line in throttle_lines(list) {
            write(dir, file, &line)?;
        }
    }
    Ok(())
}

/// "2MB" and the like; a '/' or '.' would let a page size name some other file.
pub(crate) fn page_size(l: &LinuxHugepageLimit) -> Result<&str, CgroupError> {
    let s = l.page_size().as_str();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CgroupError::InvalidResource {
            field: "hugepageLimits.pageSize",
            reason: format!("{s:?} is not a page size like 2MB"),
        });
    }
    Ok(s)
}

fn set_hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for l in limits {
        let size = page_size(l)?;
        let v = l.limit().to_string();
        write(dir, &format!("hugetlb.{size}.limit_in_bytes"), &v)?;
        // Reservation limits exist since Linux 5.7; the spec prefers them where present.
        write_if_exists(dir, &format!("hugetlb.{size}.rsvd.limit_in_bytes"), &v)?;
    }
    Ok(())
}

fn set_network(g: Group, dir: &Path, n: &LinuxNetwork) -> Result<(), CgroupError> {
    if g == Group::NetCls {
        if let Some(id) = n.class_id() {
            write(dir, "net_cls.classid", &id.to_string())?;
        }
        return Ok(());
    }
    for p in n.priorities().iter().flatten() {
        if p.name().is_empty() || p.name().contains(char::is_whitespace) {
            return Err(CgroupError::InvalidResource {
                field: "network.priorities",
                reason: format!("{:?} is not an interface name", p.name()),
            });
        }
        write(
            dir,
            "net_prio.ifpriomap",
            &format!("{} {}", p.name(), p.priority()),
        )?;
    }
    Ok(())
}

/// rdma.max has the same format in v1 and v2: "mlx4_0 hca_handle=2 hca_object=2000".
pub(crate) fn set_rdma(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let mut devices: Vec<_> = r.rdma().iter().flatten().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    for (dev, lim) in devices {
        let mut line = dev.clone();
        if let Some(h) = lim.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = lim.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        if line.len() > dev.len() {
            write(dir, "rdma.max", &line)?;
        }
    }
    Ok(())
}

/// Write FROZEN/THAWED and wait until freezer.state says so. Freezing can take a few
/// rounds: tasks in uninterruptible sleep are caught on a later write.
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    let mut round = 0u32;
    loop {
        if round.is_multiple_of(8) {
            write(dir, "freezer.state", want)?;
        }
        round += 1;
        if read(dir, "freezer.state")?.trim() == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(2) {
            if frozen {
                // Do not leave the container half frozen.
                let _ = write(dir, "freezer.state", "THAWED");
            }
            return Err(CgroupError::FreezeTimeout {
                path: dir.join("freezer.state"),
                state: want,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

pub(crate) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(read(dir, "freezer.state")?.trim() == "FROZEN")
}

#[cfg(test)]
mod cpuset_tests {
    use super::*;

    #[test]
    fn an_empty_parent_made_by_another_create_is_filled_first() {
        let mount = std::env::temp_dir().join(format!("hull-cpuset-{}", std::process::id()));
        let parent = mount.join("pods");
        let leaf = parent.join("c1");
        std::fs::create_dir_all(&leaf).unwrap();
        for (dir, cpus) in [(&mount, "0-1"), (&parent, ""), (&leaf, "")] {
            std::fs::write(dir.join("cpuset.cpus"), cpus).unwrap();
            std::fs::write(
                dir.join("cpuset.mems"),
                if cpus.is_empty() { "" } else { "0" },
            )
            .unwrap();
        }
        let h = Hierarchy {
            controllers: "cpuset".into(),
            mount: mount.clone(),
            dir: leaf.clone(),
            path: "/pods/c1".into(),
            created: vec![leaf.clone()],
        };
        inherit_cpuset(&h).unwrap();
        for dir in [&parent, &leaf] {
            assert_eq!(read(dir, "cpuset.cpus").unwrap().trim(), "0-1");
            assert_eq!(read(dir, "cpuset.mems").unwrap().trim(), "0");
        }
        std::fs::write(mount.join("cpuset.cpus"), "").unwrap();
        std::fs::write(parent.join("cpuset.cpus"), "").unwrap();
        assert!(
            inherit_cpuset(&h).is_err(),
            "an empty root has nothing to give"
        );
        std::fs::remove_dir_all(&mount).unwrap();
    }
}
