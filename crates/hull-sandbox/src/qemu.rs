//! QEMU `-M microvm` (Debian's qemu-system-x86) as a Hypervisor: KVM where it is usable,
//! TCG elsewhere. The agent's channel is a named virtio-serial port on a Unix socket chardev.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, SandboxError};
use crate::hypervisor::{Accel, Hypervisor, Transport, Vm, VmConfig};
use crate::vmm_process::{ShutdownRequest, VmmProcess};

/// The kernel cmdline every hull guest gets. `reboot=t`: without ACPI the guest cannot
/// power off, so the agent's shutdown resets it by triple fault, which QEMU's
/// `-no-reboot` turns into an exit. `panic=-1` does the same for a kernel panic.
/// The i8042 is there for Ctrl-Alt-Del only: no mouse port or multiplexer to probe.
/// `page_reporting_order=3`: the guest reports free blocks of 32 KiB and up to the
/// VMM's balloon, which drops them from the host (hull-agent applies it: Linux 6.1
/// keeps 2 MiB blocks only, and a small guest frees little in blocks that big).
/// `percpu_alloc=page`: per-CPU areas in 4 KiB units. The default embeds them in 2 MiB
/// units, with 32 KiB left for what runs later; a pod member's mounts, cgroups and
/// block device overflow it, and the next 2 MiB chunk's memcg map alone is a zeroed
/// 4 MiB (8 bytes per 4 bytes of chunk): 4.2 MiB of a member's 7.4. In page units a
/// chunk is ~150 KiB and its map ~300 KiB.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet i8042.noaux i8042.nomux page_reporting.page_reporting_order=3 percpu_alloc=page";

pub struct Qemu {
    pub binary: PathBuf,
    /// The host's TSC frequency, which TCG guests need on their cmdline (clock.rs).
    pub tsc_khz: Option<u64>,
    /// Guest memory on transparent huge pages, QEMU's own choice (it madvises its RAM
    /// for them). Off, QEMU runs with THP disabled: every 2 MiB the guest touches
    /// anywhere is 2 MiB of host memory otherwise (nested KVM, one idle sandbox: 35.9
    /// MiB of guest RAM in the host, 34.8 of it huge pages; 34.4 with THP disabled,
    /// and QEMU's PSS from 89.7 to 84.4 MiB).
    pub huge_pages: bool,
}

/// Where the measured TSC frequency is kept (per host boot).
/// virtio-mmio transports of QEMU's microvm (VIRTIO_NUM_TRANSPORTS): one more device
/// and the guest finds none of them (measured: the agent never answers).
pub const MICROVM_VIRTIO_SLOTS: usize = 8;

/// The QEMU that boots the guest, looked up on PATH.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

pub const TSC_CACHE: &str = "/run/hull-vm/tsc-khz";

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            binary: QEMU_BINARY.into(),
            tsc_khz: crate::clock::tsc_khz(Path::new(TSC_CACHE)),
            huge_pages: false,
        }
    }
}

impl Qemu {
    /// QEMU's arguments; `share_fds` are the 9p helpers' sockets, one per share.
    pub fn args(&self, c: &VmConfig, share_fds: &[i32]) -> Vec<String> {
        let accel = match c.accel {
            Accel::Kvm => "kvm",
            // TCG's translation cache grows to 1 GiB: a sandbox's settled at 37 MiB of
            // its PSS. 32 MiB holds what the guest runs without flushes at boot.
            Accel::Tcg => "tcg,tb-size=32",
        };
        let mut a: Vec<String> = [
            // acpi=off: only then does QEMU put `virtio_mmio.device=` entries on the
            // cmdline, which is how a guest without ACPI finds its virtio devices.
            "-M",
            "microvm,acpi=off,pit=on,pic=on,rtc=on",
            "-accel",
            accel,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["-cpu".into(), self.cpu(c.accel).into()]);
        a.extend([
            "-smp".into(),
            c.vcpus.max(1).to_string(),
            "-m".into(),
            format!("{}M", c.memory_mib),
            "-kernel".into(),
            c.kernel.display().to_string(),
        ]);
        if let Some(initramfs) = c.initramfs() {
            a.extend(["-initrd".into(), initramfs.display().to_string()]);
        }
        a.extend([
            "-append".into(),
            format!(
                "{BASE_CMDLINE} {} {} {} {}",
                c.root_cmdline(),
                self.clock_cmdline(c.accel),
                agent_cmdline(&c.transport),
                c.extra_cmdline
            )
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
            "-chardev".into(),
            format!("file,id=console,path={}", c.console_log.display()),
            "-serial".into(),
            "chardev:console".into(),
            // A keyboard controller and a monitor to type Ctrl-Alt-Del on it with: the
            // guest's shutdown request, as hull-vmm gives it.
            "-device".into(),
            "i8042".into(),
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", monitor_socket(c).display()),
        ]);
        a.extend(device_args(c, share_fds));
        a
    }
}

