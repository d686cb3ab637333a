//! `hull spec`: the example config.json, the same content `runc spec` writes
//! (runc's libcontainer/specconv/example.go), with hull's hostname.

use serde_json::{json, Value};

/// The runtime-spec version hull writes and supports up to.
/// runc 1.1 writes 1.0.2-dev; older peers (crun 1.8) refuse newer versions in a bundle.
const OCI_VERSION: &str = "1.0.2-dev";

/// What `hull spec` writes to ./config.json; `rootless` applies runc's `ToRootless`
/// (`runc spec --rootless`) for the current euid/egid.
///
/// Reads the host only to decide what runc decides too: a cgroup namespace is added when
/// /sys/fs/cgroup is cgroup v2, because only there does the container's own cgroup view
/// work without the v1 controller mounts.
pub fn default_spec(rootless: bool) -> Value {
    let mut spec = example(cgroup2_unified());
    if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        to_rootless(&mut spec, uid, gid);
    }
    spec
}

fn cgroup2_unified() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn example(cgroupns: bool) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "network"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if cgroupns {
        namespaces.push(json!({"type": "cgroup"}));
    }
    json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "hull",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
                "/sys/devices/virtual/tpm"
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        }
    })
}

/// runc's `ToRootless`: an unprivileged user can own only a user namespace mapping its own
/// ids, cannot create a network namespace that is of any use without a helper, cannot
/// mount a fresh sysfs there (so /sys is bind-mounted read-only), cannot pass uid=/gid=
/// of unmapped ids to devpts/mqueue, and has no cgroup to set resources on.
fn to_rootless(spec: &mut Value, uid: u32, gid: u32) {
    let linux = &mut spec["linux"];
    if let Some(namespaces) = linux["namespaces"].as_array_mut() {
        namespaces.retain(|ns| !matches!(ns["type"].as_str(), Some("network" | "user")));
        namespaces.push(json!({"type": "user"}));
    }
    linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
    linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    if let Some(obj) = linux.as_object_mut() {
        obj.remove("resources");
    }

    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return;
    };
    for mount in mounts {
        let dest = mount["destination"].as_str().unwrap_or_default();
        if dest.trim_end_matches('/') == "/sys" {
            *mount = json!({"destination": "/sys", "type": "none", "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            continue;
        }
        if let Some(options) = mount["options"].as_array_mut() {
            options.retain(|o| {
                let o = o.as_str().unwrap_or_default();
                !o.starts_with("gid=") && !o.starts_with("uid=")
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceType, Spec};

    fn parse(v: Value) -> Spec {
        serde_json::from_value(v).expect("config.json deserialises as an OCI Spec")
    }

    fn namespace_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = spec.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        namespaces.iter().map(|ns| ns.typ()).collect()
    }

    #[test]
    fn default_spec_is_runc_example() {
        let spec = parse(default_spec(false));
        assert_eq!(spec.hostname().as_deref(), Some("hull"));
        let process = spec.process().as_ref().unwrap();
        assert!(process.terminal().unwrap());
        assert_eq!(process.args().as_ref().unwrap(), &["sh".to_string()]);
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 3);
        assert_eq!(caps.bounding(), caps.effective());
        assert_eq!(caps.bounding(), caps.permitted());
        assert!(caps.inheritable().is_none() && caps.ambient().is_none());
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path().to_str(), Some("rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 7);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 11);
        assert_eq!(linux.readonly_paths().as_ref().unwrap().len(), 5);
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
        use LinuxNamespaceType::*;
        let mut want = vec![Pid, Network, Ipc, Uts, Mount];
        if cgroup2_unified() {
            want.push(Cgroup);
        }
        assert_eq!(namespace_types(&spec), want);
    }

    #[test]
    fn example_adds_cgroup_namespace_only_on_cgroup2() {
        let with = parse(example(true));
        assert_eq!(
            namespace_types(&with).last(),
            Some(&LinuxNamespaceType::Cgroup)
        );
        let without = parse(example(false));
        assert!(!namespace_types(&without).contains(&LinuxNamespaceType::Cgroup));
    }

    #[test]
    fn rootless_follows_runc_to_rootless() {
        let mut v = example(true);
        to_rootless(&mut v, 1000, 1001);
        let spec = parse(v);
        let types = namespace_types(&spec);
        assert!(!types.contains(&LinuxNamespaceType::Network));
        assert_eq!(types.last(), Some(&LinuxNamespaceType::User));
        assert_eq!(
            types
                .iter()
                .filter(|t| **t == LinuxNamespaceType::User)
                .count(),
            1
        );

        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.resources().is_none());
        let uid = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 1000, 1)
        );
        let gid = &linux.gid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (gid.container_id(), gid.host_id(), gid.size()),
            (0, 1001, 1)
        );

        let mounts = spec.mounts().as_ref().unwrap();
        let sys = mounts
            .iter()
            .find(|m| m.destination().to_str() == Some("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("none"));
        assert_eq!(sys.source().as_ref().and_then(|s| s.to_str()), Some("/sys"));
        assert_eq!(sys.options().as_ref().unwrap()[0], "rbind");
        for m in mounts {
            for o in m.options().iter().flatten() {
                assert!(!o.starts_with("gid=") && !o.starts_with("uid="), "{o}");
            }
        }
    }

    #[test]
    fn rootless_default_spec_maps_current_ids() {
        let spec = parse(default_spec(true));
        let linux = spec.linux().as_ref().unwrap();
        let uid = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(uid.host_id(), nix::unistd::geteuid().as_raw());
        assert!(!namespace_types(&spec).contains(&LinuxNamespaceType::Network));
    }
}
