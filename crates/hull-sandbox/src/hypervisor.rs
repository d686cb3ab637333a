//! The Hypervisor trait: what hull needs from a VMM, whichever it is (the built-in
//! hull-vmm on KVM, or QEMU), so backends plug in behind one crate boundary.

use std::path::PathBuf;
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
    pub fn detect() -> Accel {
        if crate::check::probe_kvm().accel.is_hardware() {
            Accel::Kvm
        } else {
            Accel::Tcg
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

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed vmlinux (PVH entry) or bzImage.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Appended to the cmdline the backend needs itself.
    pub extra_cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// The host end of the agent's channel: a Unix socket the backend listens on.
    pub agent_socket: PathBuf,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
    pub accel: Accel,
}

/// A running VM. Dropping it kills the VMM and reaps it.
pub trait Vm: Send {
    /// The VMM process's pid on the host.
    fn pid(&self) -> u32;
    /// The VMM's exit code if it has exited, waiting up to `timeout` for it.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>>;
    /// Ends the VMM now.
    fn kill(&mut self);
}

pub trait Hypervisor {
    fn name(&self) -> &'static str;
    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>>;
}
