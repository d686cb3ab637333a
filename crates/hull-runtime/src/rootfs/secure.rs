//! Paths inside the container's root, resolved by the kernel with RESOLVE_IN_ROOT so a
//! symlink planted in the image can never send a mount or a mknod outside the root
//! (CVE-2021-30465 and its kin). Callers mount onto the returned fd's /proc path.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode};

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// `path` (absolute or not) as a relative path with no `.`/`..`/root components; `..`
/// is kept out lexically here and by RESOLVE_IN_ROOT for symlinks.
pub fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Opens `path` inside `root`.
pub fn open_in_root(root: impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel.as_path()
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(RESOLVE);
    loop {
        match fcntl::openat2(root.as_fd(), rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// `mkdir -p` inside `root`; returns an O_PATH fd of the final directory. Symlinks on
/// the way are followed as if `root` were `/` (an absolute link to a missing host path
/// creates that path inside the root), like runc's securejoin.MkdirAll.
pub fn mkdir_all_in_root(root: impl AsFd, path: &Path, mode: Mode) -> nix::Result<OwnedFd> {
    const MAX_LINKS: usize = 40;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut todo: Vec<std::ffi::OsString> = relative(path)
        .components()
        .rev()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut sofar = PathBuf::new();
    let mut parent = open_in_root(root.as_fd(), Path::new("."), dir_flags)?;
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        if comp == ".." {
            sofar.pop();
            parent = open_in_root(root.as_fd(), &sofar, dir_flags)?;
            continue;
        }
        if comp == "." || comp.is_empty() {
            continue;
        }
        match stat::fstatat(
            parent.as_fd(),
            comp.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => match stat::mkdirat(parent.as_fd(), comp.as_os_str(), mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                let target = nix::fcntl::readlinkat(parent.as_fd(), comp.as_os_str())?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    sofar = PathBuf::new();
                    parent = open_in_root(root.as_fd(), Path::new("."), dir_flags)?;
                }
                todo.extend(
                    target
                        .components()
                        .filter(|c| !matches!(c, Component::RootDir))
                        .map(|c| c.as_os_str().to_owned())
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev(),
                );
                continue;
            }
            Ok(_) => {}
        }
        sofar.push(&comp);
        parent = open_in_root(root.as_fd(), &sofar, dir_flags)?;
    }
    Ok(parent)
}

/// Ensures a regular file (a bind-mount target) exists at `path` inside `root`, creating
/// parents; returns an O_PATH fd of it.
pub fn create_file_in_root(root: impl AsFd, path: &Path, mode: Mode) -> nix::Result<OwnedFd> {
    match open_in_root(root.as_fd(), path, OFlag::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let rel = relative(path);
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().ok_or(Errno::EINVAL)?;
    let dir = mkdir_all_in_root(root.as_fd(), parent, Mode::from_bits_truncate(0o755))?;
    // An O_PATH dir fd can serve as dirfd for openat.
    match fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        mode,
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    open_in_root(root.as_fd(), path, OFlag::O_PATH)
}

/// Opens `path` inside `root` following no symlink at all, not even one inside the
/// root. With O_PATH a trailing symlink is returned as itself, for the caller to see.
pub fn open_no_symlinks(root: impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(RESOLVE | ResolveFlag::RESOLVE_NO_SYMLINKS);
    loop {
        match fcntl::openat2(root.as_fd(), &rel, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Binds the file `src` refers to onto the file `target` refers to. Both are fds, so
/// no path is looked up at mount time: neither a symlink swapped in nor a mount over
/// /proc/self/fd can redirect the bind (CVE-2025-31133, CVE-2025-52565).
pub fn bind_fd(src: impl AsFd, target: impl AsFd) -> nix::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: open_tree with an empty NUL-terminated path and AT_EMPTY_PATH clones the
    // mount of `src`'s file; the result is a fresh fd we then own.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            src.as_fd().as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    let tree = Errno::result(tree)?;
    // SAFETY: the syscall returned a fresh fd.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    // SAFETY: move_mount with two fds and empty NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_fd().as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// The /proc path through which mount(2) and friends reach `fd`'s file.
pub fn proc_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hull-secure-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn relative_strips_escapes() {
        assert_eq!(relative(Path::new("/a/../../b/./c")), PathBuf::from("b/c"));
        assert_eq!(relative(Path::new("../../etc")), PathBuf::from("etc"));
    }

    #[test]
    fn symlink_escape_stays_inside() {
        let d = tmpdir();
        let root = d.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = d.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute symlink to a host dir must resolve inside the root.
        symlink(&outside, root.join("evil")).unwrap();
        let rootfd = fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        mkdir_all_in_root(
            &rootfd,
            Path::new("/evil/sub"),
            Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        assert!(!outside.join("sub").exists(), "escaped the root");
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("sub")
            .is_dir());
        create_file_in_root(
            &rootfd,
            Path::new("/evil/../../f"),
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert!(root.join("f").is_file());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
