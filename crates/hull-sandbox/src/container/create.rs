//! `create` and `run` of a VM container: the state directory and the host cgroup, then
//! the proxy, forked, which boots the sandbox and says "ok" or why not. Only then is
//! the final state written (its pid: the proxy), and the proxy told to go on; a
//! `create` that dies before that takes the proxy with it (PDEATHSIG), and what it
//! left reads as stopped for `delete --force`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use hull_runtime::cgroups::Cgroup;
use hull_runtime::container::create::write_pid_file;
use hull_runtime::error::Error as RuntimeError;
use hull_runtime::spec::Bundle;
use hull_runtime::state::{self, ContainerState, Isolation, StateDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Pid};

use super::proxy::{self, ProxyPlan};
use super::{relay, VmSettings};
use crate::error::{io_err, Result, SandboxError};

pub struct VmCreate<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    /// Loaded and validated by the caller.
    pub bundle: Bundle,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub preserve_fds: i32,
    pub settings: &'a VmSettings,
}

/// Undoes a failed create, in reverse order.
pub(super) struct Undo {
    pub dir: Option<StateDir>,
    pub cgroup: Option<Cgroup>,
    /// The proxy (or a pod member's stand-in).
    pub proxy: Option<Pid>,
    /// A pod member's directories bound into its sandbox's pod directory:
    /// (the sandbox's state directory, the member's id).
    pub member_binds: Option<(std::path::PathBuf, String)>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(pid) = self.proxy {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup {
            if let Ok(pids) = cg.pids() {
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            let _ = cg.destroy();
        }
        if let Some((sandbox, id)) = &self.member_binds {
            super::volumes::unbind_member(sandbox, id);
        }
        if let Some(dir) = &self.dir {
            // Before the directory goes: a pod directory's binds are unmounted first.
            super::volumes::remove(&dir.path);
            let _ = dir.remove();
        }
    }
}

/// `hull create`: returns once the container waits in the guest for `start`.
pub fn create(req: VmCreate) -> Result<()> {
    crate::rootless::check_kvm_access(std::path::Path::new(crate::rootless::KVM))?;
    if let Some(sandbox) = super::member::sandbox_for(&req)? {
        return super::member::create(req, sandbox, false).map(drop);
    }
    create_proxy(req, false).map(drop)
}

/// `hull run`: create, start, and unless `detach` wait for the container's exit and
/// delete it; the exit status.
pub fn run(req: VmCreate, detach: bool) -> Result<i32> {
    crate::rootless::check_kvm_access(std::path::Path::new(crate::rootless::KVM))?;
    let root = req.root.to_path_buf();
    let id = req.id.to_string();
    let proxy = match super::member::sandbox_for(&req)? {
        Some(sandbox) => super::member::create(req, sandbox, !detach)?,
        None => create_proxy(req, !detach)?,
    };
    let c = hull_runtime::container::Container::load(&root, &id)?;
    if let Err(e) = super::start(&c) {
        let _ = super::delete(&c, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let status = proxy::wait_forwarding_signals(proxy);
    let c = hull_runtime::container::Container::load(&root, &id)?;
    super::delete(&c, true)?;
    Ok(status)
}

fn create_proxy(req: VmCreate, foreground: bool) -> Result<Pid> {
    // Checked before anything is made, as the config is below.
    let preserved = super::preserved::take(req.preserve_fds)?;
    let bundle = &req.bundle;
    let config_path = bundle.dir.join("config.json");
    let config =
        std::fs::read_to_string(&config_path).map_err(io_err("cannot read", &config_path))?;
    // Checked before anything is made: what cannot reach the guest is an error now.
    let guest = super::guest_config::for_guest(&config, &bundle.dir)?;
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    if terminal && req.console_socket.is_none() && !foreground {
        return Err(SandboxError::Runtime(RuntimeError::InvalidConfig {
            path: config_path,
            reason: "process.terminal is true: pass --console-socket to receive the pty master, or set it to false".into(),
        }));
    }
    // One sizing for both sides of the sandbox: the VM, and the host cgroup around it.
    let size = super::sizing::sizing(&bundle.spec, req.settings);
    let limits = sandbox_limits(&bundle.spec, size);
    let (dir, mut st, mut undo) = make_state(&req, limits)?;
    let mut guest = guest;
    // A CRI pod's members may bring directory volumes: its VM boots with the pod's
    // share, unless the VMM it gets has no 9p (hull-vmm chosen explicitly: its members
    // are then refused directories by name). `auto` picks QEMU for it.
    let shares_ok = req
        .settings
        .hypervisor
        .pick(crate::hypervisor::Accel::detect(), true)
        != super::HypervisorChoice::HullVmm;
    if super::sizing::is_cri_sandbox(&bundle.spec) && shares_ok {
        guest.dirs.push(super::volumes::prepare(&dir.path, req.id)?);
    }
    let tty = match (terminal, req.console_socket) {
        (true, Some(sock)) => Some(send_pty(sock)?),
        _ => None,
    };
    let plan = ProxyPlan {
        id: req.id.to_string(),
        // Absolute: the proxy works from inside it.
        state_dir: std::path::absolute(&dir.path).map_err(io_err("cannot resolve", &dir.path))?,
        guest,
        rootfs: bundle.rootfs.clone(),
        spec: bundle.spec.clone(),
        terminal,
        tty,
        settings: req.settings.clone(),
        cgroup: st.cgroup.clone(),
        foreground,
        preserved,
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
    };
    let (pid, ours) = fork_proxy(plan, &mut undo, |pid| create_hooks(&st, pid))?;
    commit(&dir, &mut st, pid, req.pid_file, ours, undo)?;
    Ok(pid)
}

/// The final state (its pid: the proxy or stand-in `pid`), the pid file, and "go" to
/// the child, which from then on no longer dies with us.
pub(super) fn commit(
    dir: &StateDir,
    st: &mut ContainerState,
    pid: Pid,
    pid_file: Option<&Path>,
    mut ours: UnixStream,
    mut undo: Undo,
) -> Result<()> {
    st.pid = pid.as_raw();
    st.start_time = state::process_start_time(st.pid).ok_or(RuntimeError::ChildGone)?;
    st.creator = None;
    dir.save(st)?;
    if let Some(p) = pid_file {
        write_pid_file(p, st.pid)?;
    }
    ours.write_all(b"go")
        .map_err(|e| SandboxError::Vm(format!("the proxy went away: {e}")))?;
    // Until the child has dropped its PDEATHSIG it dies with us: wait for its EOF,
    // which it gives once it no longer depends on this process.
    let _ = ours.read(&mut [0u8; 1]);
    undo.dir = None;
    undo.cgroup = None;
    undo.proxy = None;
    undo.member_binds = None;
    Ok(())
}

/// The state directory with the provisional state (saved before anything else is made,
/// so `delete --force` finds it all should this process die), and the host cgroup.
pub(super) fn make_state(
    req: &VmCreate,
    limits: Option<oci_spec::runtime::LinuxResources>,
) -> Result<(StateDir, ContainerState, Undo)> {
    let bundle = &req.bundle;
    let cgroups_path = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .and_then(|p| p.to_str());
    let mut cgroup = Cgroup::resolve(cgroups_path, req.id).map_err(RuntimeError::from)?;
    // Rootless: only a delegated cgroup, or none (hull_runtime::rootless).
    let limits = if hull_runtime::rootless::active() {
        cgroup
            .prepare_rootless(limits)
            .map_err(RuntimeError::from)?
    } else {
        limits
    };
    let dir = StateDir::create(req.root, req.id)?;
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroup: None,
        proxy: None,
        member_binds: None,
    };
    cgroup.plan_dirs();
    let st = ContainerState::creating(req.id, bundle, cgroup.clone(), Isolation::Vm);
    dir.save_provisional(&st)?;
    undo.cgroup = Some(cgroup.clone());
    // The sandbox's cgroup holds the proxy and the VMM: the engine's accounting of the
    // container covers the whole VM. The container's own limits hold in the guest.
    cgroup.create(limits.as_ref()).map_err(RuntimeError::from)?;
    Ok((dir, st, undo))
}

/// What the VMM beside the guest's memory may use: QEMU's own heap, and under TCG its
/// translation cache (measured: 37 MiB of a 135 MiB PSS, the guest's touched pages
/// being 43 MiB).
pub const VMM_OVERHEAD_MIB: u64 = 128;

/// The host cgroup's limits (Kata's sandbox sizing): memory for the whole guest (the
/// container's or the pod's limit plus the guest's own overhead, as `sizing` gives it)
/// plus the VMM's, and the container's CPU quota, shares and cpuset, which its vCPU
/// threads run under. Not the pids limit (the guest's processes are not host tasks) nor
/// device rules (the VMM needs /dev/kvm and taps); nothing where nothing sets a limit.
fn sandbox_limits(
    spec: &oci_spec::runtime::Spec,
    size: super::sizing::Size,
) -> Option<oci_spec::runtime::LinuxResources> {
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if res.is_none() && !size.memory_limited {
        return None;
    }
    let mut out = LinuxResourcesBuilder::default();
    if size.memory_limited {
        let bytes = (u64::from(size.memory_mib) + VMM_OVERHEAD_MIB) << 20;
        let memory = LinuxMemoryBuilder::default()
            .limit(bytes as i64)
            .build()
            .ok()?;
        out = out.memory(memory);
    }
    if let Some(cpu) = res.and_then(|r| r.cpu().as_ref()) {
        out = out.cpu(cpu.clone());
    }
    out.build().ok()
}

/// prestart and createRuntime, on the host, once the proxy stands in the container's
/// network namespace and before the VM boots: what they set up there (docker's
/// libnetwork-setkey: the container's interface) is mirrored into the VM.
pub(super) fn create_hooks(st: &ContainerState, proxy: Pid) -> Result<()> {
    let mut st = st.clone();
    st.pid = proxy.as_raw();
    st.start_time = state::process_start_time(st.pid).unwrap_or(0);
    let json = serde_json::to_string(&st.oci(hull_runtime::state::Status::Created))
        .map_err(|e| SandboxError::Vm(format!("hook state: {e}")))?;
    let hooks = st.config.hooks().as_ref();
    for (kind, list) in [
        ("prestart", hooks.and_then(|h| h.prestart().as_ref())),
        (
            "createRuntime",
            hooks.and_then(|h| h.create_runtime().as_ref()),
        ),
    ] {
        hull_runtime::hooks::run_all(kind, list, json.as_bytes())?;
    }
    Ok(())
}

/// Forks the proxy, runs `hooks` when it asks, and waits for its "ok"; returns its pid
/// and our end of the pair.
fn fork_proxy(
    plan: ProxyPlan,
    undo: &mut Undo,
    hooks: impl FnOnce(Pid) -> Result<()>,
) -> Result<(Pid, UnixStream)> {
    let (mut ours, theirs) =
        UnixStream::pair().map_err(io_err("socketpair for", &plan.state_dir))?;
    // The proxy is the init of a pid namespace of its own, with the VMM its only other
    // process: what an engine lists as the container's processes (podman top: psgo
    // reads /proc in the mount namespace of the reported pid) is the sandbox's, not
    // the host's. The hooks that run later are this process's children again.
    // An unprivileged user has no namespace to make a pid namespace in: the proxy gets
    // a user namespace of its own too. Root of a user namespace (rootless podman's) has
    // what the proxy needs there.
    let own_userns = !nix::unistd::geteuid().is_root();
    let pid = match super::proxy_ns::fork(own_userns)? {
        ForkResult::Child => {
            drop(ours);
            if own_userns {
                super::proxy_ns::wait_for_maps(&theirs);
            }
            proxy::main(plan, theirs)
        }
        ForkResult::Parent { child } => child,
    };
    if own_userns {
        super::proxy_ns::map_ids(pid, &mut ours)?;
    }
    drop(theirs);
    drop(plan);
    undo.proxy = Some(pid);
    let mut answer = read_answer(&mut ours);
    if answer == "hooks" {
        hooks(pid)?;
        ours.write_all(b"run\n")
            .map_err(|e| SandboxError::Vm(format!("the proxy went away: {e}")))?;
        answer = read_answer(&mut ours);
    }
    if answer != "ok" {
        return Err(if answer.is_empty() {
            SandboxError::Vm("the proxy exited while starting the VM".into())
        } else {
            SandboxError::Proxy(answer)
        });
    }
    Ok((pid, ours))
}

/// The proxy's one line: "ok", or the error.
pub(super) fn read_answer(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = s.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A new pty whose master goes to the engine at `--console-socket`, as runc sends it;
/// the slave stays with the proxy.
pub(super) fn send_pty(sock: &Path) -> Result<OwnedFd> {
    let (master, slave) = relay::open_pty().map_err(io_err("cannot open a pty for", sock))?;
    let conn =
        UnixStream::connect(sock).map_err(io_err("cannot connect to --console-socket", sock))?;
    hull_runtime::fdpass::send_fd(conn.as_fd(), b"/dev/ptmx", master.as_fd())
        .map_err(io_err("cannot send the pty master to", sock))?;
    Ok(slave)
}
