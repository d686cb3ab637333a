//! The root QEMU sees when it shares host directories with the guest. virtio-9p's
//! passthrough model keeps QEMU at uid 0 (it gives the guest's files the host's owners
//! and modes), so `-chroot` (which root leaves again with chroot(2)) and `-runas` are
//! out; instead, in its own mount namespace, QEMU is pivoted into a tmpfs that holds only
//! what it opens: /usr and the loader's links read-only, a few device nodes, the VM's
//! directory, its kernel, initramfs and disks, and the shared directories; the host's
//! tree is detached, and without CAP_SYS_ADMIN nothing can be mounted back. Every path
//! is bound at its own absolute path, so QEMU's arguments and working directory mean
//! what they meant.
//!
//! The plan is made before the fork; `enter` runs between fork and exec and makes only
//! async-signal-safe system calls on the plan's prepared C strings.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Result, SandboxError};

/// How a path of the host appears in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only, as data: nosuid, nodev, noexec.
    ReadOnly,
    /// Read-only, with its programs (/usr).
    ReadOnlyExec,
    /// Writable data (the VM's directory, a writable disk).
    ReadWrite,
    /// A device node, usable.
    Device,
    /// A shared directory with what is mounted below it (a pod's volumes, bound under
    /// its share later, arrive too: the bind of a slave mount is a slave).
    Share { readonly: bool },
}

enum Step {
    Dir(CString),
    File(CString),
    Bind {
        src: CString,
        dst: CString,
        flags: libc::c_ulong,
        remount: libc::c_ulong,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// A prepared jail root: what `enter` does, in order.
pub struct JailRoot {
    root: CString,
    old: CString,
    old_inside: CString,
    cwd: CString,
    steps: Vec<Step>,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Vm(format!("{}: a NUL in the path", p.display())))
}

impl JailRoot {
    /// A jail at `root` (an existing empty directory) holding `entries`, entered with
    /// `cwd` as the working directory. A symlink among the entries (merged /usr's /lib)
    /// is recreated as the same link.
    pub fn plan(root: &Path, cwd: &Path, entries: &[(PathBuf, Access)]) -> Result<JailRoot> {
        let mut steps = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        for (path, access) in entries {
            let path = std::path::absolute(path)
                .map_err(|e| SandboxError::Vm(format!("{}: {e}", path.display())))?;
            if path.components().any(|c| c == Component::ParentDir) {
                return Err(SandboxError::Vm(format!(
                    "{}: no .. in a jail path",
                    path.display()
                )));
            }
            let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
            for dir in inside
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if dir.starts_with(root) && dir != root && !made.iter().any(|m| m == dir) {
                    made.push(dir.to_path_buf());
                    steps.push(Step::Dir(cstr(dir)?));
                }
            }
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| SandboxError::Vm(format!("{}: {e}", path.display())))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| SandboxError::Vm(format!("{}: {e}", path.display())))?;
                steps.push(Step::Symlink {
                    target: cstr(&target)?,
                    link: cstr(&inside)?,
                });
                continue;
            }
            steps.push(if meta.is_dir() {
                made.push(inside.clone());
                Step::Dir(cstr(&inside)?)
            } else {
                Step::File(cstr(&inside)?)
            });
            let data = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
            let remount = match access {
                Access::ReadOnly => data | libc::MS_RDONLY,
                Access::ReadOnlyExec => (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY) as _,
                Access::ReadWrite => data,
                Access::Device => (libc::MS_NOSUID | libc::MS_NOEXEC) as _,
                Access::Share { readonly: true } => data | libc::MS_RDONLY,
                Access::Share { readonly: false } => data,
            };
            // Not recursive but for shares: the VM's directory holds the jail itself.
            let rec = if matches!(access, Access::Share { .. }) {
                libc::MS_REC
            } else {
                0
            };
            steps.push(Step::Bind {
                src: cstr(&path)?,
                dst: cstr(&inside)?,
                flags: (libc::MS_BIND | rec) as _,
                remount: remount | (libc::MS_REMOUNT | libc::MS_BIND) as libc::c_ulong,
            });
        }
        let old = root.join(".old");
        Ok(JailRoot {
            root: cstr(root)?,
            old: cstr(&old)?,
            old_inside: CString::new("/.old").expect("no NUL"),
            cwd: cstr(cwd)?,
            steps,
        })
    }

    /// Builds the root and pivots into it. Between fork and exec only: the caller is in
    /// a mount namespace of its own whose mounts do not propagate back.
    pub fn enter(&self) -> std::io::Result<()> {
        let last = || Err(std::io::Error::last_os_error());
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: system calls on C strings prepared before the fork (no allocation
        // here); null where the call takes no argument.
        unsafe {
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                (libc::MS_NOSUID) as _,
                c"mode=0755".as_ptr().cast(),
            ) != 0
            {
                return last();
            }
            for step in &self.steps {
                match step {
                    Step::Dir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return last();
                        }
                    }
                    Step::File(p) => {
                        let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                        if fd < 0 {
                            return last();
                        }
                        libc::close(fd);
                    }
                    Step::Bind {
                        src,
                        dst,
                        flags,
                        remount,
                    } => {
                        if libc::mount(src.as_ptr(), dst.as_ptr(), none, *flags, none.cast()) != 0
                            || libc::mount(none, dst.as_ptr(), none, *remount, none.cast()) != 0
                        {
                            return last();
                        }
                    }
                    Step::Symlink { target, link } => {
                        if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                            return last();
                        }
                    }
                }
            }
            if libc::mkdir(self.old.as_ptr(), 0o700) != 0
                || libc::syscall(libc::SYS_pivot_root, self.root.as_ptr(), self.old.as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
                || libc::umount2(self.old_inside.as_ptr(), libc::MNT_DETACH) != 0
                || libc::rmdir(self.old_inside.as_ptr()) != 0
                || libc::chdir(self.cwd.as_ptr()) != 0
            {
                return last();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_once_and_symlinks_stay_links() {
        let root = std::env::temp_dir().join(format!("hull-jail-root-{}", crate::random_u64()));
        std::fs::create_dir_all(&root).unwrap();
        let entries = [
            (PathBuf::from("/usr"), Access::ReadOnlyExec),
            (PathBuf::from("/etc/ld.so.cache"), Access::ReadOnly),
            (PathBuf::from("/dev/null"), Access::Device),
        ];
        let j = JailRoot::plan(&root, Path::new("/"), &entries).unwrap();
        let dirs: Vec<String> = j
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let r = root.display();
        assert_eq!(
            dirs,
            [format!("{r}/usr"), format!("{r}/etc"), format!("{r}/dev")]
        );
        let binds = j
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Bind { .. }))
            .count();
        assert_eq!(binds, 3);
        assert!(JailRoot::plan(
            &root,
            Path::new("/"),
            &[("/usr/../etc".into(), Access::ReadOnly)]
        )
        .is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
