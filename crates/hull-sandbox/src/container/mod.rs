//! VM containers through the whole runc lifecycle. `create` forks a proxy: it boots the
//! sandbox (a VM with the hull guest), has the agent create the container from the
//! bundle's config.json, relays the stdio `create` was handed, and is the pid that
//! `create` reports: engines (conmon, containerd's shim) wait on it and get the
//! container's exit status from it. Later commands reach the proxy through its control
//! socket in the container's state directory; the state itself is the namespace
//! runtime's `state.json`, recording `isolation: vm`.
//!
//! The proxy owns the VMM (a child of its, with PDEATHSIG), so a proxy that dies takes
//! the VM with it and the container reads as stopped.

pub mod control;
mod create;
mod exec;
pub mod guest_config;
mod member;
mod network;
mod pod;
mod preserved;
mod proxy;
mod proxy_ns;
pub mod relay;
mod sizing;
mod volumes;

use std::path::PathBuf;
use std::time::Duration;

use hull_runtime::container::Container;
use hull_runtime::error::Error as RuntimeError;
use hull_runtime::signal::signal_exact;
use hull_runtime::state::{process_stat, Status, PAUSED_MARK};
use oci_spec::runtime::LinuxResources;

pub use create::{create, run, VmCreate};
use exec::serve_exec;
pub use exec::{exec, VmExec};
pub use member::{sandbox_of, SANDBOX_ANNOTATION};

use crate::error::{io_err, Result, SandboxError};
use crate::hypervisor::Accel;
use control::{Control, ControlReply};

/// The directory of the VM's files inside the container's state directory.
pub const SANDBOX_DIR: &str = "vm";

/// Which VMM boots the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HypervisorChoice {
    /// hull-vmm where KVM runs guest code in hardware, QEMU (TCG) elsewhere.
    #[default]
    Auto,
    HullVmm,
    Qemu,
}

impl HypervisorChoice {
    /// The VMM for one sandbox. `auto` takes hull-vmm where KVM runs guest code in
    /// hardware, except for a container with directory volumes: those are shared
    /// over virtio-9p, which only QEMU has. An explicit choice stands (hull-vmm then
    /// refuses the volumes by name).
    pub fn pick(self, accel: Accel, shares_directories: bool) -> HypervisorChoice {
        match (self, accel) {
            (HypervisorChoice::Auto, Accel::Kvm) if !shares_directories => {
                HypervisorChoice::HullVmm
            }
            (HypervisorChoice::Auto, _) => HypervisorChoice::Qemu,
            (explicit, _) => explicit,
        }
    }

    /// The VMM [`pick`](Self::pick) names, with guest memory on huge pages or not.
    pub fn hypervisor(
        self,
        accel: Accel,
        shares_directories: bool,
        huge_pages: bool,
    ) -> Box<dyn crate::hypervisor::Hypervisor> {
        match self.pick(accel, shares_directories) {
            HypervisorChoice::HullVmm => Box::new(crate::hullvmm::HullVmm {
                huge_pages,
                ..Default::default()
            }),
            _ => Box::new(crate::qemu::Qemu {
                huge_pages,
                ..Default::default()
            }),
        }
    }

    pub fn parse(s: &str) -> Option<HypervisorChoice> {
        match s {
            "auto" => Some(HypervisorChoice::Auto),
            "hull-vmm" => Some(HypervisorChoice::HullVmm),
            "qemu" => Some(HypervisorChoice::Qemu),
            _ => None,
        }
    }
}

/// The host's VM settings (config.toml's `[vm]`, after the environment).
#[derive(Debug, Clone)]
pub struct VmSettings {
    pub hypervisor: HypervisorChoice,
    /// Where `hull guest build` cached the guest.
    pub guest_dir: PathBuf,
    /// An explicit (kernel, initramfs) instead of guest_dir's.
    pub guest_files: Option<(PathBuf, PathBuf)>,
    /// vCPUs when the bundle sets no cpu quota or cpuset.
    pub vcpus: u8,
    /// Guest memory when the bundle sets no memory limit.
    pub memory_mib: u32,
    /// From starting the VMM to the agent's hello.
    pub agent_timeout: Duration,
    /// Where rootfs images are cached by the tree's identity (image.rs).
    pub rootfs_cache: PathBuf,
    /// hull-vmm's guest memory on transparent huge pages (`HullVmm::huge_pages`).
    pub huge_pages: bool,
}

