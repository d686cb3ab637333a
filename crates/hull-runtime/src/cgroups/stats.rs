//! Resource usage, serialised like the "data" object of runc's `events --stats`
//! (runc types/events.go): the same field names, and fields runc marks omitempty are
//! left out when zero.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats_parse::{
    blkio_v1, cpu_list, io_stat_v2, keyed, number, page_sizes, psi, usage_all,
};
use super::{read_opt, CgroupError, Hierarchy};

fn zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    /// Keyed by page size as the kernel names it ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, Hugetlb>,
    /// Not a cgroup; present (empty) so the object has runc's shape.
    pub intel_rdt: IntelRdt,
    /// Filled by the caller, which knows the network namespace; null otherwise, as runc.
    pub network_interfaces: Option<Vec<NetworkInterface>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
}

/// Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Throttling {
    #[serde(skip_serializing_if = "zero")]
    pub periods: u64,
    #[serde(skip_serializing_if = "zero")]
    pub throttled_periods: u64,
    /// Nanoseconds.
    #[serde(skip_serializing_if = "zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuSet {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    #[serde(skip_serializing_if = "zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as is.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pids {
    #[serde(skip_serializing_if = "zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    #[serde(skip_serializing_if = "zero")]
    pub major: u64,
    #[serde(skip_serializing_if = "zero")]
    pub minor: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(skip_serializing_if = "zero")]
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Blkio {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty", rename = "ioQueueRecursive")]
    pub io_queued_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_service_time_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_merged_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_time_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sectors_recursive: Vec<BlkioEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<Psi>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// Pressure stall information (cgroup v2 *.pressure files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Psi {
    pub some: PsiData,
    pub full: PsiData,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PsiData {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntelRdt {}

/// runc leaves these Go field names untagged, so they serialise capitalised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkInterface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

fn num(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    Ok(read_opt(dir, file)?
        .as_deref()
        .and_then(number)
        .unwrap_or(0))
}

fn v1_dir<'a>(v1: &'a [Hierarchy], controller: &str) -> Option<&'a Path> {
    v1.iter().find(|h| h.has(controller)).map(|h| h.dir())
}

