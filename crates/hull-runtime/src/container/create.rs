//! `hull create`: bundle to an init process waiting for `start`.
//!
//! The parent (this process) forks stage 1, which joins and unshares namespaces and forks
//! the init (stage 2, pid 1 of a new pid namespace). Every resource made here is
//! registered in `Undo`, so a failure at any step leaves nothing behind.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::{self, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::Container;
use crate::cgroups::{Cgroup, CgroupVersion};
use crate::error::{Error, Result};
use crate::hooks;
use crate::namespaces::Plan;
use crate::process::init::{self, InitArgs, StartSignal};
use crate::procfs::{self, ProcFs};
use crate::spec::{self, Bundle};
use crate::state::{self, ContainerState, StateDir, Status};
use crate::sync::{Channel, Msg};

#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub root: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
}

/// How `start` will release the init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Through the exec fifo, by a later `hull start`.
    Fifo,
    /// Through the channel, by this same process (`hull run`).
    Channel,
}

pub struct Created {
    pub container: Container,
    /// The parent's end of the channel to the init (used by `run` to start it).
    pub chan: Channel,
}

/// Undoes what a failed create made, in reverse order.
struct Undo {
    dir: Option<StateDir>,
    cgroup: Option<Cgroup>,
    pids: Vec<i32>,
}

impl Undo {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pids.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for &pid in &self.pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            // Our children are reaped here; the init (a grandchild) goes to its reaper.
            let _ = waitpid(
                Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::__WALL),
            );
        }
        if let Some(cg) = &self.cgroup {
            if let Ok(pids) = cg.pids() {
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if let Err(e) = cg.destroy() {
                tracing::warn!("cleanup: {e}");
            }
        }
        if let Some(dir) = &self.dir {
            let _ = dir.remove();
        }
    }
}

pub fn create(opts: &CreateOptions, mode: StartMode) -> Result<Created> {
    spec::validate_id(&opts.id)?;
    let bundle = Bundle::load(&opts.bundle)?;
    create_from(opts, mode, bundle, None)
}

