//! `/etc/hull/config.toml` (`HULL_CONFIG` names another file): the host's defaults.
//!
//! ```toml
//! isolation = "namespace"        # for bundles without io.hull.isolation
//! [vm]
//! hypervisor = "auto"            # auto | hull-vmm | qemu
//! guest_dir = "/var/lib/hull/guest"
//! kernel = "/path/vmlinux"       # instead of guest_dir's (with initramfs)
//! initramfs = "/path/initramfs.cpio"
//! vcpus = 1                      # when the bundle sets no cpu quota or cpuset
//! memory_mib = 256               # when the bundle sets no memory limit
//! agent_timeout_s = 120          # boot until the agent answers
//! ```
//!
//! Environment variables beat the file (`HULL_HYPERVISOR`, `HULL_GUEST_DIR`), as they
//! are set for one command; a missing file means every default. Unknown keys are errors:
//! a misspelt `isolaton = "vm"` must not quietly leave containers on the host kernel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_runtime::state::Isolation;
use hull_sandbox::container::{HypervisorChoice, VmSettings};
use serde::Deserialize;

use crate::LifecycleError;

pub const DEFAULT_PATH: &str = "/etc/hull/config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    isolation: Option<String>,
    vm: Option<VmSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSection {
    hypervisor: Option<String>,
    guest_dir: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
    vcpus: Option<u8>,
    memory_mib: Option<u32>,
    agent_timeout_s: Option<u64>,
}

/// The host's settings after the file and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub isolation: Option<Isolation>,
    pub vm: VmSettings,
}

impl Settings {
    /// Reads `HULL_CONFIG` or the default path.
    pub fn load() -> Result<Settings, LifecycleError> {
        let path = std::env::var_os("HULL_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(LifecycleError::Io {
                    what: "cannot read the configuration",
                    path,
                    source,
                })
            }
        };
        let env = |k: &str| std::env::var(k).ok();
        Self::parse(&text, &path, env)
    }

    fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, LifecycleError> {
        let bad = |reason: String| LifecycleError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let isolation = file
            .isolation
            .map(|v| {
                Isolation::parse(&v)
                    .ok_or_else(|| bad(format!("isolation = {v:?}: say vm or namespace")))
            })
            .transpose()?;
        let s = file.vm.unwrap_or_default();
        let mut vm = VmSettings::default();
        let hypervisor = env("HULL_HYPERVISOR").or(s.hypervisor);
        if let Some(h) = hypervisor {
            vm.hypervisor = HypervisorChoice::parse(&h).ok_or_else(|| {
                bad(format!("hypervisor {h:?} (HULL_HYPERVISOR or [vm] hypervisor): say auto, hull-vmm or qemu"))
            })?;
        }
        if let Some(d) = env("HULL_GUEST_DIR").map(PathBuf::from).or(s.guest_dir) {
            vm.guest_dir = d;
        }
        match (s.kernel, s.initramfs) {
            (Some(k), Some(i)) => vm.guest_files = Some((k, i)),
            (None, None) => {}
            _ => {
                return Err(bad(
                    "[vm] kernel and initramfs go together: set both or neither".into(),
                ))
            }
        }
        if let Some(v) = s.vcpus {
            if v == 0 {
                return Err(bad("[vm] vcpus = 0: a VM needs at least one".into()));
            }
            vm.vcpus = v;
        }
        if let Some(m) = s.memory_mib {
            if m < 64 {
                return Err(bad(format!(
                    "[vm] memory_mib = {m}: the guest needs at least 64"
                )));
            }
            vm.memory_mib = m;
        }
        if let Some(t) = s.agent_timeout_s {
            vm.agent_timeout = Duration::from_secs(t.max(1));
        }
        Ok(Settings { isolation, vm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Settings, LifecycleError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Settings::parse(text, Path::new("/etc/hull/config.toml"), |k| {
            env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
        })
    }

    #[test]
    fn empty_is_every_default() {
        let s = parse("", &[]).unwrap();
        assert_eq!(s.isolation, None);
        assert_eq!(s.vm.hypervisor, HypervisorChoice::Auto);
        assert_eq!(
            s.vm.guest_dir,
            PathBuf::from(hull_sandbox::guest::DEFAULT_DIR)
        );
    }

    #[test]
    fn the_file_and_then_the_environment() {
        let text = "isolation = \"vm\"\n[vm]\nhypervisor = \"qemu\"\nvcpus = 2\nmemory_mib = 512\nagent_timeout_s = 30\nguest_dir = \"/g\"\n";
        let s = parse(text, &[]).unwrap();
        assert_eq!(s.isolation, Some(Isolation::Vm));
        assert_eq!(s.vm.hypervisor, HypervisorChoice::Qemu);
        assert_eq!((s.vm.vcpus, s.vm.memory_mib), (2, 512));
        assert_eq!(s.vm.agent_timeout, Duration::from_secs(30));
        let s = parse(
            text,
            &[("HULL_HYPERVISOR", "hull-vmm"), ("HULL_GUEST_DIR", "/e")],
        )
        .unwrap();
        assert_eq!(s.vm.hypervisor, HypervisorChoice::HullVmm);
        assert_eq!(s.vm.guest_dir, PathBuf::from("/e"));
    }

    #[test]
    fn mistakes_are_errors_that_name_the_file() {
        for bad in [
            "isolaton = \"vm\"",
            "isolation = \"gvisor\"",
            "[vm]\nhypervisor = \"firecracker\"",
            "[vm]\nvcpus = 0",
            "[vm]\nkernel = \"/k\"",
            "[vm]\nmemory_mib = 8",
            "isolation = ",
        ] {
            let e = parse(bad, &[]).unwrap_err().to_string();
            assert!(e.contains("/etc/hull/config.toml"), "{bad:?}: {e}");
        }
    }
}
