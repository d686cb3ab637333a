//! A pod's directory volumes (Kubernetes' emptyDir, hostPath, configMap, secret and
//! service account token are all directories bound into a container). A running VM
//! cannot get a virtio-9p device added, so a CRI pod's VM boots with one share, the
//! pod's, of a host directory of its own; each member's directories are bound under it
//! at the member's create (`<member>/<n>`), and the guest binds them from its one mount
//! of the share (the share's `subdir`). Kata shares a sandbox directory over virtio-fs
//! the same way.
//!
//! The pod directory is a small tmpfs of hull's (`<pod>.rw`, mode 0700, nosuid, nodev,
//! noexec), which the guest sees through a read-only bind of it (`<pod>`): the guest can
//! write into its volumes, each a mount of its own, and nowhere else, so nothing it
//! plants (a symlink, a device node, a full /run) can mislead or hurt the host. hull
//! makes the directories through the writable tmpfs and mounts the volumes onto the
//! read-only view, which is a shared mount: binds made there later reach the proxy's
//! mount namespace, where the 9p helper serves them. Removal unmounts the recorded
//! mount points (never following a link) and then the two tmpfs views: nothing is
//! ever deleted recursively. It all lives outside the state directory, whose removal
//! must never walk into a volume; its path is recorded in the sandbox's state before
//! anything is made.

use std::os::unix::fs::DirBuilderExt;
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
/// The pod tmpfs holds directories only: a few per volume.
const TMPFS: &str = "mode=0700,size=1m,nr_inodes=4096";

fn sys(what: String) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Vm(format!("{what}: {e}"))
}

fn mkdir_private(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create", dir))
}

/// The writable view of a pod directory.
fn writable(pod: &Path) -> PathBuf {
    let mut name = pod.as_os_str().to_os_string();
    name.push(".rw");
    PathBuf::from(name)
}

/// At a CRI pod sandbox's create: its pod directory, made, recorded and shared.
pub fn prepare(state_dir: &Path, id: &str) -> Result<SharedDir> {
    let pod = PathBuf::from(ROOT).join(format!("{id}.{:016x}", crate::random_u64()));
    // Recorded first: a create killed at any point leaves what `delete` finds.
    let record = state_dir.join(RECORD);
    std::fs::write(&record, pod.as_os_str().as_encoded_bytes())
        .map_err(io_err("cannot write", &record))?;
    let made = make_views(&pod);
    if let Err(e) = made {
        remove(state_dir);
        return Err(e);
    }
    Ok(SharedDir {
        tag: POD_TAG.into(),
        path: pod,
        readonly: false,
    })
}

fn make_views(pod: &Path) -> Result<()> {
    mkdir_private(Path::new(ROOT))?;
    // Kubernetes' secrets are 0644 files under kubelet's 0750 directories: bound again
    // here, only root may pass.
    std::fs::set_permissions(ROOT, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(io_err("cannot restrict", Path::new(ROOT)))?;
    let rw = writable(pod);
    mkdir_private(&rw)?;
    mkdir_private(pod)?;
    let data = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), &rw, Some("tmpfs"), data, Some(TMPFS))
        .map_err(sys(format!("mount a tmpfs on {}", rw.display())))?;
    mount(Some(&rw), pod, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys(format!(
        "bind {} on {}",
        rw.display(),
        pod.display()
    )))?;
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | data;
    mount(None::<&str>, pod, None::<&str>, ro, None::<&str>)
        .map_err(sys(format!("make {} read-only", pod.display())))?;
    mount(
        None::<&str>,
        pod,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(sys(format!("make {} a shared mount", pod.display())))
}

/// The sandbox's pod directory, if it has one.
fn pod_dir(sandbox_state: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(sandbox_state.join(RECORD)).ok()?;
    let dir = PathBuf::from(text);
    (dir.parent() == Some(Path::new(ROOT))).then_some(dir)
}

/// At the sandbox's delete (or a failed create): every member's binds, then both
/// views unmounted, then their two empty directories removed.
pub fn remove(sandbox_state: &Path) {
    let Some(pod) = pod_dir(sandbox_state) else {
        return;
    };
    let rw = writable(&pod);
    for member in names(&rw) {
        unbind(&pod, &member);
    }
    let _ = umount2(&pod, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    let _ = umount2(&rw, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    for dir in [&pod, &rw] {
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("{} stays: {e}", dir.display())
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_file(sandbox_state.join(RECORD));
}

/// The names in a directory of hull's tmpfs (which only hull writes).
fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect()
}

/// A member's binds unmounted (at the paths hull made, never through a link) and its
/// directories removed from the tmpfs.
fn unbind(pod: &Path, member: &std::ffi::OsStr) {
    let rw = writable(pod).join(member);
    for n in names(&rw) {
        let target = pod.join(member).join(&n);
        let _ = umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        if let Err(e) = std::fs::remove_dir(rw.join(&n)) {
            tracing::warn!("{} stays: {e}", target.display());
        }
    }
    let _ = std::fs::remove_dir(&rw);
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
            let name = n.to_string();
            mkdir_private(&writable(&pod).join(member).join(&name))?;
            let target = pod.join(member).join(&name);
            let what = format!("bind {} on {}", d.path.display(), target.display());
            let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(&d.path), &target, None::<&str>, flags, None::<&str>)
                .map_err(sys(what.clone()))?;
            // No device node or set-id file of a volume works through the guest's
            // requests to the host's 9p helper.
            let mut again =
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if d.readonly {
                again |= MsFlags::MS_RDONLY;
            }
            mount(None::<&str>, &target, None::<&str>, again, None::<&str>)
                .map_err(sys(format!("{what}: remount")))?;
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
        unbind(&pod, std::ffi::OsStr::new(member));
    }
}
