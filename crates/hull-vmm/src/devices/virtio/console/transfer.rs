//! Moving guest output to the host socket without a buffer of the guest's choosing,
//! and send(2) with MSG_NOSIGNAL.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vm_memory::GuestMemoryMmap;

use super::super::queue::gather;
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
