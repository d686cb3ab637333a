//! IPv6 for the guest's mirrored interfaces, with the same classic ioctls as IPv4
//! (SIOCSIFADDR with an in6_ifreq, SIOCADDRT with an in6_rtmsg on an AF_INET6 socket).
//! The engine's configuration is the truth: duplicate address detection is off (the
//! engine did it for this address, on the interface the guest's now stands in for),
//! and so are router advertisements and autoconfiguration.

use std::net::Ipv6Addr;
use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};

use crate::network::ioctl;

pub fn socket() -> Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet6,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("an IPv6 socket (does the guest kernel have IPv6?)")
}

/// Before any address: the engine's addresses are used as they are.
pub fn take_addresses_as_given(ifname: &str) -> Result<()> {
    for (knob, value) in [("accept_dad", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{knob}");
        std::fs::write(&path, value).with_context(|| format!("write {value} to {path}"))?;
    }
    Ok(())
}

fn ifindex(name: &str) -> Result<i32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface {name:?}: {}", std::io::Error::last_os_error());
    }
    Ok(index as i32)
}

pub fn add_address(sock: &OwnedFd, ifname: &str, ip: Ipv6Addr, prefix: u32) -> Result<()> {
    if prefix > 128 {
        bail!("{ip}/{prefix}: prefix over 128");
    }
    let mut req = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        ifr6_prefixlen: prefix,
        ifr6_ifindex: ifindex(ifname)?,
    };
    ioctl(
        sock,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::in6_ifreq).cast(),
    )
}

/// linux/ipv6_route.h's struct in6_rtmsg (libc's has private fields).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

pub fn add_route(
    sock: &OwnedFd,
    ifname: &str,
    dst: Ipv6Addr,
    prefix: u32,
    gateway: Option<Ipv6Addr>,
) -> Result<()> {
    if prefix > 128 {
        bail!("{dst}/{prefix}: prefix over 128");
    }
    let addr = |ip: Ipv6Addr| libc::in6_addr {
        s6_addr: ip.octets(),
    };
    let mut rt = In6Rtmsg {
        dst: addr(dst),
        src: addr(Ipv6Addr::UNSPECIFIED),
        gateway: addr(gateway.unwrap_or(Ipv6Addr::UNSPECIFIED)),
        kind: 0,
        dst_len: prefix as u16,
        src_len: 0,
        metric: 1,
        info: 0,
        flags: libc::RTF_UP as u32
            | if gateway.is_some() {
                libc::RTF_GATEWAY as u32
            } else {
                0
            },
        ifindex: ifindex(ifname)?,
    };
    ioctl(sock, libc::SIOCADDRT, (&mut rt as *mut In6Rtmsg).cast())
}

/// "ADDRESS/PREFIX" for IPv6; a plain String error, as network.rs's `cidr`.
pub fn cidr(s: &str) -> std::result::Result<(Ipv6Addr, u32), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: not ADDRESS/PREFIX"))?;
    let prefix: u32 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
    if prefix > 128 {
        return Err(format!("{s:?}: prefix over 128"));
    }
    let ip = ip.parse().map_err(|_| format!("{s:?}: bad IPv6 address"))?;
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_prefixes() {
        assert_eq!(
            cidr("fd00::2/64").unwrap(),
            ("fd00::2".parse().unwrap(), 64)
        );
        assert!(cidr("fd00::2").is_err());
        assert!(cidr("fd00::2/129").is_err());
        assert!(cidr("10.0.0.1/8").is_err());
        assert_eq!(std::mem::size_of::<In6Rtmsg>(), 80);
    }
}
