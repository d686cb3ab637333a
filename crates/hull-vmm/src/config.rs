//! The VM description `hull vmm --config FILE` reads: JSON, unknown fields refused, so a
//! typo is an error and not a silently different VM.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::boot::layout::{IRQ_MAX, IRQ_VIRTIO_FIRST, RAM_MAX};
use crate::boot::mptable::MAX_CPUS;
use crate::devices::virtio::net::tap;
pub use crate::vstate::memory::{Backend, HugePages};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// An uncompressed `vmlinux` with a PVH note, or a `bzImage`.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// hull-vmm appends the `virtio_mmio.device=` entries of the devices it adds.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "one")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default)]
    pub memory_backend: Backend,
    #[serde(default)]
    pub hugepages: HugePages,
    #[serde(default)]
    pub serial: SerialOut,
    /// virtio-blk disks, in order: the guest sees /dev/vda, /dev/vdb, ...
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    /// A virtio-rng device feeding the guest's entropy pool from getrandom(2).
    #[serde(default)]
    pub rng: bool,
    /// A virtio-vsock device, exposed on the host as a Unix socket (hybrid vsock).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// A virtio-console (the guest's hvc0) whose host side listens on a Unix socket.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// virtio-net devices, each on a host tap device: the guest sees eth0, eth1, ...
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio-balloon that only takes back the free pages the guest reports
    /// (anonymous memory only): what a guest touched once and freed stops counting
    /// on the host.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// On SIGTERM/SIGINT/SIGHUP, how long the guest has to shut down after hull-vmm
    /// types Ctrl-Alt-Del on its keyboard before its vCPUs are stopped.
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// `hull vmm` exits as soon as the VM has ended and leaves the kernel's teardown of
    /// the VM to a helper process (`teardown`); false tears it down before exiting.
    #[serde(default = "yes")]
    pub deferred_teardown: bool,
    /// Run each thread under its seccomp allowlist (off only for debugging with strace).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Confine the process once the VM is built (`jail`): hull's sandboxes always do.
    #[serde(default)]
    pub jail: Option<crate::jail::JailConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw image file.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads from /sys/block/vdX/serial (at most 20 bytes).
    #[serde(default)]
    pub serial: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id, 3 or more.
    pub guest_cid: u64,
    /// Host processes connect here and write `CONNECT <port>\n`; guest connections to
    /// host port P reach a listener at this path with `_P` appended.
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// One client at a time connects here and talks to the guest's hvc0.
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host tap device by name: attached to if it exists (`ip tuntap add dev NAME
    /// mode tap`), else created for the VM's lifetime.
    #[serde(default)]
    pub tap: Option<String>,
    /// Or an open tap fd that hull-vmm inherits and takes over: a tap its starter made
    /// where hull-vmm cannot name it (in another network namespace, as hull's proxy
    /// does for a VM container). Opened as a tap with IFF_NO_PI and no IFF_VNET_HDR.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address, "02:xx:xx:xx:xx:xx"; without one the guest picks a
    /// random address.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
}

/// A unicast Ethernet address, written as six colon-separated hex bytes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("{s:?} is not a MAC address (six hex bytes: 02:00:00:00:00:01)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "{s:?} is a multicast address; a NIC needs a unicast one (first byte even)"
            ));
        }
        if mac == [0; 6] {
            return Err(format!("{s:?} is the zero address"));
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<MacAddr, String> {
        s.parse()
    }
}

/// Where the guest's COM1 output goes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SerialOut {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

fn one() -> u8 {
    1
}

fn yes() -> bool {
    true
}

fn default_grace() -> u64 {
    3000
}

fn default_memory() -> u32 {
    128
}

/// Why a VM description was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the VM config {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VM config {} is not valid: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the VM config {}: {field} {reason}", .path.display())]
    Field {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

impl VmConfig {
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: VmConfig =
            serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let field = |field, reason: String| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            reason,
        };
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return Err(field("vcpus", format!("must be 1 to {MAX_CPUS}")));
        }
        let slots = (IRQ_MAX - IRQ_VIRTIO_FIRST + 1) as usize;
        let devices = self.block.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
            + usize::from(self.console.is_some())
            + usize::from(self.free_page_reporting)
            + self.net.len();
        if devices > slots {
            return Err(field(
                "block",
                format!(
                    "too many virtio devices (block, rng, vsock, console, net and the balloon): at most {slots}"
                ),
            ));
        }
        for (i, n) in self.net.iter().enumerate() {
            validate_net(n, &self.net[..i]).map_err(|reason| field("net", reason))?;
        }
        if self.free_page_reporting
            && (self.memory_backend != Backend::Anonymous || self.hugepages == HugePages::Hugetlb2M)
        {
            return Err(field(
                "free_page_reporting",
                "needs anonymous guest memory of 4 KiB or transparent huge pages: pages of a memfd or hugetlbfs cannot be dropped this way".into(),
            ));
        }
        let max_mib = RAM_MAX >> 20;
        if self.memory_mib < 2 || u64::from(self.memory_mib) > max_mib {
            return Err(field(
                "memory_mib",
                format!("must be 2 to {max_mib} (guest RAM ends below the device windows)"),
            ));
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }
}

