//! The guest's kernel and initramfs: built from Debian's linux-source-6.1 with hull's
//! config fragment (compiled into this binary, so an installed hull can build its own
//! guest), cached by content hash, found again by `current.json`.
//!
//! The kernel and the initramfs are cached separately: a new agent costs a new cpio of
//! a few MiB, not the ~8-minute kernel build.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_err, Result, SandboxError};
use crate::hypervisor::GuestRoot;

pub const DEFAULT_DIR: &str = "/var/lib/hull/guest";
pub const DEFAULT_SOURCE: &str = "/usr/src/linux-source-6.1.tar.xz";
const FRAGMENT: &str = include_str!("../../../guest/kernel.fragment");
const BUILD_SCRIPT: &str = include_str!("../../../guest/build-kernel");
/// Patches to Debian's source that build-kernel applies (it finds them beside itself).
const PATCHES: [(&str, &str); 1] = [(
    "virtio-mmio-queue-size.patch",
    include_str!("../../../guest/virtio-mmio-queue-size.patch"),
)];
const MANIFEST: &str = "current.json";

/// A built guest, as `current.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestAssets {
    /// Uncompressed ELF with the PVH entry note.
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    /// The agent as /init of a read-only erofs disk: what hull boots its VMs from. The
    /// initramfs holds the same agent for hull-vmm's own tests and `hull vmm` users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_disk: Option<PathBuf>,
    /// How long compiling this kernel took, when `hull guest build` compiled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build_seconds: Option<u64>,
    /// Whether that build reused an earlier build's tree (so it was not a full build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build_incremental: Option<bool>,
}

/// "SECONDS full|incremental", as `build` records it.
fn read_build_record(path: &Path) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let secs = words.next()?.parse().ok()?;
    Some((secs, words.next() == Some("incremental")))
}

impl GuestAssets {
    /// The guest last built into `dir`.
    pub fn locate(dir: &Path) -> Result<GuestAssets> {
        let text = std::fs::read(dir.join(MANIFEST))
            .map_err(|_| SandboxError::NoGuest(dir.to_path_buf()))?;
        let assets: GuestAssets =
            serde_json::from_slice(&text).map_err(|_| SandboxError::NoGuest(dir.to_path_buf()))?;
        let files = [&assets.vmlinux, &assets.bzimage, &assets.initramfs];
        for p in files.into_iter().chain(&assets.agent_disk) {
            if !p.exists() {
                return Err(SandboxError::NoGuest(dir.to_path_buf()));
            }
        }
        Ok(assets)
    }

    /// A guest of the user's own (config.toml's `kernel` and `initramfs`): booted
    /// from its initramfs.
    pub fn custom(kernel: &Path, initramfs: &Path) -> GuestAssets {
        GuestAssets {
            vmlinux: kernel.to_path_buf(),
            bzimage: kernel.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            agent_disk: None,
            kernel_build_seconds: None,
            kernel_build_incremental: None,
        }
    }

    /// What the guest boots into: the agent's disk where the build made one.
    pub fn root(&self) -> GuestRoot {
        match &self.agent_disk {
            Some(disk) => GuestRoot::Disk(disk.clone()),
            None => GuestRoot::Initramfs(self.initramfs.clone()),
        }
    }
}

pub struct BuildOptions {
    pub dir: PathBuf,
    /// The static hull-agent binary to put in as /init.
    pub agent: PathBuf,
    pub source: PathBuf,
}

/// What `build` did, for the user.
#[derive(Debug)]
pub struct BuildReport {
    pub assets: GuestAssets,
    pub kernel_cached: bool,
    pub initramfs_cached: bool,
    pub kernel_build_time: Option<Duration>,
}

pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<BuildReport> {
    std::fs::create_dir_all(&opts.dir).map_err(io_err("cannot create", &opts.dir))?;
    let kernel_dir = opts
        .dir
        .join(format!("kernel-{}", kernel_key(&opts.source)?));
    let kernel_cached = kernel_dir.join("vmlinux").exists() && kernel_dir.join("bzImage").exists();
    let mut kernel_build_time = None;
    let seconds_file = kernel_dir.join("build-seconds");
    if kernel_cached {
        progress(&format!("kernel: cached in {}", kernel_dir.display()));
    } else {
        // A source tree kept from an earlier build makes this one incremental; say so
        // beside the time, which then is not a full build's.
        let kind = if opts.dir.join(".build/linux/Makefile").exists() {
            "incremental"
        } else {
            "full"
        };
        let t = Instant::now();
        build_kernel(opts, &kernel_dir, progress)?;
        kernel_build_time = Some(t.elapsed());
        let record = format!("{} {kind}", t.elapsed().as_secs());
        write_atomic(&seconds_file, record.as_bytes())?;
    }

    let agent = std::fs::read(&opts.agent).map_err(io_err(
        "cannot read the agent binary (build it: cargo build --release -p hull-agent)",
        &opts.agent,
    ))?;
    check_static(&agent, &opts.agent)?;
    let agent_hash = crate::files::hex(&Sha256::digest(&agent));
    let initramfs = opts
        .dir
        .join(format!("initramfs-{}.cpio", &agent_hash[..16]));
    let initramfs_cached = initramfs.exists();
    if initramfs_cached {
        progress(&format!("initramfs: cached in {}", initramfs.display()));
    } else {
        write_atomic(&initramfs, &crate::initramfs::build(&agent))?;
        progress(&format!(
            "initramfs: wrote {} ({} KiB)",
            initramfs.display(),
            std::fs::metadata(&initramfs)
                .map(|m| m.len() / 1024)
                .unwrap_or(0)
        ));
    }
    let agent_disk = opts.dir.join(format!(
        "agent-{}-{AGENT_DISK_LAYOUT}.erofs",
        &agent_hash[..16]
    ));
    if agent_disk.exists() {
        progress(&format!("agent disk: cached in {}", agent_disk.display()));
    } else {
        write_agent_disk(&opts.agent, &agent_disk)?;
        progress(&format!("agent disk: wrote {}", agent_disk.display()));
    }
    let build_record = read_build_record(&seconds_file);
    let assets = GuestAssets {
        vmlinux: kernel_dir.join("vmlinux"),
        bzimage: kernel_dir.join("bzImage"),
        initramfs,
        agent_disk: Some(agent_disk),
        kernel_build_seconds: build_record.map(|r| r.0),
        kernel_build_incremental: build_record.map(|r| r.1),
    };
    let manifest = serde_json::to_vec_pretty(&assets).unwrap_or_default();
    write_atomic(&opts.dir.join(MANIFEST), &manifest)?;
    prune(&opts.dir, &assets);
    Ok(BuildReport {
        assets,
        kernel_cached,
        initramfs_cached,
        kernel_build_time,
    })
}

/// Bumped when the agent disk's tree changes, so a cached image is not reused.
const AGENT_DISK_LAYOUT: &str = "v1";

/// The agent's disk: the agent as /init, and the directories it mounts filesystems on
/// (erofs is read-only: it cannot make them at boot). Reproducible: fixed times, UUID
/// and owners, so the same agent gives the same image.
pub fn write_agent_disk(agent: &Path, image: &Path) -> Result<()> {
    let tree = image.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["dev", "proc", "sys", "tmp", "run"] {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("cannot create", &p))?;
    }
    let init = tree.join("init");
    std::fs::copy(agent, &init).map_err(io_err("cannot copy the agent to", &init))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("cannot chmod", &init))?;
    }
    let staging = image.with_extension("erofs.tmp");
    let made = crate::image::erofs_from_dir_with(
        &tree,
        &staging,
        &["-T0", "-U", AGENT_DISK_UUID, "--all-root"],
    );
    let _ = std::fs::remove_dir_all(&tree);
    let moved = made.and_then(|()| {
        std::fs::rename(&staging, image).map_err(io_err("cannot move the agent disk to", image))
    });
    if moved.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    moved
}

/// Any fixed UUID keeps the image reproducible; nothing mounts it by UUID.
const AGENT_DISK_UUID: &str = "68756c6c-6167-656e-7400-000000000001";

/// Earlier kernels, initramfs images and agent disks, superseded by this build, go (a
/// kernel is ~25 MiB); the kept source tree makes going back cheap.
fn prune(dir: &Path, current: &GuestAssets) {
    let keep = [
        current.vmlinux.parent().map(Path::to_path_buf),
        Some(current.initramfs.clone()),
        current.agent_disk.clone(),
    ];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = ["kernel-", "initramfs-", "agent-"]
            .iter()
            .any(|p| name.starts_with(p))
            && !keep.iter().flatten().any(|k| *k == e.path());
        if stale {
            let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
        }
    }
}

/// The kernel depends on the fragment, the build script, the patches and the source
/// tarball (by path, size and mtime: hashing 130 MiB of xz on every call would cost a
/// second).
fn kernel_key(source: &Path) -> Result<String> {
    let meta = std::fs::metadata(source).map_err(io_err(
        "no kernel source (apt-get install linux-source-6.1) at",
        source,
    ))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(FRAGMENT);
    h.update(BUILD_SCRIPT);
    for (name, text) in PATCHES {
        h.update(name);
        h.update(text);
    }
    h.update(format!("{} {} {mtime}", source.display(), meta.len()));
    Ok(crate::files::hex(&h.finalize())[..16].to_string())
}

