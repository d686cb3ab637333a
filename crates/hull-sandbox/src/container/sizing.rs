//! The VM's size from the bundle, which the host cgroup around it is sized for too.

use oci_spec::runtime::Spec;

use super::VmSettings;

/// What the guest kernel and agent need besides the container (measured ~24 MiB).
const GUEST_OVERHEAD_MIB: u64 = 64;

/// vCPUs from the cpu quota or cpuset, memory from the limit plus the guest's own
/// needs; the settings' defaults where the bundle says nothing.
pub(super) fn sizing(spec: &Spec, s: &VmSettings) -> (u8, u32) {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = res.and_then(|r| r.cpu().as_ref());
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
        _ => None,
    });
    let from_cpuset = cpu
        .and_then(|c| c.cpus().as_deref())
        .filter(|s| !s.is_empty())
        .map(|set| cpuset_count(set) as u64);
    let vcpus = from_quota
        .or(from_cpuset)
        .unwrap_or(u64::from(s.vcpus))
        .clamp(1, host_cpus.max(1) as u64) as u8;
    let memory = res
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB)
        .unwrap_or(u64::from(s.memory_mib))
        .clamp(96, 1 << 16) as u32;
    (vcpus, memory)
}

/// CPUs in a cpuset list such as "0-2,5".
fn cpuset_count(set: &str) -> usize {
    set.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}
