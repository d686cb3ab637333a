//! L1's kernel: Debian's cloud kernel, whose `kvm-amd.ko` loads on QEMU's emulated AMD
//! SVM (`-cpu max`). The package is downloaded with `apt-get download` and unpacked with
//! `dpkg-deb -x`, never installed: only the kernel and the modules L1 loads ([`MODULES`]) are
//! kept, in `<cache>/<version>/`, so a second preparation costs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, Result, TestbedError};

/// The meta-package whose dependency names the current cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The modules L1 loads, in load order, as paths inside `/lib/modules/<version>/kernel/`:
/// what `/dev/kvm` needs on AMD, then what a VM container's network needs (a tap, the
/// engine's veth, and the tc ingress redirects hull mirrors it with), then what a
/// containerd with CRI needs in L1 (bench/pods-nested): CNI's bridge and the overlayfs
/// snapshotter. None depends on a module outside the list.
pub const MODULES: [&str; 12] = [
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
    "drivers/net/tun.ko",
    "drivers/net/veth.ko",
    "net/sched/sch_ingress.ko",
    "net/sched/cls_u32.ko",
    "net/sched/act_mirred.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
    "fs/overlayfs/overlay.ko",
];

/// A cloud kernel unpacked into the cache.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// `6.1.0-57-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// [`MODULES`], in load order.
    pub modules: Vec<PathBuf>,
}

impl DebianKernel {
    fn at(dir: &Path, version: &str) -> DebianKernel {
        DebianKernel {
            version: version.to_string(),
            vmlinuz: dir.join("vmlinuz"),
            modules: MODULES.iter().map(|m| dir.join(file_name(m))).collect(),
        }
    }

    fn complete(&self) -> bool {
        self.vmlinuz.is_file() && self.modules.iter().all(|m| m.is_file())
    }
}

fn file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// The current cloud kernel, from the cache or downloaded into it. Without apt (an
/// offline machine) the newest version already cached serves.
pub fn ensure(cache: &Path, progress: &dyn Fn(&str)) -> Result<DebianKernel> {
    let package = match current_package() {
        Ok(p) => p,
        Err(e) => {
            return newest_cached(cache).ok_or(e);
        }
    };
    let version = package.trim_start_matches("linux-image-").to_string();
    let dir = cache.join(&version);
    let kernel = DebianKernel::at(&dir, &version);
    if kernel.complete() {
        return Ok(kernel);
    }
    progress(&format!(
        "downloading {package} into {} (apt-get download; not installed)",
        dir.display()
    ));
    std::fs::create_dir_all(cache).map_err(io_err("cannot create", cache))?;
    // Tests boot test beds in parallel threads and processes: one downloads, the others
    // wait for it and find the kernel there.
    let lock_path = cache.join(".download.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err("cannot create", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("cannot lock", &lock_path)(std::io::Error::from(e)))?;
    if kernel.complete() {
        return Ok(kernel);
    }
    let work = cache.join(format!(".{version}.tmp.{}", std::process::id()));
    let unpacked = unpack(&package, &version, &work, &dir);
    let _ = std::fs::remove_dir_all(&work);
    unpacked?;
    Ok(kernel)
}

/// `linux-image-6.1.0-57-cloud-amd64`, as the meta-package depends on it; runs
/// `apt-get update` once if apt's lists do not know the meta-package yet.
fn current_package() -> Result<String> {
    let ask = || -> Result<Option<String>> {
        let out = tool(Command::new("apt-cache").args(["depends", META_PACKAGE]))?;
        Ok(out.lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends: ")?;
            dep.starts_with("linux-image-").then(|| dep.to_string())
        }))
    };
    if let Some(p) = ask()? {
        return Ok(p);
    }
    tool(Command::new("apt-get").args(["update", "-qq"]))?;
    ask()?.ok_or_else(|| TestbedError::Tool {
        program: "apt-cache".into(),
        detail: format!("{META_PACKAGE} depends on no linux-image-* (is this Debian amd64?)"),
    })
}

fn newest_cached(cache: &Path) -> Option<DebianKernel> {
    let mut found: Vec<DebianKernel> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.to_string();
            let k = DebianKernel::at(&e.path(), &version);
            (!version.starts_with('.') && k.complete()).then_some(k)
        })
        .collect();
    // 6.1.0-57 after 6.1.0-9: compare the ABI number as a number.
    found.sort_by_key(|k| {
        k.version
            .split('-')
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
    });
    found.pop()
}

/// Downloads the package into `work`, unpacks it there and moves the kernel and the
/// modules into `dir` in one rename, so a crash never leaves a half-filled cache entry.
fn unpack(package: &str, version: &str, work: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io_err("cannot create", work))?;
    tool(
        Command::new("apt-get")
            .args(["-q", "download", package])
            .current_dir(work),
    )?;
    let deb = std::fs::read_dir(work)
        .map_err(io_err("cannot read", work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| TestbedError::Missing {
            what: "the downloaded .deb",
            path: work.to_path_buf(),
            hint: "apt-get download said it succeeded but left no .deb",
        })?;
    let tree = work.join("tree");
    tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(io_err("cannot create", &out))?;
    let mut wanted = vec![(
        tree.join(format!("boot/vmlinuz-{version}")),
        out.join("vmlinuz"),
    )];
    for m in MODULES {
        let from = tree.join(format!("lib/modules/{version}/kernel/{m}"));
        wanted.push((from, out.join(file_name(m))));
    }
    for (from, to) in wanted {
        std::fs::copy(&from, &to).map_err(io_err("cannot copy out of the package", &from))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&out, dir).map_err(io_err("cannot move into the cache", dir))
}

/// Runs a helper and returns its stdout; a failure carries its stderr.
pub(crate) fn tool(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| TestbedError::Tool {
        program: program.clone(),
        detail: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        return Err(TestbedError::Tool {
            program,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_cached_kernel_wins_by_abi_number() {
        let cache = std::env::temp_dir().join(format!("hull-testbed-cache-{}", std::process::id()));
        for v in [
            "6.1.0-9-cloud-amd64",
            "6.1.0-57-cloud-amd64",
            "6.1.0-60-cloud-amd64",
        ] {
            let d = cache.join(v);
            std::fs::create_dir_all(&d).unwrap();
            // 6.1.0-60 is incomplete: no modules.
            let modules = if v.contains("-60-") {
                &[][..]
            } else {
                &MODULES[..]
            };
            for f in std::iter::once("vmlinuz").chain(modules.iter().map(|m| file_name(m))) {
                std::fs::write(d.join(f), b"x").unwrap();
            }
        }
        let k = newest_cached(&cache).unwrap();
        std::fs::remove_dir_all(&cache).unwrap();
        assert_eq!(k.version, "6.1.0-57-cloud-amd64");
        assert_eq!(k.modules[2].file_name().unwrap(), "kvm-amd.ko");
    }
}
