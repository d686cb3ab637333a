//! The proxy: the host-side process of a VM container, forked by `create`. It boots
//! the sandbox, has the agent create the container, relays the stdio `create` was
//! handed, forwards the signals it gets to the container's init, serves the control
//! socket, and exits with the container's exit status (255 when the VM died under it).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hull_proto::{ProcessIo, Reply, Request, Rootfs};
use hull_runtime::cgroups::Cgroup;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::control::{self, Control, ControlReply};
use super::relay::{self, RawTerminal};
use super::{serve_exec, VmSettings, SANDBOX_DIR};
use crate::client::AgentClient;
use crate::error::{io_err, Result, SandboxError};
use crate::guest::GuestAssets;
use crate::hypervisor::Accel;
use crate::sandbox::{Sandbox, SandboxConfig};

pub(super) const CALL: Duration = Duration::from_secs(60);
const FOREVER: Duration = Duration::from_secs(u32::MAX as u64);

pub(super) struct ProxyPlan {
    pub id: String,
    pub state_dir: PathBuf,
    /// config.json as the guest gets it, with the files and directories it binds.
    pub guest: super::guest_config::GuestConfig,
    pub rootfs: PathBuf,
    pub spec: Spec,
    pub terminal: bool,
    /// The pty slave whose master went to --console-socket.
    pub tty: Option<OwnedFd>,
    pub settings: VmSettings,
    pub cgroup: Cgroup,
    /// `hull run` in the foreground: the caller's session and terminal.
    pub foreground: bool,
    /// The caller's fds 3 and up (--preserve-fds), relayed as the init's.
    pub preserved: Vec<super::preserved::Preserved>,
    /// The VM's size (`sizing`), which the host cgroup was sized for too.
    pub vcpus: u8,
    pub memory_mib: u32,
}

/// What the threads of a running proxy share.
pub(super) struct Shared {
    pub agent: Arc<AgentClient>,
    pub id: String,
    next_exec: AtomicU32,
    /// The container's init as the guest numbers it: a pod member joins its
    /// namespaces through /proc/<this>/ns.
    pub guest_pid: AtomicI32,
    /// A pod's members in this VM (pod.rs).
    pub pod: super::pod::Members,
}

impl Shared {
    pub fn exec_id(&self) -> String {
        format!("exec-{}", self.next_exec.fetch_add(1, Ordering::Relaxed))
    }
}

struct Proxy {
    sandbox: Sandbox,
    /// The container's state directory.
    state_dir: PathBuf,
    shared: Arc<Shared>,
    listener: OwnedFd,
    outputs: Vec<JoinHandle<()>>,
    /// For the proxy's whole life, which ends with the container's.
    _inputs: Vec<relay::InputRelay>,
    /// The container's terminal on the host, for window sizes.
    tty: Option<OwnedFd>,
    raw: Option<RawTerminal>,
}

/// The forked child's whole life.
pub(super) fn main(plan: ProxyPlan, mut parent: UnixStream) -> ! {
    // SAFETY: prctl with integer arguments. A `create` that dies before it has written
    // the state takes the proxy (and so the VM) with it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // One malloc arena for all its threads. glibc gives each thread that allocates an
    // arena of its own (up to 8 per core), and with a dozen relay, signal and wait
    // threads that was 1.1 MiB of a proxy's 1.7 MiB of private memory, per VM; its
    // threads move little data and seldom at once.
    // SAFETY: mallopt with integer arguments, before this process starts a thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let proxy = match boot(plan, &mut parent) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string().replace('\n', " / ");
            let _ = writeln!(parent, "{msg}");
            std::process::exit(1);
        }
    };
    let mut go = [0u8; 2];
    if parent.write_all(b"ok\n").is_err() || parent.read_exact(&mut go).is_err() || &go != b"go" {
        std::process::exit(1);
    }
    // SAFETY: as above; from now on the proxy outlives `create`.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
    drop(parent);
    crate::give_back_free_heap();
    let status = proxy.serve();
    std::process::exit(status)
}

