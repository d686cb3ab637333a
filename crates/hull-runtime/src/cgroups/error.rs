//! The cgroup module's error type. Each message names the file or controller involved
//! and, where there is one, what the user can do.

use std::io;
use std::path::PathBuf;

use super::CgroupVersion;

/// Errors of the cgroup module. Each message names the file or controller involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file describing the host's cgroups could not be read.
    #[error("reading {path}: {source}; hull needs /proc mounted to find the cgroup hierarchies")]
    HostInfo {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// No cgroup filesystem is mounted.
    #[error("no cgroup filesystem is mounted (no cgroup2 or cgroup v1 entry in /proc/self/mountinfo); mount cgroup2 on /sys/fs/cgroup")]
    NotMounted,
    /// hull's own cgroup is unknown in a hierarchy, so a relative path cannot be placed.
    #[error("/proc/self/cgroup lists no cgroup for the {hierarchy} hierarchy, so the relative linux.cgroupsPath {path:?} cannot be placed; use an absolute path")]
    OwnCgroupUnknown { hierarchy: String, path: String },
    /// `linux.cgroupsPath` is not usable.
    #[error("invalid linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// A cgroup directory could not be created.
    #[error("creating cgroup {}: {source}{}", .path.display(), io_hint(.source))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cgroup file could not be written.
    #[error("writing {value:?} to {}: {source}{}", .path.display(), io_hint(.source))]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    /// A cgroup file could not be read.
    #[error("reading {}: {source}{}", .path.display(), io_hint(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cgroup file held something hull does not understand.
    #[error("unexpected content in {}: {content:?} ({reason})", .path.display())]
    Parse {
        path: PathBuf,
        content: String,
        reason: &'static str,
    },
    /// A resource is set whose controller this host does not offer.
    #[error("linux.resources.{field} needs the {controller} cgroup controller, which this host does not provide ({layout} cgroups); remove the setting or enable the controller")]
    ControllerMissing {
        controller: String,
        field: &'static str,
        layout: CgroupVersion,
    },
    /// A resource that this cgroup version cannot express.
    #[error("linux.resources.{field} is not supported with {layout} cgroups: {reason}")]
    Unsupported {
        field: &'static str,
        layout: CgroupVersion,
        reason: &'static str,
    },
    /// A resource value is out of range or malformed.
    #[error("invalid linux.resources.{field}: {reason}")]
    InvalidResource { field: &'static str, reason: String },
    /// Controllers could not be enabled for the container's cgroup.
    #[error("enabling the {controllers} controller(s) in {}: {source}{}", .path.display(), io_hint(.source))]
    Enable {
        path: PathBuf,
        controllers: String,
        #[source]
        source: io::Error,
    },
    /// The device filter (cgroup v2 BPF program) could not be loaded or attached.
    #[error("bpf {op} of the device filter for {}: {source}{log}; the kernel needs CONFIG_CGROUP_BPF and hull needs CAP_SYS_ADMIN", .path.display())]
    Bpf {
        op: &'static str,
        path: PathBuf,
        log: String,
        #[source]
        source: io::Error,
    },
    /// Freezing or thawing did not finish in time.
    #[error("cgroup {} did not become {state} within {waited_ms} ms; a task may be stuck in the kernel (D state), retry later", .path.display())]
    FreezeTimeout {
        path: PathBuf,
        state: &'static str,
        waited_ms: u64,
    },
    /// Neither a v1 freezer hierarchy nor cgroup2 is there to pause with.
    #[error("pausing needs the cgroup freezer, and this host ({layout} cgroups) mounts neither the v1 freezer hierarchy nor cgroup2; mount one of them")]
    NoFreezer { layout: CgroupVersion },
    /// The container's cgroup still has processes.
    #[error("removing cgroup {}: still in use after 1 s; kill the container's processes first (hull kill <id> KILL) and delete again", .path.display())]
    Busy { path: PathBuf },
    /// Rootless, limits were asked for that no delegated cgroup can hold: one line each.
    #[error("{}", .lines.join("\n"))]
    RootlessLimits { lines: Vec<String> },
    /// The container has no cgroup (created rootless, nothing delegated), and the
    /// operation needs one.
    #[error("{what} needs the container's cgroup, and it has none: it was created rootless and no cgroup was delegated to hull")]
    NoCgroup { what: &'static str },
    /// A cgroup directory could not be removed.
    #[error("removing cgroup {}: {source}{}", .path.display(), io_hint(.source))]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What an errno from a cgroup file usually means, so the message says what to do.
fn io_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "; permission denied: hull must run as root or own a delegated cgroup"
        }
        Some(libc::ENOENT) => {
            "; the file does not exist: the kernel lacks this feature or the controller is not enabled for this cgroup"
        }
        Some(libc::EBUSY) => {
            "; the kernel refused while the cgroup is in use (a memory limit below current usage, or on cgroup v2 a cgroup with processes of its own: use an absolute linux.cgroupsPath)"
        }
        Some(libc::ENOSPC) => "; a cpuset cgroup has an empty cpuset.cpus or cpuset.mems",
        Some(libc::EINVAL) | Some(libc::ERANGE) => {
            "; the kernel rejected the value: check its range and format"
        }
        Some(libc::EROFS) => "; /sys/fs/cgroup is mounted read-only",
        _ => "",
    }
}
