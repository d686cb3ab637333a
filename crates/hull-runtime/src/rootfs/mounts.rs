//! One config.json mount into the container's root, before pivot_root. Destinations are
//! opened inside the root (secure.rs) and mounted onto through /proc/self/fd, so the
//! kernel, not a string join, decides where a mount lands.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::Mount;

use super::options::{self, MountOptions};
use super::secure::{create_file_in_root, mkdir_all_in_root, open_in_root, proc_path};
use crate::error::{Error, Result};

/// What a mount needs to know about the container being built.
pub struct MountContext<'a> {
    pub rootfd: &'a OwnedFd,
    /// The container cgroup's directory in each hierarchy, named as under /sys/fs/cgroup.
    pub cgroup_dirs: &'a [(String, PathBuf)],
    /// Whether the container has a new user namespace (mknod and some fs types fail).
    pub userns: bool,
    /// hull runs rootless.
    pub rootless: bool,
}

fn fail(dest: &Path, what: &str, e: Errno) -> Error {
    Error::Setup(format!("mount {}: {what}: {e}", dest.display()))
}

const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

pub fn mount_entry(ctx: &MountContext, m: &Mount) -> Result<()> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("none");
    let mut opts = options::parse(m.options().as_deref().unwrap_or_default());
    if typ == "bind" {
        opts.flags |= MsFlags::MS_BIND;
    }
    // Rootless, a read-only rbind is read-only all the way down: `hull spec --rootless`
    // binds the host's /sys so, and the host's cgroup hierarchies under it may belong
    // to the user (CVE-2023-25809). Root keeps runc's meaning (the top mount only).
    let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
    if opts.flags.contains(rbind | MsFlags::MS_RDONLY) && ctx.rootless {
        opts.recursive_set |= options::attr::RDONLY;
    }
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, dest, &opts);
    }
    let target = if opts.is_bind() {
        bind(ctx, m, dest, &opts)?
    } else {
        mount_fs(ctx, m, dest, typ, &opts)?
    };
    finish(dest, &target, &opts)
}

fn bind(ctx: &MountContext, m: &Mount, dest: &Path, opts: &MountOptions) -> Result<OwnedFd> {
    let src = m.source().as_deref().ok_or_else(|| {
        Error::Setup(format!(
            "mount {}: bind mount without a source",
            dest.display()
        ))
    })?;
    let meta = std::fs::metadata(src).map_err(|e| {
        Error::Setup(format!(
            "mount {}: bind source {}: {e}",
            dest.display(),
            src.display()
        ))
    })?;
    let spot = if meta.is_dir() {
        mkdir_all_in_root(ctx.rootfd, dest, Mode::from_bits_truncate(0o755))
    } else {
        create_file_in_root(ctx.rootfd, dest, Mode::from_bits_truncate(0o644))
    }
    .map_err(|e| fail(dest, "cannot create the destination inside the root", e))?;
    guard_proc(ctx, dest, &spot, Some(src))?;
    let flags = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
    mount(
        Some(src),
        &proc_path(&spot),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| fail(dest, &format!("bind {}", src.display()), e))?;
    let target = reopen(ctx, dest)?;
    if opts.flags.intersects(REMOUNT_FLAGS) {
        remount_bind(&target, opts.flags & REMOUNT_FLAGS)
            .map_err(|e| fail(dest, "remount with the requested flags", e))?;
    }
    Ok(target)
}

/// Applies flags to a bind mount. In a user namespace the kernel refuses to clear flags
/// that were locked on the source (nosuid, nodev, noexec): keep those, as runc does.
pub fn remount_bind(target: &OwnedFd, flags: MsFlags) -> nix::Result<()> {
    let path = proc_path(target);
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(
        None::<&str>,
        &path,
        None::<&str>,
        base | flags,
        None::<&str>,
    ) {
        Err(Errno::EPERM) => {
            let locked = current_flags(target)?;
            mount(
                None::<&str>,
                &path,
                None::<&str>,
                base | flags | locked,
                None::<&str>,
            )
        }
        r => r,
    }
}