fn boot(mut plan: ProxyPlan, parent: &mut UnixStream) -> Result<Proxy> {
    // A session of its own, unless `run` in the foreground keeps it in the caller's;
    // with a console pty it needs one anyway, to make the pty its terminal.
    if !plan.foreground || plan.tty.is_some() {
        nix::unistd::setsid().map_err(|e| SandboxError::Vm(format!("setsid: {e}")))?;
    }
    own_proc()?;
    if let Some(tty) = &plan.tty {
        relay::take_controlling_terminal(tty.as_fd())
            .map_err(|e| SandboxError::Vm(format!("the console pty: {e}")))?;
    }
    // Before any thread exists, so every thread inherits the mask.
    relay::passed_on()
        .thread_block()
        .map_err(|e| SandboxError::Vm(format!("block signals: {e}")))?;
    plan.cgroup
        .add_task(std::process::id() as i32)
        .map_err(hull_runtime::error::Error::from)?;
    let engine = enter_network(&plan)?;
    // `create` runs the host's hooks now, against this process in that namespace.
    parent
        .write_all(b"hooks\n")
        .map_err(|e| SandboxError::Vm(format!("create went away: {e}")))?;
    let mut line = [0u8; 4];
    parent
        .read_exact(&mut line)
        .map_err(|_| SandboxError::Vm("create went away during the hooks".into()))?;
    // A namespace made here stays empty unless a hook filled it: no need to look.
    let (mirrored, routes, nets) = if engine.is_some() || host_hooks_before_boot(&plan.spec) {
        let name = engine.unwrap_or_else(|| PathBuf::from("(the proxy's own)"));
        mirror_network(&name)?
    } else {
        (vec![], vec![], vec![])
    };
    if !mirrored.is_empty() {
        super::guest_config::share_guest_network(&mut plan.guest);
    }
    let (sandbox, rootfs) = start_sandbox(&plan, nets)?;
    tracing::debug!(
        "guest up (agent's hello) in {} us",
        sandbox.boot_time.as_micros()
    );
    let agent = sandbox.agent.clone();
    // The VMM holds the taps now.
    let interfaces: Vec<_> = mirrored.into_iter().map(|m| m.guest).collect();
    if !interfaces.is_empty() {
        agent.call(Request::ConfigureNetwork { interfaces, routes }, CALL)?;
    }
    let shared = Arc::new(Shared {
        agent: agent.clone(),
        id: plan.id.clone(),
        next_exec: AtomicU32::new(1),
        guest_pid: AtomicI32::new(0),
        pod: Default::default(),
    });
    let (stdio, tty, raw) = stdio(&mut plan)?;
    let streams = agent.streams();
    let mut outputs = vec![relay::out_of_agent(
        agent.subscribe(streams.stdout),
        stdio.1,
    )];
    if let Some(err) = stdio.2 {
        outputs.push(relay::out_of_agent(agent.subscribe(streams.stderr), err));
    }
    let (extra, mut preserved) =
        super::preserved::plan(&agent, std::mem::take(&mut plan.preserved))?;
    outputs.append(&mut preserved.outputs);
    let io = ProcessIo {
        stdin: Some(streams.stdin),
        stdout: Some(streams.stdout),
        stderr: (!plan.terminal).then_some(streams.stderr),
        terminal: plan.terminal,
        extra,
    };
    let create = Request::CreateContainer {
        id: plan.id.clone(),
        config: plan.guest.config.to_string(),
        rootfs,
        io,
        files: std::mem::take(&mut plan.guest.files),
        shares: std::mem::take(&mut plan.guest.shares),
    };
    let t = std::time::Instant::now();
    if let Reply::Process { pid } = agent.call(create, CALL)? {
        shared.guest_pid.store(pid, Ordering::Relaxed);
    }
    tracing::debug!(
        "container created in the guest in {} us",
        t.elapsed().as_micros()
    );
    let mut inputs = preserved.start_inputs(&agent);
    inputs.push(relay::into_agent(agent.clone(), streams.stdin, stdio.0));
    if let Some(t) = &tty {
        resize(&shared, None, t);
    }
    let listener = control::listen(&plan.state_dir)?;
    Ok(Proxy {
        state_dir: plan.state_dir.clone(),
        sandbox,
        shared,
        listener,
        outputs,
        _inputs: inputs,
        tty,
        raw,
    })
}

