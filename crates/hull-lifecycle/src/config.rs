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
//! rootfs_cache = "/var/lib/hull/rootfs-cache"   # erofs images of rootfs trees
//! huge_pages = false             # hull-vmm: faster boots, fewer exits, more memory
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSection {
    hypervisor: Option<String>,
    guest_dir: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
    vcpus: Option<u8>,
    memory_mib: Option<u32>,
    agent_timeout_s: Option<u64>,
    rootfs_cache: Option<PathBuf>,
    huge_pages: Option<bool>,
}

/// The host's settings: the file as read. The VM part is made only when a VM container
/// needs it (`vm()`): a namespace container's create touches no VM code (every page of
/// the static binary a start touches is RSS).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub isolation: Option<Isolation>,
    path: PathBuf,
    vm: VmSection,
}

impl Settings {
    /// Reads `HULL_CONFIG` or the default path; no file is every default.
    pub fn load() -> Result<Settings, LifecycleError> {
        let path = std::env::var_os("HULL_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings {
                path,
                ..Settings::default()
            }),
            Err(source) => Err(LifecycleError::Io {
                what: "cannot read the configuration",
                path,
                source,
            }),
        }
    }

    fn parse(text: &str, path: &Path) -> Result<Settings, LifecycleError> {
        let file: File = toml::from_str(text).map_err(|e| bad(path, e.message().to_string()))?;
        let isolation = file
            .isolation
            .map(|v| {
                Isolation::parse(&v)
                    .ok_or_else(|| bad(path, format!("isolation = {v:?}: say vm or namespace")))
            })
            .transpose()?;
        Ok(Settings {
            isolation,
            path: path.to_path_buf(),
            vm: file.vm.unwrap_or_default(),
        })
    }

    /// The VM settings: the file's `[vm]`, then the environment over it.
    pub fn vm(&self) -> Result<VmSettings, LifecycleError> {
        self.vm_with(|k| std::env::var(k).ok())
    }

    fn vm_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<VmSettings, LifecycleError> {
        let s = &self.vm;
        let bad = |reason: String| bad(&self.path, reason);
        let mut vm = VmSettings::default();
        if let Some(h) = env("HULL_HYPERVISOR").or(s.hypervisor.clone()) {
            vm.hypervisor = HypervisorChoice::parse(&h).ok_or_else(|| {
                bad(format!("hypervisor {h:?} (HULL_HYPERVISOR or [vm] hypervisor): say auto, hull-vmm or qemu"))
            })?;
        }
        if let Some(d) = env("HULL_GUEST_DIR")
            .map(PathBuf::from)
            .or(s.guest_dir.clone())
        {
            vm.guest_dir = d;
        }
        match (&s.kernel, &s.initramfs) {
            (Some(k), Some(i)) => vm.guest_files = Some((k.clone(), i.clone())),
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
        if let Some(c) = &s.rootfs_cache {
            if !c.is_absolute() {
                return Err(bad(format!(
                    "[vm] rootfs_cache = {c:?}: give an absolute path"
                )));
            }
            vm.rootfs_cache = c.clone();
        }
        vm.huge_pages = s.huge_pages.unwrap_or(false);
        Ok(vm)
    }
}

fn bad(path: &Path, reason: String) -> LifecycleError {
    LifecycleError::Config {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/hull/config.toml";

    /// The file's settings and their VM part under `env`.
    fn parse(text: &str, env: &[(&str, &str)]) -> Result<(Settings, VmSettings), LifecycleError> {
        let s = Settings::parse(text, Path::new(PATH))?;
        let vm = s.vm_with(|k| {
            env.iter()
                .find(|(a, _)| *a == k)
                .map(|(_, b)| b.to_string())
        })?;
        Ok((s, vm))
    }

    #[test]
    fn empty_is_every_default() {
        let (s, vm) = parse("", &[]).unwrap();
        assert_eq!(s.isolation, None);
        assert_eq!(vm.hypervisor, HypervisorChoice::Auto);
        assert_eq!(
            vm.guest_dir,
            PathBuf::from(hull_sandbox::guest::DEFAULT_DIR)
        );
    }

    #[test]
    fn the_file_and_then_the_environment() {
        let text = "isolation = \"vm\"\n[vm]\nhypervisor = \"qemu\"\nvcpus = 2\nmemory_mib = 512\nagent_timeout_s = 30\nguest_dir = \"/g\"\nhuge_pages = true\n";
        let (s, vm) = parse(text, &[]).unwrap();
        assert_eq!(s.isolation, Some(Isolation::Vm));
        assert_eq!(vm.hypervisor, HypervisorChoice::Qemu);
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 512));
        assert_eq!(vm.agent_timeout, Duration::from_secs(30));
        assert!(vm.huge_pages);
        let env = [("HULL_HYPERVISOR", "hull-vmm"), ("HULL_GUEST_DIR", "/e")];
        let (_, vm) = parse(text, &env).unwrap();
        assert_eq!(vm.hypervisor, HypervisorChoice::HullVmm);
        assert_eq!(vm.guest_dir, PathBuf::from("/e"));
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
            assert!(e.contains(PATH), "{bad:?}: {e}");
        }
    }
}
