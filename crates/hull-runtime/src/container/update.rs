//! `hull update`: change the cgroup limits of a running container and remember them.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::Container;
use crate::error::Result;
use crate::state::Status;

pub fn update(root: &Path, id: &str, resources: &LinuxResources) -> Result<()> {
    update_container(Container::load(root, id)?, resources)
}

pub fn update_container(mut c: Container, resources: &LinuxResources) -> Result<()> {
    c.require(
        "update",
        &[Status::Created, Status::Running, Status::Paused],
    )?;
    let effective = if crate::rootless::active() {
        c.state
            .cgroup
            .rootless_resources(Some(resources.clone()), &[])?
            .unwrap_or_default()
    } else {
        super::create::with_default_devices(resources.clone())
    };
    c.state.cgroup.apply(&effective)?;
    remember(&mut c, resources)
}

/// Records `resources`, once applied, in the container's saved config.
pub fn remember(c: &mut Container, resources: &LinuxResources) -> Result<()> {
    let old = c
        .state
        .config
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone());
    let merged = merge(old, resources);
    if let Some(linux) = c.state.config.linux_mut() {
        linux.set_resources(Some(merged));
    }
    c.dir.save(&c.state)
}

/// Fields set in `new` replace those of `old`, per controller section.
fn merge(old: Option<LinuxResources>, new: &LinuxResources) -> LinuxResources {
    let mut r = old.unwrap_or_default();
    if new.memory().is_some() {
        r.set_memory(*new.memory());
    }
    if new.cpu().is_some() {
        r.set_cpu(new.cpu().clone());
    }
    if new.pids().is_some() {
        r.set_pids(*new.pids());
    }
    if new.block_io().is_some() {
        r.set_block_io(new.block_io().clone());
    }
    if new.hugepage_limits().is_some() {
        r.set_hugepage_limits(new.hugepage_limits().clone());
    }
    if new.network().is_some() {
        r.set_network(new.network().clone());
    }
    if new.unified().is_some() {
        r.set_unified(new.unified().clone());
    }
    r
}
