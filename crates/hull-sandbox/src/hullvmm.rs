//! hull's own VMM as a Hypervisor: `hull vmm --config FILE`, a re-exec of the hull
//! binary, booting the guest on KVM. The agent's channel is virtio-vsock, exposed on the
//! host as Firecracker's hybrid vsock: a Unix socket that takes `CONNECT <port>`.
//! Network interfaces are taps the caller opened (in the container's network
//! namespace, where hull-vmm could not name them): hull-vmm inherits their fds.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SandboxError};
use crate::hypervisor::{Hypervisor, Transport, Vm, VmConfig, AGENT_VSOCK_PORT};
use crate::qemu::BASE_CMDLINE;
use crate::vmm_process::{ShutdownRequest, VmmProcess};

/// The guest's vsock context id: each VM has its own device, so any id >= 3 will do.
const GUEST_CID: u32 = 3;
/// hull-vmm maps the kernel's text and the initramfs from their files, shared by every
/// VM that boots them, until the guest writes a page (hull-vmm's `boot::shared`). Two
/// boot-time writes would copy most of them:
/// - `noreplace-smp`: a one-vCPU kernel rewrites every `lock` prefix in its text to a
///   NOP (about 2.5 MiB of pages copied here); the prefixes stay, at a small cost to a
///   uniprocessor guest;
/// - `retain_initrd`: a freed initramfs is poisoned page by page (3.6 MiB copied);
///   kept, its pages stay the host's page cache, and the guest has that much less RAM.
const SHARED_PAGES_CMDLINE: &str = "noreplace-smp retain_initrd";

pub struct HullVmm {
    /// The hull binary (`/proc/self/exe` from within hull).
    pub binary: PathBuf,
    /// Guest memory on transparent huge pages, 2 MiB-aligned: about one nested page
    /// fault per 2 MiB the guest touches instead of one per 4 KiB (a faster boot, fewer
    /// exits), but every touched 2 MiB is host memory, and the kernel and initramfs
    /// are the VM's own copies instead of pages shared between VMs. Off: density.
    pub huge_pages: bool,
}

impl Default for HullVmm {
    fn default() -> Self {
        HullVmm {
            binary: "/proc/self/exe".into(),
            huge_pages: false,
        }
    }
}

impl HullVmm {
    /// The VM description `hull vmm` reads.
    pub fn config(&self, c: &VmConfig) -> Result<serde_json::Value> {
        self.config_jailed(c, None)
    }

