//! Container root filesystems as disk images: an erofs image of the bundle's rootfs
//! (read-only and compact; the agent lays a tmpfs overlay on top, which `delete`
//! discards with the VM).
//!
//! Images are cached by the rootfs tree's identity: every entry's path, type, mode,
//! owner, size, inode, mtime and ctime (and a symlink's target). Any change to a file's
//! content or metadata moves its ctime, which no one but root can set back (by setting
//! the clock), so a tree with the same key has the same content; and no file's content
//! is read twice. Two bundles share an image only where they share the files themselves
//! (an overlay's lower layers: the same image's containers under docker's overlay2);
//! copies (podman's vfs) do not. A VMM opens the cached file read-only, so an eviction
//! under a running sandbox only unlinks it.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{io_err, Result, SandboxError};

/// The cache's size bound; the least recently used images go first beyond it.
pub const CACHE_BYTES: u64 = 4 << 30;
/// Images unused this long go whatever the cache's size.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn erofs_from_dir(dir: &Path, image: &Path) -> Result<()> {
    erofs_from_dir_with(dir, image, &[])
}

/// `mkfs.erofs` with `options` before the image and the directory.
pub fn erofs_from_dir_with(dir: &Path, image: &Path, options: &[&str]) -> Result<()> {
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(options)
        .arg(image)
        .arg(dir)
        .output()
        .map_err(|e| {
            SandboxError::Tool(format!(
                "cannot run mkfs.erofs: {e} (apt-get install erofs-utils)"
            ))
        })?;
    if !out.status.success() {
        return Err(SandboxError::Tool(format!(
            "mkfs.erofs {} from {} failed: {}",
            image.display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The image of `dir` in `cache`, made on a miss; whether it was there.
pub fn cached_erofs(dir: &Path, cache: &Path) -> Result<(PathBuf, bool)> {
    let (image, hit) = cached(dir, cache, &tree_key(dir)?)?;
    if !hit {
        evict(cache, std::slice::from_ref(&image));
    }
    Ok((image, hit))
}

/// The image of `dir` under `key` in `cache`, made on a miss; whether it was there.
/// The caller evicts (`evict`) once it has every image it needs, keeping those.
pub fn cached(dir: &Path, cache: &Path, key: &str) -> Result<(PathBuf, bool)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache)
        .map_err(io_err("cannot create the rootfs image cache", cache))?;
    let image = cache.join(format!("{key}.erofs"));
    if let Ok(f) = std::fs::File::options().write(true).open(&image) {
        // Recently used: the last to be evicted.
        let _ = f.set_modified(SystemTime::now());
        return Ok((image, true));
    }
    let tmp = image.with_extension(format!("tmp.{:016x}", crate::random_u64()));
    let made = erofs_from_dir(dir, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &image).map_err(io_err("cannot rename into place", &tmp))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made?;
    Ok((image, false))
}

/// sha256 over the tree's entries in a fixed order, never following symlinks.
pub fn tree_key(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"hull rootfs erofs 1\0");
    let mut dirs = VecDeque::from([PathBuf::new()]);
    while let Some(rel) = dirs.pop_front() {
        let abs = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&abs)
            .map_err(io_err("cannot read", &abs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(io_err("cannot read", &abs))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let m = std::fs::symlink_metadata(&path).map_err(io_err("cannot stat", &path))?;
            h.update(rel.as_os_str().as_bytes());
            h.update([0]);
            for n in [
                u64::from(m.mode()),
                u64::from(m.uid()),
                u64::from(m.gid()),
                m.size(),
                m.ino(),
                m.rdev(),
                m.mtime() as u64,
                m.mtime_nsec() as u64,
                m.ctime() as u64,
                m.ctime_nsec() as u64,
            ] {
                h.update(n.to_le_bytes());
            }
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_err("cannot read", &path))?;
                h.update(target.as_os_str().as_bytes());
                h.update([0]);
            } else if m.is_dir() {
                dirs.push_back(rel);
            }
        }
    }
    Ok(crate::files::hex(&h.finalize()))
}

/// Drops images unused for CACHE_MAX_AGE, then the least recently used beyond
/// CACHE_BYTES, and what a killed `create` left half-made; never one of `keep`.
pub fn evict(cache: &Path, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let now = SystemTime::now();
    let mut images = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Ok(m) = e.metadata() else { continue };
        let age = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let is_image = path.extension().is_some_and(|x| x == "erofs");
        let stale_tmp = !is_image && age > Duration::from_secs(3600);
        let kept = keep.contains(&path);
        if !kept && (stale_tmp || (is_image && age > CACHE_MAX_AGE)) {
            let _ = std::fs::remove_file(&path);
        } else if is_image {
            images.push((age, m.len(), path));
        }
    }
    // Oldest first.
    images.sort_by_key(|i| std::cmp::Reverse(i.0));
    let mut total: u64 = images.iter().map(|i| i.1).sum();
    for (_, len, path) in images {
        if total <= CACHE_BYTES {
            break;
        }
        if !keep.contains(&path) && std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/motd"), "hello\n").unwrap();
        std::os::unix::fs::symlink("etc/motd", d.join("link")).unwrap();
        d
    }

    #[test]
    fn the_key_moves_with_any_change_and_only_then() {
        let d = tree("key");
        let k1 = tree_key(&d).unwrap();
        assert_eq!(k1, tree_key(&d).unwrap(), "stable");
        // Same size, same mtime set back: the ctime still moves.
        let before = std::fs::metadata(d.join("etc/motd"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(d.join("etc/motd"), "HELLO\n").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(d.join("etc/motd"))
            .unwrap();
        f.set_modified(before).unwrap();
        let k2 = tree_key(&d).unwrap();
        assert_ne!(k1, k2, "a rewrite with the old mtime");
        std::fs::remove_file(d.join("link")).unwrap();
        std::os::unix::fs::symlink("etc/other", d.join("link")).unwrap();
        assert_ne!(k2, tree_key(&d).unwrap(), "a symlink's target");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn eviction_keeps_the_newest_and_removes_stale_leftovers() {
        let d = tree("evict");
        let cache = d.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let old = cache.join("old.erofs");
        let keep = cache.join("keep.erofs");
        let tmp = cache.join("x.tmp.1");
        for p in [&old, &keep, &tmp] {
            std::fs::write(p, b"img").unwrap();
        }
        let long_ago = SystemTime::now() - CACHE_MAX_AGE - Duration::from_secs(60);
        for p in [&old, &tmp] {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(long_ago).unwrap();
        }
        evict(&cache, std::slice::from_ref(&keep));
        assert!(keep.exists());
        assert!(!old.exists(), "unused for a week");
        assert!(!tmp.exists(), "left by a killed create");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
