//! A pod in one VM, the host's side: a VM container whose bundle names a sandbox (the
//! CRI's `io.kubernetes.cri.container-type=container` with
//! `io.kubernetes.cri.sandbox-id=<sid>`, or hull's own `io.hull.sandbox=<sid>`) is
//! created inside the running VM of container <sid> (same `--root`) instead of booting
//! one. Its state directory is its own; its reported pid is a stand-in, forked here,
//! that hands its stdio to the sandbox's proxy (pod.rs), passes on the signals it gets,
//! and exits with the member's exit status, as an exec's `-d` waiter does. Its later
//! verbs reach the sandbox's proxy with `Control::For`. A member of a sandbox that is
//! not a VM container, or not running, is an error: never a VM or namespaces of its
//! own, which would silently not share the pod's network.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use hull_runtime::container::Container;
use hull_runtime::error::Error as RuntimeError;
use hull_runtime::state::{Isolation, Status};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::Spec;
use serde_json::Value;

use super::control::{self, Control, ControlReply};
use super::create::{self, Undo, VmCreate};
use super::pod::{Payload, SANDBOX_NS};
use super::preserved::Preserved;
use super::relay;
use crate::error::{io_err, Result, SandboxError};

pub const SANDBOX_ANNOTATION: &str = "io.hull.sandbox";
const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox a VM container's spec says it belongs to (never itself).
pub fn sandbox_of(spec: &Spec, id: &str) -> Option<String> {
    let a = spec.annotations().as_ref()?;
    let cri = || {
        (a.get(CRI_TYPE).map(String::as_str) == Some("container"))
            .then(|| a.get(CRI_SANDBOX))
            .flatten()
    };
    a.get(SANDBOX_ANNOTATION)
        .or_else(cri)
        .filter(|s| !s.is_empty() && s.as_str() != id)
        .cloned()
}

fn refuse(m: String) -> SandboxError {
    SandboxError::Vm(m)
}

/// The running VM container `req` is to join, if its bundle names one.
pub fn sandbox_for(req: &VmCreate) -> Result<Option<Container>> {
    let Some(sid) = sandbox_of(&req.bundle.spec, req.id) else {
        return Ok(None);
    };
    let sandbox = Container::load(req.root, &sid).map_err(|e| {
        refuse(format!(
            "{}: the bundle puts it in sandbox {sid}, which is not a container in {} ({e}): create the sandbox first",
            req.id,
            req.root.display()
        ))
    })?;
    if sandbox.state.isolation != Isolation::Vm {
        return Err(refuse(format!(
            "{}: sandbox {sid} is a namespace container; a VM container cannot join it (create the sandbox with VM isolation, or this container with namespaces)",
            req.id
        )));
    }
    if let Some(outer) = sandbox_of(&sandbox.state.config, &sid) {
        return Err(refuse(format!(
            "{}: {sid} is itself a member of sandbox {outer}: name {outer}",
            req.id
        )));
    }
    sandbox.require("join", &[Status::Created, Status::Running])?;
    Ok(Some(sandbox))
}

/// Where a container's requests go: its own proxy's socket, or for a pod member its
/// sandbox's, addressed to it.
pub fn route(c: &Container, request: Control) -> (PathBuf, Control) {
    match sandbox_of(&c.state.config, c.id()) {
        Some(sid) => (
            c.dir.path.with_file_name(sid),
            Control::For {
                container: c.id().to_string(),
                request: Box::new(request),
            },
        ),
        None => (c.dir.path.clone(), request),
    }
}

/// The members of sandbox `sid` that have a state directory in `root`.
pub fn members_of(root: &Path, sid: &str) -> Vec<Container> {
    let mut out: Vec<Container> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Container::load(root, e.file_name().to_str()?).ok())
        .filter(|c| {
            c.state.isolation == Isolation::Vm
                && sandbox_of(&c.state.config, c.id()).as_deref() == Some(sid)
        })
        .collect();
    out.sort_by(|a, b| a.id().cmp(b.id()));
    out
}

/// Marks the namespace paths that name the sandbox's (its reported pid's, or for the
/// network any path to the same namespace as its proxy's) for the proxy to point at
/// the sandbox container's in the guest. Other paths stay, and guest_config refuses
/// them: they are the host's.
fn mark_sandbox_namespaces(config: &mut Value, sandbox: &Container) {
    let pid = sandbox.state.pid;
    let ident = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let sandbox_net = ident(&format!("/proc/{pid}/ns/net"));
    let namespaces = config
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut);
    for ns in namespaces.into_iter().flatten() {
        let (Some(kind), Some(path)) = (ns["type"].as_str(), ns["path"].as_str()) else {
            continue;
        };
        let name = match kind {
            "network" => "net",
            "mount" => "mnt",
            k => k,
        };
        let own = path == format!("/proc/{pid}/ns/{name}");
        let same_net = kind == "network" && sandbox_net.is_some() && ident(path) == sandbox_net;
        if !path.is_empty() && (own || same_net) {
            ns["path"] = SANDBOX_NS.into();
        }
    }
}

