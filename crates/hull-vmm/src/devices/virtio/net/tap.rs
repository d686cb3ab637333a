//! Attaching to a host tap device: /dev/net/tun and TUNSETIFF, as `ip tuntap` does.
//! The fd reads and writes whole Ethernet frames (IFF_TAP, IFF_NO_PI: no packet-info
//! prefix; no IFF_VNET_HDR: the host kernel never sees a virtio header the guest wrote).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Longest interface name Linux takes (IFNAMSIZ less the terminating NUL).
pub const NAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (the host needs the tun driver: modprobe tun)")]
    OpenTun(io::Error),
    #[error("tap {0}: another process is attached to it; give each VM its own tap")]
    Busy(String),
    #[error("tap {0}: not permitted (it belongs to another user or group: ip tuntap add dev {0} mode tap user USER)")]
    NotPermitted(String),
    #[error(
        "{0} exists and is not a tap device (it must be made with: ip tuntap add dev {0} mode tap)"
    )]
    NotATap(String),
    #[error("tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    #[error("tap name {0:?} must be 1 to 15 bytes, without '/', whitespace or NUL")]
    BadName(String),
}

/// Whether `name` can name a network interface.
pub fn valid_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// struct ifreq, as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// A non-blocking fd on the tap `name`. An existing tap (made by `ip tuntap add`) is
/// attached to; a missing one is created and lives as long as the fd, so nothing is
/// left on the host when the VMM ends.
pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    if !valid_name(name) {
        return Err(TapError::BadName(name.to_string()));
    }
    // SAFETY: a NUL-terminated path literal; the returned fd is checked and owned.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(TapError::OpenTun(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _union_rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (40 bytes, C layout);
    // the fd is a tun fd we own.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TUNSETIFF,
            &mut req,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        let name = name.to_string();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => TapError::Busy(name),
            Some(libc::EPERM) => TapError::NotPermitted(name),
            Some(libc::EINVAL) => TapError::NotATap(name),
            _ => TapError::Attach { name, source: e },
        });
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_name("tap0"));
        assert!(valid_name("hull-vm-123456"));
        for bad in ["", "a/b", "a b", "x:1", ".", "..", "sixteen-bytes-xx"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert!(matches!(open("a/b"), Err(TapError::BadName(_))));
    }
}
