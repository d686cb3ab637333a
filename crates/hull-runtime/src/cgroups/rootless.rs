//! Cgroups without root: only what was delegated. An unprivileged hull (or uid 0 of a
//! user namespace) writes a hierarchy only where the directory its container's cgroup
//! goes into is writable to it, as systemd's `Delegate=yes` or an administrator's chown
//! makes it. Elsewhere it writes nothing, and every `linux.resources` limit that then
//! has no cgroup to go into is named on a line of its own, and `create` fails (runc
//! fails too; a limit asked for and silently not enforced is worse than no container).
//!
//! Device rules are the exception, skipped without a word as runc and crun skip them:
//! in a user namespace mknod is refused, so the container reaches only the device nodes
//! bound into it, and podman's everyday configs carry the rules.

use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;
use oci_spec::runtime::LinuxResources;

use super::{unset, Cgroup, CgroupError, CgroupVersion, Group, Hierarchy};

/// A hierarchy left out because it was not delegated, for the messages.
#[derive(Debug, Clone)]
pub struct NotDelegated {
    controllers: String,
    /// The directory that would have had to be writable.
    dir: PathBuf,
}

impl Cgroup {
    /// Drops every hierarchy where the container's cgroup cannot be made by us; returns
    /// what was dropped. Nothing is written, so a host that delegated nothing sees no
    /// cgroup write at all.
    pub fn keep_delegated(&mut self) -> Vec<NotDelegated> {
        let mut dropped = Vec::new();
        let mut keep = |h: &Hierarchy| match delegated(h) {
            Ok(()) => true,
            Err(dir) => {
                dropped.push(NotDelegated {
                    controllers: h.controllers.clone(),
                    dir,
                });
                false
            }
        };
        self.v1.retain(|h| keep(h));
        if self.unified.as_ref().is_some_and(|h| !keep(h)) {
            self.unified = None;
        }
        dropped
    }

    /// Rootless `create`: keep the delegated hierarchies, fail naming every limit that
    /// cannot be applied, and return the resources to apply (without device rules).
    pub fn prepare_rootless(
        &mut self,
        resources: Option<LinuxResources>,
    ) -> Result<Option<LinuxResources>, CgroupError> {
        let dropped = self.keep_delegated();
        if !dropped.is_empty() {
            tracing::debug!(
                ?dropped,
                "rootless: cgroup hierarchies not delegated, left alone"
            );
        }
        self.rootless_resources(resources, &dropped)
    }

    /// Rootless `update` (and `create`): the resources without device rules, or the
    /// lines naming each limit this container's cgroup cannot hold.
    pub fn rootless_resources(
        &self,
        resources: Option<LinuxResources>,
        dropped: &[NotDelegated],
    ) -> Result<Option<LinuxResources>, CgroupError> {
        let Some(mut r) = resources else {
            return Ok(None);
        };
        let lines = self.rootless_unappliable(&r, dropped);
        if !lines.is_empty() {
            return Err(CgroupError::RootlessLimits { lines });
        }
        r.set_devices(None);
        Ok(Some(r))
    }

    /// Whether the container has a cgroup in no hierarchy at all (rootless, nothing
    /// delegated).
    pub fn is_empty(&self) -> bool {
        self.v1.is_empty() && self.unified.is_none()
    }

    /// One line per limit in `r` that no kept hierarchy can hold.
    fn rootless_unappliable(&self, r: &LinuxResources, dropped: &[NotDelegated]) -> Vec<String> {
        let r = unset::zero_means_unset(r);
        let mut lines = Vec::new();
        for g in Group::ALL {
            if *g == Group::Devices || !g.is_set(&r) || self.can_hold(*g) {
                continue;
            }
            let ctl = g.v1_controller();
            let dir = dropped
                .iter()
                .find(|d| d.controllers.split(',').any(|c| c == ctl) || d.controllers.is_empty())
                .map(|d| d.dir.as_path());
            lines.push(line(g.field(), ctl, dir));
        }
        let unified = r.unified().as_ref().is_some_and(|m| !m.is_empty());
        if unified && self.unified.is_none() {
            let dir = dropped.iter().find(|d| d.controllers.is_empty());
            lines.push(line("unified", "cgroup2", dir.map(|d| d.dir.as_path())));
        }
        lines
    }

    fn can_hold(&self, g: Group) -> bool {
        if self.version != CgroupVersion::V2 && self.v1.iter().any(|h| h.has(g.v1_controller())) {
            return true;
        }
        // cgroup2 (and the v2 half of a hybrid host, where hull falls back to it).
        self.unified.is_some() && g.v2_controller().is_some_and(|c| !c.is_empty())
    }
}

fn line(field: &str, controller: &str, dir: Option<&Path>) -> String {
    let why = match dir {
        Some(d) => format!(
            "{} is not writable to {}",
            d.display(),
            crate::rootless::who()
        ),
        None => "the container's cgroup has no such hierarchy".to_string(),
    };
    format!(
        "rootless: linux.resources.{field} cannot be applied: no {controller} cgroup is delegated to hull ({why}); remove the limit, or delegate a cgroup to the user (systemd Delegate=yes, or chown)"
    )
}

/// Ok when we may make the container's directory: its nearest existing ancestor (or
/// the directory itself) and that ancestor's cgroup.procs are writable to our
/// effective ids. Err names the directory that is not.
fn delegated(h: &Hierarchy) -> Result<(), PathBuf> {
    let mut dir = h.dir.as_path();
    while !dir.exists() {
        match dir.parent() {
            Some(p) if p.starts_with(&h.mount) => dir = p,
            _ => return Err(dir.to_path_buf()),
        }
    }
    let writable = |p: &Path| {
        nix::unistd::faccessat(
            nix::fcntl::AT_FDCWD,
            p,
            AccessFlags::W_OK,
            nix::fcntl::AtFlags::AT_EACCESS,
        )
        .is_ok()
    };
    if writable(dir) && writable(&dir.join("cgroup.procs")) {
        Ok(())
    } else {
        Err(dir.to_path_buf())
    }
}