/// The mount flags of the mount that `target` is on.
pub fn current_flags(target: &OwnedFd) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags as S;
    let st = nix::sys::statvfs::fstatvfs(target)?;
    let mut flags = MsFlags::empty();
    for (s, f) in [
        (S::ST_NOSUID, MsFlags::MS_NOSUID),
        (S::ST_NODEV, MsFlags::MS_NODEV),
        (S::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (S::ST_RDONLY, MsFlags::MS_RDONLY),
        (S::ST_NOATIME, MsFlags::MS_NOATIME),
        (S::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (S::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(s) {
            flags |= f;
        }
    }
    Ok(flags)
}

/// procfs and sysfs go on an ordinary directory of the rootfs, or where nothing is yet:
/// never through a symlink, whose target would be created and mounted on (a way to move
/// /proc away from where masks and labels expect it; runc and crun refuse it too).
fn require_ordinary_directory(ctx: &MountContext, dest: &Path, typ: &str) -> Result<()> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(());
    };
    let dir = match open_in_root(ctx.rootfd, parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(d) => d,
        // Made by mkdir_all_in_root below, so nothing is in the way.
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fail(dest, "cannot open its parent inside the root", e)),
    };
    match nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if (st.st_mode & libc::S_IFMT) != libc::S_IFDIR => Err(Error::Setup(format!(
            "mount {}: filesystem {typ:?} must be mounted on an ordinary directory, and the rootfs has {} there",
            dest.display(),
            if (st.st_mode & libc::S_IFMT) == libc::S_IFLNK {
                "a symlink"
            } else {
                "something else"
            }
        ))),
        Err(e) if e != Errno::ENOENT => Err(fail(dest, "cannot stat it inside the root", e)),
        _ => Ok(()),
    }
}

/// Files under /proc that lxcfs and its kin replace, the only ones a mount other than
/// procfs may cover (runc's list).
const PROC_FILES_THAT_MAY_BE_COVERED: &[&str] = &[
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "proc/loadavg",
    "proc/slabinfo",
    "proc/net/dev",
    "proc/sys/kernel/ns_last_pid",
];