/// Create from a bundle the caller has loaded. `console`: a socket for the pty master
/// that the caller made itself (`hull run` with a terminal and no --console-socket
/// relays the pty).
pub fn create_from(
    opts: &CreateOptions,
    mode: StartMode,
    bundle: Bundle,
    console: Option<OwnedFd>,
) -> Result<Created> {
    tracing::debug!(id = %opts.id, "bundle loaded");
    let plan = Plan::from_linux(bundle.spec.linux().as_ref());
    let console = match (&opts.console_socket, console) {
        (_, Some(fd)) => Some(fd),
        (Some(p), None) => Some(OwnedFd::from(UnixStream::connect(p).map_err(|source| {
            Error::Io {
                what: "cannot connect to --console-socket",
                path: p.clone(),
                source,
            }
        })?)),
        (None, None) => None,
    };
    if console.is_none()
        && mode == StartMode::Fifo
        && bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true)
    {
        return Err(Error::InvalidConfig {
            path: bundle.dir.join("config.json"),
            reason: "process.terminal is true: pass --console-socket to receive the pty master, or set it to false".into(),
        });
    }
    let linux = bundle.spec.linux().as_ref();
    let cgroups_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .and_then(|p| p.to_str());
    let mut cgroup = Cgroup::resolve(cgroups_path, &opts.id)?;
    let resources = effective_resources(&bundle);
    // Rootless: only delegated hierarchies, checked before anything is made.
    let rootless = init::Rootless::detect();
    let resources = if rootless.active {
        cgroup.prepare_rootless(resources)?
    } else {
        resources
    };

    let dir = StateDir::create(&opts.root, &opts.id)?;
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroup: None,
        pids: vec![],
    };
    let mut st = ContainerState::creating(
        &opts.id,
        &bundle,
        cgroup.clone(),
        state::Isolation::Namespace,
    );
    // One save before anything else is made, naming the cgroup directories about to
    // be created: `delete --force` finds everything even if this process dies now.
    cgroup.plan_dirs();
    st.cgroup = cgroup.clone();
    dir.save_provisional(&st)?;
    undo.cgroup = Some(cgroup.clone());
    cgroup.create(resources.as_ref())?;
    tracing::debug!(path = cgroup.path(), "cgroup created");
    let cgroup_dirs: Vec<(String, PathBuf)> = cgroup
        .hierarchies()
        .map(|h| {
            let name = match cgroup.version() {
                CgroupVersion::V2 => String::new(),
                _ => h
                    .mount_point()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            (name, h.dir().to_path_buf())
        })
        .collect();

    let start = match mode {
        StartMode::Fifo => {
            let fifo = dir.fifo();
            unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622)).map_err(|e| Error::Io {
                what: "cannot create exec fifo",
                path: fifo.clone(),
                source: e.into(),
            })?;
            // Past the umask: the init opens it for writing as the container's user, who
            // may be unmapped on the host (user namespaces); only hull reads it.
            std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
                .map_err(|source| Error::Io {
                    what: "cannot set exec fifo permissions",
                    path: fifo.clone(),
                    source,
                })?;
            let fd = nix::fcntl::open(
                &fifo,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::Io {
                what: "cannot open exec fifo",
                path: fifo,
                source: e.into(),
            })?;
            StartSignal::Fifo(fd)
        }
        StartMode::Channel => StartSignal::Channel,
    };

    let (parent, child) = Channel::pair()?;
    // One process when nothing has to happen between namespaces (runc's and crun's common
    // case): the init is cloned straight into its new namespaces. A user namespace (id
    // maps), joined namespaces or time offsets need stage 1 in between.
    let has_time_offsets = linux
        .and_then(|l| l.time_offsets().as_ref())
        .is_some_and(|o| !o.is_empty());
    let direct = !plan.new_user && plan.join.is_empty() && !has_time_offsets;
    let fork_result = if direct {
        fork_into(plan.new - CloneFlags::CLONE_NEWCGROUP)
    } else {
        // SAFETY: hull is single-threaded up to here (DESIGN.md).
        unsafe { unistd::fork() }
    };
    let first = match fork_result.map_err(|e| Error::Setup(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(parent);
            let args = InitArgs {
                bundle: &bundle,
                plan: &plan,
                cgroup_dirs: &cgroup_dirs,
                start,
                console,
                no_pivot: opts.no_pivot,
                no_new_keyring: opts.no_new_keyring,
                preserve_fds: opts.preserve_fds,
                id: &opts.id,
                rootless,
            };
            if direct {
                direct_init_main(args, &child)
            } else {
                stage1_main(args, &child)
            }
        }
        ForkResult::Parent { child: pid } => pid,
    };
    drop(child);
    drop(start);
    drop(console);
    undo.pids.push(first.as_raw());

    let init_pid = drive(&parent, &bundle, &cgroup, first, direct, &mut st, &mut undo)?;
    st.pid = init_pid;
    st.start_time = state::process_start_time(init_pid).ok_or(Error::ChildGone)?;
    st.creator = None;
    // `run` starts the init right after this; one write instead of two on its hot path.
    st.started = mode == StartMode::Channel;
    dir.save(&st)?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, init_pid)?;
    }
    undo.disarm();
    Ok(Created {
        container: Container { dir, state: st },
        chan: parent,
    })
}

