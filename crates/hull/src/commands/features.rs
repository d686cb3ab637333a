//! `hull features`: what this hull on this host supports, in runtime-spec's features.md
//! format (as `runc features` prints it).

use std::path::Path;

use hull_runtime::seccomp;
use serde_json::{json, Value};

const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The mount options hull's mount code understands (runc 1.2's list minus what hull
/// cannot do).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "tmpcopyup",
    "unbindable",
];

const NAMESPACES: &[&str] = &[
    "cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time",
];

/// Capability names by number (linux/capability.h), CAP_CHOWN = 0 .. CAP_CHECKPOINT_RESTORE = 40.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What `hull features` prints.
pub fn features() -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(v) = seccomp::libseccomp_version() {
        annotations.insert("io.github.seccomp.libseccomp.version".into(), v.into());
    }
    annotations.insert("io.hull.version".into(), env!("CARGO_PKG_VERSION").into());
    // Which boundaries `--isolation` (or io.hull.isolation) can ask for here, and why
    // not where one cannot be given.
    if let Ok(settings) = hull_lifecycle::Settings::load() {
        let mut available = vec![];
        for (isolation, why) in hull_lifecycle::isolations(&settings) {
            match why {
                Ok(()) => available.push(isolation.as_str()),
                Err(why) => {
                    annotations.insert(
                        format!("io.hull.isolation.{isolation}.unavailable"),
                        why.into(),
                    );
                }
            }
        }
        annotations.insert(
            "io.hull.isolation.available".into(),
            available.join(",").into(),
        );
        let default = settings.isolation.unwrap_or_default();
        annotations.insert("io.hull.isolation.default".into(), default.as_str().into());
    }

    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": HOOKS,
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities(host_cap_last_cap()),
            "cgroup": {
                "v1": true,
                "v2": true,
                "systemd": false,
                "systemdUser": false,
                "rdma": false
            },
            "seccomp": {
                "enabled": true,
                "actions": seccomp::supported_actions(),
                "operators": seccomp::supported_operators(),
                "archs": seccomp::supported_archs(),
                "knownFlags": seccomp::known_flags(),
                "supportedFlags": seccomp::supported_flags()
            },
            "apparmor": {"enabled": Path::new("/sys/kernel/security/apparmor").exists()},
            "selinux": {"enabled": Path::new("/sys/fs/selinux/enforce").exists()},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": annotations
    })
}

fn host_cap_last_cap() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The capabilities up to `last` (all hull can name when the kernel does not say); a
/// kernel newer than the table gets only the names hull knows, since hull could not
/// parse the others in a config anyway.
fn capabilities(last: Option<usize>) -> &'static [&'static str] {
    let n = last.map_or(CAPABILITIES.len(), |last| {
        (last + 1).min(CAPABILITIES.len())
    });
    &CAPABILITIES[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Features, LinuxNamespaceType};

    #[test]
    fn features_deserialise_as_oci_features() {
        let f: Features = serde_json::from_value(features()).expect("features.md shape");
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert_eq!(f.oci_version_max(), "1.2.0");
        assert_eq!(f.hooks().as_ref().unwrap().len(), 6);
        let mount_options = f.mount_options().as_ref().unwrap();
        assert!(mount_options.iter().any(|o| o == "rbind"));
        let linux = f.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        assert_eq!(namespaces.len(), 8);
        assert!(namespaces.contains(&LinuxNamespaceType::Time));
        let cgroup = linux.cgroup().as_ref().unwrap();
        assert_eq!(cgroup.v2(), &Some(true));
        assert_eq!(cgroup.systemd(), &Some(false));
        let sc = linux.seccomp().as_ref().unwrap();
        assert_eq!(sc.enabled(), &Some(true));
        assert_eq!(sc.actions().as_ref().unwrap().len(), 9);
        assert_eq!(sc.operators().as_ref().unwrap().len(), 7);
        assert!(!sc.archs().as_ref().unwrap().is_empty());
        let known = sc.known_flags().as_ref().unwrap();
        assert!(sc
            .supported_flags()
            .iter()
            .flatten()
            .all(|f| known.contains(f)));
        let idmap = linux
            .mount_extensions()
            .as_ref()
            .unwrap()
            .idmap()
            .as_ref()
            .unwrap();
        assert_eq!(idmap.enabled(), &Some(false));
        let annotations = f.annotations().as_ref().unwrap();
        assert_eq!(annotations["io.hull.version"], env!("CARGO_PKG_VERSION"));
        assert!(annotations.contains_key("io.github.seccomp.libseccomp.version"));
        let available = &annotations["io.hull.isolation.available"];
        assert!(available.starts_with("namespace"), "{available}");
        // The VM is listed, or the reason it is not is.
        assert!(
            available.contains("vm")
                || annotations.contains_key("io.hull.isolation.vm.unavailable"),
            "{annotations:?}"
        );
    }

    #[test]
    fn capabilities_follow_cap_last_cap() {
        assert_eq!(CAPABILITIES.len(), 41);
        assert_eq!(CAPABILITIES[21], "CAP_SYS_ADMIN");
        assert_eq!(capabilities(Some(37)).last(), Some(&"CAP_AUDIT_READ"));
        assert_eq!(capabilities(Some(40)).len(), 41);
        assert_eq!(capabilities(Some(63)).len(), 41);
        assert_eq!(capabilities(None).len(), 41);
        let host = features();
        let caps = host["linux"]["capabilities"].as_array().unwrap();
        if let Some(last) = host_cap_last_cap() {
            assert_eq!(caps.len(), (last + 1).min(41));
        }
        assert_eq!(caps[0], "CAP_CHOWN");
    }
}
