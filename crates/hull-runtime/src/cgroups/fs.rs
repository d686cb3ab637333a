//! File operations on cgroupfs: single-write values, reads, directory creation that
//! records what it made, and removal.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CgroupError, Hierarchy};

/// Write `value` to `dir/file` in one write(2), as cgroup files expect.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    tracing::debug!(path = %path.display(), value, "cgroup write");
    write_path(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

/// Like `write`, but a file the kernel does not offer is skipped: Ok(false).
pub(crate) fn write_if_exists(dir: &Path, file: &str, value: &str) -> Result<bool, CgroupError> {
    match write(dir, file, value) {
        Err(CgroupError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(file, "cgroup file absent, skipped");
            Ok(false)
        }
        r => r.map(|()| true),
    }
}

fn write_path(path: &Path, value: &str) -> io::Result<()> {
    // No O_CREAT/O_TRUNC: a missing cgroup file must read as ENOENT, not a create attempt.
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

/// Read a file that may legitimately be absent on this kernel or controller set.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// mkdir the hierarchy's directory and missing parents, recording what was made.
pub(super) fn mkdir_recording(h: &mut Hierarchy) -> Result<(), CgroupError> {
    fn made(h: &mut Hierarchy, dir: PathBuf) {
        tracing::debug!(dir = %dir.display(), "cgroup created");
        // `Cgroup::plan_dirs` may have recorded it already.
        if !h.created.contains(&dir) {
            h.created.push(dir);
        }
    }
    // Usually only the leaf is new, so try it first and walk up only on ENOENT.
    let mut pending = Vec::new();
    let mut cur = h.dir.clone();
    loop {
        match std::fs::create_dir(&cur) {
            Ok(()) => {
                made(h, cur);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound && cur != h.mount => {
                let parent = cur.parent().map(Path::to_path_buf);
                pending.push(cur);
                match parent {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            Err(source) => return Err(CgroupError::Create { path: cur, source }),
        }
    }
    for dir in pending.into_iter().rev() {
        match std::fs::create_dir(&dir) {
            Ok(()) => made(h, dir),
            // Someone else made it meanwhile: not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
    }
    Ok(())
}

pub(super) fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = read(dir, "cgroup.procs")?;
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = std::fs::read_dir(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// Remove the container's own cgroup: nested cgroups the container made go first, and a
/// cgroup whose last tasks are still exiting is retried.
pub(super) fn remove_leaf(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let mut pause = Duration::from_micros(200);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "cgroup removed");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            // Best effort; the retry below reports what is left.
                            let _ = remove_leaf(&entry.path(), deadline);
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(CgroupError::Busy {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Remove an intermediate directory hull made; if another container's cgroup lives in
/// it now, it stays.
pub(super) fn remove_shared(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "cgroup removed");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
            tracing::debug!(dir = %dir.display(), "cgroup still has other children, kept");
            Ok(())
        }
        Err(source) => Err(CgroupError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
