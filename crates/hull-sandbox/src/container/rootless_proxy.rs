//! A rootless VM container's proxy: the first process of a user namespace of its own
//! (root there is the user, nobody else is mapped) and of a pid namespace that
//! namespace owns, so that it may do as root's proxy does, a /proc and a mount
//! namespace of its own, and jail its VMM, with no privilege on the host. `hull
//! create` stays in the host's namespaces: one clone(2) makes both for the child
//! alone, and the parent writes the child's id maps (an unprivileged user may map its
//! own ids, and only with setgroups denied) before the child goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nix::unistd::{ForkResult, Pid};

use crate::error::{Result, SandboxError};

/// fork(2), the child in a new user and pid namespace.
pub(super) fn fork() -> Result<ForkResult> {
    let flags = (libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone(2) with no new stack duplicates the process as fork does; hull is
    // single-threaded here (DESIGN.md), and the child runs the proxy.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(SandboxError::Rootless(format!(
            "a user and pid namespace for the proxy: {}",
            std::io::Error::last_os_error()
        ))),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// In the child: it is nobody until the parent has written its maps.
pub(super) fn wait_for_maps(sock: &UnixStream) {
    let mut go = [0u8; 1];
    if (&*sock).read_exact(&mut go).is_err() || go != *b"m" {
        std::process::exit(1);
    }
}

/// In the parent: root in the child's namespace is this user.
pub(super) fn map_ids(child: Pid, sock: &mut UnixStream) -> Result<()> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, text).map_err(|e| SandboxError::Rootless(format!("{path}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {} 1", nix::unistd::geteuid()))?;
    write("gid_map", format!("0 {} 1", nix::unistd::getegid()))?;
    sock.write_all(b"m")
        .map_err(|e| SandboxError::Vm(format!("the proxy went away: {e}")))
}