/// The rootfs image cache's default place.
pub const ROOTFS_CACHE: &str = "/var/lib/hull/rootfs-cache";

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            hypervisor: HypervisorChoice::Auto,
            guest_dir: PathBuf::from(crate::guest::DEFAULT_DIR),
            guest_files: None,
            vcpus: 1,
            memory_mib: 256,
            agent_timeout: Duration::from_secs(120),
            rootfs_cache: default_rootfs_cache(),
            huge_pages: false,
        }
    }
}

/// Root's cache, or a rootless user's own: $XDG_CACHE_HOME/hull/rootfs-cache, else
/// ~/.cache/hull/rootfs-cache (the images hold the user's files).
fn default_rootfs_cache() -> PathBuf {
    if !hull_runtime::rootless::active() {
        return PathBuf::from(ROOTFS_CACHE);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(b) => b.join("hull/rootfs-cache"),
        None => PathBuf::from(ROOTFS_CACHE),
    }
}

/// One request to the container's proxy (a pod member's: its sandbox's).
fn call(c: &Container, request: &Control) -> Result<ControlReply> {
    let (dir, request) = member::route(c, request.clone());
    control::call(&dir, &request)
}

pub fn start(c: &Container) -> Result<()> {
    c.require("start", &[Status::Created])?;
    call(c, &Control::Start)?;
    c.dir.mark_started()?;
    hull_runtime::container::start::poststart(c);
    Ok(())
}

pub fn kill(c: &Container, signal: i32, all: bool) -> Result<()> {
    c.require("kill", &[Status::Created, Status::Running, Status::Paused])?;
    call(c, &Control::Kill { signal, all })?;
    Ok(())
}

/// The container's processes, as the guest numbers them.
pub fn pids(c: &Container) -> Result<Vec<i32>> {
    c.require("ps", &[Status::Created, Status::Running, Status::Paused])?;
    match call(c, &Control::Pids)? {
        ControlReply::Pids { pids } => Ok(pids),
        r => Err(SandboxError::Vm(format!("ps: the proxy answered {r:?}"))),
    }
}

pub fn pause(c: &Container) -> Result<()> {
    c.require("pause", &[Status::Running, Status::Created])?;
    call(c, &Control::Pause)?;
    let mark = c.dir.path.join(PAUSED_MARK);
    std::fs::write(&mark, b"").map_err(io_err("cannot record the pause in", &mark))
}

pub fn resume(c: &Container) -> Result<()> {
    c.require("resume", &[Status::Paused])?;
    call(c, &Control::Resume)?;
    let mark = c.dir.path.join(PAUSED_MARK);
    std::fs::remove_file(&mark).map_err(io_err("cannot remove", &mark))
}

/// Where a VM container's exit leaves the OOM kills its guest cgroup counted: the cgroup
/// is gone with the container (or the VM), and `events` reports a kill that ended it.
const OOM_KILLS: &str = "oom-kills";

/// Replaced whole: the shim reads the file while the proxy's OOM thread and the exit
/// path may both write it, and must never see it empty. A state directory that is gone
/// stays gone.
pub(super) fn record_oom_kills(state_dir: &std::path::Path, kills: u64) {
    let path = state_dir.join(OOM_KILLS);
    if let Err(e) = crate::files::replace(&path, kills.to_string().as_bytes()) {
        tracing::warn!("{}: {e}", path.display());
    }
}

/// The OOM kills a stopped VM container's cgroup had counted when its init exited.
pub fn oom_kills_at_exit(c: &Container) -> Option<u64> {
    let text = std::fs::read_to_string(c.dir.path.join(OOM_KILLS)).ok()?;
    text.trim().parse().ok()
}

/// One `events --stats` line and the OOM kills, from the guest's cgroup of the
/// container.
pub fn stats(c: &Container) -> Result<hull_runtime::container::events::Sample> {
    c.require(
        "events",
        &[Status::Created, Status::Running, Status::Paused],
    )?;
    match call(c, &Control::Stats)? {
        ControlReply::Stats { json, oom_kills } => {
            Ok(hull_runtime::container::events::Sample { json, oom_kills })
        }
        r => Err(SandboxError::Vm(format!(
            "events: the proxy answered {r:?}"
        ))),
    }
}

