//! Moving bytes between guest buffers and the host socket without a buffer of the
//! guest's choosing: gather and scatter over validated chains, and send(2) with
//! MSG_NOSIGNAL.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::queue::Buffer;
use super::{Client, TxChain};

/// Sends what is left of `chain` to the client; true once the chain is done with
/// (all sent, or dropped for want of a client), false if the socket would block.
pub(super) fn send_chain(
    memory: &GuestMemoryMmap,
    chain: &mut TxChain,
    client: &mut Option<Client>,
    bounce: &mut [u8],
) -> bool {
    while chain.sent < chain.total {
        let Some(c) = client.as_mut().filter(|c| !c.hung_up) else {
            tracing::trace!(
                bytes = chain.total - chain.sent,
                "virtio-console: guest output dropped: no host client"
            );
            return true;
        };
        let n = gather(memory, &chain.buffers, chain.sent, bounce);
        if n == 0 {
            return true;
        }
        match send(&c.stream, &bounce[..n]) {
            Ok(k) => chain.sent += k as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("virtio-console: host client write: {e}; it is gone");
                c.hung_up = true;
            }
        }
    }
    true
}

/// Copies up to `out.len()` bytes of the chain, from byte `skip` on, into `out`;
/// returns how many. `walk` checked the buffers lie in guest memory.
fn gather(memory: &GuestMemoryMmap, buffers: &[Buffer], mut skip: u64, out: &mut [u8]) -> usize {
    let mut n = 0;
    for b in buffers {
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        if n == out.len() {
            break;
        }
        // Both fit in usize: `len` is a u32, the rest is bounded by `out`.
        let take = ((len - skip) as usize).min(out.len() - n);
        let at = GuestAddress(b.addr.0 + skip);
        if let Err(e) = memory.read_slice(&mut out[n..n + take], at) {
            tracing::warn!("virtio-console: tx read failed: {e}");
            break;
        }
        n += take;
        skip = 0;
    }
    n
}

/// Writes `data` across the chain's buffers; returns the bytes written (the used
/// length). The caller read no more than the buffers hold.
pub(super) fn scatter(memory: &GuestMemoryMmap, buffers: &[Buffer], mut data: &[u8]) -> u32 {
    let mut written = 0;
    for b in buffers {
        if data.is_empty() {
            break;
        }
        let take = data.len().min(b.len as usize);
        if let Err(e) = memory.write_slice(&data[..take], b.addr) {
            tracing::warn!("virtio-console: rx write failed: {e}");
            break;
        }
        data = &data[take..];
        // At most CHUNK in all.
        written += take as u32;
    }
    written
}

/// write(2) without SIGPIPE: a host client that went away must be an error here, not
/// a signal that kills the VMM whatever its disposition. std has no way to pass
/// MSG_NOSIGNAL; send(2) is the sendto syscall.
fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for `data.len()` bytes for the duration of the call, and
    // the kernel only reads it; the fd is owned by `stream`, alive for the call.
    let r = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}