/// Read every v1 controller present.
pub(crate) fn read_v1(v1: &[Hierarchy], s: &mut Stats) -> Result<(), CgroupError> {
    let dir = |c: &str| v1_dir(v1, c);
    if let Some(d) = dir("cpuacct") {
        let u = &mut s.cpu.usage;
        u.total = num(d, "cpuacct.usage")?;
        if let Some(t) = read_opt(d, "cpuacct.usage_percpu")? {
            u.percpu = t
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
        if let Some(t) = read_opt(d, "cpuacct.usage_all")? {
            (u.percpu_kernel, u.percpu_user) = usage_all(&t);
        }
        if let Some(t) = read_opt(d, "cpuacct.stat")? {
            // USER_HZ ticks to nanoseconds; USER_HZ is 100 on every Linux ABI.
            let k = keyed(&t);
            u.user = k.get("user").copied().unwrap_or(0) * 10_000_000;
            u.kernel = k.get("system").copied().unwrap_or(0) * 10_000_000;
        }
    }
    if let Some(d) = dir("cpu") {
        if let Some(t) = read_opt(d, "cpu.stat")? {
            let k = keyed(&t);
            let g = |key: &str| k.get(key).copied().unwrap_or(0);
            s.cpu.throttling = Throttling {
                periods: g("nr_periods"),
                throttled_periods: g("nr_throttled"),
                throttled_time: g("throttled_time"),
            };
        }
    }
    if let Some(d) = dir("cpuset") {
        let c = &mut s.cpuset;
        c.cpus = cpu_list(&read_opt(d, "cpuset.cpus")?.unwrap_or_default());
        c.mems = cpu_list(&read_opt(d, "cpuset.mems")?.unwrap_or_default());
        c.cpu_exclusive = num(d, "cpuset.cpu_exclusive")?;
        c.mem_hardwall = num(d, "cpuset.mem_hardwall")?;
        c.mem_exclusive = num(d, "cpuset.mem_exclusive")?;
        c.memory_migrate = num(d, "cpuset.memory_migrate")?;
        c.memory_spread_page = num(d, "cpuset.memory_spread_page")?;
        c.memory_spread_slab = num(d, "cpuset.memory_spread_slab")?;
        c.memory_pressure = num(d, "cpuset.memory_pressure")?;
        c.sched_load_balance = num(d, "cpuset.sched_load_balance")?;
        c.sched_relax_domain_level = read_opt(d, "cpuset.sched_relax_domain_level")?
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
    }
    if let Some(d) = dir("memory") {
        let entry = |prefix: &str| -> Result<MemoryEntry, CgroupError> {
            Ok(MemoryEntry {
                limit: num(d, &format!("{prefix}.limit_in_bytes"))?,
                usage: num(d, &format!("{prefix}.usage_in_bytes"))?,
                max: num(d, &format!("{prefix}.max_usage_in_bytes"))?,
                failcnt: num(d, &format!("{prefix}.failcnt"))?,
            })
        };
        let m = &mut s.memory;
        m.usage = entry("memory")?;
        m.swap = entry("memory.memsw")?;
        m.kernel = entry("memory.kmem")?;
        m.kernel_tcp = entry("memory.kmem.tcp")?;
        m.raw = keyed(&read_opt(d, "memory.stat")?.unwrap_or_default());
        m.cache = m.raw.get("cache").copied().unwrap_or(0);
    }
    if let Some(d) = dir("pids") {
        s.pids = Pids {
            current: num(d, "pids.current")?,
            limit: num(d, "pids.max")?,
        };
    }
    if let Some(d) = dir("blkio") {
        read_blkio_v1(d, &mut s.blkio)?;
    }
    if let Some(d) = dir("hugetlb") {
        for size in page_sizes() {
            let h = Hugetlb {
                usage: num(d, &format!("hugetlb.{size}.usage_in_bytes"))?,
                max: num(d, &format!("hugetlb.{size}.max_usage_in_bytes"))?,
                failcnt: num(d, &format!("hugetlb.{size}.failcnt"))?,
            };
            s.hugetlb.insert(size, h);
        }
    }
    Ok(())
}

/// CFQ's full set where the kernel has it, else BFQ's, else the throttling counters
/// (the same order as runc).
fn read_blkio_v1(d: &Path, b: &mut Blkio) -> Result<(), CgroupError> {
    let get = |f: &str| -> Result<Vec<BlkioEntry>, CgroupError> {
        Ok(read_opt(d, f)?.as_deref().map(blkio_v1).unwrap_or_default())
    };
    let cfq = get("blkio.io_service_bytes_recursive")?;
    if !cfq.is_empty() {
        b.io_service_bytes_recursive = cfq;
        b.io_serviced_recursive = get("blkio.io_serviced_recursive")?;
        b.io_queued_recursive = get("blkio.io_queued_recursive")?;
        b.io_service_time_recursive = get("blkio.io_service_time_recursive")?;
        b.io_wait_time_recursive = get("blkio.io_wait_time_recursive")?;
        b.io_merged_recursive = get("blkio.io_merged_recursive")?;
        b.io_time_recursive = get("blkio.time_recursive")?;
        b.sectors_recursive = get("blkio.sectors_recursive")?;
        return Ok(());
    }
    let bfq = get("blkio.bfq.io_service_bytes_recursive")?;
    if !bfq.is_empty() {
        b.io_service_bytes_recursive = bfq;
        b.io_serviced_recursive = get("blkio.bfq.io_serviced_recursive")?;
        return Ok(());
    }
    b.io_service_bytes_recursive = get("blkio.throttle.io_service_bytes_recursive")?;
    b.io_serviced_recursive = get("blkio.throttle.io_serviced_recursive")?;
    Ok(())
}

/// Everything a cgroup2 directory offers; files of controllers not enabled are absent.
pub(crate) fn read_v2(d: &Path, s: &mut Stats) -> Result<(), CgroupError> {
    if let Some(t) = read_opt(d, "cpu.stat")? {
        let k = keyed(&t);
        let g = |key: &str| k.get(key).copied().unwrap_or(0);
        s.cpu.usage.total = g("usage_usec") * 1000;
        s.cpu.usage.user = g("user_usec") * 1000;
        s.cpu.usage.kernel = g("system_usec") * 1000;
        s.cpu.throttling = Throttling {
            periods: g("nr_periods"),
            throttled_periods: g("nr_throttled"),
            throttled_time: g("throttled_usec") * 1000,
        };
    }
    s.cpu.psi = read_opt(d, "cpu.pressure")?.as_deref().map(psi);
    if let Some(cur) = read_opt(d, "memory.current")?.as_deref().and_then(number) {
        let m = &mut s.memory;
        m.usage = MemoryEntry {
            usage: cur,
            limit: num(d, "memory.max")?,
            max: num(d, "memory.peak")?,
            failcnt: 0,
        };
        // v1 reports swap as memory+swap; keep that meaning for consumers of runc's format.
        let swap_limit = num(d, "memory.swap.max")?;
        m.swap = MemoryEntry {
            usage: num(d, "memory.swap.current")? + cur,
            limit: if swap_limit == u64::MAX {
                u64::MAX
            } else {
                swap_limit.saturating_add(m.usage.limit)
            },
            max: num(d, "memory.swap.peak")?,
            failcnt: 0,
        };
        m.raw = keyed(&read_opt(d, "memory.stat")?.unwrap_or_default());
        m.cache = m.raw.get("file").copied().unwrap_or(0);
    }
    s.memory.psi = read_opt(d, "memory.pressure")?.as_deref().map(psi);
    if let Some(cur) = read_opt(d, "pids.current")?.as_deref().and_then(number) {
        s.pids = Pids {
            current: cur,
            limit: num(d, "pids.max")?,
        };
    }
    if let Some(t) = read_opt(d, "io.stat")? {
        let (bytes, ios) = io_stat_v2(&t);
        s.blkio.io_service_bytes_recursive = bytes;
        s.blkio.io_serviced_recursive = ios;
    }
    s.blkio.psi = read_opt(d, "io.pressure")?.as_deref().map(psi);
    if let Some(t) = read_opt(d, "cpuset.cpus.effective")? {
        s.cpuset.cpus = cpu_list(&t);
        s.cpuset.mems = cpu_list(&read_opt(d, "cpuset.mems.effective")?.unwrap_or_default());
    }
    read_v2_hugetlb(d, s)
}

/// hugetlb.<size>.current and the "max" count of hugetlb.<size>.events.
pub(crate) fn read_v2_hugetlb(d: &Path, s: &mut Stats) -> Result<(), CgroupError> {
    for size in page_sizes() {
        let Some(cur) = read_opt(d, &format!("hugetlb.{size}.current"))? else {
            continue;
        };
        let events = read_opt(d, &format!("hugetlb.{size}.events"))?.unwrap_or_default();
        let h = Hugetlb {
            usage: number(&cur).unwrap_or(0),
            max: 0,
            failcnt: keyed(&events).get("max").copied().unwrap_or(0),
        };
        s.hugetlb.insert(size, h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_runc() {
        let mut s = Stats::default();
        s.cpu.usage.total = 5;
        s.memory.usage.limit = 10;
        s.hugetlb.insert("2MB".into(), Hugetlb::default());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["cpu"]["usage"],
            serde_json::json!({"total": 5, "kernel": 0, "user": 0})
        );
        assert_eq!(v["cpu"]["throttling"], serde_json::json!({}));
        assert_eq!(
            v["memory"]["usage"],
            serde_json::json!({"limit": 10, "failcnt": 0})
        );
        assert_eq!(
            v["memory"]["kernelTCP"],
            serde_json::json!({"limit": 0, "failcnt": 0})
        );
        assert_eq!(v["pids"], serde_json::json!({}));
        assert_eq!(v["blkio"], serde_json::json!({}));
        assert_eq!(v["hugetlb"]["2MB"], serde_json::json!({"failcnt": 0}));
        assert_eq!(v["cpuset"]["sched_relax_domain_level"], 0);
        assert_eq!(v["intel_rdt"], serde_json::json!({}));
        assert!(v["network_interfaces"].is_null());
        let back: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