/// The parent's side of the handshake; returns the init's pid once it is Ready.
fn drive(
    chan: &Channel,
    bundle: &Bundle,
    cgroup: &Cgroup,
    stage1: Pid,
    stage1_is_init: bool,
    st: &mut ContainerState,
    undo: &mut Undo,
) -> Result<i32> {
    cgroup.add_task(stage1.as_raw())?;
    tracing::debug!("cgroup joined");
    chan.send(&Msg::Go)?;
    let mut init_pid = if stage1_is_init { stage1.as_raw() } else { 0 };
    loop {
        let (msg, fd) = chan.recv_with_fd().map_err(|e| match e {
            Error::ChildGone => Error::Child("the container's init exited during setup".into()),
            e => e,
        })?;
        match msg {
            Msg::MapRequest => {
                let linux = bundle.spec.linux().as_ref();
                crate::idmap::write(
                    stage1.as_raw(),
                    linux.and_then(|l| l.uid_mappings().as_ref()),
                    linux.and_then(|l| l.gid_mappings().as_ref()),
                )?;
                chan.send(&Msg::MapsDone)?;
            }
            Msg::Pid(pid) => {
                tracing::debug!(pid, "init forked");
                init_pid = pid;
                undo.pids.push(pid);
                match waitpid(stage1, None) {
                    Ok(WaitStatus::Exited(_, 0)) => {}
                    other => {
                        return Err(Error::Child(format!("stage 1 ended with {other:?}")));
                    }
                }
                undo.pids.retain(|p| *p != stage1.as_raw());
                chan.send(&Msg::Go)?;
            }
            Msg::MountsReady => {
                tracing::debug!("init: mounts ready");
                st.pid = init_pid;
                st.start_time = state::process_start_time(init_pid).unwrap_or(0);
                // The create-time hooks see "created", as the OCI validation suite
                // (hooks_stdin) and crun have it; runc 1.1 says "creating".
                let json = serde_json::to_string(&st.oci(Status::Created)).unwrap_or_default();
                let h = bundle.spec.hooks().as_ref();
                hooks::run_all(
                    "prestart",
                    h.and_then(|h| h.prestart().as_ref()),
                    json.as_bytes(),
                )?;
                hooks::run_all(
                    "createRuntime",
                    h.and_then(|h| h.create_runtime().as_ref()),
                    json.as_bytes(),
                )?;
                chan.send(&Msg::HooksDone(json))?;
            }
            Msg::SeccompFd => {
                let fd = fd.ok_or_else(|| Error::Child("seccomp fd missing".into()))?;
                send_seccomp_fd(bundle, init_pid, st, fd)?;
                chan.send(&Msg::SeccompDone)?;
            }
            Msg::Ready => {
                tracing::debug!("init: ready");
                return Ok(init_pid);
            }
            Msg::Error(e) => return Err(Error::Child(e)),
            other => {
                return Err(Error::Sync(std::io::Error::other(format!(
                    "unexpected {other:?}"
                ))))
            }
        }
    }
}

fn send_seccomp_fd(bundle: &Bundle, pid: i32, st: &ContainerState, fd: OwnedFd) -> Result<()> {
    let seccomp = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref());
    let Some(path) = seccomp.and_then(|s| s.listener_path().as_ref()) else {
        // No agent configured: the fd is dropped, as runc does.
        return Ok(());
    };
    let meta = seccomp
        .and_then(|s| s.listener_metadata().clone())
        .unwrap_or_default();
    let state = serde_json::to_value(st.oci(Status::Creating)).unwrap_or_default();
    crate::seccomp::send_to_listener(path, &meta, pid, &state, std::os::fd::AsFd::as_fd(&fd))?;
    Ok(())
}

/// fork(2) into new namespaces: a raw clone without a stack runs the child on a copy of
/// the caller's stack, as crun does. glibc's cached thread id stays the parent's in the
/// child; the child only runs hull's own code up to execve, which does not use it.
fn fork_into(flags: CloneFlags) -> nix::Result<ForkResult> {
    // SAFETY: clone with a NULL stack and no CLONE_VM/CLONE_THREAD behaves as fork; hull is
    // single-threaded here, so the child owns a consistent copy of all memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match nix::errno::Errno::result(r)? {
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// The init cloned directly into its namespaces. Never returns.
fn direct_init_main(args: InitArgs, chan: &Channel) -> ! {
    let r = procfs::make_undumpable().and_then(|()| {
        chan.expect(Msg::Go)?;
        // The cgroup namespace's root is the cgroup we are in now: the parent has just
        // moved us into the container's.
        if args.plan.new.contains(CloneFlags::CLONE_NEWCGROUP) {
            sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| Error::Setup(format!("unshare cgroup namespace: {e}")))?;
        }
        init::run(args, chan)
    });
    let Err(e) = r;
    chan.finish_child(Err(e))
}

