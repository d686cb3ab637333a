//! The VM's size from the bundle, which the host cgroup around it is sized for too.
//!
//! A pod's VM is sized once, when its sandbox is created: memory cannot be added to a
//! running guest here (no memory hotplug in the guest kernel, nor in hull-vmm), so it is
//! Kata's static sandbox sizing. The kubelet (1.23 on) passes the pod's resources, the
//! sum of its containers' limits, and containerd's CRI plugin hands them to the
//! sandbox's bundle as annotations; the VM gets that plus the guest's own needs. A
//! member container whose limit the VM cannot hold is refused (`check_member`), never
//! silently held to less.

use oci_spec::runtime::Spec;

use super::VmSettings;

/// What the guest kernel and agent need besides the container (measured ~24 MiB).
pub const GUEST_OVERHEAD_MIB: u64 = 64;

const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
const POD_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const POD_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const POD_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// A VM's size, and whether a limit (the bundle's or the pod's) set its memory, which
/// the host cgroup then holds it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub memory_limited: bool,
}

/// A CRI pod sandbox's container (its VM takes the pod's members).
pub fn is_cri_sandbox(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CRI_TYPE))
        .is_some_and(|t| t == "sandbox")
}

/// The pod's resources from a CRI sandbox's annotations: (cpu quota, period, memory).
fn pod_resources(spec: &Spec) -> Option<(Option<i64>, Option<u64>, Option<i64>)> {
    if !is_cri_sandbox(spec) {
        return None;
    }
    let a = spec.annotations().as_ref()?;
    let num = |k: &str| a.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    Some((
        num(POD_CPU_QUOTA),
        num(POD_CPU_PERIOD).and_then(|p| u64::try_from(p).ok()),
        num(POD_MEMORY),
    ))
}

/// vCPUs from the cpu quota or cpuset, memory from the limit plus the guest's own
/// needs (a CRI sandbox's: the pod's); the settings' defaults where nothing says.
pub fn sizing(spec: &Spec, s: &VmSettings) -> Size {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = res.and_then(|r| r.cpu().as_ref());
    let pod = pod_resources(spec);
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let quota_vcpus = |q: Option<i64>, p: Option<u64>| match (q, p) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
        _ => None,
    };
    let from_pod = pod.and_then(|(q, p, _)| quota_vcpus(q, p));
    let from_quota = cpu.and_then(|c| quota_vcpus(c.quota(), c.period()));
    let from_cpuset = cpu
        .and_then(|c| c.cpus().as_deref())
        .filter(|s| !s.is_empty())
        .map(|set| cpuset_count(set) as u64);
    let vcpus = from_pod
        .or(from_quota)
        .or(from_cpuset)
        .unwrap_or(u64::from(s.vcpus))
        .clamp(1, host_cpus.max(1) as u64) as u8;
    let limit = pod.and_then(|(_, _, m)| m).filter(|&l| l > 0).or_else(|| {
        res.and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|&l| l > 0)
    });
    let memory = limit
        .map(|l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB)
        .unwrap_or(u64::from(s.memory_mib))
        .clamp(96, 1 << 16) as u32;
    Size {
        vcpus,
        memory_mib: memory,
        memory_limited: limit.is_some(),
    }
}

/// A member's memory limit against its pod's VM: what the VM cannot give is an error.
pub fn check_member(member: &Spec, vm: Size) -> Result<(), String> {
    let limit = member
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0);
    let room = u64::from(vm.memory_mib).saturating_sub(GUEST_OVERHEAD_MIB);
    match limit {
        Some(l) if (l as u64).div_ceil(1 << 20) > room => Err(format!(
            "its memory limit is {} MiB, and the pod's VM has {room} MiB for its containers ({} MiB in all, sized when the pod was created: from the pod's resources, annotation {POD_MEMORY}, or else [vm] memory_mib); a running VM cannot grow",
            (l as u64).div_ceil(1 << 20),
            vm.memory_mib
        )),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn settings() -> VmSettings {
        VmSettings {
            vcpus: 1,
            memory_mib: 256,
            ..VmSettings::default()
        }
    }

    #[test]
    fn a_cri_sandbox_is_sized_from_the_pods_resources() {
        let s = spec(serde_json::json!({"annotations": {
            CRI_TYPE: "sandbox", POD_MEMORY: "268435456",
            POD_CPU_QUOTA: "100000", POD_CPU_PERIOD: "100000"}}));
        let size = sizing(&s, &settings());
        assert_eq!(size.memory_mib, 256 + GUEST_OVERHEAD_MIB as u32);
        assert_eq!(size.vcpus, 1);
        assert!(size.memory_limited);
    }

    #[test]
    fn a_pod_without_resources_gets_the_default() {
        let s = spec(serde_json::json!({"annotations": {
            CRI_TYPE: "sandbox", POD_MEMORY: "0", POD_CPU_QUOTA: "0"}}));
        let size = sizing(&s, &settings());
        assert_eq!((size.memory_mib, size.memory_limited), (256, false));
    }

    #[test]
    fn the_pods_annotations_count_only_on_a_sandbox() {
        let s = spec(serde_json::json!({"annotations": {
            CRI_TYPE: "container", POD_MEMORY: "1073741824"}}));
        assert_eq!(sizing(&s, &settings()).memory_mib, 256);
    }

    #[test]
    fn a_member_larger_than_its_vm_is_refused() {
        let vm = Size {
            vcpus: 1,
            memory_mib: 256 + 64,
            memory_limited: true,
        };
        let member = |mib: i64| {
            spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": mib << 20}}}}))
        };
        assert!(check_member(&member(256), vm).is_ok());
        let e = check_member(&member(257), vm).unwrap_err();
        assert!(e.contains("257 MiB") && e.contains("256 MiB"), "{e}");
        assert!(check_member(&spec(serde_json::json!({})), vm).is_ok());
    }
}
