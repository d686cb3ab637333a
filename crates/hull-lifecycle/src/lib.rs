//! hull-lifecycle: one container lifecycle whatever the isolation.
//!
//! Every verb of the CLI (and of the containerd shim) goes through [`Lifecycle`]: it
//! finds the container's state directory `<root>/<id>/` (one format for both
//! isolations, recording which one the container got), picks the [`Backend`] that the
//! record names, and calls it. Two backends implement the same table of operations,
//! as crun's custom handlers do: the namespace runtime (hull-runtime) and the VM
//! sandbox (hull-sandbox: a host-side proxy process per container, talking to the
//! agent in the guest). The shim v2 Task API maps onto the table one to one: Create,
//! Start, State (`Container::status`), Kill, Delete, Exec, Pids, Pause, Resume, Stats,
//! Update; Wait is waiting for the pid `create` reports; ResizePty and CloseIO act on
//! the stdio that create and exec were handed.

pub mod choose;
pub mod config;
mod namespace;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_runtime::container::events::Sample;
use hull_runtime::container::Container;
use hull_runtime::error::Error as RuntimeError;
use hull_runtime::spec::{self, Bundle};
use hull_runtime::state::{Isolation, Status, ISOLATION_ANNOTATION};
use oci_spec::runtime::{LinuxResources, Process};

pub use choose::Asked;
pub use config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The namespace runtime (or the state directory) failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The VM sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] hull_sandbox::SandboxError),
    /// An isolation value that is neither vm nor namespace.
    #[error("{source_name} {value:?}: say vm or namespace")]
    BadIsolation { source_name: String, value: String },
    /// The operator and the bundle ask for different isolations.
    #[error("the bundle asks for {annotated} isolation (annotation {ISOLATION_ANNOTATION}) but {by} asks for {operator}: refusing to run it behind another boundary than the one asked for; make them agree")]
    IsolationConflict {
        operator: Isolation,
        by: &'static str,
        annotated: Isolation,
    },
    /// A container asked to join a VM sandbox but got namespace isolation.
    #[error("the bundle asks to join the VM of sandbox {sid} (annotation io.hull.sandbox), which only VM isolation can do: run it with --isolation vm")]
    SandboxNeedsVm { sid: String },
    /// config.toml is malformed or asks for something impossible.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// `create` and `run`, as runc takes them (the CLI parses straight into this).
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Container id.
    pub id: String,
    /// Path to the bundle (the directory holding config.json).
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (when process.terminal is true).
    pub console_socket: Option<PathBuf>,
    /// File to write the init's (or the VM proxy's) pid to.
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root (for ramdisk roots).
    pub no_pivot: bool,
    /// Do not create a new session keyring for the container.
    pub no_new_keyring: bool,
    /// Pass N more fds (3..3+N) to the container.
    pub preserve_fds: i32,
}

/// `exec`, with the process already assembled from --process or the arguments.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
}

/// The operations every isolation implements. `create` and `run` get the bundle
/// loaded and validated once; the rest get the container loaded once.
pub trait Backend {
    fn create(&self, root: &Path, req: &CreateRequest, bundle: Bundle, s: &Settings) -> Result<()>;
    /// create + start, then wait unless `detach`; the exit status.
    fn run(
        &self,
        root: &Path,
        req: &CreateRequest,
        bundle: Bundle,
        s: &Settings,
        detach: bool,
    ) -> Result<i32>;
    fn start(&self, c: Container) -> Result<()>;
    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()>;
    fn delete(&self, c: &Container, force: bool) -> Result<()>;
    /// The exit status, or 0 once started when detached.
    fn exec(&self, c: &Container, req: ExecRequest) -> Result<i32>;
    /// The container's processes, as its own kernel numbers them.
    fn pids(&self, c: &Container) -> Result<Vec<i32>>;
    fn pause(&self, c: &Container) -> Result<()>;
    fn resume(&self, c: &Container) -> Result<()>;
    /// One `events --stats` line, and the OOM kills so far.
    fn stats(&self, c: &Container) -> Result<Sample>;
    /// The OOM kills a stopped container's cgroup counted (a VM's as its init exited:
    /// the guest may be gone), if they can be known.
    fn oom_kills_at_exit(&self, c: &Container) -> Option<u64>;
    fn update(&self, c: Container, resources: &LinuxResources) -> Result<()>;
}

/// The backend for an isolation.
pub fn backend(isolation: Isolation) -> &'static dyn Backend {
    match isolation {
        Isolation::Namespace => &namespace::Namespaces,
        Isolation::Vm => &vm::Vms,
    }
}

/// The lifecycle over one runtime root.
pub struct Lifecycle {
    pub root: PathBuf,
    pub asked: Asked,
}

impl Lifecycle {
    pub fn new(root: impl Into<PathBuf>, asked: Asked) -> Lifecycle {
        Lifecycle {
            root: root.into(),
            asked,
        }
    }

