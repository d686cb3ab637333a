//! hull's nested-KVM test bed. This machine's `/dev/kvm` is emulated and cannot boot
//! Linux, but QEMU/TCG with `-cpu max` emulates AMD SVM: an L1 guest running Debian's
//! cloud kernel loads `kvm-amd` and gets a working `/dev/kvm`, on which `hull vmm` boots
//! the hull guest (L2). The test bed builds that L1 (kernel and modules from Debian's
//! package, static busybox, hull, hull-agent, mkfs.erofs, the hull guest), boots it once
//! and runs many commands in it, bringing back each one's output and exit status.
//!
//! ```no_run
//! let opts = hull_testbed::Options::for_release_dir("target/x86_64-unknown-linux-gnu/release");
//! let mut l1 = hull_testbed::L1::boot(&opts, &|m| eprintln!("{m}"))?;
//! let out = l1.run("hull check", std::time::Duration::from_secs(60))?;
//! println!("{} (exit {})", out.output, out.code);
//! # Ok::<(), hull_testbed::TestbedError>(())
//! ```

pub mod cpio;
pub mod debian;
pub mod error;
pub mod image;
pub mod monitor;
pub mod session;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Result, TestbedError};
pub use session::{CommandOutput, L1};

/// Where Debian's kernels are unpacked, one directory per kernel version.
pub const DEFAULT_CACHE: &str = "/var/lib/hull/testbed";

/// What L1 is made of and how it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// hull's static release binary.
    pub hull: PathBuf,
    /// The static hull-agent the L2 guest's initramfs is made from.
    pub agent: PathBuf,
    /// Static busybox (Debian's busybox-static).
    pub busybox: PathBuf,
    /// Where `hull guest build` left the guest (its `current.json`).
    pub guest_dir: PathBuf,
    pub cache: PathBuf,
    /// Extra host files for L1: (host path, path in L1; relative ones go under
    /// `/testbed/files/`).
    pub files: Vec<(PathBuf, String)>,
    /// Extra host programs for L1, at the same path, each with its libraries (a bench
    /// brings QEMU this way).
    pub tools: Vec<PathBuf>,
    /// L1's memory: room for a 256 MiB L2 guest, hull and the initramfs itself.
    pub memory_mib: u32,
    /// L1's CPUs (QEMU's `-smp`): hull gives a VM container no more vCPUs than its host
    /// has, so an SMP guest needs 2 here.
    pub cpus: u8,
    /// Ring L1's keyboard twice a second (monitor.rs says why); off only to show what
    /// happens without it.
    pub doorbell: bool,
    /// QEMU's niceness: L1 burns a whole core under TCG.
    pub nice: i32,
    /// From starting QEMU to L1's init answering.
    pub boot_timeout: Duration,
    pub qemu: PathBuf,
}

impl Options {
    /// hull and hull-agent from a cargo target directory (`.../release`).
    pub fn for_release_dir(dir: impl AsRef<Path>) -> Options {
        let dir = dir.as_ref();
        Options {
            hull: dir.join("hull"),
            agent: dir.join("hull-agent"),
            busybox: "/bin/busybox".into(),
            guest_dir: hull_sandbox::guest::DEFAULT_DIR.into(),
            cache: DEFAULT_CACHE.into(),
            files: Vec::new(),
            tools: Vec::new(),
            memory_mib: 2048,
            cpus: 1,
            doorbell: true,
            nice: 10,
            boot_timeout: Duration::from_secs(90),
            qemu: "qemu-system-x86_64".into(),
        }
    }

    /// The workspace's release directory, as a test of a workspace crate finds it
    /// (`CARGO_TARGET_DIR` or `<workspace>/target`).
    pub fn for_workspace() -> Options {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        Options::for_release_dir(target.join("x86_64-unknown-linux-gnu/release"))
    }
}

/// L1's parts, checked and gathered: the kernel, and what its initramfs holds.
pub struct Prepared {
    pub kernel: debian::DebianKernel,
    pub entries: Vec<cpio::Entry>,
}

/// Checks that every part of L1 is there (saying how to make a missing one) and
/// downloads Debian's kernel into the cache if it is not there yet.
pub fn prepare(opts: &Options, progress: &dyn Fn(&str)) -> Result<Prepared> {
    const BUILD: &str = "build it: nice -n 19 cargo build --release -j 1";
    image::require_static("hull's release binary", &opts.hull, BUILD)?;
    image::require_static("hull-agent's release binary", &opts.agent, BUILD)?;
    image::require_static(
        "static busybox",
        &opts.busybox,
        "apt-get install busybox-static",
    )?;
    let guest = hull_sandbox::guest::GuestAssets::locate(&opts.guest_dir)?;
    // What hull runs in L1: mkfs.erofs for a VM container's rootfs, ip and tc to
    // mirror its network.
    let mut tools = Vec::new();
    for (program, what, hint) in [
        ("mkfs.erofs", "mkfs.erofs", "apt-get install erofs-utils"),
        ("ip", "iproute2's ip", "apt-get install iproute2"),
        ("tc", "iproute2's tc", "apt-get install iproute2"),
    ] {
        tools.push(image::which(program).ok_or_else(|| TestbedError::Missing {
            what,
            path: "PATH".into(),
            hint,
        })?);
    }
    tools.extend(opts.tools.iter().cloned());
    let kernel = debian::ensure(&opts.cache, progress)?;
    let entries = image::entries(&image::Inputs {
        kernel: &kernel,
        busybox: &opts.busybox,
        hull: &opts.hull,
        agent: &opts.agent,
        guest: &guest,
        tools: &tools,
        files: &opts.files,
    })?;
    Ok(Prepared { kernel, entries })
}
