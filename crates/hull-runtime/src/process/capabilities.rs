//! The five capability sets of `process.capabilities`.

use caps::{CapSet, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::error::{Error, Result};

fn convert(set: &Option<Capabilities>) -> CapsHashSet {
    set.iter()
        .flatten()
        // Capabilities this kernel or the caps crate does not know are ignored, as runc does.
        .filter_map(|c| format!("CAP_{c}").parse::<caps::Capability>().ok())
        .collect()
}

fn fail(what: &str, e: caps::errors::CapsError) -> Error {
    Error::Setup(format!("capabilities: {what}: {e}"))
}

/// Drops every capability outside `bounding` from the bounding set; needs CAP_SETPCAP,
/// so it runs before the user switch.
pub fn drop_bounding(c: &LinuxCapabilities) -> Result<()> {
    let keep = convert(c.bounding());
    // Asked of the kernel (PR_CAPBSET_READ), not read from /proc/sys/kernel/cap_last_cap:
    // a fake /proc in the rootfs could claim a low last capability and keep the rest
    // in the bounding set (CVE-2019-16884's kin).
    let all = caps::runtime::thread_all_supported();
    for cap in all {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("drop bounding", e))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient, after the user switch.
pub fn apply(c: &LinuxCapabilities) -> Result<()> {
    let permitted = convert(c.permitted());
    let effective = convert(c.effective());
    let inheritable = convert(c.inheritable());
    // Order matters: effective must stay a subset of permitted at each step.
    caps::set(
        None,
        CapSet::Effective,
        &effective
            .intersection(&caps::read(None, CapSet::Permitted).unwrap_or_default())
            .copied()
            .collect(),
    )
    .map_err(|e| fail("set effective", e))?;
    // capset refuses to add to inheritable what is not bounding, or to permitted what is
    // not permitted already; say which capability instead of a bare EPERM.
    let bounding = caps::read(None, CapSet::Bounding).unwrap_or_default();
    let have = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let mut missing: Vec<String> = inheritable
        .iter()
        .filter(|c| !bounding.contains(c))
        .chain(permitted.iter().filter(|c| !have.contains(c)))
        .map(|c| c.to_string())
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        return Err(Error::Setup(format!(
            "process.capabilities: {} cannot be granted (not in hull's own or the configured bounding set; this host may withhold it): remove it from the config",
            missing.join(", ")
        )));
    }
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(|e| fail("set inheritable", e))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|e| fail("set permitted", e))?;
    caps::set(None, CapSet::Effective, &effective).map_err(|e| fail("set effective", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear ambient", e))?;
    for cap in convert(c.ambient()) {
        // Raising an ambient capability needs it permitted and inheritable; like runc,
        // skip the ones that are not, silently: stderr here is the container's.
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}
