//! Cleanup of what a test's container may leave behind, and the checks that nothing was.

use super::{run_with_timeout, Bundle, Container};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every cgroup hierarchy root on this host (v1 controllers and the v2 mount).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push(PathBuf::from(fields[4]));
        }
    }
    out
}

/// Mount points (as listed in our mountinfo) at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect()
}

/// True if `pid` exists and is not a zombie. (Host init here reaps orphans lazily, and
/// a zombie holds nothing but its pid.)
pub fn alive(pid: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("State:"))
        .is_some_and(|l| !l.contains("Z (zombie)") && !l.contains("X (dead)"))
}

/// Pids of all live (non-zombie) processes whose /proc/<pid>/cgroup mentions `needle`.
pub fn pids_in_cgroup(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cg) = fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            if cg.contains(needle) && alive(pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Asserts that nothing of the container is left: state dir, cgroups, processes, mounts.
pub fn assert_clean(c: &Container) {
    let state = c.root.join(&c.id);
    assert!(
        !state.exists(),
        "expected no state dir left, found {}",
        state.display()
    );
    for h in cgroup_hierarchies() {
        let leaf = h.join(c.cgroup_path().trim_start_matches('/'));
        assert!(
            !leaf.exists(),
            "expected no cgroup left, found {}",
            leaf.display()
        );
    }
    let needle = format!("/{}/", c.id);
    let pids = pids_in_cgroup(&needle);
    assert!(
        pids.is_empty(),
        "expected no process left in cgroup {needle}, found {pids:?}"
    );
    let mounts = mounts_under(&c.bundle.dir);
    assert!(
        mounts.is_empty(),
        "expected no mount left under the bundle, found {mounts:?}"
    );
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", &self.id]);
            cmd.stdin(Stdio::null());
            run_with_timeout(&mut cmd, &self.bundle.dir, Duration::from_secs(30))
        }));
        remove_test_cgroups(&self.id);
        remove_bundle_dir(&self.bundle.dir);
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // A Bundle that never became a Container (or whose Container is gone).
        remove_test_cgroups(&self.name);
        remove_bundle_dir(&self.dir);
    }
}

/// Thaws, kills and removes `/<name>/<name>` and `/<name>` in every hierarchy. These
/// cgroups belong to this test alone (the name holds our pid and a counter).
pub fn remove_test_cgroups(name: &str) {
    for h in cgroup_hierarchies() {
        let parent = h.join(name);
        if !parent.exists() {
            continue;
        }
        let leaf = parent.join(name);
        for dir in [&leaf, &parent] {
            if !dir.exists() {
                continue;
            }
            let _ = fs::write(dir.join("freezer.state"), "THAWED");
            for _ in 0..100 {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                for pid in &pids {
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Detaches any mount left below `dir` (deepest first) and removes the dir: never
/// recurse into a mount, it could be a host directory.
pub fn remove_bundle_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if mounts_under(dir).is_empty() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Processes whose command line names `dir` or whose working directory is in it (a
/// VM's VMM runs in its sandbox directory and names its files relative to it).
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(dir) {
            out.push((pid, cmdline));
        }
    }
    out
}
