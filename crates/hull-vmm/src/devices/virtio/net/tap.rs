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
    #[error("tap_fd {0}: not an open fd of hull-vmm (the process that starts it must leave the tap's fd open across exec)")]
    NotOpen(i32),
    #[error("tap_fd {fd}: not a tap device fd: {reason}")]
    NotATapFd { fd: i32, reason: String },
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

/// What TUNGETIFF says of `fd`: the interface's name, if `fd` is a tap opened as
/// [`open`] opens one (IFF_TAP, IFF_NO_PI, no IFF_VNET_HDR: the device's frames carry
/// no header but Ethernet's).
pub fn check_fd(fd: i32) -> Result<String, TapError> {
    if fd < 3 {
        return Err(TapError::NotATapFd {
            fd,
            reason: "0, 1 and 2 are stdio".into(),
        });
    }
    // SAFETY: F_GETFD only reads the fd table; a closed fd gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::NotOpen(fd));
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _union_rest: [0; 22],
    };
    // SAFETY: TUNGETIFF writes an ifreq, which `req` is (40 bytes, C layout); on any fd
    // but a tun/tap one it fails (EBADFD or ENOTTY) and writes nothing.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(TapError::NotATapFd {
            fd,
            reason: format!("TUNGETIFF: {e} (open /dev/net/tun and TUNSETIFF it as a tap first)"),
        });
    }
    let name_len = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&req.name[..name_len]).into_owned();
    let flags = i32::from(req.flags);
    let bad = |reason: &str| TapError::NotATapFd {
        fd,
        reason: format!("{name}: {reason}"),
    };
    if flags & libc::IFF_TAP == 0 {
        return Err(bad("a tun (IP) device; virtio-net needs a tap (Ethernet)"));
    }
    if flags & libc::IFF_NO_PI == 0 {
        return Err(bad(
            "opened without IFF_NO_PI; its frames would carry a packet-info prefix",
        ));
    }
    if flags & libc::IFF_VNET_HDR != 0 {
        return Err(bad(
            "opened with IFF_VNET_HDR; hull-vmm writes bare Ethernet frames",
        ));
    }
    Ok(name)
}

/// Takes over an inherited tap fd, checked by [`check_fd`]: non-blocking, and closed
/// on exec (the teardown helper and anything else hull-vmm starts must not keep the
/// tap up).
///
/// # Safety
/// Nothing else in this process may own `fd`: the config gives each fd once, and
/// hull-vmm never opens an fd it then adopts.
pub unsafe fn adopt(fd: i32) -> Result<(OwnedFd, String), TapError> {
    let name = check_fd(fd)?;
    // SAFETY: `fd` is open (check_fd) and, by this function's contract, unowned.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on an open fd we now own.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0
            && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
            && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0
    };
    if !ok {
        return Err(TapError::Attach {
            name,
            source: io::Error::last_os_error(),
        });
    }
    Ok((owned, name))
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

    #[test]
    fn only_an_open_tap_fd_passes() {
        assert!(matches!(check_fd(1), Err(TapError::NotATapFd { .. })));
        // No process has this many fds open.
        assert!(matches!(check_fd(1 << 20), Err(TapError::NotOpen(_))));
        let null = std::fs::File::open("/dev/null").unwrap();
        let e = check_fd(std::os::fd::AsRawFd::as_raw_fd(&null)).unwrap_err();
        assert!(e.to_string().contains("TUNGETIFF"), "{e}");
        if !std::path::Path::new("/dev/net/tun").exists() {
            println!("tap fd check not run: no /dev/net/tun (modprobe tun)");
            return;
        }
        // In a network namespace of its own, so no tap appears on the host.
        let names = std::thread::spawn(|| {
            // SAFETY: unshare affects this thread only (it owns no fds shared elsewhere).
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let tap = open("hvtfd0").unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&tap);
            let checked = check_fd(fd).unwrap();
            std::mem::forget(tap);
            // SAFETY: `tap` was forgotten: the adopted OwnedFd is the only owner.
            let (adopted, name) = unsafe { adopt(fd) }.unwrap();
            // SAFETY: F_GETFL/F_GETFD only read the fd's flags.
            let (fl, fdfl) = unsafe {
                let raw = std::os::fd::AsRawFd::as_raw_fd(&adopted);
                (
                    libc::fcntl(raw, libc::F_GETFL),
                    libc::fcntl(raw, libc::F_GETFD),
                )
            };
            (
                checked,
                name,
                fl & libc::O_NONBLOCK != 0,
                fdfl & libc::FD_CLOEXEC != 0,
            )
        })
        .join()
        .unwrap();
        assert_eq!(names, ("hvtfd0".into(), "hvtfd0".into(), true, true));
    }
}
