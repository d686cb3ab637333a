//! A container's rootfs as erofs images, one per overlayfs layer where the engine gave
//! it an overlay (containerd's overlayfs snapshotter, docker's overlay2, podman's
//! overlay driver): the guest stacks them again under its own tmpfs upper.
//!
//! A committed layer of an engine's layer store is immutable (overlayfs's own rule while
//! an overlay uses it, and the engines' after), so its image is keyed by the
//! directory's identity (path, device, inode, birth and change times of its root) and
//! never walked again (any other lower directory is keyed by its tree):
//! the repeated cost of a layer is a few stat calls, and images that share a base layer
//! share its erofs image, in the cache and in a pod's VM. The upper layer is written by
//! whoever holds the mount: it is keyed by its whole tree (image.rs), and left out
//! while empty, as it is when a snapshotter has just made it. A rootfs that is not an
//! overlay, or one whose layers cannot be named (relative lowerdirs, data-only
//! layers, more than [`MAX_LAYERS`]) or mean something only with an overlay feature
//! (metacopy, redirect_dir, userxattr), is imaged whole as before.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use hull_proto::{Layer, Rootfs};

use crate::error::{io_err, Result};
use crate::hypervisor::Disk;
use crate::image;

/// The most layers attached one by one; deeper images are imaged whole (docker caps
/// an image at 125 layers; a VM's devices and a packet's fds are finite).
pub const MAX_LAYERS: usize = 32;

/// One layer's image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerImage {
    pub path: PathBuf,
    /// Found in the cache rather than made now.
    pub hit: bool,
}

/// The layers of an overlay mount, as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    pub upper: Option<PathBuf>,
    /// Top first.
    pub lower: Vec<PathBuf>,
}

/// The rootfs's images, top first: its layers', or one of the whole tree.
pub fn rootfs_images(rootfs: &Path, cache: &Path) -> Result<Vec<LayerImage>> {
    let Some(layers) = overlay_layers(rootfs)? else {
        return whole(rootfs, cache);
    };
    if layers.lower.len() + usize::from(layers.upper.is_some()) > MAX_LAYERS {
        return whole(rootfs, cache);
    }
    let mut out = Vec::with_capacity(layers.lower.len() + 1);
    if let Some(upper) = &layers.upper {
        let mut entries = std::fs::read_dir(upper).map_err(io_err("cannot read", upper))?;
        if entries.next().is_some() {
            let (path, hit) = image::cached_erofs(upper, cache)?;
            out.push(LayerImage { path, hit });
        }
    }
    for lower in &layers.lower {
        let key = if in_a_layer_store(lower) {
            layer_key(lower)?
        } else {
            image::tree_key(lower)?
        };
        let (path, hit) = image::cached(lower, cache, &key)?;
        out.push(LayerImage { path, hit });
    }
    // Once all are made: none of this rootfs's images may go to make room for another.
    if out.iter().any(|i| !i.hit) {
        let keep: Vec<PathBuf> = out.iter().map(|i| i.path.clone()).collect();
        image::evict(cache, &keep);
    }
    Ok(out)
}

/// A committed layer of an engine's layer store, which no one writes once committed:
/// containerd's overlayfs snapshotter (`.../snapshots/<n>/fs`), docker's overlay2 and
/// containers/storage's overlay driver (`.../overlay*/<id>/diff`). Any other lower
/// directory (a hand-made overlay over a directory that changes between mounts) is
/// keyed by its whole tree.
fn in_a_layer_store(dir: &Path) -> bool {
    let names: Vec<String> = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .components()
        .rev()
        .take(3)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [last, _, store] => {
            (last == "fs" && store == "snapshots")
                || (last == "diff" && store.starts_with("overlay"))
        }
        _ => false,
    }
}

/// The rootfs's disks are `rootfs0`, `rootfs1`, ... (top layer first).
const ROOTFS_SERIAL: &str = "rootfs";

