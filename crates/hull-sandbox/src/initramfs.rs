//! The guest's initramfs: a cpio archive (the kernel's "newc" format) holding the static
//! hull-agent as /init, a console node for the kernel to open before init, and nothing
//! else: containers bring their own root filesystems.

use crate::cpio::{self, Entry, Source};

/// Builds the archive in memory (the agent is a few MiB).
pub fn build(agent: &[u8]) -> Vec<u8> {
    let dir = |path: &str| Entry::Dir { path: path.into() };
    let entries = [
        dir("dev"),
        Entry::CharDev {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
        dir("proc"),
        dir("sys"),
        Entry::File {
            path: "init".into(),
            source: Source::Bytes(agent.to_vec()),
            mode: 0o755,
        },
    ];
    let mut out = Vec::with_capacity(agent.len() + 4096);
    cpio::write(&mut out, &entries).expect("writing into memory does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_the_agent_as_init() {
        let dir = std::env::temp_dir().join(format!("hull-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("initramfs.cpio");
        std::fs::write(&archive, build(b"#!/bin/true\n")).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&archive)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.expect("cpio is installed (scripts/install-deps)");
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            list.contains("-rwxr-xr-x") && list.contains("init"),
            "{list}"
        );
        assert!(
            list.contains("crw-------") && list.contains("dev/console"),
            "{list}"
        );
    }

    #[test]
    fn archive_is_deterministic_and_block_aligned() {
        let a = build(b"agent");
        assert_eq!(a, build(b"agent"));
        assert_eq!(a.len() % 512, 0);
    }
}
