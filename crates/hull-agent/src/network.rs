//! The guest's network, as the host mirrored it: each virtio-net interface (found by
//! the MAC the host gave it) gets its MTU, IPv4 and IPv6 addresses and routes, and
//! comes up; loopback comes up too. Classic ioctls (SIOCSIF*, SIOCADDRT): the agent has
//! no `ip` and needs nothing netlink adds (network6.rs for IPv6).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};
use hull_proto::{NetInterface, NetRoute};

use crate::network6;

pub fn configure(interfaces: &[NetInterface], routes: &[NetRoute]) -> Result<()> {
    let sock = socket()?;
    set_up(&sock, "lo")?;
    let mut sock6 = None;
    for i in interfaces {
        let name = by_mac(&i.mac)?;
        ifreq_int(&sock, &name, libc::SIOCSIFMTU, i.mtu as i32).context("set the MTU")?;
        let (v6, v4): (Vec<&String>, Vec<&String>) =
            i.addresses.iter().partition(|a| a.contains(':'));
        if !v6.is_empty() {
            network6::take_addresses_as_given(&name)?;
            let s6 = match &sock6 {
                Some(s) => s,
                None => sock6.insert(network6::socket()?),
            };
            for a in v6 {
                let (ip, prefix) = network6::cidr(a).map_err(|e| anyhow!(e))?;
                network6::add_address(s6, &name, ip, prefix)
                    .with_context(|| format!("address {a}"))?;
            }
        }
        for (n, a) in v4.into_iter().enumerate() {
            let (ip, prefix) = cidr(a).map_err(|e| anyhow!(e))?;
            // A second address goes on an alias (eth0:1), as ifconfig does it.
            let label = if n == 0 {
                name.clone()
            } else {
                format!("{name}:{n}")
            };
            ifreq_addr(&sock, &label, libc::SIOCSIFADDR, ip)
                .with_context(|| format!("address {a}"))?;
            ifreq_addr(&sock, &label, libc::SIOCSIFNETMASK, mask(prefix))
                .with_context(|| format!("netmask of {a}"))?;
        }
        set_up(&sock, &name)?;
    }
    for r in routes {
        let dev = by_mac(&r.mac)?;
        if r.destination.contains(':') {
            route6(&dev, r)?;
            continue;
        }
        let (dst, prefix) = if r.destination == "default" {
            (Ipv4Addr::UNSPECIFIED, 0)
        } else {
            cidr(&r.destination).map_err(|e| anyhow!(e))?
        };
        let gateway = r
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<Ipv4Addr>()
                    .with_context(|| format!("gateway {g}"))
            })
            .transpose()?;
        add_route(&sock, &dev, dst, prefix, gateway)
            .with_context(|| format!("route {} via {:?} dev {dev}", r.destination, r.gateway))?;
    }
    Ok(())
}

/// An IPv6 route: "net/prefix", the default being "::/0".
fn route6(dev: &str, r: &NetRoute) -> Result<()> {
    let (dst, prefix) = network6::cidr(&r.destination).map_err(|e| anyhow!(e))?;
    let gateway = r
        .gateway
        .as_deref()
        .map(|g| g.parse().with_context(|| format!("IPv6 gateway {g}")))
        .transpose()?;
    network6::add_route(&network6::socket()?, dev, dst, prefix, gateway)
        .with_context(|| format!("route {} via {:?} dev {dev}", r.destination, r.gateway))
}

fn socket() -> Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket for interface ioctls")
}

/// The interface whose MAC is `mac`.
fn by_mac(mac: &str) -> Result<String> {
    for e in std::fs::read_dir("/sys/class/net")
        .context("/sys/class/net")?
        .flatten()
    {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no interface with MAC {mac} in the guest")
}

/// "ADDRESS/PREFIX". A plain String error: the unit test of it runs beside the forked
/// server tests, and an anyhow error takes std's backtrace lock (with RUST_BACKTRACE
/// set) at the moment one of them may fork.
fn cidr(s: &str) -> std::result::Result<(Ipv4Addr, u32), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: not ADDRESS/PREFIX"))?;
    let prefix: u32 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
    if prefix > 32 {
        return Err(format!("{s:?}: prefix over 32"));
    }
    let ip = ip.parse().map_err(|_| format!("{s:?}: bad address"))?;
    Ok((ip, prefix))
}

fn mask(prefix: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0))
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        bail!("interface name {name:?} is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

pub fn ioctl(sock: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void) -> Result<()> {
    // SAFETY: `arg` points at the ifreq, rtentry, in6_ifreq or in6_rtmsg that `request`
    // reads (network.rs, network6.rs).
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, arg) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn ifreq_int(sock: &OwnedFd, name: &str, request: libc::c_ulong, value: i32) -> Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = value;
    ioctl(sock, request, (&mut req as *mut libc::ifreq).cast())
}

fn ifreq_addr(sock: &OwnedFd, name: &str, request: libc::c_ulong, ip: Ipv4Addr) -> Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(sock, request, (&mut req as *mut libc::ifreq).cast())
}

fn set_up(sock: &OwnedFd, name: &str) -> Result<()> {
    let mut req = ifreq(name)?;
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )
    .with_context(|| format!("flags of {name}"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
    )
    .with_context(|| format!("bring {name} up"))
}

fn add_route(
    sock: &OwnedFd,
    dev: &str,
    dst: Ipv4Addr,
    prefix: u32,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let mut name = std::ffi::CString::new(dev)?.into_bytes_with_nul();
    // SAFETY: rtentry is plain data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(dst);
    rt.rt_genmask = sockaddr(mask(prefix));
    rt.rt_flags = libc::RTF_UP;
    if let Some(g) = gateway {
        rt.rt_gateway = sockaddr(g);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt.rt_dev = name.as_mut_ptr().cast();
    ioctl(
        sock,
        libc::SIOCADDRT,
        (&mut rt as *mut libc::rtentry).cast(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_masks() {
        assert_eq!(mask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(
            cidr("10.88.0.5/16").unwrap(),
            (Ipv4Addr::new(10, 88, 0, 5), 16)
        );
        assert!(cidr("10.88.0.5").is_err());
        assert!(cidr("10.88.0.5/33").is_err());
    }
}
