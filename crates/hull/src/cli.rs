//! The command line, flag for flag what runc accepts, so engines can swap runc for hull.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hull", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0"), about = "hull: a secure container runtime (OCI runtime-spec, runc-compatible)")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/hull")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Manage cgroups through systemd (needs systemd as PID 1).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (true, false or auto).
    #[arg(long = "rootless", id = "global_rootless", hide = true)]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not part of hull.
    #[arg(long, hide = true)]
    pub criu: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (when process.terminal is true).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// File to write the init's pid to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE and chroot instead of pivot_root (for ramdisk roots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a new session keyring for the container.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N more fds (3..3+N) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Container id.
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its init waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once started.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// Signal name (KILL, SIGTERM) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        /// Kill it first if it is running.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a container's processes (extra arguments go to ps).
    Ps {
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
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
        #[arg(long)]
        stats: bool,
        /// Interval between stats, e.g. 5s, 500ms.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change a running container's resource limits.
    Update(UpdateArgs),
    /// Write an example config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for running without root.
        #[arg(long)]
        rootless: bool,
    },
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment, KEY=VALUE.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// uid[:gid] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// process.json to run instead of args.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once started.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// SELinux label for the process.
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile for the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (CAP_...).
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub ignore_paused: bool,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// JSON LinuxResources file ("-" for stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_share: Option<u64>,
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit, bytes or with k/m/g suffix; -1 for none.
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    pub id: String,
}
