//! The Hypervisor trait: what hull needs from a VMM, whichever it is (the built-in
//! hull-vmm on KVM, or QEMU), so backends plug in behind one crate boundary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Result;

/// How guest instructions execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's binary translator: slower, but boots anywhere.
    Tcg,
}

impl Accel {
    /// KVM when a measured test guest runs at hardware speed, else TCG: an emulated
    /// /dev/kvm (like the one hull is developed on) is slower than TCG and cannot boot
    /// Linux at all.
    ///
    /// The verdict is kept per host boot and /dev/kvm (its inode and ctime, which a
    /// module load or a new node changes), in ACCEL_CACHE: the probe runs a test guest
    /// for about 30 ms, which every VM create would pay. `hull check` always measures.
    pub fn detect() -> Accel {
        Self::detect_cached(Path::new(ACCEL_CACHE), || {
            crate::check::probe_kvm().accel.is_hardware()
        })
    }

    pub fn detect_cached(cache: &Path, probe_is_hardware: impl FnOnce() -> bool) -> Accel {
        let key = accel_key();
        let kept = || match key
            .as_deref()
            .and_then(|k| crate::files::kept(cache, k))
            .as_deref()
        {
            Some("kvm") => Some(Accel::Kvm),
            Some("tcg") => Some(Accel::Tcg),
            _ => None,
        };
        if let Some(accel) = kept() {
            return accel;
        }
        // One probe at a time: ten pods started at once each spun a test vCPU beside the
        // others, and on two CPUs read a nested KVM as emulated, a verdict then kept for
        // the boot. The others wait for the first one's verdict.
        let _lock = crate::files::lock_beside(cache);
        if let Some(accel) = kept() {
            return accel;
        }
        let accel = if probe_is_hardware() {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        if let Some(key) = key {
            let word = if accel == Accel::Kvm { "kvm" } else { "tcg" };
            crate::files::keep(cache, &key, word);
        }
        accel
    }
}

/// Where `Accel::detect` keeps its verdict.
pub const ACCEL_CACHE: &str = "/run/hull-vm/kvm-accel";

/// This host boot and this /dev/kvm; None where the boot id is unknown.
fn accel_key() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let kvm = match std::fs::metadata(crate::check::KVM_PATH) {
        Ok(m) => format!("{}:{}.{}", m.ino(), m.ctime(), m.ctime_nsec()),
        Err(_) => "absent".into(),
    };
    crate::files::boot_key(&format!("/{kvm}"))
}

/// The byte stream between hull and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A virtio-serial port bound to a Unix socket the VMM listens on: QEMU's port
    /// named `hull.agent` where the host has no vhost-vsock, or hull-vmm's console
    /// (the guest's hvc0).
    Serial { socket: PathBuf },
    /// virtio-vsock through the host kernel's vhost-vsock: hull connects to
    /// (cid, port), where the agent listens (`hull.vsock=PORT` on its cmdline).
    Vsock { cid: u32, port: u32 },
    /// Firecracker's hybrid vsock (hull-vmm): a Unix socket on which hull writes
    /// `CONNECT <port>\n` and reads `OK <port>\n` before the stream starts.
    HybridVsock { socket: PathBuf, port: u32 },
}

/// The vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

impl Transport {
    /// vhost-vsock where the host kernel offers it, else a virtio-serial port on a
    /// socket in `dir`. The cid is random (proxies are all pid 1 of their own pid
    /// namespace), below 2^31 and never one of the reserved cids 0-2; a collision
    /// among a host's VMs fails the VMM's start with "Address already in use".
    pub fn detect(dir: &std::path::Path) -> Transport {
        let vhost = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vhost-vsock")
            .is_ok();
        if vhost {
            Transport::Vsock {
                cid: 3 + (crate::random_u64() % (1 << 31)) as u32,
                port: AGENT_VSOCK_PORT,
            }
        } else {
            Transport::Serial {
                socket: dir.join("agent.sock"),
            }
        }
    }