/// The rootfs's layers as read-only disks, while they fit in the VM's `free` device
/// slots; one image of the whole tree otherwise.
pub fn boot_disks(rootfs: &Path, cache: &Path, free: usize) -> Result<(Vec<Disk>, Rootfs)> {
    let t = std::time::Instant::now();
    let mut images = rootfs_images(rootfs, cache)?;
    if images.len() > free.max(1) {
        let (path, hit) = crate::image::cached_erofs(rootfs, cache)?;
        images = vec![LayerImage { path, hit }];
    }
    tracing::debug!(
        "rootfs: {} images ({} made) in {} us",
        images.len(),
        images.iter().filter(|i| !i.hit).count(),
        t.elapsed().as_micros()
    );
    let disks: Vec<Disk> = images
        .into_iter()
        .enumerate()
        .map(|(i, image)| Disk {
            path: image.path,
            readonly: true,
            serial: format!("{ROOTFS_SERIAL}{i}"),
        })
        .collect();
    let layers = disks
        .iter()
        .map(|d| Layer::Disk {
            serial: d.serial.clone(),
        })
        .collect();
    let rootfs = Rootfs {
        layers,
        fstype: "erofs".into(),
    };
    Ok((disks, rootfs))
}

fn whole(rootfs: &Path, cache: &Path) -> Result<Vec<LayerImage>> {
    let (path, hit) = image::cached_erofs(rootfs, cache)?;
    Ok(vec![LayerImage { path, hit }])
}

/// An immutable layer's identity: where it is and which directory it is, so a layer
/// removed and another made in its place (same path, maybe the same inode number)
/// gets a new key.
pub fn layer_key(dir: &Path) -> Result<String> {
    let dir = &dir.canonicalize().map_err(io_err("cannot resolve", dir))?;
    let m = std::fs::metadata(dir).map_err(io_err("cannot stat", dir))?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(b"hull layer erofs 1\0");
    h.update(dir.as_os_str().as_bytes());
    h.update([0]);
    for n in [
        m.dev(),
        m.ino(),
        m.ctime() as u64,
        m.ctime_nsec() as u64,
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        h.update(n.to_le_bytes());
    }
    h.update(born.to_le_bytes());
    Ok(format!("layer-{}", crate::files::hex(&h.finalize())))
}

/// The layers of the overlay mounted on `rootfs` (the topmost mount there), if it is one
/// whose layers are all absolute paths of directories.
pub fn overlay_layers(rootfs: &Path) -> Result<Option<OverlayLayers>> {
    let target = rootfs
        .canonicalize()
        .map_err(io_err("cannot resolve", rootfs))?;
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    let options = text
        .lines()
        .rev()
        .filter_map(parse_mountinfo_line)
        .find(|m| Path::new(&m.mount_point) == target);
    // A bind of a directory inside an overlay is not the overlay's whole tree.
    let Some(m) = options.filter(|m| m.fstype == "overlay" && m.root == "/") else {
        return Ok(None);
    };
    Ok(layers_from_options(&m.options))
}

struct MountLine {
    /// The mount's root within its filesystem: "/" for the overlay itself, a path for
    /// a bind of a directory in it.
    root: String,
    mount_point: String,
    fstype: String,
    options: String,
}

/// mountinfo(5): `id parent maj:min root point opts [optional...] - fstype source super`.
fn parse_mountinfo_line(line: &str) -> Option<MountLine> {
    let (left, right) = line.split_once(" - ")?;
    let root = unescape(left.split(' ').nth(3)?);
    let mount_point = unescape(left.split(' ').nth(4)?);
    let mut r = right.splitn(3, ' ');
    let fstype = r.next()?.to_string();
    let _source = r.next()?;
    Some(MountLine {
        root,
        mount_point,
        fstype,
        options: r.next()?.to_string(),
    })
}

