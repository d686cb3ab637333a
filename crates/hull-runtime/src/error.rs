//! Typed errors of the runtime. Each variant's message names the thing that failed and,
//! where there is one, what the user can do about it.

use std::path::PathBuf;

use crate::state::Status;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json is missing a field, malformed, or asks for something impossible.
    #[error("invalid bundle config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    /// The container id has characters runc-compatible tools reject.
    #[error("invalid container id {0:?}: use letters, digits and _ + - . only")]
    InvalidId(String),

    /// `create` with an id that is taken.
    #[error("container {0:?} already exists: delete it first or pick another id")]
    AlreadyExists(String),

    /// No state directory for that id under the runtime root.
    #[error("container {0:?} does not exist (check the id and --root)")]
    NotFound(String),

    /// state.json cannot be parsed.
    #[error("container state {path} is corrupt ({reason}): remove it with `hull delete --force`")]
    CorruptState { path: PathBuf, reason: String },

    /// A command that the container's current status does not allow.
    #[error("cannot {action} container {id:?}: it is {status}")]
    WrongState {
        id: String,
        action: &'static str,
        status: Status,
    },

    /// `delete` of a container that is not stopped, without --force.
    #[error(
        "cannot delete container {id:?}: it is {status}; stop it first, or use delete --force"
    )]
    NotStopped { id: String, status: Status },

    /// `kill` with an unknown signal name or number.
    #[error("invalid signal {0:?}: use a name like KILL or SIGTERM, or a number")]
    InvalidSignal(String),

    /// The kernel refused to deliver a signal.
    #[error("cannot signal container {id:?} with {signal}: {source}")]
    Signal {
        id: String,
        signal: i32,
        #[source]
        source: std::io::Error,
    },

    /// A hook failed or timed out.
    #[error("{kind} hook #{index} ({path}) failed: {reason}")]
    Hook {
        kind: &'static str,
        index: usize,
        path: PathBuf,
        reason: String,
    },

    /// Setting up the container (namespaces, mounts, process) failed inside the child.
    #[error("{0}")]
    Setup(String),

    /// A child process reported an error.
    #[error("{0}")]
    Child(String),

    /// A child ended without saying why.
    #[error("the container's setup process exited unexpectedly")]
    ChildGone,

    /// The parent-child channel failed.
    #[error("internal channel to the container's setup process failed: {0}")]
    Sync(#[source] std::io::Error),

    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),

    /// Seccomp filter or agent failed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),

    /// A file under /proc that hull writes or reads on the container's behalf could not
    /// be reached without crossing a mount or a symlink, or the kernel refused it.
    #[error("{what} {path}: {source}")]
    Proc {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },

    /// What hull must mount, write or verify through is not a procfs root (a fake /proc
    /// of CVE-2019-16884, or a mount over the container's procfs).
    #[error("{path} is not the procfs hull mounted: {reason}; hull refuses a fake /proc")]
    NotProcfs { path: PathBuf, reason: &'static str },

    /// A file hull mounts from or onto inside the container's root is not the kind
    /// it must be (a symlink where /dev/null or /dev/console should be, CVE-2025-31133,
    /// CVE-2025-52565).
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },

    /// An I/O operation on a named path failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
