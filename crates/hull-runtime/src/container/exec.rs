//! `hull exec`: a new process in a running container's namespaces and cgroup, with its
//! own process section (args, env, user, capabilities, terminal).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sched::{self, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult};
use oci_spec::runtime::Process;

use super::{supervise, Container};
use crate::error::{Error, Result};
use crate::namespaces::{self, Plan};
use crate::procfs::{self, ProcFs};
use crate::signal::pidfd_open;
use crate::state::Status;
use crate::sync::{Channel, Msg};

pub struct ExecOptions {
    pub root: PathBuf,
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
}

/// Returns the process's exit code, or 0 once started when detached.
pub fn exec(opts: ExecOptions) -> Result<i32> {
    let c = Container::load(&opts.root, &opts.id)?;
    exec_in(&c, opts)
}

/// `exec` in a container the caller has loaded.
pub fn exec_in(c: &Container, opts: ExecOptions) -> Result<i32> {
    c.require("exec", &[Status::Created, Status::Running])?;
    let terminal = opts.process.terminal() == Some(true);
    if !opts.detach {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::Setup(format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
        supervise::block_signals()?;
    }
    let (console, relay) = match (&opts.console_socket, terminal) {
        (Some(p), true) => (
            Some(OwnedFd::from(UnixStream::connect(p).map_err(|source| {
                Error::Io {
                    what: "cannot connect to --console-socket",
                    path: p.clone(),
                    source,
                }
            })?)),
            None,
        ),
        (None, true) if opts.detach => {
            return Err(Error::Setup(
                "--tty with --detach needs --console-socket to receive the pty".into(),
            ))
        }
        (None, true) => {
            let (a, b) = supervise::pty_relay_pair()?;
            (Some(a), Some(b))
        }
        (_, false) => (None, None),
    };
    let plan = Plan::from_linux(c.state.config.linux().as_ref());
    let join = namespaces_to_join(c, &plan)?;
    let pidfd =
        pidfd_open(c.state.pid).map_err(|e| Error::Setup(format!("pidfd_open init: {e}")))?;
    if !c.state.init_alive() {
        return Err(Error::WrongState {
            id: opts.id.clone(),
            action: "exec",
            status: Status::Stopped,
        });
    }
    let (parent, child) = Channel::pair()?;
    // SAFETY: single-threaded up to here.
    let stage1 = match unsafe { unistd::fork() }.map_err(|e| Error::Setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(parent);
            stage1_main(c, &opts, &plan, &pidfd, join, console, &child)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child);
    drop(console);
    let guard = KillOnDrop(vec![stage1.as_raw()]);
    c.state.cgroup.add_task(stage1.as_raw())?;
    parent.send(&Msg::Go)?;
    let pid = match parent.recv()? {
        Msg::Pid(p) => {
            waitpid(stage1, None).map_err(|e| Error::Setup(format!("wait stage 1: {e}")))?;
            parent.send(&Msg::Go)?;
            p
        }
        Msg::Error(e) => return Err(Error::Child(e)),
        m => {
            return Err(Error::Sync(std::io::Error::other(format!(
                "unexpected {m:?}"
            ))))
        }
    };
    let mut guard = guard;
    guard.0 = vec![pid];
    loop {
        match parent.recv_with_fd() {
            Ok((Msg::Ready, _)) => break,
            // The seccomp notify fd of an exec'd process has no listener to go to.
            Ok((Msg::SeccompFd, _)) => parent.send(&Msg::SeccompDone)?,
            Ok((Msg::Error(e), _)) => return Err(Error::Child(e)),
            Ok((m, _)) => {
                return Err(Error::Sync(std::io::Error::other(format!(
                    "unexpected {m:?}"
                ))))
            }
            Err(Error::ChildGone) => {
                return Err(Error::Child("the exec'd process died during setup".into()))
            }
            Err(e) => return Err(e),
        }
    }
    guard.0.clear();
    // The channel is close-on-exec in the process: its end means the user's program has
    // replaced hull there, so the pid file never names a process that is still hull.
    let _ = parent.recv();
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, pid.to_string()).map_err(|source| Error::Io {
            what: "cannot write --pid-file",
            path: p.clone(),
            source,
        })?;
    }
    let pty = match relay {
        Some(sock) => Some(supervise::receive_pty(&sock)?),
        None => None,
    };
    if opts.detach {
        return Ok(0);
    }
    supervise::wait(pid, pty)
}

struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill(2) of a process we forked and have not handed over.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let _ = waitpid(unistd::Pid::from_raw(p), None);
        }
    }
}

/// The namespaces of the init that differ from ours: setns to one's own namespace fails.
fn namespaces_to_join(c: &Container, plan: &Plan) -> Result<CloneFlags> {
    let mut flags = CloneFlags::empty();
    for f in [
        CloneFlags::CLONE_NEWUSER,
        CloneFlags::CLONE_NEWNS,
        CloneFlags::CLONE_NEWCGROUP,
        CloneFlags::CLONE_NEWUTS,
        CloneFlags::CLONE_NEWIPC,
        CloneFlags::CLONE_NEWPID,
        CloneFlags::CLONE_NEWNET,
        CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    ] {
        if !plan.has(f) {
            continue;
        }
        let name = namespaces::proc_name(f);
        let theirs = std::fs::metadata(format!("/proc/{}/ns/{name}", c.state.pid));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        use std::os::unix::fs::MetadataExt;
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t.ino() == o.ino() && t.dev() == o.dev() => {}
            (Ok(_), _) => flags |= f,
            (Err(e), _) => return Err(Error::Setup(format!("namespace {name} of the init: {e}"))),
        }
    }
    Ok(flags)
}

fn stage1_main(
    c: &Container,
    opts: &ExecOptions,
    plan: &Plan,
    pidfd: &OwnedFd,
    join: CloneFlags,
    console: Option<OwnedFd>,
    chan: &Channel,
) -> ! {
    let r = (|| -> Result<()> {
        // CVE-2016-9962: once in the container's namespaces, its processes must not
        // ptrace this one or open its /proc files (fds of the host, memory) until the
        // user's program has replaced it. stage 2 inherits it at fork.
        procfs::make_undumpable()?;
        // The host's procfs, before setns: the container's /proc may be fake, or have
        // something mounted over the files that prepare writes (CVE-2025-52881).
        let proc = ProcFs::open()?;
        chan.expect(Msg::Go)?;
        // One setns with a pidfd enters all of them atomically, user namespace included.
        if !join.is_empty() {
            sched::setns(pidfd, join)
                .map_err(|e| Error::Setup(format!("setns into the container: {e}")))?;
        }
        chan.fork_and_report(|| stage2(c, opts, plan, console, chan, &proc))
    })();
    chan.finish_child(r)
}

fn stage2(
    c: &Container,
    opts: &ExecOptions,
    plan: &Plan,
    console: Option<OwnedFd>,
    chan: &Channel,
    proc: &ProcFs,
) -> Result<std::convert::Infallible> {
    let process = &opts.process;
    if process.terminal() == Some(true) {
        unistd::setsid().map_err(|e| Error::Setup(format!("setsid: {e}")))?;
        if let Some(sock) = &console {
            crate::process::console::setup(sock, process.console_size(), false)?;
        }
    } else {
        crate::process::chown_stdio(process.user().uid(), process.user().gid());
    }
    drop(console);
    let seccomp = c
        .state
        .config
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref());
    let mut program = crate::process::prepare(
        process,
        seccomp,
        plan.userns(),
        opts.preserve_fds,
        chan,
        proc,
    )?;
    program.report_ready(chan)?;
    crate::process::exec(&program)
}