    /// What the guest kernel's cmdline must say for the agent to find this channel.
    pub fn cmdline(&self) -> String {
        match self {
            Transport::Serial { .. } => "hull.console=hvc0".into(),
            Transport::Vsock { port, .. } | Transport::HybridVsock { port, .. } => {
                format!("hull.vsock={port}")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub readonly: bool,
    /// The virtio-blk serial: how the agent finds the disk.
    pub serial: String,
}

/// Where the guest kernel finds its init, the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestRoot {
    /// A cpio archive the kernel unpacks into RAM: a custom guest's (`guest_files`).
    Initramfs(PathBuf),
    /// hull's read-only erofs disk with the agent as /init. The guest reads the agent's
    /// pages as it runs them, and they stay reclaimable page cache; from an initramfs
    /// the whole binary is a copy in the guest's RAM for the VM's life.
    Disk(PathBuf),
}

/// The root disk's virtio-blk serial (container disks are found by theirs).
pub const ROOT_DISK_SERIAL: &str = "hull-agent";

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed vmlinux (PVH entry) or bzImage.
    pub kernel: PathBuf,
    pub root: GuestRoot,
    /// Appended to the cmdline the backend needs itself.
    pub extra_cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// The agent's channel.
    pub transport: Transport,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
    pub accel: Accel,
    /// virtio-net devices on taps the caller opened.
    pub nets: Vec<NetDevice>,
    /// Host directories exported over virtio-9p.
    pub shares: Vec<SharedDir>,
}

impl VmConfig {
    /// The VM's disks in the order the guest names them: a root disk first, because
    /// the kernel mounts `/dev/vda` before there is an init to look for serials.
    pub fn all_disks(&self) -> Vec<Disk> {
        let root = match &self.root {
            GuestRoot::Disk(path) => Some(Disk {
                path: path.clone(),
                readonly: true,
                serial: ROOT_DISK_SERIAL.into(),
            }),
            GuestRoot::Initramfs(_) => None,
        };
        root.into_iter().chain(self.disks.iter().cloned()).collect()
    }

    /// The words the guest's cmdline needs to find its root.
    pub fn root_cmdline(&self) -> &'static str {
        match self.root {
            GuestRoot::Disk(_) => "root=/dev/vda ro rootfstype=erofs init=/init",
            GuestRoot::Initramfs(_) => "",
        }
    }

    pub fn initramfs(&self) -> Option<&std::path::Path> {
        match &self.root {
            GuestRoot::Initramfs(path) => Some(path),
            GuestRoot::Disk(_) => None,
        }
    }
}

/// A host directory the guest mounts by `tag` (virtio-9p).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    pub tag: String,
    pub path: PathBuf,
    pub readonly: bool,
}

/// A virtio-net device whose host side is an open tap.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The tap's fd, inheritable: the VMM takes it over.
    pub tap_fd: i32,
    pub mac: String,
}

/// A running VM. Dropping it kills the VMM and reaps it.
pub trait Vm: Send {
    /// The VMM process's pid on the host.
    fn pid(&self) -> u32;
    /// The VMM's exit code if it has exited, waiting up to `timeout` for it.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>>;
    /// Ends the VMM now.
    fn kill(&mut self);
    /// Asks the guest to shut down, as a power button would: Ctrl-Alt-Del on its
    /// keyboard. The VMM exits once the guest has stopped; this does not wait.
    fn request_shutdown(&mut self) -> Result<()>;
    /// What the VMM said on stderr before it exited, if it did.
    fn exit_message(&self) -> Option<String> {
        None
    }
}

pub trait Hypervisor {
    fn name(&self) -> &'static str;
    /// The agent's channel for a VM whose files live in `dir`.
    fn transport(&self, dir: &std::path::Path) -> Transport {
        Transport::detect(dir)
    }
    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>>;
    /// The virtio devices a VM can have for disks, network interfaces and shared
    /// directories (beside the agent's channel, a root disk, and what the backend
    /// always adds).
    fn device_slots(&self) -> usize;
}

#[cfg(test)]
mod accel_tests {
    use super::*;

    /// A directory of the test's own: the verdict and the lock beside it go with it.
    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hull-accel-{}", crate::random_u64()));
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn the_verdict_is_probed_once_and_kept() {
        let dir = scratch();
        let cache = dir.join("accel");
        let mut probes = 0;
        let first = Accel::detect_cached(&cache, || {
            probes += 1;
            false
        });
        let second = Accel::detect_cached(&cache, || {
            probes += 1;
            true
        });
        assert_eq!((first, second, probes), (Accel::Tcg, Accel::Tcg, 1));
        // Another boot or another /dev/kvm: probed again.
        std::fs::write(&cache, "some-other-boot/absent kvm\n").unwrap();
        let third = Accel::detect_cached(&cache, || true);
        assert_eq!(third, Accel::Kvm);
        assert!(std::fs::read_to_string(&cache).unwrap().ends_with(" kvm\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn creates_at_once_wait_for_one_probe() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = scratch();
        let cache = dir.join("accel");
        let probes = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let accel = Accel::detect_cached(&cache, || {
                        probes.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        true
                    });
                    assert_eq!(accel, Accel::Kvm);
                });
            }
        });
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