impl Qemu {
    /// `-cpu`: the host's CPU under KVM; under TCG every model but without ERMS, with
    /// which the guest zeroes and copies pages by `rep stosb`/`rep movsb`, one byte an
    /// iteration under TCG (a 48 MiB tmpfs write: 1.0 s with, 0.3 s without).
    pub fn cpu(&self, accel: Accel) -> &'static str {
        match accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max,-erms",
        }
    }

    /// Under TCG: the TSC frequency (no PIT calibration, which fails under load),
    /// `tsc=reliable` (TCG's CPU lacks constant_tsc, and the guest would fall back to
    /// jiffies), `lpj` for the hull guest's HZ=100, and no IO-APIC timer check.
    pub fn clock_cmdline(&self, accel: Accel) -> String {
        match (accel, self.tsc_khz) {
            (Accel::Tcg, Some(khz)) => format!(
                "tsc_early_khz={khz} tsc=reliable lpj={} no_timer_check",
                khz * 10
            ),
            _ => String::new(),
        }
    }
}

/// The virtio devices: the agent's channel, then disks, shared directories, taps.
fn device_args(c: &VmConfig, share_fds: &[i32]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    match &c.transport {
        // A named port, not a console: QEMU drops what a virtconsole's guest writes
        // when the socket would block (virtio-console.c, flush_buf: "silently
        // dropping console data on EAGAIN"), and 50000 of 300000 bytes a `cat`
        // echoed were lost so once under load; a port is throttled instead. Port 0
        // is reserved for consoles, hence two ports. It costs the guest a control
        // queue's receive pages (guest/README.md); the host only the few it touches.
        Transport::Serial { socket } => a.extend([
            "-device".into(),
            "virtio-serial-device,max_ports=2".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                socket.display()
            ),
            "-device".into(),
            format!("virtserialport,chardev=agent,nr=1,name={AGENT_PORT_NAME}"),
        ]),
        Transport::Vsock { cid, .. } => a.extend([
            "-device".into(),
            format!("vhost-vsock-device,guest-cid={cid}"),
        ]),
        // QEMU has no hybrid vsock; Qemu::start refuses it.
        Transport::HybridVsock { .. } => {}
    }
    for (i, d) in c.all_disks().iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "file={},if=none,id=disk{i},format=raw,readonly={}",
            d.path.display(),
            if d.readonly { "on" } else { "off" }
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-device,drive=disk{i},serial={}",
            d.serial
        ));
    }
    for ((i, d), fd) in c.shares.iter().enumerate().zip(share_fds) {
        // Through the helper (fs_helper.rs), which gives the guest's files the host's
        // owners and modes, as a bind mount would show them.
        a.push("-fsdev".into());
        a.push(format!(
            "proxy,id=fs{i},sock_fd={fd}{}",
            if d.readonly { ",readonly=on" } else { "" }
        ));
        a.push("-device".into());
        a.push(format!("virtio-9p-device,fsdev=fs{i},mount_tag={}", d.tag));
    }
    for (i, n) in c.nets.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!("tap,id=net{i},fd={}", n.tap_fd));
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=net{i},mac={}", n.mac));
    }
    // Free page reporting: what the guest frees after boot (its initramfs, init
    // memory) goes back to the host instead of staying in QEMU's RSS.
    a.push("-device".into());
    a.push("virtio-balloon-device,free-page-reporting=on".into());
    a
}