impl NetConfig {
    /// How messages name the device: its tap's name or its fd.
    pub fn label(&self) -> String {
        match (&self.tap, self.tap_fd) {
            (Some(name), _) => format!("tap {name}"),
            (None, Some(fd)) => format!("tap_fd {fd}"),
            (None, None) => "a net device without a tap".into(),
        }
    }
}

/// One net device against those before it. An fd is checked here, in the process that
/// inherited it: a closed fd or one that is not a tap is refused before the VM is built.
fn validate_net(n: &NetConfig, before: &[NetConfig]) -> Result<(), String> {
    match (&n.tap, n.tap_fd) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("each device needs one of tap (a name) and tap_fd (an inherited fd)".into())
        }
        (Some(name), None) if !tap::valid_name(name) => {
            return Err(format!(
                "tap {name:?} must be 1 to 15 bytes, without '/', ':', whitespace or NUL"
            ))
        }
        (None, Some(fd)) => {
            tap::check_fd(fd).map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    if before.iter().any(|m| {
        (m.tap.is_some() && m.tap == n.tap) || (m.tap_fd.is_some() && m.tap_fd == n.tap_fd)
    }) {
        return Err(format!("{} is given twice", n.label()));
    }
    if n.guest_mac.is_some() && before.iter().any(|m| m.guest_mac == n.guest_mac) {
        return Err(format!("two devices have the MAC address of {}", n.label()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.seccomp), (1, 128, true));
        assert_eq!(c.serial, SerialOut::Stdout);
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "serial": {"file": "/tmp/x"}}"#).unwrap();
        assert_eq!(c.serial, SerialOut::File("/tmp/x".into()));
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpu": 2}"#).is_err());
        let p = Path::new("c.json");
        let mut c: VmConfig = serde_json::from_str(r#"{"kernel": "/k", "vcpus": 0}"#).unwrap();
        let e = c.validate(p).unwrap_err().to_string();
        assert!(e.contains("vcpus must be 1 to"), "{e}");
        c.vcpus = 1;
        c.memory_mib = 4096;
        let e = c.validate(p).unwrap_err().to_string();
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn net_devices() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "net": [{"tap": "tap0", "guest_mac": "02:00:0a:0b:0c:0d"}, {"tap": "tap1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.net[0].guest_mac,
            Some(MacAddr([2, 0, 0xa, 0xb, 0xc, 0xd]))
        );
        assert_eq!(c.net[1].guest_mac, None);
        c.validate(Path::new("c.json")).unwrap();
        for (mac, why) in [
            ("03:00:00:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "zero"),
            ("02:00:00:00:00", "not a MAC"),
            ("02:00:00:00:00:01:02", "not a MAC"),
            ("02:00:00:00:00:0g", "not a MAC"),
            ("2:00:00:00:00:01", "not a MAC"),
        ] {
            let json =
                format!(r#"{{"kernel": "/k", "net": [{{"tap": "t", "guest_mac": "{mac}"}}]}}"#);
            let e = serde_json::from_str::<VmConfig>(&json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{mac}: {e}");
        }
        for (net, why) in [
            (r#"[{"tap": "a/b"}]"#, "must be 1 to 15 bytes"),
            (r#"[{"tap": "t"}, {"tap": "t"}]"#, "given twice"),
            (r#"[{"guest_mac": "02:00:00:00:00:01"}]"#, "one of tap"),
            (r#"[{"tap": "t", "tap_fd": 3}]"#, "one of tap"),
            (r#"[{"tap_fd": 1}]"#, "stdio"),
            (r#"[{"tap_fd": 1048576}]"#, "not an open fd"),
            (
                r#"[{"tap": "a", "guest_mac": "02:00:00:00:00:01"}, {"tap": "b", "guest_mac": "02:00:00:00:00:01"}]"#,
                "MAC address",
            ),
        ] {
            let c: VmConfig =
                serde_json::from_str(&format!(r#"{{"kernel": "/k", "net": {net}}}"#)).unwrap();
            let e = c.validate(Path::new("c.json")).unwrap_err().to_string();
            assert!(e.contains(why), "{net}: {e}");
        }
    }
}