fn build_kernel(opts: &BuildOptions, kernel_dir: &Path, progress: &dyn Fn(&str)) -> Result<()> {
    let scripts = opts.dir.join(".scripts");
    std::fs::create_dir_all(&scripts).map_err(io_err("cannot create", &scripts))?;
    write_atomic(&scripts.join("kernel.fragment"), FRAGMENT.as_bytes())?;
    write_atomic(&scripts.join("build-kernel"), BUILD_SCRIPT.as_bytes())?;
    for (name, text) in PATCHES {
        write_atomic(&scripts.join(name), text.as_bytes())?;
    }
    let staging = opts.dir.join(".kernel-staging");
    let _ = std::fs::remove_dir_all(&staging);
    // The extracted tree is kept: a later fragment change recompiles only what changed.
    let workdir = opts.dir.join(".build");
    progress(&format!(
        "kernel: building from {} (about 8 minutes on 2 cores)",
        opts.source.display()
    ));
    let mut child = Command::new("bash")
        .arg(scripts.join("build-kernel"))
        .arg(&staging)
        .arg(&opts.source)
        .env("HULL_GUEST_WORKDIR", &workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SandboxError::Tool(format!("cannot run bash: {e}")))?;
    let done = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(workdir.join("build.log"), done.clone());
    let mut tail = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
            progress(line.trim_start_matches("guest: "));
            tail.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| SandboxError::Tool(format!("wait for the kernel build: {e}")))?;
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    if !status.success() {
        let n = tail.len().saturating_sub(20);
        return Err(SandboxError::Tool(format!(
            "the guest kernel build failed:\n{}",
            tail[n..].join("\n")
        )));
    }
    let _ = std::fs::remove_dir_all(kernel_dir);
    std::fs::rename(&staging, kernel_dir).map_err(io_err("cannot move the kernel to", kernel_dir))
}

/// Every 30 s, how far the compile has got (objects built so far), so a long build
/// does not look hung.
fn spawn_ticker(log: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() < Duration::from_secs(30) {
                continue;
            }
            last = Instant::now();
            let objects = std::fs::read_to_string(&log)
                .map(|t| {
                    t.lines()
                        .filter(|l| l.trim_start().starts_with("CC"))
                        .count()
                })
                .unwrap_or(0);
            eprintln!(
                "hull: guest: kernel: {objects} files compiled, {} s",
                start.elapsed().as_secs()
            );
        }
    })
}

/// A dynamically linked /init would find no libc in the initramfs.
fn check_static(bin: &[u8], path: &Path) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let bad = || SandboxError::Tool(format!("{} is not an x86_64 ELF binary", path.display()));
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" || bin[4] != 2 {
        return Err(bad());
    }
    let u16at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bin[32..40].try_into().map_err(|_| bad())?) as usize;
    let (phentsize, phnum) = (u16at(54), u16at(56));
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let Some(ph) = bin.get(off..off + 4) else {
            return Err(bad());
        };
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP {
            return Err(SandboxError::Tool(format!(
                "{} is dynamically linked; the guest has no libc: build it with crt-static",
                path.display()
            )));
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::files::write_atomic(path, data).map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_are_refused() {
        let e = check_static(&std::fs::read("/bin/sh").unwrap(), Path::new("/bin/sh"));
        assert!(e.unwrap_err().to_string().contains("dynamically linked"));
        assert!(check_static(
            b"not an elf at all, clearly not an elf at all, no no no no no",
            Path::new("x")
        )
        .is_err());
        if let Ok(b) = std::fs::read("/bin/busybox") {
            check_static(&b, Path::new("/bin/busybox")).unwrap();
        }
    }

    #[test]
    fn the_agent_disk_is_reproducible_and_holds_init_and_its_mount_points() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hull-agent-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("hull-agent");
        std::fs::write(&agent, b"\x7fELF not really an agent".repeat(500)).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (a, b) = (dir.join("a.erofs"), dir.join("b.erofs"));
        write_agent_disk(&agent, &a).expect("mkfs.erofs is installed (scripts/install-deps)");
        std::thread::sleep(Duration::from_millis(1100));
        write_agent_disk(&agent, &b).unwrap();
        let dump = |args: &[&str]| {
            let out = Command::new("dump.erofs")
                .args(args)
                .arg(&a)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let root = dump(&["--ls", "--path=/"]);
        let init = dump(&["--path=/init"]);
        let same = std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !["hull-agent", "a.erofs", "b.erofs"].contains(&n.as_str()))
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(same, "two builds of one agent differ");
        for name in ["init", "dev", "proc", "sys", "tmp", "run"] {
            assert!(
                root.lines()
                    .any(|l| l.split_whitespace().last() == Some(name)),
                "{name} missing:\n{root}"
            );
        }
        assert!(init.contains("Size: 12000 "), "{init}");
        assert!(init.contains("Uid: 0   Gid: 0  Access: 0755"), "{init}");
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn missing_manifest_says_what_to_run() {
        let e = GuestAssets::locate(Path::new("/nonexistent/hull-guest")).unwrap_err();
        assert!(e.to_string().contains("hull guest build"), "{e}");
    }
}
