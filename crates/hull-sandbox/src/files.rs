//! Files hull keeps between runs: written whole or not at all (a temporary file renamed
//! into place, so a reader never sees half of one), and the values measured once per
//! host boot (the TSC rate, the KVM verdict), kept as one `KEY VALUE` line whose key
//! starts with the boot id, so a reboot discards them.

use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` through a temporary file of a name no other process picks.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    replace(path, data)
}

/// Writes `data` beside `path` and renames it there, so a reader sees the old content
/// or the new, never a file half written; `path`'s directory must exist (nothing is
/// made again where it went).
pub fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{:016x}", crate::random_u64()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a value kept for this host boot: the boot id, then `identity` (what
/// else the value depends on). None where the boot id cannot be read.
pub fn boot_key(identity: &str) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(format!("{}{identity}", boot.trim()))
}

/// An exclusive flock on `<path>.lock`, held until the file is dropped; None where it
/// cannot be had (a directory this user cannot write): then the caller goes unlocked,
/// which only costs a measurement made twice.
pub fn lock_beside(path: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok()?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))
        .ok()?;
    // SAFETY: flock on an fd this function owns; it blocks until the holder drops it.
    (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(file)
}

/// The value kept in `path` under `key`, if that is the key it was kept under.
pub fn kept(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().split_once(' ') {
        Some((k, v)) if k == key => Some(v.to_string()),
        _ => None,
    }
}

/// Keeps `value` under `key` in `path`; a failure only costs a measurement next time.
pub fn keep(path: &Path, key: &str, value: &str) {
    let _ = write_atomic(path, format!("{key} {value}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_kept_under_its_key_only() {
        let path = std::env::temp_dir().join(format!("hull-kept-{:016x}", crate::random_u64()));
        assert_eq!(kept(&path, "k1"), None);
        keep(&path, "k1", "42");
        assert_eq!(kept(&path, "k1").as_deref(), Some("42"));
        assert_eq!(kept(&path, "k2"), None);
        let _ = std::fs::remove_file(&path);
    }
}