/// QEMU confines itself once its devices are open: it chroots into an empty directory
/// and becomes the sandbox's own uid (`-chroot`, `-runas`), under its own seccomp
/// filter (`-sandbox`). `elevateprivileges=allow`: QEMU 7.2 installs the filter before
/// it drops to `-runas`'s uid, and `deny` kills it at that setuid; after it, with no
/// capabilities and no_new_privs, no set*id call can raise it again. Shared
/// directories change none of it: their file operations are the 9p helpers'
/// (fs_helper.rs).
/// The empty directory QEMU chroots into, beside its console log.
fn jail_dir(c: &VmConfig) -> Result<PathBuf> {
    c.console_log
        .parent()
        .map(|p| p.join("jail"))
        .ok_or_else(|| SandboxError::Vm("the console log has no directory".into()))
}

fn jail_args(c: &VmConfig, jail: &crate::jail::JailId) -> Result<Vec<String>> {
    let dir = jail_dir(c)?;
    std::fs::create_dir_all(&dir).map_err(crate::error::io_err("cannot create", &dir))?;
    let mut a = vec![
        "-sandbox".to_string(),
        "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
    ];
    // Shares too: QEMU reaches them only through the helpers' sockets.
    a.extend(["-chroot".into(), dir.display().to_string()]);
    // Rootless, no other id exists in the proxy's user namespace.
    if !jail.is_own() {
        a.extend(["-runas".into(), format!("{}:{}", jail.uid, jail.gid)]);
    }
    Ok(a)
}

/// The name the agent looks for among the guest's virtio-serial ports.
pub const AGENT_PORT_NAME: &str = "hull.agent";

/// How the agent finds its channel: a named port needs no word on the cmdline (the
/// agent looks for it by name); hull-vmm's console (`Transport::cmdline`) does.
fn agent_cmdline(t: &Transport) -> String {
    match t {
        Transport::Serial { .. } => String::new(),
        _ => t.cmdline(),
    }
}

