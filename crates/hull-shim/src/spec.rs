//! What the shim reads of a bundle's config.json, and of the runtime options.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// Annotations that put containers into one shim, first match wins: runc shim's own
/// group label, then the CRI pod (so a later step can run a pod in one VM).
pub const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

#[derive(Debug, Default, Clone)]
pub struct SpecInfo {
    pub annotations: HashMap<String, String>,
    /// The container has no pid namespace of its own: its init's exit does not end
    /// the rest, so the shim kills them (as runc's shim does).
    pub shared_pid_ns: bool,
    /// `linux.cgroupsPath` when absolute (cgroupfs), to read OOM kills from.
    pub cgroups_path: Option<String>,
}

pub fn load(bundle: &Path) -> anyhow::Result<SpecInfo> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let annotations = v["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let own_pid_ns = v["linux"]["namespaces"].as_array().is_some_and(|ns| {
        ns.iter()
            .any(|n| n["type"] == "pid" && n["path"].as_str().is_none_or(str::is_empty))
    });
    let cgroups_path = v["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| p.starts_with('/'))
        .map(str::to_string);
    Ok(SpecInfo {
        annotations,
        shared_pid_ns: !own_pid_ns,
        cgroups_path,
    })
}

/// The id whose shim serves this container.
pub fn grouping(info: &SpecInfo, id: &str) -> String {
    GROUP_LABELS
        .iter()
        .find_map(|l| info.annotations.get(*l).filter(|g| !g.is_empty()))
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

/// `ConfigPath` of the CRI runtime options (`runtimeoptions.v1.Options`, the only
/// options containerd 1.6 gives a runtime type that is not runc's): hull's config.toml.
pub fn config_path(options: &Any) -> Option<PathBuf> {
    if !options.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    // message Options { string type_url = 1; string config_path = 2; }
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if wire != 2 {
            return found;
        }
        let Ok(s) = input.read_string() else {
            return found;
        };
        if field == 2 && !s.is_empty() {
            found = Some(PathBuf::from(s));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_from_runtime_options() {
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        // field 1 "t", field 2 "/etc/hull/x.toml"
        let mut v = vec![0x0a, 1, b't', 0x12, 16];
        v.extend_from_slice(b"/etc/hull/x.toml");
        any.value = v;
        assert_eq!(config_path(&any), Some(PathBuf::from("/etc/hull/x.toml")));
        any.type_url = "containerd.runc.v1.Options".into();
        assert_eq!(config_path(&any), None);
    }

    #[test]
    fn grouping_by_pod() {
        let mut info = SpecInfo::default();
        assert_eq!(grouping(&info, "c1"), "c1");
        info.annotations
            .insert("io.kubernetes.cri.sandbox-id".into(), "pod1".into());
        assert_eq!(grouping(&info, "c1"), "pod1");
    }
}