/// The kernel escapes space, tab, newline, backslash (and in options ',', ':' and '=')
/// as a backslash and three octal digits.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The layers named by overlay's mount options, or None where one cannot be used as is.
pub fn layers_from_options(options: &str) -> Option<OverlayLayers> {
    let mut upper = None;
    let mut lower = None;
    for opt in options.split(',') {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key {
            "lowerdir" => {
                // An empty item is the `::` that marks data-only layers.
                let dirs: Vec<PathBuf> = value.split(':').map(|d| unescape(d).into()).collect();
                if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                    return None;
                }
                lower = Some(dirs);
            }
            "upperdir" => upper = Some(PathBuf::from(unescape(value))),
            // Lower layers added one by one: their paths are not shown as one list.
            "lowerdir+" | "datadir+" => return None,
            // Layers whose meaning needs the same overlay features in the guest: files
            // whose data is in another layer, renamed directories, and the user.*
            // xattrs of a rootless overlay. Imaged whole instead.
            "metacopy" | "redirect_dir" if value == "on" => return None,
            "userxattr" => return None,
            _ => {}
        }
    }
    let lower = lower?;
    let usable = |d: &PathBuf| d.is_absolute() && d.is_dir();
    if !lower.iter().all(usable) || !upper.iter().all(usable) {
        return None;
    }
    Some(OverlayLayers { upper, lower })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_overlay_options_name_upper_and_lowers_top_first() {
        let d = std::env::temp_dir().join(format!("hull-layers-{}", std::process::id()));
        for l in ["1", "2", "3 x"] {
            std::fs::create_dir_all(d.join(l)).unwrap();
        }
        let opts = format!(
            "rw,lowerdir={0}/2:{0}/1,upperdir={0}/3\\040x,workdir={0}/w,index=off",
            d.display()
        );
        let l = layers_from_options(&opts).unwrap();
        assert_eq!(l.lower, vec![d.join("2"), d.join("1")]);
        assert_eq!(l.upper, Some(d.join("3 x")));
        let data_only = format!("lowerdir={0}/2::{0}/1", d.display());
        assert_eq!(layers_from_options(&data_only), None);
        assert_eq!(
            layers_from_options("lowerdir=l/ABC:l/DEF"),
            None,
            "relative"
        );
        assert_eq!(layers_from_options("rw,relatime"), None);
        for feature in ["metacopy=on", "redirect_dir=on", "userxattr"] {
            let with = format!("lowerdir={0}/2:{0}/1,{feature}", d.display());
            assert_eq!(layers_from_options(&with), None, "{feature}");
        }
        let off = format!(
            "lowerdir={0}/2:{0}/1,metacopy=off,redirect_dir=nofollow",
            d.display()
        );
        assert!(layers_from_options(&off).is_some());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mountinfo_lines_give_point_type_and_super_options() {
        let line =
            "36 35 0:30 / /run/a\\040b rw,relatime shared:1 - overlay overlay rw,lowerdir=/x";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.root, "/");
        assert_eq!(m.mount_point, "/run/a b");
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.options, "rw,lowerdir=/x");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn only_an_engines_committed_layers_are_keyed_by_identity() {
        for (path, store) in [
            (
                "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs",
                true,
            ),
            ("/var/lib/docker/overlay2/0123abcd/diff", true),
            ("/var/lib/containers/storage/overlay/0123abcd/diff", true),
            ("/srv/base", false),
            ("/var/lib/docker/overlay2/0123abcd/merged", false),
        ] {
            assert_eq!(in_a_layer_store(Path::new(path)), store, "{path}");
        }
    }

    #[test]
    fn a_layer_made_again_in_the_same_place_gets_a_new_key() {
        let d = std::env::temp_dir().join(format!("hull-layer-key-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let k1 = layer_key(&d).unwrap();
        assert_eq!(k1, layer_key(&d).unwrap());
        std::fs::remove_dir(&d).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::create_dir_all(&d).unwrap();
        assert_ne!(k1, layer_key(&d).unwrap());
        std::fs::remove_dir(&d).unwrap();
    }
}