    /// The VM description; with `jail`, hull-vmm confines itself to the sandbox
    /// directory (where its sockets are) as that uid once the VM is built.
    pub fn config_jailed(
        &self,
        c: &VmConfig,
        jail: Option<&crate::jail::JailId>,
    ) -> Result<serde_json::Value> {
        if !c.shares.is_empty() {
            return Err(SandboxError::Vm(
                "hull-vmm has no virtio-9p: directory volumes of a VM container need QEMU for now (HULL_HYPERVISOR=qemu)".into(),
            ));
        }
        let (vsock, console) = match &c.transport {
            Transport::HybridVsock { socket, .. } => (
                serde_json::json!({"guest_cid": GUEST_CID, "uds_path": socket}),
                serde_json::Value::Null,
            ),
            Transport::Serial { socket } => (
                serde_json::Value::Null,
                serde_json::json!({"socket": socket}),
            ),
            Transport::Vsock { .. } => {
                return Err(SandboxError::Vm(
                    "hull-vmm has no vhost-vsock: its vsock is hybrid, on a Unix socket".into(),
                ))
            }
        };
        let cmdline = [
            BASE_CMDLINE,
            c.root_cmdline(),
            SHARED_PAGES_CMDLINE,
            &c.transport.cmdline(),
            &c.extra_cmdline,
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        let block: Vec<_> = c
            .all_disks()
            .iter()
            .map(|d| serde_json::json!({"path": d.path, "read_only": d.readonly, "serial": d.serial}))
            .collect();
        let net: Vec<_> = c
            .nets
            .iter()
            .map(|n| serde_json::json!({"tap_fd": n.tap_fd, "guest_mac": n.mac}))
            .collect();
        Ok(serde_json::json!({
            "kernel": c.kernel,
            "initramfs": c.initramfs(),
            "cmdline": cmdline,
            "vcpus": c.vcpus,
            "memory_mib": c.memory_mib,
            "serial": {"file": c.console_log},
            "block": block,
            "rng": true,
            "vsock": vsock,
            "console": console,
            "net": net,
            "free_page_reporting": true,
            "hugepages": if self.huge_pages { "transparent" } else { "none" },
            "jail": jail.map(|j| serde_json::json!({"root": jail_root(c), "uid": j.uid, "gid": j.gid, "keep_ids": j.is_own()})),
        }))
    }
}

/// The directory of the VM's sockets and console log, which becomes the jailed VMM's
/// root: it reads it, cannot write it (bound read-only), and sees nothing else.
fn jail_root(c: &VmConfig) -> std::path::PathBuf {
    match c.console_log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

impl Hypervisor for HullVmm {
    fn name(&self) -> &'static str {
        "hull-vmm"
    }

    fn transport(&self, dir: &Path) -> Transport {
        Transport::HybridVsock {
            socket: dir.join("vsock.sock"),
            port: AGENT_VSOCK_PORT,
        }
    }

    fn device_slots(&self) -> usize {
        // hull-vmm gives virtio-mmio devices IRQs 5 to 23; the agent's vsock, the
        // console, the root disk, the entropy device and the balloon take five.
        19 - 5
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>> {
        let jail = crate::jail::JailId::for_vmm()?;
        let json = self.config_jailed(config, Some(&jail))?;
        let dir = config
            .console_log
            .parent()
            .ok_or_else(|| SandboxError::Vm("the console log has no directory".into()))?;
        let path = dir.join("vmm.json");
        std::fs::write(&path, json.to_string())
            .map_err(|e| SandboxError::Vm(format!("cannot write {}: {e}", path.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("vmm").arg("--config").arg(&path);
        VmmProcess::spawn(
            cmd,
            "hull-vmm",
            "hull vmm is part of hull itself",
            ShutdownRequest::Sigterm,
            Some(jail),
        )
        .map(|vm| vm as Box<dyn Vm>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{Accel, Disk, GuestRoot, NetDevice, SharedDir};

    #[test]
    fn the_vm_description_carries_disks_taps_vsock_and_the_agents_port() {
        let hv = HullVmm::default();
        let dir = Path::new("/run/hull/c.vm");
        let c = VmConfig {
            kernel: "/g/vmlinux".into(),
            root: GuestRoot::Disk("/g/agent.erofs".into()),
            extra_cmdline: "hull.debug".into(),
            vcpus: 2,
            memory_mib: 192,
            disks: vec![Disk {
                path: "/run/hull/c.vm/rootfs.erofs".into(),
                readonly: true,
                serial: "hull-rootfs".into(),
            }],
            transport: hv.transport(dir),
            console_log: dir.join("console.log"),
            accel: Accel::Kvm,
            nets: vec![NetDevice {
                tap_fd: 7,
                mac: "02:00:00:00:00:05".into(),
            }],
            shares: vec![],
        };
        let v = hv.config(&c).unwrap();
        assert_eq!(
            v["net"],
            serde_json::json!([{"tap_fd": 7, "guest_mac": "02:00:00:00:00:05"}])
        );
        let shared = VmConfig {
            shares: vec![SharedDir {
                tag: "v0".into(),
                path: "/srv".into(),
                readonly: false,
            }],
            ..c.clone()
        };
        let e = hv.config(&shared).unwrap_err().to_string();
        assert!(e.contains("no virtio-9p"), "{e}");
        assert_eq!(
            v["cmdline"],
            format!(
                "{BASE_CMDLINE} root=/dev/vda ro rootfstype=erofs init=/init {SHARED_PAGES_CMDLINE} hull.vsock={AGENT_VSOCK_PORT} hull.debug"
            )
        );
        assert_eq!(v["initramfs"], serde_json::Value::Null);
        assert_eq!(v["free_page_reporting"], true);
        assert_eq!(v["hugepages"], "none");
        let huge = HullVmm {
            huge_pages: true,
            ..HullVmm::default()
        };
        assert_eq!(huge.config(&c).unwrap()["hugepages"], "transparent");
        assert_eq!(v["vsock"]["uds_path"], "/run/hull/c.vm/vsock.sock");
        // The agent's disk first: the kernel mounts /dev/vda.
        assert_eq!(v["block"][0]["serial"], "hull-agent");
        assert_eq!(v["block"][0]["path"], "/g/agent.erofs");
        assert_eq!(v["block"][0]["read_only"], true);
        assert_eq!(v["block"][1]["serial"], "hull-rootfs");
        let custom = VmConfig {
            root: GuestRoot::Initramfs("/g/initramfs".into()),
            ..c.clone()
        };
        let custom = hv.config(&custom).unwrap();
        assert_eq!(custom["initramfs"], "/g/initramfs");
        assert_eq!(custom["block"].as_array().map(Vec::len), Some(1));
        assert!(!custom["cmdline"].as_str().unwrap().contains("root="));
        assert_eq!(
            (v["vcpus"].as_u64(), v["memory_mib"].as_u64()),
            (Some(2), Some(192))
        );
        assert_eq!(v["console"], serde_json::Value::Null);
        let serial = VmConfig {
            transport: Transport::Serial {
                socket: dir.join("agent.sock"),
            },
            ..c.clone()
        };
        let v = hv.config(&serial).unwrap();
        assert_eq!(v["console"]["socket"], "/run/hull/c.vm/agent.sock");
        assert_eq!(v["vsock"], serde_json::Value::Null);
        assert!(v["cmdline"].as_str().unwrap().contains("hull.console=hvc0"));
        let vhost = VmConfig {
            transport: Transport::Vsock { cid: 9, port: 1024 },
            ..c
        };
        assert!(hv.config(&vhost).is_err());
    }
}
