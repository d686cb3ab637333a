//! CVE-2019-5736: a container process that can reach hull's binary through
//! /proc/<pid>/exe must find a sealed, private copy, never the file on the host. Commands
//! that enter a container first re-execute hull from a sealed memfd.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;

use nix::fcntl::{self, FcntlArg, SealFlag};
use nix::sys::memfd::{self, MFdFlags};

use crate::error::{Error, Result};

const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

fn io(what: &'static str, e: impl Into<std::io::Error>) -> Error {
    Error::Io {
        what,
        path: "/proc/self/exe".into(),
        source: e.into(),
    }
}

/// Whether the running binary is already a sealed copy.
pub fn is_sealed() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    matches!(fcntl::fcntl(&exe, FcntlArg::F_GET_SEALS), Ok(s) if SealFlag::from_bits_truncate(s).contains(SEALS))
}

/// Re-executes the current process from a sealed memfd copy of its binary, with the same
/// argv and environment. Returns only if already sealed.
pub fn ensure_sealed() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    let exe = File::open("/proc/self/exe").map_err(|e| io("cannot open own binary", e))?;
    let len = exe
        .metadata()
        .map_err(|e| io("cannot stat own binary", e))?
        .len() as usize;
    let mfd = memfd::memfd_create(
        c"hull",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| io("memfd_create", e))?;
    let mut done = 0;
    while done < len {
        match nix::sys::sendfile::sendfile(&mfd, &exe, None, len - done) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(io("cannot copy own binary", e)),
        }
    }
    fcntl::fcntl(&mfd, FcntlArg::F_ADD_SEALS(SEALS)).map_err(|e| io("cannot seal copy", e))?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_encoded_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = k.into_encoded_bytes();
            b.push(b'=');
            b.extend(v.into_encoded_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let err = nix::unistd::fexecve(mfd.as_fd(), &args, &env).unwrap_err();
    Err(io("cannot re-execute from sealed copy", err))
}
