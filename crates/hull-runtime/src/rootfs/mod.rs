//! The container's root filesystem: mounts, devices and pivot_root, done by the init in
//! its new mount namespace.

pub mod devices;
pub mod mounts;
pub mod options;
pub mod paths;
pub mod secure;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd;
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

fn setup(what: &str, e: nix::Error) -> Error {
    Error::Setup(format!("{what}: {e}"))
}

/// Everything up to pivot_root: detach from the host's propagation, make the rootfs a
/// mount point, then the config's mounts and /dev.
/// What the init may do, decided by the parent.
#[derive(Debug, Clone, Copy)]
pub struct Privilege {
    /// In a user namespace (the container's or hull's own): no mknod, no new sysfs.
    pub userns: bool,
    /// hull runs rootless (rootless.rs).
    pub rootless: bool,
}

pub fn prepare(
    rootfs: &Path,
    spec: &Spec,
    cgroup_dirs: &[(String, PathBuf)],
    privilege: Privilege,
) -> Result<()> {
    let userns = privilege.userns;
    let linux = spec.linux().as_ref();
    let prop = linux.and_then(|l| l.rootfs_propagation().as_deref());
    let flags = options::rootfs_propagation(prop).ok_or_else(|| {
        Error::Setup(format!(
            "linux.rootfsPropagation {prop:?} is not one of private, rprivate, shared, rshared, slave, rslave, unbindable, runbindable"
        ))
    })?;
    // Host mounts must never see what happens here: at least slave, whatever was asked.
    let sever = if flags.contains(MsFlags::MS_PRIVATE) {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    };
    mount(None::<&str>, "/", None::<&str>, sever, None::<&str>)
        .map_err(|e| setup("make / rslave", e))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| setup("bind the rootfs onto itself", e))?;
    let rootfd = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| setup("open rootfs", e))?;
    let ctx = mounts::MountContext {
        rootfd: &rootfd,
        cgroup_dirs,
        userns,
        rootless: privilege.rootless,
    };
    let mut dev_is_bound = false;
    for m in spec.mounts().iter().flatten() {
        mounts::mount_entry(&ctx, m)?;
        if secure::relative(m.destination()) == Path::new("dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
        {
            dev_is_bound = true;
        }
    }
    if !dev_is_bound {
        setup_dev(&rootfd, spec, userns)?;
    }
    // runc and crun create a missing process.cwd; a read-only root keeps it missing and
    // the later chdir reports that.
    if let Some(p) = spec.process() {
        let _ = secure::mkdir_all_in_root(&rootfd, p.cwd(), Mode::from_bits_truncate(0o755));
    }
    Ok(())
}

fn setup_dev(rootfd: &OwnedFd, spec: &Spec, userns: bool) -> Result<()> {
    let mut devs = devices::defaults();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let d = devices::from_spec(d);
        devs.retain(|x| x.path != d.path);
        devs.push(d);
    }
    devices::create_all(rootfd, &devs, userns)?;
    devices::symlinks(rootfd)
}

/// Makes `rootfs` the root: pivot_root, or with `no_pivot` a move mount plus chroot
/// (for ramdisk roots, where pivot_root is impossible).
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<()> {
    unistd::chdir(rootfs).map_err(|e| setup("chdir rootfs", e))?;
    if no_pivot {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| setup("move rootfs to /", e))?;
        unistd::chroot(".").map_err(|e| setup("chroot", e))?;
    } else {
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
        // then leaves the new root alone without needing a directory for the old one.
        unistd::pivot_root(".", ".").map_err(|e| setup("pivot_root", e))?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| setup("make old root rslave", e))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(|e| setup("detach old root", e))?;
    }
    unistd::chdir("/").map_err(|e| setup("chdir /", e))
}

/// After the hooks that run in the container's mount namespace, and before the masks go
/// onto it: the container's /proc must still be a procfs root, not something mounted
/// over the one hull mounted (CVE-2019-16884, CVE-2025-52881).
fn verify_proc(spec: &Spec) -> Result<()> {
    let wants_proc = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| secure::relative(m.destination()) == Path::new("proc"));
    if !wants_proc {
        return Ok(());
    }
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| setup("open /", e))?;
    let proc = secure::open_no_symlinks(&root, Path::new("/proc"), OFlag::O_PATH)
        .map_err(|e| setup("open /proc", e))?;
    crate::procfs::verify_root(&proc, Path::new("/proc"))
}

/// After pivot_root: propagation asked for the root, masked and read-only paths, then a
/// read-only root last (masking needs nothing written, but hooks and /dev do).
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    if let Some(p) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        if let Some(flags) = options::rootfs_propagation(Some(p)) {
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
                .map_err(|e| setup("set rootfsPropagation", e))?;
        }
    }
    verify_proc(spec)?;
    if let Some(l) = linux {
        if let Some(m) = l.masked_paths() {
            paths::mask(m)?;
        }
        if let Some(r) = l.readonly_paths() {
            paths::readonly(r)?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let root = nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| setup("open /", e))?;
        let keep = mounts::current_flags(&root).map_err(|e| setup("statvfs /", e))?;
        mounts::remount_bind(&root, keep | MsFlags::MS_RDONLY)
            .map_err(|e| setup("remount root read-only", e))?;
    }
    Ok(())
}
