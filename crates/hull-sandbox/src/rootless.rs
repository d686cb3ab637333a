//! VM isolation without root: only where the user may open /dev/kvm.
//!
//! An unprivileged user gets VM isolation where the host lets it use KVM: read-write
//! access to /dev/kvm, which Debian gives the members of group `kvm` (0660 root:kvm).
//! Elsewhere it gets one clear error before anything is made, not a silent fallback to
//! QEMU's TCG: on a host with hardware KVM that would be a VM tens of times slower
//! than the user's peers get, and a sandbox that behaves unlike the one asked for.
//! (This development host is the odd one: its /dev/kvm is emulated, 0600 root:root,
//! with no kvm group, so here rootless VM isolation ends in that error.)

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Result, SandboxError};

/// Where KVM lives.
pub const KVM: &str = crate::check::KVM_PATH;

/// Ok when hull runs as root, or rootless with read-write access to `kvm`.
pub fn check_kvm_access(kvm: &Path) -> Result<()> {
    if !hull_runtime::rootless::active() {
        return Ok(());
    }
    let e = match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let what = match std::fs::metadata(kvm) {
        Ok(m) => format!(
            "it is {:o} {}:{}",
            m.mode() & 0o7777,
            name_of("/etc/passwd", m.uid()),
            name_of("/etc/group", m.gid())
        ),
        Err(_) => "it does not exist".into(),
    };
    Err(SandboxError::Rootless(format!(
        "rootless VM isolation needs read-write access to {} and {} has none ({e}; {what}): add the user to the group that owns it (Debian: group kvm, /dev/kvm 0660 root:kvm), or use --isolation namespace",
        kvm.display(),
        hull_runtime::rootless::who(),
    )))
}

/// The name of `id` in an /etc/passwd- or /etc/group-shaped file, else the number.
fn name_of(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}