/// CVE-2019-16884 and CVE-2023-27561: nothing but procfs (or a bind of a whole procfs)
/// goes at /proc, and under it only the files above, so no fake /proc can catch what
/// the container's LSM label, masks and sysctls mean for the real one. Checked on
/// `spot`, where the mount will actually land: a symlink in the image or in an earlier
/// volume cannot route a destination that does not say /proc into it.
fn guard_proc(ctx: &MountContext, dest: &Path, spot: &OwnedFd, src: Option<&Path>) -> Result<()> {
    use nix::sys::statfs::{fstatfs, PROC_SUPER_MAGIC};
    let refuse = |why: String| {
        Error::Setup(format!(
            "mount {}: {why}; only procfs may be mounted on /proc",
            dest.display()
        ))
    };
    let here = nix::sys::stat::fstat(spot).map_err(|e| fail(dest, "stat", e))?;
    let proc_dir =
        nix::sys::stat::fstatat(ctx.rootfd, "proc", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
    let at_proc = proc_dir.is_ok_and(|p| (p.st_dev, p.st_ino) == (here.st_dev, here.st_ino));
    let in_procfs = fstatfs(spot)
        .map_err(|e| fail(dest, "statfs", e))?
        .filesystem_type()
        == PROC_SUPER_MAGIC;
    if !at_proc && !in_procfs {
        return Ok(());
    }
    // Where it lands, as the kernel resolved it.
    let landed = std::fs::read_link(proc_path(spot)).map_err(|e| {
        fail(
            dest,
            "readlink",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let root = std::fs::read_link(proc_path(ctx.rootfd)).map_err(|e| {
        fail(
            dest,
            "readlink the root",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let rel = landed.strip_prefix(&root).unwrap_or(&landed);
    if rel == Path::new("proc") {
        let whole_procfs = src.is_some_and(|s| {
            nix::fcntl::open(
                s,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .is_ok_and(|fd| crate::procfs::verify_root(&fd, s).is_ok())
        });
        if whole_procfs {
            return Ok(());
        }
        return Err(refuse(format!(
            "it lands on the container's /proc ({})",
            landed.display()
        )));
    }
    if PROC_FILES_THAT_MAY_BE_COVERED
        .iter()
        .any(|f| rel == Path::new(f))
    {
        return Ok(());
    }
    Err(refuse(format!(
        "it lands inside the container's procfs, at /{}",
        rel.display()
    )))
}

fn mount_fs(
    ctx: &MountContext,
    m: &Mount,
    dest: &Path,
    typ: &str,
    opts: &MountOptions,
) -> Result<OwnedFd> {
    if typ == "proc" || typ == "sysfs" {
        require_ordinary_directory(ctx, dest, typ)?;
    }
    let spot = mkdir_all_in_root(ctx.rootfd, dest, Mode::from_bits_truncate(0o755))
        .map_err(|e| fail(dest, "cannot create the destination inside the root", e))?;
    if typ != "proc" {
        guard_proc(ctx, dest, &spot, None)?;
    }
    let source = m
        .source()
        .as_ref()
        .map(|s| s.as_os_str().to_owned())
        .unwrap_or_else(|| typ.into());
    let copy = if opts.tmpcopyup && typ == "tmpfs" {
        Some(
            spot.try_clone()
                .map_err(|e| fail(dest, "dup", Errno::from_raw(e.raw_os_error().unwrap_or(0))))?,
        )
    } else {
        None
    };
    let data = opts.data();
    let flags = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    let r = mount(
        Some(source.as_os_str()),
        &proc_path(&spot),
        Some(typ),
        flags,
        data.as_deref(),
    );
    match r {
        Ok(()) => {}
        // Without its own network (sysfs) or IPC (mqueue) namespace a user namespace may
        // not mount these; bind the host's read-only instead, as runc does.
        Err(Errno::EPERM) if ctx.userns && (typ == "sysfs" || typ == "mqueue") => {
            let host = if typ == "sysfs" {
                "/sys"
            } else {
                "/dev/mqueue"
            };
            mount(
                Some(host),
                &proc_path(&spot),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| fail(dest, &format!("bind {host}"), e))?;
            let t = reopen(ctx, dest)?;
            remount_bind(&t, flags | MsFlags::MS_RDONLY).map_err(|e| fail(dest, "remount", e))?;
            return Ok(t);
        }
        Err(e) => return Err(fail(dest, &format!("mount {typ}"), e)),
    }
    let target = reopen(ctx, dest)?;
    if let Some(under) = copy {
        copy_up(&under, &target)
            .map_err(|e| Error::Setup(format!("mount {}: tmpcopyup: {e}", dest.display())))?;
    }
    Ok(target)
}

/// tmpcopyup: the tmpfs starts with what the image had at that path (files, dirs and
/// symlinks, with their modes and owners; device nodes are not copied).
fn copy_up(under: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    // Paths through our own fd table, as host procfs names us (getpid says 1 here).
    let me = std::fs::read_link("/proc/self")?;
    let fd_path = |fd: &OwnedFd| {
        use std::os::fd::AsRawFd;
        Path::new("/proc")
            .join(&me)
            .join("fd")
            .join(fd.as_raw_fd().to_string())
    };
    copy_tree(&fd_path(under), &fd_path(target))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        } else {
            continue;
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

fn reopen(ctx: &MountContext, dest: &Path) -> Result<OwnedFd> {
    open_in_root(ctx.rootfd, dest, OFlag::O_PATH)
        .map_err(|e| fail(dest, "cannot reopen after mounting", e))
}

fn finish(dest: &Path, target: &OwnedFd, opts: &MountOptions) -> Result<()> {
    for p in &opts.propagation {
        mount(
            None::<&str>,
            &proc_path(target),
            None::<&str>,
            *p,
            None::<&str>,
        )
        .map_err(|e| fail(dest, "set propagation", e))?;
    }
    if opts.recursive_set != 0 || opts.recursive_clear != 0 {
        set_attr_recursive(target, opts.recursive_set, opts.recursive_clear)
            .map_err(|e| fail(dest, "mount_setattr (recursive options)", e))?;
    }
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_attr_recursive(target: &OwnedFd, set: u64, clear: u64) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size` bytes of a properly laid-out mount_attr; the
    // path is a valid NUL-terminated empty string used with AT_EMPTY_PATH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Binds the container's cgroup directory `host` onto `spot` (`dest` inside the root).
fn bind_cgroup_dir(
    ctx: &MountContext,
    host: &Path,
    dest: &Path,
    spot: &OwnedFd,
    flags: MsFlags,
) -> Result<()> {
    mount(
        Some(host),
        &proc_path(spot),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail(dest, &format!("bind {}", host.display()), e))?;
    let t = reopen(ctx, dest)?;
    remount_bind(&t, flags).map_err(|e| fail(dest, "remount", e))
}

/// A cgroup mount: on v2 the container's cgroup directory; on v1 and hybrid hosts a tmpfs
/// with the container's directory of each hierarchy under it, as runc lays it out. Bind
/// mounts rather than new cgroup mounts, so it works in user namespaces too.
fn mount_cgroup(ctx: &MountContext, dest: &Path, opts: &MountOptions) -> Result<()> {
    // No cgroup at all (rootless, nothing delegated): an empty read-only tmpfs masks
    // whatever a `/sys` rbind brought along, the host's hierarchies, some of which the
    // user may own (CVE-2023-25809, runc masks it too).
    let ro = if ctx.cgroup_dirs.is_empty() {
        MsFlags::MS_RDONLY
    } else {
        opts.flags & MsFlags::MS_RDONLY
    };
    let keep = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let spot = mkdir_all_in_root(ctx.rootfd, dest, Mode::from_bits_truncate(0o755))
        .map_err(|e| fail(dest, "cannot create the destination inside the root", e))?;
    guard_proc(ctx, dest, &spot, None)?;
    let unified_only = ctx.cgroup_dirs.len() == 1 && ctx.cgroup_dirs[0].0.is_empty();
    if unified_only {
        return bind_cgroup_dir(ctx, &ctx.cgroup_dirs[0].1, dest, &spot, ro | keep);
    }
    mount(
        Some("tmpfs"),
        &proc_path(&spot),
        Some("tmpfs"),
        keep,
        Some("mode=755"),
    )
    .map_err(|e| fail(dest, "mount tmpfs for cgroup hierarchies", e))?;
    let top = reopen(ctx, dest)?;
    for (name, host) in ctx.cgroup_dirs {
        let sub = dest.join(name);
        let spot = mkdir_all_in_root(ctx.rootfd, &sub, Mode::from_bits_truncate(0o755))
            .map_err(|e| fail(&sub, "mkdir", e))?;
        bind_cgroup_dir(ctx, host, &sub, &spot, ro | keep)?;
        // Co-mounted controllers ("cpu,cpuacct") are also reachable by each name.
        if name.contains(',') {
            for part in name.split(',') {
                let _ = nix::unistd::symlinkat(name.as_str(), top.as_fd(), part);
            }
        }
    }
    if !ro.is_empty() {
        let p = proc_path(&top);
        mount(
            None::<&str>,
            &p,
            None::<&str>,
            MsFlags::MS_REMOUNT | ro | keep,
            Some("mode=755"),
        )
        .map_err(|e| fail(dest, "remount tmpfs read-only", e))?;
    }
    Ok(())
}
