//! The container's init (pid 1 of its pid namespace, if it has one): builds the root,
//! applies the config, reports Ready, then waits for `start` and becomes the user's
//! program.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd;

use super::Program;
use crate::error::{Error, Result};
use crate::hooks;
use crate::namespaces::Plan;
use crate::procfs::ProcFs;
use crate::rootfs;
use crate::spec::Bundle;
use crate::sync::{Channel, Msg};

/// How `start` reaches the init.
pub enum StartSignal {
    /// `hull create`: an O_PATH fd of the exec fifo, reopened for writing after setup.
    Fifo(OwnedFd),
    /// `hull run`: the parent sends `Msg::Go` on the channel.
    Channel,
}

pub struct InitArgs<'a> {
    pub bundle: &'a Bundle,
    pub plan: &'a Plan,
    pub cgroup_dirs: &'a [(String, PathBuf)],
    pub start: StartSignal,
    pub console: Option<OwnedFd>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
    pub id: &'a str,
    /// Decided by the parent before the fork (rootless.rs).
    pub rootless: Rootless,
}

/// What the parent found about its own privileges, for the init.
#[derive(Debug, Clone, Copy)]
pub struct Rootless {
    pub active: bool,
    pub in_userns: bool,
}

impl Rootless {
    pub fn detect() -> Rootless {
        Rootless {
            active: crate::rootless::active(),
            in_userns: crate::rootless::in_user_namespace(),
        }
    }
}

/// Runs the init; returns only on error (the caller reports it and exits).
pub fn run(args: InitArgs, chan: &Channel) -> Result<std::convert::Infallible> {
    let spec = &args.bundle.spec;
    let process = spec.process().as_ref().expect("validated");
    unistd::setsid().map_err(|e| Error::Setup(format!("setsid: {e}")))?;
    // Before the container's mounts exist: every later /proc write goes through it.
    let proc = ProcFs::open()?;
    // The fifo is reopened for writing through our fd table once the root has changed;
    // without a mount namespace there is no /proc inside, so hold the table open now.
    let fd_table = nix::fcntl::open(
        "/proc/self/fd",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Setup(format!("open /proc/self/fd: {e}")))?;
    // Without its own mount namespace a container must not mount anything (it would be
    // the host's mount table): it only gets chrooted into its rootfs, as runc does.
    let own_mounts = args.plan.has(CloneFlags::CLONE_NEWNS);
    if own_mounts {
        rootfs::prepare(
            &args.bundle.rootfs,
            spec,
            args.cgroup_dirs,
            rootfs::Privilege {
                // Where mknod and new sysfs/mqueue mounts are refused.
                userns: args.plan.userns() || args.rootless.in_userns,
                rootless: args.rootless.active,
            },
        )?;
    }
    chan.send(&Msg::MountsReady)?;
    let state_json = match chan.recv()? {
        Msg::HooksDone(state) => state.into_bytes(),
        Msg::Error(e) => return Err(Error::Child(e)),
        other => {
            return Err(Error::Sync(std::io::Error::other(format!(
                "unexpected {other:?}"
            ))))
        }
    };
    let hooks = spec.hooks().as_ref();
    hooks::run_all(
        "createContainer",
        hooks.and_then(|h| h.create_container().as_ref()),
        &state_json,
    )?;
    if own_mounts {
        rootfs::pivot(&args.bundle.rootfs, args.no_pivot)?;
    } else {
        unistd::chroot(&args.bundle.rootfs).map_err(|e| Error::Setup(format!("chroot: {e}")))?;
        unistd::chdir("/").map_err(|e| Error::Setup(format!("chdir /: {e}")))?;
    }
    if process.terminal() == Some(true) {
        let sock = args.console.as_ref().ok_or_else(|| {
            Error::Setup("process.terminal is true but no --console-socket was given".into())
        })?;
        super::console::setup(sock, process.console_size(), true)?;
    } else {
        super::chown_stdio(process.user().uid(), process.user().gid());
    }
    drop(args.console);
    // Before finalize: /proc/sys is usually among the read-only paths.
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        write_sysctls(&proc, sysctl)?;
    }
    if own_mounts {
        rootfs::finalize(spec)?;
    }
    set_names(spec)?;
    if !args.no_new_keyring {
        join_session_keyring(args.id);
    }
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        set_personality(p)?;
    }
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let mut program: Program = super::prepare(
        process,
        seccomp,
        args.plan.userns(),
        args.preserve_fds,
        chan,
        &proc,
    )?;
    program.report_ready(chan)?;
    // Held open (close-on-exec) until execve: its closing tells `start` that the user's
    // program runs, so poststart hooks come after startContainer ones.
    let _exec_marker = match args.start {
        StartSignal::Fifo(path_fd) => {
            // Blocks until `hull start` opens the other end.
            let fifo = nix::fcntl::openat(
                &fd_table,
                path_fd.as_raw_fd().to_string().as_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::Setup(format!("open exec fifo: {e}")))?;
            unistd::write(&fifo, b"0")
                .map_err(|e| Error::Setup(format!("write exec fifo: {e}")))?;
            Some(fifo)
        }
        // The channel itself is close-on-exec: the parent sees it close at execve.
        StartSignal::Channel => {
            chan.expect(Msg::Go)?;
            None
        }
    };
    if let Err(e) = hooks::run_all(
        "startContainer",
        hooks.and_then(|h| h.start_container().as_ref()),
        &state_json,
    ) {
        // Tells `start` that the program never ran: the fifo's end alone could also be
        // a program that ran and exited at once, its init already reaped.
        if let Some(fifo) = &_exec_marker {
            let _ = unistd::write(fifo, b"E");
        }
        return Err(e);
    }
    super::exec(&program)
}

fn set_names(spec: &oci_spec::runtime::Spec) -> Result<()> {
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        unistd::sethostname(h).map_err(|e| Error::Setup(format!("hostname {h:?}: {e}")))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: setdomainname reads `len` bytes from a valid buffer.
        let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
        if r != 0 {
            return Err(Error::Setup(format!(
                "domainname {d:?}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Through hull's own procfs handle, never the container's /proc: a fake one or a mount
/// over one of its files must not receive the value (CVE-2019-16884, CVE-2025-52881).
fn write_sysctls(proc: &ProcFs, sysctl: &std::collections::HashMap<String, String>) -> Result<()> {
    for (k, v) in sysctl {
        if k.contains("..") || k.starts_with('/') {
            return Err(Error::Setup(format!(
                "linux.sysctl {k:?} is not a sysctl name"
            )));
        }
        let rel = PathBuf::from(k.replace('.', "/"));
        proc.write_sys(&rel, v.as_bytes())
            .map_err(|e| Error::Setup(format!("linux.sysctl {k}={v}: {e}")))?;
    }
    Ok(())
}

/// A fresh session keyring per container, so containers do not share the host's keys.
fn join_session_keyring(id: &str) {
    let name = std::ffi::CString::new(id).unwrap_or_default();
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING takes a NUL-terminated name.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            name.as_ptr(),
        )
    };
    if r < 0 {
        // Kernels without keyrings, or seccomp'd hosts: runc warns and goes on too.
        tracing::debug!("join session keyring: {}", std::io::Error::last_os_error());
    }
}

fn set_personality(p: &oci_spec::runtime::LinuxPersonality) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain as D;
    let persona = match p.domain() {
        D::PerLinux => 0x0000,
        D::PerLinux32 => 0x0008,
    };
    // SAFETY: personality takes a plain integer.
    if unsafe { libc::personality(persona) } < 0 {
        return Err(Error::Setup(format!(
            "linux.personality: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
