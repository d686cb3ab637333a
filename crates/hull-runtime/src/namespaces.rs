//! Which namespaces a container gets new and which it joins by path.

use std::path::PathBuf;

use nix::sched::{self, CloneFlags};
use oci_spec::runtime::{Linux, LinuxNamespaceType};

use crate::error::{Error, Result};

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    use LinuxNamespaceType as T;
    match t {
        T::Mount => CloneFlags::CLONE_NEWNS,
        T::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        T::Uts => CloneFlags::CLONE_NEWUTS,
        T::Ipc => CloneFlags::CLONE_NEWIPC,
        T::User => CloneFlags::CLONE_NEWUSER,
        T::Pid => CloneFlags::CLONE_NEWPID,
        T::Network => CloneFlags::CLONE_NEWNET,
        T::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The /proc/<pid>/ns/ entry name of a namespace flag.
pub fn proc_name(f: CloneFlags) -> &'static str {
    match f.bits() {
        libc::CLONE_NEWNS => "mnt",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNET => "net",
        _ => "time",
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// New namespaces other than the user namespace, unshared after it.
    pub new: CloneFlags,
    pub new_user: bool,
    /// Namespaces to join, user namespace last.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// Every namespace the container is in, new or joined.
    pub all: CloneFlags,
}

impl Plan {
    pub fn from_linux(linux: Option<&Linux>) -> Plan {
        let mut p = Plan {
            new: CloneFlags::empty(),
            new_user: false,
            join: Vec::new(),
            all: CloneFlags::empty(),
        };
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            let f = flag(ns.typ());
            p.all |= f;
            match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => p.join.push((f, path.clone())),
                _ if f == CloneFlags::CLONE_NEWUSER => p.new_user = true,
                _ => p.new |= f,
            }
        }
        // Joining a user namespace first would drop the privileges needed to join the rest.
        p.join.sort_by_key(|(f, _)| *f == CloneFlags::CLONE_NEWUSER);
        p
    }

    pub fn has(&self, f: CloneFlags) -> bool {
        self.all.contains(f)
    }

    pub fn userns(&self) -> bool {
        self.has(CloneFlags::CLONE_NEWUSER)
    }

    /// setns into every namespace named by path.
    pub fn join_paths(&self) -> Result<()> {
        for (f, path) in &self.join {
            let fd = std::fs::File::open(path).map_err(|e| {
                Error::Setup(format!(
                    "namespace {} path {}: {e}",
                    proc_name(*f),
                    path.display()
                ))
            })?;
            sched::setns(&fd, *f).map_err(|e| {
                Error::Setup(format!(
                    "join {} namespace {}: {e} (is it a {0} namespace?)",
                    proc_name(*f),
                    path.display()
                ))
            })?;
        }
        Ok(())
    }
}