    /// Validates the id and the bundle, and decides the isolation.
    fn prepare(&self, req: &CreateRequest) -> Result<(Bundle, Settings, Isolation)> {
        spec::validate_id(&req.id)?;
        let bundle = Bundle::load(&req.bundle)?;
        let settings = Settings::load()?;
        let annotation = bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION).cloned());
        let isolation = choose::choose(self.asked, annotation.as_deref(), settings.isolation)?;
        let sandbox = bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(hull_sandbox::container::SANDBOX_ANNOTATION));
        if let (Isolation::Namespace, Some(sid)) = (isolation, sandbox) {
            return Err(LifecycleError::SandboxNeedsVm { sid: sid.clone() });
        }
        Ok((bundle, settings, isolation))
    }

    pub fn create(&self, req: &CreateRequest) -> Result<()> {
        let (bundle, settings, isolation) = self.prepare(req)?;
        backend(isolation).create(&self.root, req, bundle, &settings)
    }

    pub fn run(&self, req: &CreateRequest, detach: bool) -> Result<i32> {
        let (bundle, settings, isolation) = self.prepare(req)?;
        backend(isolation).run(&self.root, req, bundle, &settings, detach)
    }

    pub fn load(&self, id: &str) -> Result<Container> {
        Ok(Container::load(&self.root, id)?)
    }

    fn backend_of(c: &Container) -> &'static dyn Backend {
        backend(c.state.isolation)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        Self::backend_of(&c).start(c)
    }

    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let c = self.load(id)?;
        Self::backend_of(&c).kill(&c, signal, all)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        match hull_runtime::container::delete::load_for_delete(&self.root, id, force)? {
            Some(c) => Self::backend_of(&c).delete(&c, force),
            None => Ok(()),
        }
    }

    /// `exec` in a container the caller has loaded (to build the process from it).
    pub fn exec(&self, c: &Container, req: ExecRequest) -> Result<i32> {
        Self::backend_of(c).exec(c, req)
    }

    /// The processes of a container the caller has loaded (to print them by its
    /// isolation).
    pub fn pids(&self, c: &Container) -> Result<Vec<i32>> {
        Self::backend_of(c).pids(c)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        Self::backend_of(&c).pause(&c)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let c = self.load(id)?;
        Self::backend_of(&c).resume(&c)
    }

    pub fn stats(&self, id: &str) -> Result<String> {
        let c = self.load(id)?;
        Ok(Self::backend_of(&c).stats(&c)?.json)
    }

    /// One stats line per `interval` until the container stops, and an "oom" line
    /// whenever the OOM killer has struck since the last look (runc's events), the
    /// last one for a kill that stopped it. It ends within [`EVENTS_STOP_CHECK`] of the
    /// stop, so a caller that waits for it has the kill before it reports the exit.
    pub fn events(&self, id: &str, interval: Duration, mut out: impl FnMut(&str)) -> Result<()> {
        let c = self.load(id)?;
        let b = Self::backend_of(&c);
        // Stopped before the first look (a watcher started late): its kills, if it has
        // any, and the end.
        if c.status() != Status::Stopped {
            c.require(
                "events",
                &[Status::Created, Status::Running, Status::Paused],
            )?;
        }
        let mut oom_kills = None;
        loop {
            if c.status() == Status::Stopped {
                let last = b.oom_kills_at_exit(&c);
                if last.is_some_and(|l| l > oom_kills.unwrap_or(0)) {
                    out(&hull_runtime::container::events::oom_event(c.id()));
                }
                return Ok(());
            }
            match b.stats(&c) {
                Ok(sample) => {
                    if oom_kills.is_some_and(|seen| sample.oom_kills > seen) {
                        out(&hull_runtime::container::events::oom_event(c.id()));
                    }
                    oom_kills = Some(sample.oom_kills);
                    out(&sample.json);
                }
                // The container went away under us: the next turn reports its end.
                Err(_) if c.status() == Status::Stopped => continue,
                Err(e) => return Err(e),
            }
            let next = std::time::Instant::now() + interval;
            while std::time::Instant::now() < next && c.status() != Status::Stopped {
                std::thread::sleep(EVENTS_STOP_CHECK.min(interval));
            }
        }
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let c = self.load(id)?;
        Self::backend_of(&c).update(c, resources)
    }
}

/// How often `events` looks whether its container has stopped between samples.
pub const EVENTS_STOP_CHECK: Duration = Duration::from_millis(50);

/// The isolations this host can give, each with why not where it cannot: a VM needs
/// the built guest and a VMM to boot it (QEMU, or hull-vmm on hardware KVM).
pub fn isolations(s: &Settings) -> Vec<(Isolation, Result<(), String>)> {
    let vm = match s.vm() {
        Ok(vm) => vm,
        Err(e) => {
            return vec![
                (Isolation::Namespace, Ok(())),
                (Isolation::Vm, Err(e.to_string())),
            ]
        }
    };
    let guest = match &vm.guest_files {
        Some((k, i)) if k.exists() && i.exists() => Ok(()),
        Some((k, i)) => Err(format!("{} or {} is missing", k.display(), i.display())),
        None => hull_sandbox::guest::GuestAssets::locate(&vm.guest_dir)
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    let qemu = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(hull_sandbox::qemu::QEMU_BINARY).exists())
    });
    let vmm = if qemu || Path::new("/dev/kvm").exists() {
        Ok(())
    } else {
        Err("neither QEMU nor /dev/kvm is here".to_string())
    };
    vec![
        (Isolation::Namespace, Ok(())),
        (Isolation::Vm, guest.and(vmm)),
    ]
}
