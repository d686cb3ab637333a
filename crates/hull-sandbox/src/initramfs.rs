//! The guest's initramfs: a cpio archive (the kernel's "newc" format) holding the static
//! hull-agent as /init, a console node for the kernel to open before init, and nothing
//! else: containers bring their own root filesystems.

use std::io::Write;

/// One archive member.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    CharDev(&'a str, u32, u32),
}

/// Builds the archive in memory (the agent is a few MiB).
pub fn build(agent: &[u8]) -> Vec<u8> {
    let entries = [
        Entry::Dir("dev"),
        Entry::CharDev("dev/console", 5, 1),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::File("init", agent, 0o755),
    ];
    let mut out = Vec::with_capacity(agent.len() + 4096);
    for (ino, e) in entries.iter().enumerate() {
        let (name, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            Entry::Dir(n) => (n, 0o040755, &[], (0, 0)),
            Entry::File(n, d, perm) => (n, 0o100000 | perm, d, (0, 0)),
            Entry::CharDev(n, maj, min) => (n, 0o020600, &[], (*maj, *min)),
        };
        header(&mut out, ino as u32 + 1, mode, data.len(), rdev, name);
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    // The kernel reads initramfs in 512-byte blocks.
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
    out
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so the same agent gives the same archive
        size as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        let _ = write!(out, "{f:08x}");
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
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