/// A mount namespace whose /proc is the proxy's pid namespace's (create.rs): a tool
/// that reads the processes of the reported pid's /proc sees the proxy and the VMM.
/// Host mounts still propagate in (slave), so what engines mount later is seen.
fn own_proc() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let fail = |what: &str, e: nix::Error| SandboxError::Vm(format!("{what}: {e}"));
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("unshare a mount namespace for the proxy", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| fail("make / a slave mount", e))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("mount the proxy's /proc", e))
}

type Mirror = (
    Vec<super::network::Mirrored>,
    Vec<hull_proto::NetRoute>,
    Vec<crate::hypervisor::NetDevice>,
);

/// The container's network namespace on the host side, which the proxy (and so the
/// VMM) lives in from here on: the engine's, joined, or a new one that a prestart hook
/// may fill (docker's does). Hooks find it at /proc/<proxy>/ns/net, as they find a
/// namespace container's at its init's. Returns the engine's path, if it gave one.
fn enter_network(plan: &ProxyPlan) -> Result<Option<PathBuf>> {
    use nix::sched::CloneFlags;
    match super::network::engine_netns(&plan.spec) {
        Some(path) => {
            let ns = std::fs::File::open(&path).map_err(io_err("cannot open", &path))?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| SandboxError::Vm(format!("setns {}: {e}", path.display())))?;
            Ok(Some(path))
        }
        None => {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| SandboxError::Vm(format!("unshare a network namespace: {e}")))?;
            Ok(None)
        }
    }
}

/// Whether config.json has hooks that `create` runs before the VM boots.
fn host_hooks_before_boot(spec: &Spec) -> bool {
    spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    })
}