/// QEMU's human monitor, beside the console log in the VM's directory.
fn monitor_socket(c: &VmConfig) -> PathBuf {
    c.console_log.with_file_name("qemu-monitor.sock")
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn device_slots(&self) -> usize {
        // Less the agent's channel, its root disk and the balloon.
        MICROVM_VIRTIO_SLOTS - 3
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>> {
        if let Transport::HybridVsock { .. } = config.transport {
            return Err(SandboxError::Vm(
                "QEMU has no hybrid vsock: use a serial port or vhost-vsock".into(),
            ));
        }
        // The agent's channel (virtio-serial or vhost-vsock), the balloon, then disks
        // (the root disk among them), nets, shares.
        let disks = config.all_disks().len();
        let devices = 2 + disks + config.nets.len() + config.shares.len();
        if devices > MICROVM_VIRTIO_SLOTS {
            return Err(SandboxError::Vm(format!(
                "this VM would need {devices} virtio devices (the agent's channel, the balloon, {} disks, {} network interfaces, {} shared directories) and QEMU's microvm has {MICROVM_VIRTIO_SLOTS}: bind fewer distinct host directories (a common parent shares them all)",
                disks,
                config.nets.len(),
                config.shares.len()
            )));
        }
        let jail = crate::jail::JailId::for_vmm()?;
        // Every helper before any socket end is inheritable: none holds another's.
        let helpers = config
            .shares
            .iter()
            .map(|s| crate::fs_helper::start(&s.path))
            .collect::<Result<Vec<_>>>()?;
        for h in &helpers {
            h.inheritable()?;
        }
        let fds: Vec<i32> = helpers.iter().map(|h| h.qemu_end.as_raw_fd()).collect();
        let mut args = self.args(config, &fds);
        args.extend(jail_args(config, &jail)?);
        tracing::debug!("{} {}", self.binary.display(), args.join(" "));
        let mut cmd = Command::new(&self.binary);
        cmd.args(&args);
        let own_ids = jail.is_own();
        let huge_pages = self.huge_pages;
        let chroot_dir = std::ffi::CString::new(
            std::path::absolute(jail_dir(config)?)
                .map_err(crate::error::io_err("cannot resolve", "jail"))?
                .into_os_string()
                .into_encoded_bytes(),
        )
        .map_err(|_| SandboxError::Vm("a NUL in the VM's directory".into()))?;
        // SAFETY: confine_qemu and prctl are async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                // Kept across exec: QEMU's MADV_HUGEPAGE on its RAM then does nothing.
                if !huge_pages && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                crate::jail::confine_qemu(own_ids, &chroot_dir)
            });
        }
        let vm = VmmProcess::spawn(
            cmd,
            "QEMU",
            "apt-get install qemu-system-x86",
            ShutdownRequest::QemuMonitor(monitor_socket(config)),
            Some(jail),
        );
        // QEMU holds the sockets now (or failed to start: the helpers see EOF).
        let children = helpers.into_iter().map(|h| h.child).collect();
        vm.map(|mut vm| {
            vm.adopt_helpers(children);
            vm as Box<dyn Vm>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{Disk, GuestRoot};

    fn config(accel: Accel, transport: Transport) -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            root: GuestRoot::Disk("/agent.erofs".into()),
            extra_cmdline: "hull.debug".into(),
            vcpus: 2,
            memory_mib: 96,
            disks: vec![Disk {
                path: "/r.erofs".into(),
                readonly: true,
                serial: "rootfs0".into(),
            }],
            transport,
            console_log: "/c.log".into(),
            accel,
            nets: vec![],
            shares: vec![],
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_gets_the_clock_and_a_named_port_as_channel() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: Some(2_000_000),
            huge_pages: false,
        };
        let serial = Transport::Serial {
            socket: "/s.sock".into(),
        };
        let args = q.args(&config(Accel::Tcg, serial), &[]);
        assert_eq!(after(&args, "-cpu"), ["max,-erms"]);
        assert_eq!(after(&args, "-accel"), ["tcg,tb-size=32"]);
        assert_eq!(after(&args, "-m"), ["96M"]);
        let cmdline = after(&args, "-append")[0];
        assert_eq!(
            cmdline,
            "console=ttyS0 reboot=t panic=-1 quiet i8042.noaux i8042.nomux \
             page_reporting.page_reporting_order=3 percpu_alloc=page root=/dev/vda ro rootfstype=erofs init=/init \
             tsc_early_khz=2000000 tsc=reliable lpj=20000000 no_timer_check hull.debug"
        );
        assert!(after(&args, "-initrd").is_empty(), "{args:?}");
        let devices = after(&args, "-device");
        assert!(
            devices.contains(&"virtserialport,chardev=agent,nr=1,name=hull.agent"),
            "{devices:?}"
        );
        // The agent's disk comes first: the kernel mounts /dev/vda.
        assert!(devices.contains(&"virtio-blk-device,drive=disk0,serial=hull-agent"));
        assert!(devices.contains(&"virtio-blk-device,drive=disk1,serial=rootfs0"));
        assert_eq!(
            after(&args, "-drive"),
            [
                "file=/agent.erofs,if=none,id=disk0,format=raw,readonly=on",
                "file=/r.erofs,if=none,id=disk1,format=raw,readonly=on"
            ]
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_vsock() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: Some(2_000_000),
            huge_pages: false,
        };
        let vsock = Transport::Vsock { cid: 7, port: 1024 };
        let custom = VmConfig {
            root: GuestRoot::Initramfs("/i".into()),
            ..config(Accel::Kvm, vsock)
        };
        let args = q.args(&custom, &[]);
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert_eq!(after(&args, "-initrd"), ["/i"]);
        assert_eq!(after(&args, "-drive").len(), 1, "{args:?}");
        let cmdline = after(&args, "-append")[0];
        assert!(!cmdline.contains("tsc_early_khz"), "{cmdline}");
        assert!(!cmdline.contains("root="), "{cmdline}");
        assert!(cmdline.contains("hull.vsock=1024"), "{cmdline}");
        assert!(after(&args, "-device").contains(&"vhost-vsock-device,guest-cid=7"));
    }

    #[test]
    fn hybrid_vsock_is_refused_by_qemu() {
        let q = Qemu {
            binary: "qemu".into(),
            tsc_khz: None,
            huge_pages: false,
        };
        let t = Transport::HybridVsock {
            socket: "/h".into(),
            port: 1024,
        };
        let e = q.start(&config(Accel::Tcg, t)).err().unwrap();
        assert!(e.to_string().contains("hybrid vsock"), "{e}");
    }
}