/// What the stand-in takes along into its fork.
struct StandIn {
    sandbox_dir: PathBuf,
    /// The member's own state directory.
    state_dir: PathBuf,
    id: String,
    payload: OwnedFd,
    /// The rootfs's layers' images, top first.
    images: Vec<OwnedFd>,
    /// stdin, stdout, stderr (a terminal: its slave twice).
    stdio: Vec<OwnedFd>,
    preserved: Vec<Preserved>,
    terminal: bool,
    tty: Option<OwnedFd>,
    cgroup: hull_runtime::cgroups::Cgroup,
    foreground: bool,
}

/// `create` (and `run`) of a pod member; the stand-in's pid.
pub fn create(req: VmCreate, sandbox: Container, foreground: bool) -> Result<Pid> {
    let preserved = super::preserved::take(req.preserve_fds)?;
    let bundle = &req.bundle;
    let vm = super::sizing::sizing(&sandbox.state.config, req.settings);
    super::sizing::check_member(&bundle.spec, vm)
        .map_err(|m| refuse(format!("{}: {m}", req.id)))?;
    let config_path = bundle.dir.join("config.json");
    let text =
        std::fs::read_to_string(&config_path).map_err(io_err("cannot read", &config_path))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("{}: {e}", config_path.display())))?;
    mark_sandbox_namespaces(&mut config, &sandbox);
    let guest = super::guest_config::for_guest(&config.to_string(), &bundle.dir)?;
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    if terminal && req.console_socket.is_none() {
        return Err(SandboxError::Runtime(RuntimeError::InvalidConfig {
            path: config_path,
            reason: "process.terminal is true: pass --console-socket to receive the pty master, or set it to false".into(),
        }));
    }
    let t = std::time::Instant::now();
    let images = crate::layers::rootfs_images(&bundle.rootfs, &req.settings.rootfs_cache)?;
    tracing::debug!(
        "rootfs: {} images ({} made) in {} us",
        images.len(),
        images.iter().filter(|i| !i.hit).count(),
        t.elapsed().as_micros()
    );
    let images = images
        .iter()
        .map(|i| {
            std::fs::File::open(&i.path)
                .map(OwnedFd::from)
                .map_err(io_err("cannot open", &i.path))
        })
        .collect::<Result<Vec<_>>>()?;
    let (dir, mut st, mut undo) = create::make_state(&req, None)?;
    // A running VM cannot get a 9p device: directories go through the pod's share.
    if !guest.dirs.is_empty() {
        undo.member_binds = Some((sandbox.dir.path.clone(), req.id.to_string()));
    }
    let shares = super::volumes::bind_member(&sandbox.dir.path, req.id, &guest.dirs, &guest.shares)
        .map_err(|e| refuse(format!("{}: {e}", config_path.display())))?;
    let payload = payload_fd(&Payload {
        config: guest.config,
        files: guest.files,
        shares,
    })?;
    let (stdio, tty) = match req.console_socket {
        Some(sock) if terminal => {
            let slave = create::send_pty(sock)?;
            let dup = || slave.try_clone().map_err(io_err("cannot dup", sock));
            (vec![dup()?, dup()?], Some(slave))
        }
        _ => (own_stdio()?, None),
    };
    let plan = StandIn {
        sandbox_dir: sandbox.dir.path.clone(),
        state_dir: dir.path.clone(),
        id: req.id.to_string(),
        payload,
        images,
        stdio,
        preserved,
        terminal,
        tty,
        cgroup: st.cgroup.clone(),
        foreground,
    };
    let (pid, ours) = fork_stand_in(plan, &mut undo)?;
    create::create_hooks(&st, pid)?;
    create::commit(&dir, &mut st, pid, req.pid_file, ours, undo)?;
    Ok(pid)
}

fn own_stdio() -> Result<Vec<OwnedFd>> {
    let dup = |fd: BorrowedFd| {
        fd.try_clone_to_owned()
            .map_err(|e| SandboxError::Vm(format!("dup stdio: {e}")))
    };
    Ok(vec![
        dup(std::io::stdin().as_fd())?,
        dup(std::io::stdout().as_fd())?,
        dup(std::io::stderr().as_fd())?,
    ])
}

