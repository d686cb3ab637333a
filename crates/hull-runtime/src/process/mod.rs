//! What happens inside the forked processes: the container's init, and the process of
//! `hull exec`. Both end in `finish_and_exec`, which applies the process section of the
//! config in the order runc uses and then executes the user's program.

pub mod capabilities;
pub mod console;
pub mod init;
pub mod rlimits;
pub mod user;

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd;
use oci_spec::runtime::{LinuxSeccomp, Process};

use crate::error::{Error, Result};
use crate::procfs::{self, ProcFs};
use crate::sync::{Channel, Msg};

/// The program to execute, resolved before the point of no return so a typo in
/// process.args fails `create`, not `start`.
pub struct Program {
    pub path: CString,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// A no_new_privs filter, loaded after Ready so it need not allow hull's own socket
    /// calls (runc's order).
    late_seccomp: Option<crate::seccomp::Compiled>,
}

impl Program {
    /// Tells the parent that setup is done, then loads the filter kept for last. Only
    /// the exec fifo's open/write and execve run under it after this.
    pub fn report_ready(&mut self, chan: &Channel) -> Result<()> {
        chan.send(&Msg::Ready)?;
        if let Some(f) = self.late_seccomp.take() {
            f.load()?;
        }
        Ok(())
    }
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Setup(format!("{what} {s:?} contains a NUL byte")))
}

/// Applies the process section (after the rootfs is in place) up to just before execve.
pub fn prepare(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    userns: bool,
    preserve_fds: i32,
    chan: &Channel,
    proc: &ProcFs,
) -> Result<Program> {
    if let Some(adj) = process.oom_score_adj() {
        let data = adj.to_string();
        procfs::dumpable_for(userns, || proc.write_self("oom_score_adj", data.as_bytes()))
            .map_err(|e| {
                Error::Setup(format!(
                    "process.oomScoreAdj {adj}: {e} (lowering it needs CAP_SYS_RESOURCE)"
                ))
            })?;
    }
    if let Some(r) = process.rlimits() {
        rlimits::apply(r)?;
    }
    apply_lsm(process, proc)?;
    close_fds_on_exec(preserve_fds)?;
    let cwd = process.cwd();
    enter_cwd(cwd)?;
    let nnp = process.no_new_privileges() == Some(true);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
    if !nnp {
        load_seccomp(seccomp, chan)?;
    }
    if let Some(c) = process.capabilities() {
        capabilities::drop_bounding(c)?;
    }
    set_keep_caps(true)?;
    user::switch(process.user(), userns, proc)?;
    set_keep_caps(false)?;
    match process.capabilities() {
        Some(c) => capabilities::apply(c)?,
        None => {
            for set in [
                caps::CapSet::Effective,
                caps::CapSet::Permitted,
                caps::CapSet::Inheritable,
                caps::CapSet::Ambient,
            ] {
                let _ = caps::clear(None, set);
            }
        }
    }
    // Again as the user: a directory only root may enter must fail here, not in exec.
    unistd::chdir(cwd).map_err(|e| Error::Setup(format!("process.cwd {}: {e}", cwd.display())))?;
    let mut late = None;
    if nnp {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Error::Setup(format!("process.noNewPrivileges: {e}")))?;
        if let Some(s) = seccomp {
            let compiled = crate::seccomp::compile(s)?;
            if compiled.notifies() {
                // The notify fd travels over the channel: load now, the profile must
                // allow sendto (as runc requires write).
                send_notify_fd(compiled.load()?, chan)?;
            } else {
                late = Some(compiled);
            }
        }
    }
    let mut p = program(process)?;
    p.late_seccomp = late;
    Ok(p)
}

/// CVE-2024-21626: a cwd reached through a leaked host fd is not inside the root; the
/// kernel shows such a directory as "(unreachable)". Checked before seccomp, which may
/// forbid getcwd.
fn enter_cwd(cwd: &Path) -> Result<()> {
    unistd::chdir(cwd).map_err(|e| Error::Setup(format!("process.cwd {}: {e}", cwd.display())))?;
    match unistd::getcwd() {
        Ok(p) if p.is_absolute() && !p.starts_with("(unreachable)") => Ok(()),
        _ => Err(Error::Setup(format!(
            "process.cwd {} is outside the container's root",
            cwd.display()
        ))),
    }
}