/// New limits for the container's cgroup in the guest, remembered in its state.
pub fn update(mut c: Container, resources: &LinuxResources) -> Result<()> {
    c.require(
        "update",
        &[Status::Created, Status::Running, Status::Paused],
    )?;
    let json =
        serde_json::to_string(resources).map_err(|e| SandboxError::Vm(format!("update: {e}")))?;
    call(&c, &Control::Update { resources: json })?;
    Ok(hull_runtime::container::update::remember(
        &mut c, resources,
    )?)
}

/// Removes a stopped VM container, or with `force` any: the proxy (and with it the
/// VM), the VMM should it outlive the proxy, the host cgroup, the state directory.
/// A pod member leaves the VM (its sandbox's proxy deletes it in the guest). A sandbox
/// with members is refused, as its VM would take them along; `force` deletes them
/// first, as Kata ends a sandbox's containers with its VM: a member has no life
/// outside it, and a state directory left behind would list a container that cannot
/// come back.
pub fn delete(c: &Container, force: bool) -> Result<()> {
    let root = c.dir.path.parent().unwrap_or(&c.dir.path);
    let members = member::members_of(root, c.id());
    if !members.is_empty() && !force {
        let ids: Vec<&str> = members.iter().map(|m| m.id()).collect();
        return Err(SandboxError::Vm(format!(
            "{} is the sandbox of {}: delete those first, or delete --force to remove them with it",
            c.id(),
            ids.join(", ")
        )));
    }
    let status = c.status();
    if status != Status::Stopped && !force {
        return Err(SandboxError::Runtime(RuntimeError::NotStopped {
            id: c.id().into(),
            status,
        }));
    }
    for m in &members {
        delete(m, true)?;
    }
    member::delete_in_sandbox(c);
    let st = &c.state;
    if st.pid > 0 {
        let _ = signal_exact(st.pid, st.start_time, libc::SIGKILL);
        wait_gone(st.pid, st.start_time);
    }
    // The VMM dies with its proxy (PDEATHSIG), but not at once; the sandbox is gone
    // only when the VMM is.
    if let Some((pid, start)) = crate::sandbox::recorded_vmm(&c.dir.path.join(SANDBOX_DIR)) {
        let _ = signal_exact(pid, start, libc::SIGKILL);
        wait_gone(pid, start);
    }
    if let Ok(pids) = st.cgroup.pids() {
        for p in pids {
            // SAFETY: kill(2); these are the sandbox's own processes in its cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let cg = st.cgroup.destroy();
    // Before the state directory goes: a pod's volumes are unmounted, never walked.
    volumes::remove(&c.dir.path);
    c.dir.remove()?;
    // runtime-spec: a failing poststop hook is a warning; deletion goes on.
    let json = c.oci_json(Status::Stopped);
    let poststop = st
        .config
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().as_ref());
    if let Err(e) = hull_runtime::hooks::run_all("poststop", poststop, json.as_bytes()) {
        tracing::warn!("{e}");
        eprintln!("hull: warning: {e}");
    }
    cg.map_err(|e| SandboxError::Runtime(e.into()))
}

/// Waits (at most 5 s) until `pid` with `start` has exited; a zombie counts as gone.
fn wait_gone(pid: i32, start: u64) {
    let running = || matches!(process_stat(pid), Some((state, s)) if s == start && state != 'Z');
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod pick_tests {
    use super::*;

    #[test]
    fn auto_takes_qemu_for_directory_volumes_and_an_explicit_choice_stands() {
        use HypervisorChoice::*;
        assert_eq!(Auto.pick(Accel::Kvm, false), HullVmm);
        assert_eq!(Auto.pick(Accel::Kvm, true), Qemu);
        assert_eq!(Auto.pick(Accel::Tcg, false), Qemu);
        assert_eq!(HullVmm.pick(Accel::Kvm, true), HullVmm);
        assert_eq!(Qemu.pick(Accel::Kvm, false), Qemu);
    }
}