fn payload_fd(p: &Payload) -> Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"hull-pod-member", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SandboxError::Vm(format!("memfd: {e}")))?;
    let text = serde_json::to_vec(p).map_err(|e| SandboxError::Vm(format!("encode: {e}")))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&text)
        .map_err(|e| SandboxError::Vm(format!("memfd: {e}")))?;
    Ok(f.into())
}

fn fork_stand_in(plan: StandIn, undo: &mut Undo) -> Result<(Pid, UnixStream)> {
    let (mut ours, theirs) = UnixStream::pair().map_err(io_err("socketpair for", &plan.id))?;
    // SAFETY: hull is single-threaded up to here (DESIGN.md); the child is the stand-in.
    match unsafe { nix::unistd::fork() }.map_err(|e| refuse(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(ours);
            stand_in(plan, theirs)
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            drop(plan);
            undo.proxy = Some(child);
            let answer = create::read_answer(&mut ours);
            if answer != "ok" {
                return Err(if answer.is_empty() {
                    refuse("the pod member's stand-in exited while creating it".into())
                } else {
                    SandboxError::Proxy(answer)
                });
            }
            Ok((child, ours))
        }
    }
}

/// The stand-in's whole life: the member's creation in the sandbox's VM, then its
/// signals and exit status.
fn stand_in(plan: StandIn, mut parent: UnixStream) -> ! {
    // SAFETY: prctl with integer arguments: a `create` that dies before it has
    // written the state takes the stand-in (and so the member) with it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let tty = plan.tty.as_ref().and_then(|t| t.try_clone().ok());
    let state_dir = plan.state_dir.clone();
    let conn = match add(plan) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(parent, "{}", e.to_string().replace('\n', " / "));
            std::process::exit(1);
        }
    };
    let mut go = [0u8; 2];
    use std::io::Read;
    if parent.write_all(b"ok\n").is_err() || parent.read_exact(&mut go).is_err() || &go != b"go" {
        std::process::exit(1);
    }
    // SAFETY: as above; from now on the stand-in outlives `create`.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    drop(parent);
    crate::give_back_free_heap();
    let exit = super::exec::wait_exec(&conn, tty, |kills| {
        super::record_oom_kills(&state_dir, kills)
    });
    if let Some(kills) = exit.oom_kills {
        super::record_oom_kills(&state_dir, kills);
    }
    std::process::exit(exit.status)
}

/// Sends the member to the sandbox's proxy; the connection once it is created.
fn add(plan: StandIn) -> Result<OwnedFd> {
    if !plan.foreground {
        let _ = nix::unistd::setsid();
    }
    if let Some(t) = &plan.tty {
        let _ = relay::take_controlling_terminal(t.as_fd());
    }
    plan.cgroup
        .add_task(std::process::id() as i32)
        .map_err(RuntimeError::from)?;
    let conn = control::connect(&plan.sandbox_dir)?;
    let msg = Control::Add {
        id: plan.id.clone(),
        terminal: plan.terminal,
        layers: plan.images.len(),
        preserved: plan.preserved.iter().map(|p| p.direction).collect(),
    };
    let fds: Vec<BorrowedFd> = std::iter::once(plan.payload.as_fd())
        .chain(plan.images.iter().map(|f| f.as_fd()))
        .chain(plan.stdio.iter().map(|f| f.as_fd()))
        .chain(plan.preserved.iter().map(|p| p.fd.as_fd()))
        .collect();
    control::send(conn.as_fd(), &msg, &fds)?;
    drop(fds);
    // The proxy holds the only copies now: the engine sees the member's EOF.
    drop(plan);
    if let Err(e) = relay::stdio_to_null() {
        tracing::debug!("stand-in stdio: {e}");
    }
    match control::recv::<ControlReply>(conn.as_fd())? {
        Some((ControlReply::Started { .. }, _)) => Ok(conn),
        Some((ControlReply::Error { message }, _)) => Err(SandboxError::Proxy(message)),
        other => Err(refuse(format!(
            "the sandbox's proxy answered {:?}",
            other.map(|o| o.0)
        ))),
    }
}

/// Removes the member from its sandbox's VM, if the VM is still there, and its
/// directories from the pod's share.
pub fn delete_in_sandbox(c: &Container) {
    let (dir, request) = route(c, Control::Delete);
    if dir != c.dir.path {
        if let Err(e) = control::call(&dir, &request) {
            tracing::debug!("{}: not in its sandbox's VM any more: {e}", c.id());
        }
        super::volumes::unbind_member(&dir, c.id());
    }
}
