//! The command line, flag for flag what runc accepts, so engines can swap runc for hull.
//! Parsed by hand over lexopt (args.rs): clap cost ~0.9 MiB of RSS per container start.

use std::path::PathBuf;

/// `create` and `run` take what the lifecycle takes.
pub use hull_lifecycle::CreateRequest;

pub struct Cli {
    pub global: Global,
    pub command: Command,
}

#[derive(Debug, Default)]
pub struct Global {
    /// Directory for container state (default /run/hull; rootless $XDG_RUNTIME_DIR/hull).
    pub root: Option<PathBuf>,
    /// Log file (default: stderr).
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    pub log_format: Option<String>,
    /// Debug logging.
    pub debug: bool,
    /// Manage cgroups through systemd (needs systemd as PID 1).
    pub systemd_cgroup: bool,
    /// true, false or auto (runc's flag): whether to act as an unprivileged user
    /// (cgroups only where delegated); auto detects it.
    pub rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not part of hull.
    pub criu: Option<String>,
    /// `--isolation`: namespace or vm, for containers this command creates.
    pub isolation: Option<String>,
    /// The name hull was invoked as (`hull-vm` defaults to VM isolation).
    pub program: String,
}

#[derive(Debug)]
pub enum Command {
    /// Create a container (its init waits for `start`).
    Create(CreateRequest),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container; wait for it unless --detach.
    Run {
        create: CreateRequest,
        /// Return once started.
        detach: bool,
        /// Keep the container's state after it exits.
        keep: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Signal every process in the container.
        all: bool,
        id: String,
        /// Signal name (KILL, SIGTERM) or number.
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill it first if it is running.
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        format: String,
        /// Only ids.
        quiet: bool,
    },
    /// List a container's processes (extra arguments go to ps).
    Ps {
        format: String,
        id: String,
        ps_args: Vec<String>,
    },
    /// Run a new process in a container.
    Exec(ExecArgs),
    /// Freeze all processes of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Resource usage of a container.
    Events {
        /// Print stats once and exit.
        stats: bool,
        /// Interval between stats, e.g. 5s, 500ms.
        interval: String,
        id: String,
    },
    /// Change a running container's resource limits.
    Update(UpdateArgs),
    /// Write an example config.json.
    Spec {
        bundle: PathBuf,
        /// A spec for running without root.
        rootless: bool,
    },
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
    /// Report what this host offers for VM isolation (KVM, vhost-vsock, QEMU, cgroups).
    Check {
        /// JSON instead of aligned lines.
        json: bool,
    },
    /// Build (or find cached) the VM guest: kernel plus an initramfs with the agent.
    GuestBuild(GuestBuildArgs),
    /// Run a micro-VM with hull-vmm until the guest resets or a stop signal arrives.
    Vmm { config: PathBuf },
    /// The QEMU arguments hull boots a guest with, one per line (for benchmarks that
    /// boot other kernels the same way).
    GuestQemuArgs {
        kernel: String,
        initramfs: String,
        socket: String,
        console_log: String,
    },
}

impl Command {
    /// Whether the command reads or writes the state directory (--root).
    pub fn keeps_state(&self) -> bool {
        !matches!(
            self,
            Command::Spec { .. }
                | Command::Features
                | Command::Check { .. }
                | Command::GuestBuild(_)
                | Command::Vmm { .. }
                | Command::GuestQemuArgs { .. }
        )
    }
}

#[derive(Debug, Default)]
pub struct GuestBuildArgs {
    /// Cache directory (default /var/lib/hull/guest).
    pub dir: Option<PathBuf>,
    /// The static hull-agent binary (default: next to hull).
    pub agent: Option<PathBuf>,
    /// Kernel source tarball (default Debian's linux-source-6.1).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct ExecArgs {
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    pub cwd: Option<PathBuf>,
    /// Extra environment, KEY=VALUE.
    pub env: Vec<String>,
    /// Allocate a pty.
    pub tty: bool,
    /// uid[:gid] to run as.
    pub user: Option<String>,
    /// Additional gids.
    pub additional_gids: Vec<u32>,
    /// process.json to run instead of args.
    pub process: Option<PathBuf>,
    /// Return once started.
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// SELinux label for the process.
    pub process_label: Option<String>,
    /// AppArmor profile for the process.
    pub apparmor: Option<String>,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Add a capability (CAP_...).
    pub cap: Vec<String>,
    pub preserve_fds: i32,
    /// Accepted for runc compatibility.
    pub ignore_paused: bool,
    pub id: String,
    pub command: Vec<String>,
}

#[derive(Debug, Default)]
pub struct UpdateArgs {
    /// JSON LinuxResources file ("-" for stdin).
    pub resources: Option<PathBuf>,
    pub blkio_weight: Option<u16>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_share: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory limit, bytes or with k/m/g suffix; -1 for none.
    pub memory: Option<String>,
    pub memory_reservation: Option<String>,
    pub memory_swap: Option<String>,
    pub pids_limit: Option<i64>,
    pub id: String,
}
