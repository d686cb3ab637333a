//! Running without root on the host ("rootless", as runc and crun call it).
//!
//! hull is rootless when its effective uid is not 0, or when it is uid 0 only inside a
//! user namespace (rootless podman runs its runtime so: root of a namespace whose ids
//! map onto one user's subordinate ids). Rootless, hull:
//! - writes no cgroup file it was not delegated (a directory it may write), and names
//!   each `linux.resources` limit it then cannot apply, one line each (cgroups.rs in
//!   this module's callers; runc fails the same way);
//! - maps ids other than its own through the setuid helpers newuidmap/newgidmap
//!   (idmap.rs), since the kernel lets an unprivileged process map only its own id;
//! - binds device nodes instead of mknod, and binds the host's sysfs/mqueue where a
//!   user namespace may not mount new ones (rootfs/).
//!
//! `--rootless true|false` (runc's flag) overrides the detection for the process.

use std::sync::OnceLock;

static ACTIVE: OnceLock<bool> = OnceLock::new();
static IN_USERNS: OnceLock<bool> = OnceLock::new();

/// `--rootless true` or `false`: decide for this process instead of detecting. Must
/// come before the first `active()`; later calls change nothing (it is a process-wide
/// fact, like the euid it overrides).
pub fn force(on: bool) {
    let _ = ACTIVE.set(on);
}

/// Whether hull runs without root on the host (see the module doc). Decided once, in
/// the process that starts a container: its children, once in the container's user
/// namespace, would see themselves there.
pub fn active() -> bool {
    *ACTIVE.get_or_init(|| !nix::unistd::geteuid().is_root() || in_user_namespace())
}

/// Whether this process is in a user namespace other than the host's: there mknod is
/// refused and host-owned files (cgroups, devices) are not ours even as uid 0.
/// Like `active`, decided once (first asked before any fork).
pub fn in_user_namespace() -> bool {
    *IN_USERNS.get_or_init(|| match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_identity_map(&map),
        // No procfs: nothing tells; assume the host's namespace, as runc does.
        Err(_) => false,
    })
}

/// The initial user namespace maps all 2^32-1 ids onto themselves in one line.
fn is_identity_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Who hull runs as, for messages: "uid 1001" or "uid 0 in a user namespace".
pub fn who() -> String {
    let uid = nix::unistd::geteuid();
    if uid.is_root() && in_user_namespace() {
        "uid 0 of a user namespace".into()
    } else {
        format!("uid {uid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_is_the_host_namespace() {
        assert!(is_identity_map("         0          0 4294967295\n"));
        assert!(!is_identity_map("         0       1001          1\n"));
        assert!(!is_identity_map(
            "         0       1001          1\n         1     100000      65536\n"
        ));
    }

    #[test]
    fn root_test_process_is_not_rootless_unless_forced() {
        // The test suite runs as root on the host (helper-rules); skip elsewhere.
        if !nix::unistd::geteuid().is_root() || in_user_namespace() {
            eprintln!("skipped: not root in the host's user namespace");
            return;
        }
        assert!(!active());
    }
}
