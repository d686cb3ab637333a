//! config.json as the guest gets it. The engine wrote it for the host: namespace paths
//! name the host's namespaces, bind mounts name the host's files. Inside the VM:
//! - the network namespace at a path goes: the container shares the guest's network,
//!   where the engine's interfaces are mirrored (network.rs); any other namespace
//!   path is refused: a VM container cannot join a host namespace;
//! - a bind of a host file (podman's and docker's /etc/hosts, /etc/resolv.conf,
//!   /etc/hostname, /run/.containerenv, a file volume) travels as a copy made at create,
//!   up to 128 KiB each: later changes on either side are not seen by the other;
//! - a bind at /dev/shm becomes a tmpfs: shared memory cannot cross the VM boundary;
//! - a bind of the host's /sys (rootless specs) binds the guest's;
//! - hooks go: prestart, createRuntime, poststart and poststop run on the host;
//!   createContainer and startContainer, which would run in the container's
//!   namespaces with the host's programs, are refused;
//! - a bind of a host directory is shared both ways over virtio-9p (QEMU's local
//!   filesystem driver, read-only when the mount is): the guest mounts it by tag and
//!   binds that. Debian has no virtiofsd; 9p needs nothing but QEMU.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hull_proto::{MountFile, MountShare};
use serde_json::{json, Value};

use crate::error::{Result, SandboxError};
use crate::hypervisor::SharedDir;

/// The largest host file a bind mount copies into the guest.
pub const MAX_FILE: u64 = 128 * 1024;

/// What the guest gets: its config.json, the files its binds take along, the host
/// directories they share.
#[derive(Debug, Default)]
pub struct GuestConfig {
    /// config.json as the guest gets it; text only when it is sent.
    pub config: Value,
    pub files: Vec<MountFile>,
    pub shares: Vec<MountShare>,
    /// What the VMM exports, one per share.
    pub dirs: Vec<SharedDir>,
}

pub fn for_guest(config: &str, bundle: &Path) -> Result<GuestConfig> {
    let bad =
        |m: String| SandboxError::Vm(format!("{}: {m}", bundle.join("config.json").display()));
    let mut v: Value = serde_json::from_str(config).map_err(|e| bad(e.to_string()))?;
    if let Some(namespaces) = v
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    {
        // A pod member's namespaces shared with its sandbox (member.rs) are the
        // sandbox container's in the guest.
        let host_path = |ns: &Value| ns.get("path").is_some_and(|p| p != super::pod::SANDBOX_NS);
        namespaces.retain(|ns| !(ns["type"] == "network" && host_path(ns)));
        if let Some(ns) = namespaces.iter().find(|ns| host_path(ns)) {
            return Err(bad(format!(
                "the {} namespace at {} is the host's: a container in a VM cannot join it",
                ns["type"].as_str().unwrap_or("?"),
                ns["path"].as_str().unwrap_or("?")
            )));
        }
    }
    for kind in ["createContainer", "startContainer"] {
        if v["hooks"][kind].as_array().is_some_and(|h| !h.is_empty()) {
            return Err(bad(format!(
                "hooks.{kind}: these hooks run in the container's namespaces, which are in the VM, and their programs are the host's: a VM container cannot run them"
            )));
        }
    }
    // The rest run on the host (create, start, delete): the guest has none of them.
    if let Some(obj) = v.as_object_mut() {
        obj.remove("hooks");
    }
    let mut out = GuestConfig::default();
    if let Some(mounts) = v.get_mut("mounts").and_then(Value::as_array_mut) {
        for (i, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let dest = m["destination"].as_str().unwrap_or_default().to_string();
            let source = m["source"].as_str().unwrap_or_default();
            let source = if Path::new(source).is_absolute() {
                PathBuf::from(source)
            } else {
                bundle.join(source)
            };
            // The host's sysfs bound in (a rootless spec's: sysfs cannot be mounted in a
            // user namespace) is the guest's own in the VM: the host's devices are no
            // business of the guest's, and need no share.
            if source == Path::new("/sys") {
                continue;
            }
            if dest == "/dev/shm" {
                *m = json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]});
                continue;
            }
            let meta = std::fs::metadata(&source)
                .map_err(|e| bad(format!("bind mount source {}: {e}", source.display())))?;
            if meta.is_dir() {
                let readonly = m["options"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|x| x == "ro"));
                // One device per directory and mode: a VM has few virtio slots.
                let same = |d: &&SharedDir| d.path == source && d.readonly == readonly;
                let tag = match out.dirs.iter().find(same) {
                    Some(d) => d.tag.clone(),
                    None => {
                        let tag = format!("hullvol{}", out.dirs.len());
                        out.dirs.push(SharedDir {
                            tag: tag.clone(),
                            path: source,
                            readonly,
                        });
                        tag
                    }
                };
                out.shares.push(MountShare {
                    mount: i,
                    tag,
                    subdir: None,
                });
                continue;
            }
            if !meta.is_file() {
                return Err(bad(format!(
                    "bind mount of {} at {dest}: only regular files and directories can reach a VM",
                    source.display()
                )));
            }
            if meta.len() > MAX_FILE {
                return Err(bad(format!(
                    "bind mount of {} at {dest}: {} bytes; files bound into a VM container are copied, up to {MAX_FILE} bytes",
                    source.display(),
                    meta.len()
                )));
            }
            let content = std::fs::read(&source)
                .map_err(|e| bad(format!("bind mount source {}: {e}", source.display())))?;
            out.files.push(MountFile {
                mount: i,
                content,
                mode: meta.permissions().mode() & 0o7777,
            });
        }
    }
    out.config = v;
    Ok(out)
}

