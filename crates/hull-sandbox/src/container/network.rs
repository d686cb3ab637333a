//! The engine's network, mirrored into the VM (Kata's "tcfilter" model). The engine
//! (podman's netavark or CNI, docker's bridge, containerd's CNI plugins) made a network
//! namespace with a veth and put its path in config.json (or a prestart hook filled the
//! proxy's own). The proxy lives in that namespace; for each Ethernet interface there,
//! it opens a tap beside it and joins the two with tc: whatever
//! arrives on the veth leaves through the tap to the VM's virtio-net, and back. The
//! guest's interface gets the veth's MAC, addresses, routes and MTU (the agent sets
//! them), so to the engine's bridge and port forwarding the VM is where the veth was.
//! IPv4 and IPv6 addresses (not link-local ones: the guest makes its own from the same
//! MAC) and routes; the taps vanish with the VMM, the filters with the engine's
//! namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_proto::{NetInterface, NetRoute};
use serde_json::Value;

use crate::error::{Result, SandboxError};

/// An interface of the engine's namespace, its tap, and what the guest's copy gets.
pub struct Mirrored {
    pub guest: NetInterface,
    /// The tap's fd, handed to the VMM.
    pub tap: OwnedFd,
}

/// What the network namespace this process is in has, mirrored: taps made and joined.
/// `netns` names it in messages.
pub fn mirror(netns: &Path) -> Result<(Vec<Mirrored>, Vec<NetRoute>)> {
    let links: Value = json_of(netns, &["ip", "-j", "addr", "show"])?;
    let mut routes: Vec<Value> = as_list(json_of(netns, &["ip", "-j", "-4", "route", "show"])?);
    // A namespace (or kernel) without IPv6 has no IPv6 routes to mirror. Its default
    // route is "::/0" for the guest, which tells the families apart by the colon.
    if let Ok(v6) = json_of(netns, &["ip", "-j", "-6", "route", "show"]) {
        routes.extend(as_list(v6).into_iter().map(|mut r| {
            if r["dst"] == "default" {
                r["dst"] = "::/0".into();
            }
            r
        }));
    }
    let mut out = Vec::new();
    let mut names = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        if link["link_type"] != "ether" {
            continue;
        }
        let name = link["ifname"].as_str().unwrap_or_default().to_string();
        if name.starts_with("hulltap") {
            continue;
        }
        let addresses = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet" || (a["family"] == "inet6" && a["scope"] == "global"))
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        let tap_name = format!("hulltap{}", out.len());
        let tap = open_tap(&tap_name)?;
        let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
        join(netns, &name, &tap_name, mtu)?;
        names.push(name.clone());
        out.push(Mirrored {
            guest: NetInterface {
                mac: link["address"].as_str().unwrap_or_default().to_string(),
                mtu,
                addresses,
            },
            tap,
        });
    }
    let routes = routes
        .iter()
        .filter_map(|r| {
            let dev = r["dev"].as_str()?;
            let i = names.iter().position(|n| n == dev)?;
            // The kernel makes the subnet's route itself when the address is set.
            if r["protocol"] == "kernel" {
                return None;
            }
            Some(NetRoute {
                destination: r["dst"].as_str()?.to_string(),
                gateway: r["gateway"].as_str().map(str::to_owned),
                mac: out[i].guest.mac.clone(),
            })
        })
        .collect();
    Ok((out, routes))
}

fn as_list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    cmd
}

fn run(netns: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = command(args).output().map_err(|e| {
        SandboxError::Tool(format!("{}: {e} (iproute2 provides ip and tc)", args[0]))
    })?;
    if !out.status.success() {
        return Err(SandboxError::Tool(format!(
            "in the network namespace {}: {}: {}",
            netns.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn json_of(netns: &Path, args: &[&str]) -> Result<Value> {
    let out = run(netns, args)?;
    serde_json::from_slice(&out)
        .map_err(|e| SandboxError::Tool(format!("{}: unreadable output: {e}", args.join(" "))))
}

/// tc redirects both ways between the engine's interface and the tap; the old
/// redirects of a namespace used before are replaced.
fn join(netns: &Path, iface: &str, tap: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    run(netns, &["ip", "link", "set", "dev", tap, "mtu", &mtu, "up"])?;
    for (from, to) in [(iface, tap), (tap, iface)] {
        let _ = command(&["tc", "qdisc", "del", "dev", from, "ingress"]).output();
        run(netns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
        run(
            netns,
            &[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// A tap named `name` beside the interfaces it mirrors. It lives as long as its fds.
fn open_tap(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| SandboxError::Vm(format!("/dev/net/tun: {e}")))?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads a 40-byte ifreq (name, flags) that `req` holds.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, req.as_ptr()) };
    if r < 0 {
        return Err(SandboxError::Vm(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(OwnedFd::from(tun))
}

/// The network namespace config.json puts the container in, if it names one.
pub fn engine_netns(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Lets `fd` survive the exec of the VMM.
pub fn inheritable(fd: &OwnedFd) -> Result<i32> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| SandboxError::Vm(format!("tap fd: {e}")))?;
    Ok(fd.as_raw_fd())
}
