//! `hull events --stats` (runc's JSON) as containerd's `io.containerd.cgroups.v1.Metrics`,
//! which `ctr task metrics` prints and CRI's ContainerStats reads. v1 whatever the
//! host's cgroup mode: a VM container's figures come from the guest's cgroup, and both
//! readers take either type; memory.stat keys of cgroup v2 map onto v1's.

use containerd_shim_protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics,
    PidsStat, Throttle,
};
use serde_json::Value;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn entry(v: &Value) -> MemoryEntry {
    let mut e = MemoryEntry::new();
    e.limit = n(&v["limit"]);
    e.usage = n(&v["usage"]);
    e.max = n(&v["max"]);
    e.failcnt = n(&v["failcnt"]);
    e
}

fn cpu(v: &Value) -> CPUStat {
    let mut u = CPUUsage::new();
    u.total = n(&v["usage"]["total"]);
    u.kernel = n(&v["usage"]["kernel"]);
    u.user = n(&v["usage"]["user"]);
    u.per_cpu = v["usage"]["percpu"]
        .as_array()
        .map(|a| a.iter().map(n).collect())
        .unwrap_or_default();
    let mut t = Throttle::new();
    t.periods = n(&v["throttling"]["periods"]);
    t.throttled_periods = n(&v["throttling"]["throttledPeriods"]);
    t.throttled_time = n(&v["throttling"]["throttledTime"]);
    let mut c = CPUStat::new();
    c.usage = Some(u).into();
    c.throttling = Some(t).into();
    c
}

fn memory(v: &Value) -> MemoryStat {
    let raw = &v["raw"];
    // The v1 key, or the v2 key with the same meaning.
    let r = |v1: &str, v2: &str| {
        raw.get(v1)
            .or_else(|| raw.get(v2))
            .map(n)
            .unwrap_or_default()
    };
    let mut m = MemoryStat::new();
    m.cache = r("cache", "file");
    m.rss = r("rss", "anon");
    m.rss_huge = r("rss_huge", "anon_thp");
    m.mapped_file = r("mapped_file", "file_mapped");
    m.dirty = r("dirty", "file_dirty");
    m.writeback = r("writeback", "file_writeback");
    m.pg_pg_in = r("pgpgin", "pgpgin");
    m.pg_pg_out = r("pgpgout", "pgpgout");
    m.pg_fault = r("pgfault", "pgfault");
    m.pg_maj_fault = r("pgmajfault", "pgmajfault");
    m.inactive_anon = r("inactive_anon", "inactive_anon");
    m.active_anon = r("active_anon", "active_anon");
    m.inactive_file = r("inactive_file", "inactive_file");
    m.active_file = r("active_file", "active_file");
    m.unevictable = r("unevictable", "unevictable");
    m.hierarchical_memory_limit = r("hierarchical_memory_limit", "");
    m.hierarchical_swap_limit = r("hierarchical_memsw_limit", "");
    // CRI's working set is usage - total_inactive_file.
    m.total_cache = r("total_cache", "file");
    m.total_rss = r("total_rss", "anon");
    m.total_mapped_file = r("total_mapped_file", "file_mapped");
    m.total_inactive_file = r("total_inactive_file", "inactive_file");
    m.total_active_file = r("total_active_file", "active_file");
    m.total_inactive_anon = r("total_inactive_anon", "inactive_anon");
    m.total_active_anon = r("total_active_anon", "active_anon");
    m.total_pg_fault = r("total_pgfault", "pgfault");
    m.total_pg_maj_fault = r("total_pgmajfault", "pgmajfault");
    m.total_unevictable = r("total_unevictable", "unevictable");
    m.usage = Some(entry(&v["usage"])).into();
    m.swap = Some(entry(&v["swap"])).into();
    m.kernel = Some(entry(&v["kernel"])).into();
    m.kernel_tcp = Some(entry(&v["kernelTCP"])).into();
    m
}

fn blkio_entries(v: &Value) -> Vec<BlkIOEntry> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let mut b = BlkIOEntry::new();
                    b.major = n(&e["major"]);
                    b.minor = n(&e["minor"]);
                    b.op = e["op"].as_str().unwrap_or_default().to_string();
                    b.value = n(&e["value"]);
                    b
                })
                .collect()
        })
        .unwrap_or_default()
}

fn blkio(v: &Value) -> BlkIOStat {
    let mut b = BlkIOStat::new();
    b.io_service_bytes_recursive = blkio_entries(&v["ioServiceBytesRecursive"]);
    b.io_serviced_recursive = blkio_entries(&v["ioServicedRecursive"]);
    b.io_queued_recursive = blkio_entries(&v["ioQueueRecursive"]);
    b.io_service_time_recursive = blkio_entries(&v["ioServiceTimeRecursive"]);
    b.io_wait_time_recursive = blkio_entries(&v["ioWaitTimeRecursive"]);
    b.io_merged_recursive = blkio_entries(&v["ioMergedRecursive"]);
    b.io_time_recursive = blkio_entries(&v["ioTimeRecursive"]);
    b.sectors_recursive = blkio_entries(&v["sectorsRecursive"]);
    b
}

/// One `hull events --stats` line as Metrics.
pub fn from_runc(line: &str) -> Result<Metrics, serde_json::Error> {
    let v: Value = serde_json::from_str(line)?;
    let d = &v["data"];
    let mut m = Metrics::new();
    m.cpu = Some(cpu(&d["cpu"])).into();
    m.memory = Some(memory(&d["memory"])).into();
    let mut p = PidsStat::new();
    p.current = n(&d["pids"]["current"]);
    p.limit = n(&d["pids"]["limit"]);
    m.pids = Some(p).into();
    m.blkio = Some(blkio(&d["blkio"])).into();
    if let Some(h) = d["hugetlb"].as_object() {
        for (size, s) in h {
            let mut e = HugetlbStat::new();
            e.pagesize = size.clone();
            e.usage = n(&s["usage"]);
            e.max = n(&s["max"]);
            e.failcnt = n(&s["failcnt"]);
            m.hugetlb.push(e);
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_stats_become_v1_metrics() {
        let line = r#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":5,"percpu":[2,3],"kernel":1,"user":4},"throttling":{}},
            "memory":{"usage":{"limit":100,"usage":50,"max":60,"failcnt":0},"swap":{"limit":0,"failcnt":0},"kernel":{"limit":0,"failcnt":0},
            "kernelTCP":{"limit":0,"failcnt":0},"raw":{"file":7,"anon":8,"inactive_file":3}},"pids":{"current":2},
            "blkio":{"ioServiceBytesRecursive":[{"major":8,"op":"Read","value":9}]},"hugetlb":{"2MB":{"failcnt":0}}}}"#;
        let m = from_runc(line).unwrap();
        assert_eq!(m.cpu.usage.total, 5);
        assert_eq!(m.cpu.usage.per_cpu, vec![2, 3]);
        assert_eq!(m.memory.usage.usage, 50);
        assert_eq!((m.memory.cache, m.memory.rss), (7, 8));
        assert_eq!(m.memory.total_inactive_file, 3);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.blkio.io_service_bytes_recursive[0].value, 9);
        assert_eq!(m.hugetlb[0].pagesize, "2MB");
    }
}