fn load_seccomp(seccomp: Option<&LinuxSeccomp>, chan: &Channel) -> Result<()> {
    let Some(s) = seccomp else { return Ok(()) };
    send_notify_fd(crate::seccomp::load(s)?, chan)
}

fn send_notify_fd(fd: Option<std::os::fd::OwnedFd>, chan: &Channel) -> Result<()> {
    if let Some(fd) = fd {
        chan.send_with_fd(&Msg::SeccompFd, std::os::fd::AsFd::as_fd(&fd))?;
        chan.expect(Msg::SeccompDone)?;
    }
    Ok(())
}

fn set_keep_caps(on: bool) -> Result<()> {
    nix::sys::prctl::set_keepcaps(on).map_err(|e| Error::Setup(format!("PR_SET_KEEPCAPS: {e}")))
}

/// The label goes to the attr file of hull's own procfs handle: a fake /proc in the
/// rootfs would otherwise swallow it and leave the container unconfined (CVE-2019-16884).
fn apply_lsm(process: &Process, proc: &ProcFs) -> Result<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if !Path::new("/sys/kernel/security/apparmor").exists()
            && !Path::new("/sys/module/apparmor").exists()
        {
            return Err(Error::Setup(format!(
                "process.apparmorProfile {profile:?}: this host kernel has no AppArmor; remove the field or run on an AppArmor host"
            )));
        }
        let data = format!("exec {profile}");
        proc.write_self("attr/apparmor/exec", data.as_bytes())
            .or_else(|_| proc.write_self("attr/exec", data.as_bytes()))
            .map_err(|e| Error::Setup(format!("process.apparmorProfile {profile:?}: {e}")))?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(Error::Setup(format!(
                "process.selinuxLabel {label:?}: this host has no SELinux; remove the field or run on an SELinux host"
            )));
        }
        proc.write_self("attr/exec", label.as_bytes())
            .map_err(|e| Error::Setup(format!("process.selinuxLabel {label:?}: {e}")))?;
    }
    Ok(())
}

/// Every fd from 3 + preserve_fds up closes at execve (CVE-2024-21626: no host directory
/// fd may reach the container).
fn close_fds_on_exec(preserve_fds: i32) -> Result<()> {
    let first = 3 + preserve_fds.max(0) as u32;
    // SAFETY: close_range only changes flags of this process's fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(Error::Setup(format!(
            "close_range: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn program(process: &Process) -> Result<Program> {
    let args = process.args().as_deref().unwrap_or_default();
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user::home_of(process.user().uid())));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let exe = resolve(&args[0], path_var)?;
    Ok(Program {
        late_seccomp: None,
        path: cstring(exe.to_str().unwrap_or(&args[0]), "process.args[0]")?,
        args: args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_>>()?,
        env: env
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_>>()?,
    })
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

fn resolve(arg0: &str, path_var: &str) -> Result<PathBuf> {
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::Setup(format!(
                "process.args[0] {arg0:?}: executable not found in the container"
            )))
        };
    }
    path_var
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::Setup(format!(
                "process.args[0] {arg0:?}: executable file not found in the container's $PATH ({path_var})"
            ))
        })
}

/// The point of no return.
pub fn exec(p: &Program) -> ! {
    crate::container::supervise::reset_signals_for_exec();
    let err = unistd::execve(&p.path, &p.args, &p.env).unwrap_err();
    eprintln!("hull: exec {:?}: {err}", p.path);
    // SAFETY: _exit ends this forked process without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

/// Gives stdio to the container's user, so it can reopen /proc/self/fd/N (runc does too).
pub fn chown_stdio(uid: u32, gid: u32) {
    for fd in 0..3 {
        // SAFETY: fstat/fchown on fds 0-2 only touch this process's descriptors.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                continue;
            }
            // /dev/null and friends belong to the host; leave them.
            if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
                continue;
            }
            libc::fchown(fd, uid, gid);
        }
    }
}