/// The network namespace the proxy is in, mirrored (network.rs): taps, routes, the VMM's
/// devices. `netns` names it in messages.
fn mirror_network(netns: &std::path::Path) -> Result<Mirror> {
    let (mirrored, routes) = super::network::mirror(netns)?;
    let nets = mirrored
        .iter()
        .map(|m| {
            Ok(crate::hypervisor::NetDevice {
                tap_fd: super::network::inheritable(&m.tap)?,
                mac: m.guest.mac.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((mirrored, routes, nets))
}

type Stdio = (OwnedFd, OwnedFd, Option<OwnedFd>);

/// The container's stdio on the host: the console pty, or the fds `create` was given.
/// The proxy's own 0, 1 and 2 become /dev/null, so the relays hold the only copies
/// and the engine sees EOF when the container's output ends.
fn stdio(plan: &mut ProxyPlan) -> Result<(Stdio, Option<OwnedFd>, Option<RawTerminal>)> {
    let dup = |fd: std::os::fd::BorrowedFd| {
        fd.try_clone_to_owned()
            .map_err(|e| SandboxError::Vm(format!("dup stdio: {e}")))
    };
    let (io, tty, raw) = match plan.tty.take() {
        Some(t) => {
            let raw = RawTerminal::enter(t.as_fd());
            ((dup(t.as_fd())?, dup(t.as_fd())?, None), Some(t), raw)
        }
        None => {
            let (i, o) = (std::io::stdin(), std::io::stdout());
            let io = (
                dup(i.as_fd())?,
                dup(o.as_fd())?,
                (!plan.terminal)
                    .then(|| dup(std::io::stderr().as_fd()))
                    .transpose()?,
            );
            // `hull run` of a terminal container on the caller's own terminal.
            let (tty, raw) = if plan.terminal {
                (Some(dup(i.as_fd())?), RawTerminal::enter(i.as_fd()))
            } else {
                (None, None)
            };
            (io, tty, raw)
        }
    };
    if !plan.foreground || !plan.terminal {
        relay::stdio_to_null().map_err(io_err("cannot point stdio at", "/dev/null"))?;
    }
    Ok((io, tty, raw))
}

fn start_sandbox(
    plan: &ProxyPlan,
    nets: Vec<crate::hypervisor::NetDevice>,
) -> Result<(Sandbox, Rootfs)> {
    let s = &plan.settings;
    let assets = match &s.guest_files {
        Some((kernel, initramfs)) => GuestAssets::custom(kernel, initramfs),
        None => GuestAssets::locate(&s.guest_dir)?,
    };
    let abs = plan.state_dir.join(SANDBOX_DIR);
    std::fs::create_dir_all(&abs).map_err(io_err("cannot create", &abs))?;
    // The VM's sockets are named relative to the sandbox directory, the proxy's (and so
    // the VMM's) working directory: engines' state roots are deep (docker's
    // /run/docker/runtime-*/moby/<64 hex>/), and a socket path has 107 bytes. Still
    // single-threaded here, so changing the process's directory affects nobody else.
    std::env::set_current_dir(&abs).map_err(io_err("cannot enter", &abs))?;
    let dir = PathBuf::from(".");
    let accel = Accel::detect();
    let hypervisor = s
        .hypervisor
        .hypervisor(accel, !plan.guest.dirs.is_empty(), s.huge_pages);
    let free = hypervisor
        .device_slots()
        .saturating_sub(nets.len() + plan.guest.dirs.len());
    let (disks, rootfs) = crate::layers::boot_disks(&plan.rootfs, &s.rootfs_cache, free)?;
    let sandbox = Sandbox::start(
        hypervisor.as_ref(),
        SandboxConfig {
            assets,
            dir,
            disks,
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            accel,
            // The guest makes nbd devices as images are attached (a pod's members).
            extra_cmdline: "nbd.nbds_max=0".into(),
            boot_timeout: s.agent_timeout,
            nets,
            shares: plan.guest.dirs.clone(),
        },
    )?;
    Ok((sandbox, rootfs))
}

/// Tells the guest the terminal's size on the host.
pub(super) fn resize(shared: &Shared, exec_id: Option<String>, tty: &OwnedFd) {
    if let Some((rows, cols)) = relay::window_size(tty.as_fd()) {
        let request = Request::ResizeTerminal {
            container: shared.id.clone(),
            exec_id,
            rows,
            cols,
        };
        let _ = shared.agent.call(request, CALL);
    }
}

impl Proxy {
    fn serve(self) -> i32 {
        let shared = self.shared.clone();
        let tty = self.tty;
        std::thread::spawn(move || forward_signals(&shared, tty));
        let (listener, shared) = (self.listener, self.shared.clone());
        std::thread::spawn(move || loop {
            let Ok(conn) = control::accept(listener.as_fd()) else {
                return;
            };
            let shared = shared.clone();
            std::thread::spawn(move || serve_connection(&shared, conn));
        });
        let state_dir = self.state_dir.clone();
        super::exec::follow_oom(
            self.shared.agent.clone(),
            self.shared.id.clone(),
            move |n| super::record_oom_kills(&state_dir, n),
        );
        let wait = Request::Wait {
            container: self.shared.id.clone(),
            exec_id: None,
        };
        let status = match self.shared.agent.call(wait, FOREVER) {
            Ok(Reply::Exited { status }) => status,
            Ok(r) => {
                tracing::error!("wait answered {r:?}");
                255
            }
            Err(e) => {
                tracing::error!("the container's VM went away: {e}");
                255
            }
        };
        if let Some(kills) = super::exec::guest_oom_kills(&self.shared.agent, &self.shared.id) {
            super::record_oom_kills(&self.state_dir, kills);
        }
        // A pod's members end with its sandbox, each with a status of its own.
        super::pod::end_members(&self.shared);
        for o in self.outputs {
            let _ = o.join();
        }
        drop(self.raw);
        // The container's writable layer is the guest's tmpfs: nothing to keep, but
        // the agent syncs what volumes may hold before powering off.
        let _ = self.sandbox.shutdown(Duration::from_secs(10));
        status
    }
}

fn forward_signals(shared: &Shared, tty: Option<OwnedFd>) {
    let set = relay::passed_on();
    loop {
        let Ok(sig) = set.wait() else { return };
        if sig == Signal::SIGWINCH {
            if let Some(t) = &tty {
                resize(shared, None, t);
            }
            continue;
        }
        let request = Request::Signal {
            container: shared.id.clone(),
            exec_id: None,
            signal: sig as i32,
            all: false,
        };
        let _ = shared.agent.call(request, CALL);
    }
}

/// One control connection: requests until EOF, or an exec, which keeps it.
fn serve_connection(shared: &Arc<Shared>, conn: OwnedFd) {
    loop {
        let (request, fds) = match control::recv::<Control>(conn.as_fd()) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = control::send(
                    conn.as_fd(),
                    &ControlReply::Error {
                        message: e.to_string(),
                    },
                    &[],
                );
                return;
            }
        };
        let (container, request) = match request {
            Control::For { container, request } if shared.pod.contains(&container) => {
                (container, *request)
            }
            Control::For { container, .. } => {
                let message = format!("no pod member {container} in this sandbox's VM");
                let _ = control::send(conn.as_fd(), &ControlReply::Error { message }, &[]);
                return;
            }
            r => (shared.id.clone(), r),
        };
        match request {
            Control::Exec {
                process,
                terminal,
                preserved,
            } => {
                let exec = super::exec::ExecRequest {
                    container,
                    process,
                    terminal,
                    preserved,
                };
                return serve_exec(shared, conn, exec, fds);
            }
            Control::Add {
                id,
                terminal,
                layers,
                preserved,
            } => {
                let member = super::pod::Member {
                    id,
                    terminal,
                    layers,
                    preserved,
                };
                return super::pod::serve_member(shared, conn, member, fds);
            }
            request => {
                let reply = match answer(shared, container, request) {
                    Ok(r) => r,
                    Err(e) => ControlReply::Error {
                        message: e.to_string(),
                    },
                };
                if control::send(conn.as_fd(), &reply, &[]).is_err() {
                    return;
                }
            }
        }
    }
}

fn answer(shared: &Shared, container: String, request: Control) -> Result<ControlReply> {
    let agent_request = match request {
        Control::Start => Request::StartContainer { id: container },
        Control::Kill { signal, all } => Request::Signal {
            container,
            exec_id: None,
            signal,
            all,
        },
        Control::Pids => Request::Pids { container },
        Control::Pause => Request::Pause { container },
        Control::Resume => Request::Resume { container },
        Control::Stats => Request::Stats { container },
        Control::Update { resources } => Request::Update {
            container,
            resources,
        },
        Control::Delete => return super::pod::delete_member(shared, &container),
        Control::Exec { .. }
        | Control::Add { .. }
        | Control::For { .. }
        | Control::Resize { .. }
        | Control::Signal { .. } => {
            return Err(SandboxError::Vm(
                "resize and signal requests go on an exec's own connection".into(),
            ))
        }
    };
    Ok(match shared.agent.call(agent_request, CALL)? {
        Reply::Pids { pids } => ControlReply::Pids { pids },
        Reply::Stats { json, oom_kills } => ControlReply::Stats { json, oom_kills },
        _ => ControlReply::Done,
    })
}

/// `hull run` in the foreground: waits for the proxy (our child) and passes on the
/// signals sent to us by a process; a terminal's own (^C, a resize) reach the proxy
/// directly, as it shares our process group.
pub(super) fn wait_forwarding_signals(proxy: Pid) -> i32 {
    let mut set = relay::passed_on();
    set.remove(Signal::SIGWINCH);
    if set.thread_block().is_ok() {
        std::thread::spawn(move || loop {
            // SAFETY: siginfo_t is plain data that sigwaitinfo fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a valid signal set and a valid out-pointer.
            let sig = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
            if sig > 0 && info.si_code <= 0 {
                // SAFETY: kill(2) on our own child, which we have not reaped.
                unsafe { libc::kill(proxy.as_raw(), sig) };
            }
        });
    }
    loop {
        match nix::sys::wait::waitpid(proxy, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}
