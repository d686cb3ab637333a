//! Mount options of config.json turned into mount(2) flags, propagation changes,
//! mount_setattr(2) attributes for the recursive `r*` options, and filesystem data.

use nix::mount::MsFlags;

/// MOUNT_ATTR_* bits of mount_setattr(2).
pub mod attr {
    pub const RDONLY: u64 = 0x1;
    pub const NOSUID: u64 = 0x2;
    pub const NODEV: u64 = 0x4;
    pub const NOEXEC: u64 = 0x8;
    pub const ATIME_MASK: u64 = 0x70;
    pub const RELATIME: u64 = 0x0;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags an option asked to clear (e.g. `rw`, `suid`): matters on remounts.
    pub cleared: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub recursive_set: u64,
    pub recursive_clear: u64,
    pub data: Vec<String>,
    pub tmpcopyup: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            recursive_set: 0,
            recursive_clear: 0,
            data: Vec::new(),
            tmpcopyup: false,
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    pub fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

pub fn parse<S: AsRef<str>>(options: &[S]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let opt = opt.as_ref();
        if let Some((set, flag)) = flag(opt) {
            if set {
                o.flags |= flag;
                o.cleared &= !flag;
            } else {
                o.flags &= !flag;
                o.cleared |= flag;
            }
        } else if let Some(p) = propagation(opt) {
            o.propagation.push(p);
        } else if let Some((set, bits)) = recursive(opt) {
            if set {
                if bits & attr::ATIME_MASK != 0 || opt == "rrelatime" {
                    o.recursive_clear |= attr::ATIME_MASK;
                }
                o.recursive_set |= bits;
            } else {
                o.recursive_clear |= bits;
            }
        } else if opt == "tmpcopyup" {
            o.tmpcopyup = true;
        } else if !opt.is_empty() && opt != "defaults" {
            o.data.push(opt.to_string());
        }
    }
    o
}

fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    use MsFlags as F;
    Some(match opt {
        "ro" => (true, F::MS_RDONLY),
        "rw" => (false, F::MS_RDONLY),
        "nosuid" => (true, F::MS_NOSUID),
        "suid" => (false, F::MS_NOSUID),
        "nodev" => (true, F::MS_NODEV),
        "dev" => (false, F::MS_NODEV),
        "noexec" => (true, F::MS_NOEXEC),
        "exec" => (false, F::MS_NOEXEC),
        "sync" => (true, F::MS_SYNCHRONOUS),
        "async" => (false, F::MS_SYNCHRONOUS),
        "dirsync" => (true, F::MS_DIRSYNC),
        "remount" => (true, F::MS_REMOUNT),
        "mand" => (true, F::MS_MANDLOCK),
        "nomand" => (false, F::MS_MANDLOCK),
        "noatime" => (true, F::MS_NOATIME),
        "atime" => (false, F::MS_NOATIME),
        "nodiratime" => (true, F::MS_NODIRATIME),
        "diratime" => (false, F::MS_NODIRATIME),
        "relatime" => (true, F::MS_RELATIME),
        "norelatime" => (false, F::MS_RELATIME),
        "strictatime" => (true, F::MS_STRICTATIME),
        "nostrictatime" => (false, F::MS_STRICTATIME),
        "bind" => (true, F::MS_BIND),
        "rbind" => (true, F::MS_BIND | F::MS_REC),
        "silent" => (true, F::MS_SILENT),
        "loud" => (false, F::MS_SILENT),
        "lazytime" => (true, F::MS_LAZYTIME),
        "nolazytime" => (false, F::MS_LAZYTIME),
        "iversion" => (true, F::MS_I_VERSION),
        "noiversion" => (false, F::MS_I_VERSION),
        "nosymfollow" => (true, F::from_bits_retain(libc::MS_NOSYMFOLLOW)),
        "symfollow" => (false, F::from_bits_retain(libc::MS_NOSYMFOLLOW)),
        _ => return None,
    })
}

fn propagation(opt: &str) -> Option<MsFlags> {
    use MsFlags as F;
    Some(match opt {
        "private" => F::MS_PRIVATE,
        "rprivate" => F::MS_PRIVATE | F::MS_REC,
        "shared" => F::MS_SHARED,
        "rshared" => F::MS_SHARED | F::MS_REC,
        "slave" => F::MS_SLAVE,
        "rslave" => F::MS_SLAVE | F::MS_REC,
        "unbindable" => F::MS_UNBINDABLE,
        "runbindable" => F::MS_UNBINDABLE | F::MS_REC,
        _ => return None,
    })
}

fn recursive(opt: &str) -> Option<(bool, u64)> {
    Some(match opt {
        "rro" => (true, attr::RDONLY),
        "rrw" => (false, attr::RDONLY),
        "rnosuid" => (true, attr::NOSUID),
        "rsuid" => (false, attr::NOSUID),
        "rnodev" => (true, attr::NODEV),
        "rdev" => (false, attr::NODEV),
        "rnoexec" => (true, attr::NOEXEC),
        "rexec" => (false, attr::NOEXEC),
        "rnodiratime" => (true, attr::NODIRATIME),
        "rdiratime" => (false, attr::NODIRATIME),
        "rrelatime" => (true, attr::RELATIME),
        "rnorelatime" => (false, attr::ATIME_MASK),
        "rnoatime" => (true, attr::NOATIME),
        "ratime" => (false, attr::NOATIME),
        "rstrictatime" => (true, attr::STRICTATIME),
        "rnostrictatime" => (false, attr::STRICTATIME),
        "rnosymfollow" => (true, attr::NOSYMFOLLOW),
        "rsymfollow" => (false, attr::NOSYMFOLLOW),
        _ => return None,
    })
}

/// The propagation named by `linux.rootfsPropagation` (default rslave, as runc).
pub fn rootfs_propagation(name: Option<&str>) -> Option<MsFlags> {
    match name {
        None | Some("") => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        Some(n) => propagation(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_data_and_propagation() {
        let o = parse(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]);
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_STRICTATIME));
        assert_eq!(o.data().as_deref(), Some("mode=755,size=65536k"));
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn later_option_wins() {
        let o = parse(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(o.cleared.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn recursive_attrs() {
        let o = parse(&["rbind", "rro", "rnosuid"]);
        assert!(o.is_bind() && o.flags.contains(MsFlags::MS_REC));
        assert_eq!(o.recursive_set, attr::RDONLY | attr::NOSUID);
    }
}