/// Stage 1: namespaces, then fork the init. Never returns.
fn stage1_main(args: InitArgs, chan: &Channel) -> ! {
    let r = (|| -> Result<()> {
        // Before joining any namespace of another container (CVE-2016-9962); the init
        // forked below inherits it.
        procfs::make_undumpable()?;
        let proc = ProcFs::open()?;
        chan.expect(Msg::Go)?;
        let plan = args.plan;
        plan.join_paths()?;
        if plan.new_user {
            sched::unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(|e| Error::Setup(format!("unshare user namespace: {e}")))?;
            // An unprivileged parent (or its newuidmap) can open our /proc/<pid>/*_map
            // only while we are dumpable: undumpable, they belong to the host's root.
            procfs::dumpable_for(!unistd::geteuid().is_root(), || {
                chan.send(&Msg::MapRequest)?;
                chan.expect(Msg::MapsDone)
            })?;
            become_root()?;
        }
        sched::unshare(plan.new).map_err(|e| Error::Setup(format!("unshare namespaces: {e}")))?;
        if let Some(offsets) = args
            .bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.time_offsets().as_ref())
        {
            procfs::dumpable_for(plan.new_user, || write_time_offsets(&proc, offsets))?;
        }
        chan.fork_and_report(|| init::run(args, chan))
    })();
    chan.finish_child(r)
}

fn become_root() -> Result<()> {
    let root = unistd::Uid::from_raw(0);
    let rootg = unistd::Gid::from_raw(0);
    unistd::setresgid(rootg, rootg, rootg).map_err(|e| {
        Error::Setup(format!(
            "setresgid 0 in user namespace (is gid 0 mapped?): {e}"
        ))
    })?;
    unistd::setresuid(root, root, root).map_err(|e| {
        Error::Setup(format!(
            "setresuid 0 in user namespace (is uid 0 mapped?): {e}"
        ))
    })
}

fn write_time_offsets(
    proc: &ProcFs,
    offsets: &std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>,
) -> Result<()> {
    let mut text = String::new();
    for (clock, o) in offsets {
        text += &format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        );
    }
    proc.write_self("timens_offsets", text.as_bytes())
        .map_err(|e| Error::Setup(format!("linux.timeOffsets: {e}")))
}

pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("hull-tmp");
    let io = |source| Error::Io {
        what: "cannot write --pid-file",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    write!(f, "{pid}").map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// The config's resources plus the device rules every container needs (runc's
/// AllowedDevices), when the config restricts devices at all.
fn effective_resources(bundle: &Bundle) -> Option<LinuxResources> {
    let linux = bundle.spec.linux().as_ref()?;
    Some(with_default_devices(linux.resources().clone()?))
}

/// `res` with the device rules every container needs added to its own, when it has
/// device rules at all: `update` too (containerd's CRI sends the spec's whole rule
/// list, and a cgroup v2 device program of only those denied /dev/null after it).
pub fn with_default_devices(mut res: LinuxResources) -> LinuxResources {
    let Some(rules) = res.devices().clone().filter(|r| !r.is_empty()) else {
        return res;
    };
    let mut rules = rules;
    use LinuxDeviceType::{B, C};
    rules.extend([
        device_rule(true, C, None, None, "m"),
        device_rule(true, B, None, None, "m"),
        device_rule(true, C, Some(1), Some(3), "rwm"),
        device_rule(true, C, Some(1), Some(8), "rwm"),
        device_rule(true, C, Some(1), Some(7), "rwm"),
        device_rule(true, C, Some(5), Some(0), "rwm"),
        device_rule(true, C, Some(1), Some(5), "rwm"),
        device_rule(true, C, Some(1), Some(9), "rwm"),
        device_rule(true, C, Some(136), None, "rwm"),
        device_rule(true, C, Some(5), Some(2), "rwm"),
        device_rule(true, C, Some(10), Some(200), "rwm"),
    ]);
    // linux.devices entries get no rule of their own: creating a node does not grant
    // access to it, resources.devices does (runc and crun agree).
    res.set_devices(Some(rules));
    res
}
