//! A pod's directory volumes (Kubernetes' emptyDir, hostPath, configMap, secret and
//! service account token are all directories bound into a container). A running VM
//! cannot get a virtio-9p device added, so a CRI pod's VM boots with one share, the
//! pod's, of an empty host directory; each member's directories are bound under it at
//! the member's create (`<member>/<n>`), and the guest binds them from its one mount of
//! the share (the share's `subdir`). Kata shares a sandbox directory over virtio-fs the
//! same way.
//!
//! The pod's directory is a shared mount point, so that binds made under it later reach
//! the proxy's and QEMU's mount namespaces (slaves of the host's). It lives outside the
//! state directory: removing a state directory must never walk into a volume. Its path
//! is recorded in the sandbox's state before anything is mounted, and every removal
//! unmounts before it removes, one empty directory at a time.

use std::path::{Path, PathBuf};

use hull_proto::MountShare;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{io_err, Result, SandboxError};
use crate::hypervisor::SharedDir;

/// The pod share's tag in the guest.
pub const POD_TAG: &str = "hullpod";
/// Where the pods' directories are.
const ROOT: &str = "/run/hull-vm/volumes";
/// The file in the sandbox's state directory that names its pod directory.
const RECORD: &str = "volumes";

fn sys(what: String) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Vm(format!("{what}: {e}"))
}

/// At a CRI pod sandbox's create: its pod directory, made, recorded and shared.
pub fn prepare(state_dir: &Path, id: &str) -> Result<SharedDir> {
    let dir = PathBuf::from(ROOT).join(format!("{id}.{:016x}", crate::random_u64()));
    // Recorded first: a create killed at any point leaves what `delete` finds.
    let record = state_dir.join(RECORD);
    std::fs::write(&record, dir.as_os_str().as_encoded_bytes())
        .map_err(io_err("cannot write", &record))?;
    std::fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let bind = mount(
        Some(&dir),
        &dir,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("bind {} on itself", dir.display())))
    .and_then(|()| {
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(sys(format!("make {} a shared mount", dir.display())))
    });
    if let Err(e) = bind {
        remove(state_dir);
        return Err(e);
    }
    Ok(SharedDir {
        tag: POD_TAG.into(),
        path: dir,
        readonly: false,
    })
}

/// The sandbox's pod directory, if it has one.
fn pod_dir(sandbox_state: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(sandbox_state.join(RECORD)).ok()?;
    let dir = PathBuf::from(text);
    (dir.parent() == Some(Path::new(ROOT))).then_some(dir)
}

/// At the sandbox's delete (or a failed create): every member's binds and the pod
/// directory unmounted, then its empty directories removed.
pub fn remove(sandbox_state: &Path) {
    let Some(dir) = pod_dir(sandbox_state) else {
        return;
    };
    for member in entries(&dir) {
        unbind_dir(&member);
    }
    let _ = umount2(&dir, MntFlags::MNT_DETACH);
    for member in entries(&dir) {
        unbind_dir(&member);
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("{} stays: {e}", dir.display())
        }
        _ => {}
    }
    let _ = std::fs::remove_file(sandbox_state.join(RECORD));
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// A member's directory of binds: each unmounted and removed (never recursively: a
/// directory that is still a mount keeps its content and stays).
fn unbind_dir(member: &Path) {
    for bound in entries(member) {
        let _ = umount2(&bound, MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_dir(&bound) {
            tracing::warn!("{} stays: {e}", bound.display());
        }
    }
    let _ = std::fs::remove_dir(member);
}

/// A member's host directories (`dirs`, which its `shares` name by tag) bound into
/// its sandbox's pod directory; the shares the guest gets instead.
pub fn bind_member(
    sandbox_state: &Path,
    member: &str,
    dirs: &[SharedDir],
    shares: &[MountShare],
) -> Result<Vec<MountShare>> {
    if dirs.is_empty() {
        return Ok(vec![]);
    }
    let Some(pod) = pod_dir(sandbox_state) else {
        return Err(SandboxError::Vm(format!(
            "{member}: its sandbox's VM has no pod share (a CRI pod sandbox's VM has one, unless hull-vmm, which has no virtio-9p, boots it): a member of it can bind files, not directories"
        )));
    };
    let made = (|| {
        for (n, d) in dirs.iter().enumerate() {
            let target = pod.join(member).join(n.to_string());
            std::fs::create_dir_all(&target).map_err(io_err("cannot create", &target))?;
            let what = format!("bind {} on {}", d.path.display(), target.display());
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(&d.path), &target, None::<&str>, flags, None::<&str>)
                .map_err(sys(what.clone()))?;
            if d.readonly {
                let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
                mount(None::<&str>, &target, None::<&str>, ro, None::<&str>)
                    .map_err(sys(format!("{what} read-only")))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = made {
        unbind_member(sandbox_state, member);
        return Err(e);
    }
    shares
        .iter()
        .map(|s| {
            let n = dirs.iter().position(|d| d.tag == s.tag).ok_or_else(|| {
                SandboxError::Vm(format!("{member}: no directory for share {}", s.tag))
            })?;
            Ok(MountShare {
                mount: s.mount,
                tag: POD_TAG.into(),
                subdir: Some(format!("{member}/{n}")),
            })
        })
        .collect()
}

/// At a member's delete: its binds gone from the pod directory.
pub fn unbind_member(sandbox_state: &Path, member: &str) {
    if let Some(pod) = pod_dir(sandbox_state) {
        unbind_dir(&pod.join(member));
    }
}
