//! The kernel's nbd driver through its generic netlink family: `connect` hands it a
//! socket and gets a device made for it (the guest boots with none: each costs ~0.5 MiB
//! of guest memory, and a pod attaches one per distinct image layer), `disconnect` ends
//! it and, with DESTROY_ON_DISCONNECT, removes the device. Unlike the ioctl interface no
//! process has to block in NBD_DO_IT for the device's life.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};

// linux/netlink.h, linux/genetlink.h
const NETLINK_GENERIC: i32 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
// linux/nbd-netlink.h, linux/nbd.h
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
const NBD_FLAG_HAS_FLAGS: u64 = 1 << 0;
const NBD_FLAG_READ_ONLY: u64 = 1 << 1;
const NBD_CFLAG_DESTROY_ON_DISCONNECT: u64 = 1 << 0;
const BLOCK_SIZE: u64 = 4096;

/// A netlink message under construction: header, then attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(family: u16, cmd: u8) -> Self {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&family.to_ne_bytes());
        b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&[cmd, 1, 0, 0]);
        Msg(b)
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&attr_bytes(kind, payload));
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + inner.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    v.extend_from_slice(inner);
    v
}

fn socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_GENERIC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("generic netlink socket");
    }
    // SAFETY: fd was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `msg` and returns the attributes of the reply (empty when the kernel only
/// acknowledged it), or the kernel's error.
fn call(sock: &OwnedFd, msg: Vec<u8>, what: &str) -> Result<Vec<(u16, Vec<u8>)>> {
    nix::unistd::write(sock.as_fd(), &msg).with_context(|| format!("netlink {what}"))?;
    let mut attrs = Vec::new();
    loop {
        let mut buf = vec![0u8; 8192];
        let n = nix::unistd::read(sock.as_fd(), &mut buf).with_context(|| what.to_string())?;
        let mut rest = &buf[..n];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                bail!("{what}: a malformed netlink reply");
            }
            let body = &rest[16..len];
            if kind == NLMSG_ERROR {
                let errno = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno))
                        .with_context(|| what.to_string());
                }
                return Ok(attrs);
            }
            attrs.extend(parse_attrs(body.get(4..).unwrap_or_default()));
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

fn parse_attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, b[4..len].to_vec()));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

/// The nbd family's id (generic netlink families are numbered at registration).
fn family(sock: &OwnedFd) -> Result<u16> {
    let mut m = Msg::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
    m.attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0");
    let attrs = call(sock, m.finish(), "resolve the nbd netlink family")?;
    attrs
        .iter()
        .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
        .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
        .context("the kernel has no nbd netlink family (CONFIG_BLK_DEV_NBD)")
}

/// Gives the kernel `server` (one end of a stream socket) as a read-only device of
/// `size` bytes; returns the device's index (`/dev/nbd<index>`).
pub fn connect(server: RawFd, size: u64) -> Result<u32> {
    let sock = socket()?;
    let id = family(&sock)?;
    let mut m = Msg::new(id, NBD_CMD_CONNECT);
    let item = nested(
        NBD_SOCK_ITEM,
        &attr_bytes(NBD_SOCK_FD, &(server as u32).to_ne_bytes()),
    );
    m.attr(NBD_ATTR_SIZE_BYTES, &size.to_ne_bytes())
        .attr(NBD_ATTR_BLOCK_SIZE_BYTES, &BLOCK_SIZE.to_ne_bytes())
        .attr(
            NBD_ATTR_SERVER_FLAGS,
            &(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY).to_ne_bytes(),
        )
        .attr(
            NBD_ATTR_CLIENT_FLAGS,
            &NBD_CFLAG_DESTROY_ON_DISCONNECT.to_ne_bytes(),
        );
    m.0.extend_from_slice(&nested(NBD_ATTR_SOCKETS, &item));
    let attrs = call(&sock, m.finish(), "NBD_CMD_CONNECT")?;
    attrs
        .iter()
        .find(|(k, v)| *k == NBD_ATTR_INDEX && v.len() >= 4)
        .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
        .context("NBD_CMD_CONNECT: the kernel did not say which device")
}

/// Ends device `index`: the kernel tells the server, shuts its socket down, and
/// removes the device once nothing holds it open.
pub fn disconnect(index: u32) -> Result<()> {
    let sock = socket()?;
    let id = family(&sock)?;
    let mut m = Msg::new(id, NBD_CMD_DISCONNECT);
    m.attr(NBD_ATTR_INDEX, &index.to_ne_bytes());
    call(&sock, m.finish(), "NBD_CMD_DISCONNECT").map(drop)
}

fn attr_bytes(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_attributes_padded() {
        let mut m = Msg::new(0x20, NBD_CMD_DISCONNECT);
        m.attr(NBD_ATTR_INDEX, &7u32.to_ne_bytes())
            .attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0x");
        let b = m.finish();
        assert_eq!(b.len(), 16 + 4 + 8 + 12);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(&b[16..20], &[NBD_CMD_DISCONNECT, 1, 0, 0]);
        let attrs = parse_attrs(&b[20..]);
        assert_eq!(attrs[0], (NBD_ATTR_INDEX, 7u32.to_ne_bytes().to_vec()));
        assert_eq!(attrs[1], (CTRL_ATTR_FAMILY_NAME, b"nbd\0x".to_vec()));
    }

    #[test]
    fn a_truncated_attribute_ends_parsing() {
        assert!(parse_attrs(&[8, 0, 1, 0, 1]).is_empty());
    }
}