/// The container shares the guest's network (where the mirrored interfaces are) instead
/// of a new namespace of its own: its engine gave it a network, built by a hook.
pub fn share_guest_network(g: &mut GuestConfig) {
    if let Some(namespaces) = g
        .config
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    {
        namespaces.retain(|ns| ns["type"] != "network");
    }
}

fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hull-gc-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(d.join("vol")).unwrap();
        std::fs::write(d.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        d
    }

    #[test]
    fn the_engines_namespaces_and_files_become_the_guests() {
        let b = bundle();
        let config = json!({
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": b.join("hosts"), "options": ["bind"]},
                {"destination": "/dev/shm", "type": "bind", "source": b.join("vol"), "options": ["bind"]},
            ]
        });
        let g = for_guest(&config.to_string(), &b).unwrap();
        let (v, files) = (g.config, g.files);
        assert_eq!(v["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert_eq!(v["mounts"][2]["type"], "tmpfs");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].mount, 1);
        assert_eq!(files[0].content, b"127.0.0.1 localhost\n");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn directories_are_shared_read_only_when_the_mount_is() {
        let b = bundle();
        let config = json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": b.join("vol"), "options": ["rbind", "ro"]},
            {"destination": "/rw", "type": "bind", "source": "vol", "options": ["rbind"]},
        ]});
        let g = for_guest(&config.to_string(), &b).unwrap();
        let tags: Vec<(usize, &str)> = g.shares.iter().map(|s| (s.mount, s.tag.as_str())).collect();
        assert_eq!(tags, [(0, "hullvol0"), (1, "hullvol1")]);
        // The same directory twice, in one mode: one device.
        let twice = json!({"mounts": [
            {"destination": "/a", "type": "bind", "source": "vol"},
            {"destination": "/b", "type": "bind", "source": "vol"},
        ]});
        let g2 = for_guest(&twice.to_string(), &b).unwrap();
        assert_eq!((g2.dirs.len(), g2.shares.len()), (1, 2));
        assert_eq!((g.dirs[0].readonly, g.dirs[1].readonly), (true, false));
        assert_eq!(g.dirs[1].path, b.join("vol"));
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn what_cannot_reach_a_vm_is_refused_by_name() {
        let b = bundle();
        let ipc = json!({"linux": {"namespaces": [{"type": "ipc", "path": "/proc/1/ns/ipc"}]}});
        let e = for_guest(&ipc.to_string(), &b).unwrap_err().to_string();
        assert!(e.contains("ipc namespace"), "{e}");
        let null =
            json!({"mounts": [{"destination": "/null", "type": "bind", "source": "/dev/null"}]});
        let e = for_guest(&null.to_string(), &b).unwrap_err().to_string();
        assert!(
            e.contains("/null") && e.contains("only regular files"),
            "{e}"
        );
        std::fs::write(b.join("big"), vec![0u8; MAX_FILE as usize + 1]).unwrap();
        let big = json!({"mounts": [{"destination": "/big", "type": "bind", "source": "big"}]});
        let e = for_guest(&big.to_string(), &b).unwrap_err().to_string();
        assert!(e.contains("copied"), "{e}");
        std::fs::remove_dir_all(&b).unwrap();
    }
}
