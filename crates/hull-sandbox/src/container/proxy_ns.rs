//! The proxy's namespaces: it is the first process of a pid namespace of its own (what
//! an engine lists as the container's processes is the sandbox's), made by one
//! clone(2) for the child alone, so `hull create` and the hooks it runs later stay in
//! hull's. An unprivileged user's proxy is also the first process of a user namespace
//! (root there is the user, nobody else is mapped) that owns that pid namespace, so
//! that it may do as root's proxy does, a /proc and a mount namespace of its own, and
//! jail its VMM, with no privilege on the host; the parent writes the child's id maps
//! (an unprivileged user may map its own ids, and only with setgroups denied) before
//! the child goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nix::unistd::{ForkResult, Pid};

use crate::error::{Result, SandboxError};

/// fork(2), the child the first process of a new pid namespace (and of a new user
/// namespace with `own_userns`); this process stays in its own.
pub(super) fn fork(own_userns: bool) -> Result<ForkResult> {
    let user = if own_userns { libc::CLONE_NEWUSER } else { 0 };
    let flags = (user | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone(2) with no new stack duplicates the process as fork does; hull is
    // single-threaded here (DESIGN.md), and the child runs the proxy.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(SandboxError::Vm(format!(
            "a pid namespace for the proxy: {}",
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
