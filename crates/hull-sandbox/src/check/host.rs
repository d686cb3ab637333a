//! The rest of what `hull check` looks at: vhost-vsock, QEMU, the cgroup layout and the
//! guest assets. Parsing is separate from reading so that it can be tested anywhere.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

/// The vhost-vsock device.
pub const VSOCK_PATH: &str = "/dev/vhost-vsock";
/// The QEMU binary hull runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// What to install when QEMU is missing.
pub const QEMU_INSTALL: &str = "apt-get install qemu-system-x86";
/// Where `hull guest build` puts the guest kernel and initramfs.
pub const GUEST_DIR: &str = "/var/lib/hull/guest";

/// /dev/vhost-vsock: present, and openable by this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockReport {
    pub device: String,
    pub present: bool,
    /// Why opening it failed, when it is present.
    pub error: Option<String>,
}

impl VsockReport {
    /// The agent can talk over vsock.
    pub fn usable(&self) -> bool {
        self.present && self.error.is_none()
    }
}

pub fn probe_vsock() -> VsockReport {
    let present = Path::new(VSOCK_PATH).exists();
    let error = present
        .then(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(VSOCK_PATH)
                .err()
                .map(|e| e.to_string())
        })
        .flatten();
    VsockReport {
        device: VSOCK_PATH.to_owned(),
        present,
        error,
    }
}

/// qemu-system-x86_64: its version line and whether it has the microvm machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QemuReport {
    pub binary: String,
    /// First line of `--version`, None when QEMU is not installed or did not run.
    pub version: Option<String>,
    /// (major, minor, patch) from the version line.
    pub release: Option<(u32, u32, u32)>,
    /// `-M help` lists microvm.
    pub microvm: bool,
    /// Why QEMU could not be run, when it is installed but broken.
    pub error: Option<String>,
}

impl QemuReport {
    pub fn installed(&self) -> bool {
        self.version.is_some()
    }
}

pub fn probe_qemu() -> QemuReport {
    let mut report = QemuReport {
        binary: QEMU_BINARY.to_owned(),
        version: None,
        release: None,
        microvm: false,
        error: None,
    };
    match run_qemu(&["--version"]) {
        Ok(out) => {
            report.version = version_line(&out);
            report.release = report.version.as_deref().and_then(parse_release);
            if report.version.is_none() {
                report.error = Some("`--version` printed nothing".into());
            }
        }
        Err(QemuRun::NotFound) => return report,
        Err(QemuRun::Failed(e)) => {
            report.error = Some(e);
            return report;
        }
    }
    report.microvm = run_qemu(&["-M", "help"]).is_ok_and(|out| lists_machine(&out, "microvm"));
    report
}

enum QemuRun {
    NotFound,
    Failed(String),
}

fn run_qemu(args: &[&str]) -> Result<String, QemuRun> {
    let out = Command::new(QEMU_BINARY)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => QemuRun::NotFound,
            _ => QemuRun::Failed(format!("cannot run {QEMU_BINARY}: {e}")),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(QemuRun::Failed(format!(
            "`{QEMU_BINARY} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first non-empty line of `qemu-system-x86_64 --version`.
pub fn version_line(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7)" → (7, 2, 15).
pub fn parse_release(line: &str) -> Option<(u32, u32, u32)> {
    let rest = &line[line.find("version ")? + "version ".len()..];
    let token = rest.split_whitespace().next()?;
    let mut parts = token.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// `-M help` prints one machine a line, its name first.
pub fn lists_machine(help: &str, machine: &str) -> bool {
    help.lines()
        .any(|l| l.split_whitespace().next() == Some(machine))
}

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// One hierarchy per controller (group).
    V1,
    /// One cgroup2 hierarchy.
    V2,
    /// v1 hierarchies plus a cgroup2 hierarchy (usually /sys/fs/cgroup/unified).
    Hybrid,
}

impl std::fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupReport {
    /// None: no cgroup filesystem is mounted.
    pub layout: Option<CgroupLayout>,
    /// v1 controllers with a hierarchy mounted ("name=systemd" included).
    pub v1_controllers: Vec<String>,
    /// Where cgroup2 is mounted.
    pub unified: Option<PathBuf>,
    /// The cgroup2 root's cgroup.controllers.
    pub v2_controllers: Vec<String>,
}

/// v1 controllers (and the systemd named hierarchy) as they appear in super options.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// The layout from the text of /proc/self/mountinfo (v2 controllers are left empty).
pub fn parse_cgroups(mountinfo: &str) -> CgroupReport {
    let mut v1: Vec<String> = Vec::new();
    let mut v2: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent maj:min root point opts [optional...] - fstype source superopts
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|p| p + 6) else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        match *fstype {
            "cgroup2" => v2.push(PathBuf::from(point.replace("\\040", " "))),
            "cgroup" => {
                let opts = fields.get(sep + 3).copied().unwrap_or("");
                for o in opts.split(',') {
                    let known = V1_CONTROLLERS.contains(&o) || o.starts_with("name=");
                    if known && !v1.iter().any(|c| c == o) {
                        v1.push(o.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    // cgroup2 at the root wins, as in hull-runtime's detection; else the first one.
    let root = Path::new("/sys/fs/cgroup");
    let unified = v2.iter().find(|p| *p == root).or(v2.first()).cloned();
    let layout = match (&unified, v1.is_empty()) {
        (Some(p), _) if p == root => Some(CgroupLayout::V2),
        (Some(_), true) => Some(CgroupLayout::V2),
        (Some(_), false) => Some(CgroupLayout::Hybrid),
        (None, false) => Some(CgroupLayout::V1),
        (None, true) => None,
    };
    if layout == Some(CgroupLayout::V2) {
        v1.clear();
    }
    CgroupReport {
        layout,
        v1_controllers: v1,
        unified,
        v2_controllers: Vec::new(),
    }
}

pub fn probe_cgroups() -> CgroupReport {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut report = parse_cgroups(&mountinfo);
    if let Some(dir) = &report.unified {
        report.v2_controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
    }
    report
}

/// The guest kernel and initramfs `hull guest build` makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestReport {
    pub dir: PathBuf,
    pub present: bool,
    /// The kernel and initramfs that `hull guest build` last recorded there.
    pub files: Vec<String>,
}

pub fn probe_guest(dir: &Path) -> GuestReport {
    let files: Vec<String> = match crate::guest::GuestAssets::locate(dir) {
        Ok(a) => [Some(a.vmlinux), Some(a.initramfs), a.agent_disk]
            .iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect(),
        Err(_) => vec![],
    };
    GuestReport {
        dir: dir.to_path_buf(),
        present: !files.is_empty(),
        files,
    }
}
