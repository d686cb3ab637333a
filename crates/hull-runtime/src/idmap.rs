//! Writing a new user namespace's uid and gid maps (linux.uidMappings/gidMappings).
//!
//! Root writes /proc/<pid>/{uid,gid}_map itself. An unprivileged process may write only
//! a one-line map of its own id (and for gid_map only after denying setgroups, so a
//! process cannot drop a group that bars it from something); anything more takes the
//! setuid helpers newuidmap/newgidmap (Debian's `uidmap`), which grant the ranges
//! /etc/subuid and /etc/subgid give the user. runc and crun do the same.

use std::path::Path;
use std::process::Command;

use oci_spec::runtime::LinuxIdMapping;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uid,
    Gid,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Uid => "uid_map",
            Kind::Gid => "gid_map",
        }
    }
    fn field(self) -> &'static str {
        match self {
            Kind::Uid => "linux.uidMappings",
            Kind::Gid => "linux.gidMappings",
        }
    }
    fn helper(self) -> &'static str {
        match self {
            Kind::Uid => "newuidmap",
            Kind::Gid => "newgidmap",
        }
    }
    fn subid_file(self) -> &'static str {
        match self {
            Kind::Uid => "/etc/subuid",
            Kind::Gid => "/etc/subgid",
        }
    }
    fn own(self) -> u32 {
        match self {
            Kind::Uid => nix::unistd::geteuid().as_raw(),
            Kind::Gid => nix::unistd::getegid().as_raw(),
        }
    }
}

/// Writes both maps of the user namespace that `pid` has just unshared.
pub fn write(
    pid: i32,
    uids: Option<&Vec<LinuxIdMapping>>,
    gids: Option<&Vec<LinuxIdMapping>>,
) -> Result<()> {
    let privileged = nix::unistd::geteuid().is_root();
    for (kind, maps) in [(Kind::Uid, uids), (Kind::Gid, gids)] {
        let maps = maps.map(Vec::as_slice).unwrap_or_default();
        if maps.is_empty() {
            continue;
        }
        if privileged || only_own_id(maps, kind.own()) {
            write_direct(pid, kind, maps, privileged)?;
        } else {
            write_with_helper(pid, kind, maps)?;
        }
    }
    Ok(())
}

fn only_own_id(maps: &[LinuxIdMapping], own: u32) -> bool {
    matches!(maps, [m] if m.size() == 1 && m.host_id() == own)
}

fn write_direct(pid: i32, kind: Kind, maps: &[LinuxIdMapping], privileged: bool) -> Result<()> {
    if kind == Kind::Gid && !privileged {
        // The kernel's condition for an unprivileged gid_map (user_namespaces(7)).
        let path = format!("/proc/{pid}/setgroups");
        std::fs::write(&path, "deny").map_err(|e| {
            Error::Setup(format!(
                "{}: writing \"deny\" to {path} (needed before an unprivileged gid_map): {e}",
                kind.field()
            ))
        })?;
    }
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let path = format!("/proc/{pid}/{}", kind.file());
    std::fs::write(&path, &text)
        .map_err(|e| Error::Setup(format!("{}: writing {path}: {e}", kind.field())))
}

fn write_with_helper(pid: i32, kind: Kind, maps: &[LinuxIdMapping]) -> Result<()> {
    let helper = kind.helper();
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    let why = format!(
        "{} maps more than {} {}, which an unprivileged user may map only through {helper} \
         (Debian package uidmap) and a range in {}",
        kind.field(),
        if kind == Kind::Uid {
            "your uid"
        } else {
            "your gid"
        },
        kind.own(),
        kind.subid_file()
    );
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Setup(format!("{why}: {helper} is not installed"))
        } else {
            Error::Io {
                what: "cannot run",
                path: Path::new(helper).into(),
                source: e,
            }
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Setup(format!(
            "{why}: {helper} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxIdMappingBuilder;

    fn map(c: u32, h: u32, s: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(c)
            .host_id(h)
            .size(s)
            .build()
            .unwrap()
    }

    #[test]
    fn only_a_single_own_id_is_written_directly() {
        assert!(only_own_id(&[map(0, 1001, 1)], 1001));
        assert!(!only_own_id(&[map(0, 1001, 2)], 1001));
        assert!(!only_own_id(&[map(0, 1002, 1)], 1001));
        assert!(!only_own_id(
            &[map(0, 1001, 1), map(1, 100000, 65536)],
            1001
        ));
    }
}
