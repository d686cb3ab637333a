//! Groups of `linux.resources` fields, each implemented by one controller.

use oci_spec::runtime::LinuxResources;

/// A group of `linux.resources` fields that one controller implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Devices,
    Cpuset,
    Memory,
    Cpu,
    Pids,
    Blkio,
    Hugetlb,
    NetCls,
    NetPrio,
    Rdma,
}

impl Group {
    /// Devices first: the filter should be in place before anything else can fail late.
    pub(crate) const ALL: &'static [Group] = &[
        Group::Devices,
        Group::Cpuset,
        Group::Memory,
        Group::Cpu,
        Group::Pids,
        Group::Blkio,
        Group::Hugetlb,
        Group::NetCls,
        Group::NetPrio,
        Group::Rdma,
    ];

    pub(crate) fn v1_controller(self) -> &'static str {
        match self {
            Group::Devices => "devices",
            Group::Cpuset => "cpuset",
            Group::Memory => "memory",
            Group::Cpu => "cpu",
            Group::Pids => "pids",
            Group::Blkio => "blkio",
            Group::Hugetlb => "hugetlb",
            Group::NetCls => "net_cls",
            Group::NetPrio => "net_prio",
            Group::Rdma => "rdma",
        }
    }

    /// The cgroup2 controller; Some("") for devices (a BPF program, no controller),
    /// None where cgroup2 has no equivalent.
    pub(crate) fn v2_controller(self) -> Option<&'static str> {
        match self {
            Group::Devices => Some(""),
            Group::Blkio => Some("io"),
            Group::NetCls | Group::NetPrio => None,
            g => Some(g.v1_controller()),
        }
    }

    pub(crate) fn field(self) -> &'static str {
        match self {
            Group::Devices => "devices",
            Group::Cpuset => "cpu.cpus/mems",
            Group::Memory => "memory",
            Group::Cpu => "cpu",
            Group::Pids => "pids",
            Group::Blkio => "blockIO",
            Group::Hugetlb => "hugepageLimits",
            Group::NetCls => "network.classID",
            Group::NetPrio => "network.priorities",
            Group::Rdma => "rdma",
        }
    }

    pub(crate) fn is_set(self, r: &LinuxResources) -> bool {
        let nonempty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
        match self {
            Group::Devices => r.devices().as_ref().is_some_and(|d| !d.is_empty()),
            Group::Cpuset => r
                .cpu()
                .as_ref()
                .is_some_and(|c| nonempty(c.cpus()) || nonempty(c.mems())),
            Group::Memory => r.memory().as_ref().is_some_and(|m| {
                m.limit().is_some()
                    || m.reservation().is_some()
                    || m.swap().is_some()
                    || m.kernel().is_some()
                    || m.kernel_tcp().is_some()
                    || m.swappiness().is_some()
                    || m.disable_oom_killer() == Some(true)
            }),
            Group::Cpu => r.cpu().as_ref().is_some_and(|c| {
                c.shares().is_some()
                    || c.quota().is_some()
                    || c.period().is_some()
                    || c.realtime_runtime().is_some()
                    || c.realtime_period().is_some()
                    || c.idle().is_some()
                    || c.burst().is_some()
            }),
            Group::Pids => r.pids().is_some(),
            Group::Blkio => r.block_io().as_ref().is_some_and(|b| {
                let any = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
                b.weight().is_some()
                    || b.leaf_weight().is_some()
                    || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
                    || any(b.throttle_read_bps_device())
                    || any(b.throttle_write_bps_device())
                    || any(b.throttle_read_iops_device())
                    || any(b.throttle_write_iops_device())
            }),
            Group::Hugetlb => r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()),
            Group::NetCls => r.network().as_ref().is_some_and(|n| n.class_id().is_some()),
            Group::NetPrio => r
                .network()
                .as_ref()
                .and_then(|n| n.priorities().as_ref())
                .is_some_and(|p| !p.is_empty()),
            Group::Rdma => r.rdma().as_ref().is_some_and(|m| !m.is_empty()),
        }
    }
}
