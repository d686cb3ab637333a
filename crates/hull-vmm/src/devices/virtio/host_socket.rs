//! The host side that console and vsock share: a non-blocking Unix listener on a path
//! the device owns, watched by an epoll set of the device's own.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub(crate) enum ListenError {
    /// bind(2) failed: the path is not ours, and stays as it was.
    Bind(io::Error),
    /// Setting up around the bound socket failed; the path has been removed again.
    Setup(io::Error),
}

/// Binds `path`, makes the listener non-blocking and watches it for connections in a
/// new epoll set, under `token`.
pub(crate) fn listen(path: &Path, token: u64) -> Result<(UnixListener, Epoll), ListenError> {
    let listener = UnixListener::bind(path).map_err(ListenError::Bind)?;
    let setup = || -> io::Result<Epoll> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let ev = EpollEvent::new(EventSet::IN, token);
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), ev)?;
        Ok(epoll)
    };
    match setup() {
        Ok(epoll) => Ok((listener, epoll)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(ListenError::Setup(e))
        }
    }
}
