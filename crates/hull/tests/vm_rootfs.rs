//! A VM container's root filesystem: an erofs image of the bundle's rootfs, cached by
//! the tree's identity (a second run of the same tree boots from the same image, a
//! changed file makes a new one), writable in the sandbox, and what the container
//! writes stays there (discarded with the VM). Boots real VMs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{assert_clean, Bundle, Container};

fn images(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "erofs"));
    v.sort();
    v
}

fn run_vm(c: &Container, config: &Path) -> common::Out {
    let args = ["--isolation", "vm", "run", "--bundle", &c.dir(), &c.id];
    c.hull_with(&args, |cmd| {
        cmd.env("HULL_CONFIG", config);
    })
}

#[test]
fn the_image_is_cached_by_the_tree_and_the_containers_writes_stay_in_the_sandbox() {
    hull_only!();
    let script = "cat /etc/motd; cat /scratch 2>/dev/null; echo written > /scratch";
    let c = Bundle::new(&["sh", "-c", script])
        .config(|v| v["root"]["readonly"] = false.into())
        .container();
    let cache = c.bundle.dir.join("cache");
    let config = c.bundle.dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[vm]\nrootfs_cache = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let motd = c.bundle.dir.join("rootfs/etc/motd");
    std::fs::write(&motd, "first\n").unwrap();

    let out = run_vm(&c, &config).ok("first run");
    assert_eq!(out.stdout, "first\n");
    let first = images(&cache);
    assert_eq!(first.len(), 1, "one image made: {first:?}");
    let inode = std::fs::metadata(&first[0]).unwrap().ino();

    // The same tree: the same image, and the first run's write is gone.
    let out = run_vm(&c, &config).ok("second run");
    assert_eq!(
        out.stdout, "first\n",
        "the rootfs write of a deleted sandbox"
    );
    assert_eq!(images(&cache), first, "no second image for the same tree");
    assert_eq!(std::fs::metadata(&first[0]).unwrap().ino(), inode);
    assert!(
        !c.bundle.dir.join("rootfs/scratch").exists(),
        "the container's write reached the host's rootfs"
    );

    // A changed file: a new image, with the new content.
    std::fs::write(&motd, "second\n").unwrap();
    let out = run_vm(&c, &config).ok("run after a change");
    assert_eq!(out.stdout, "second\n");
    assert_eq!(images(&cache).len(), 2);
    assert_clean(&c);
}

/// A bundle whose rootfs is an overlay, as engines give it: each lower layer boots as
/// an erofs disk of its own (keyed by the layer, not walked again), stacked in the
/// guest; a whiteout in an upper layer still deletes; an upper with files becomes one
/// more layer, imaged by its tree.
#[test]
fn an_overlay_rootfs_boots_as_one_disk_per_layer() {
    hull_only!();
    let script = "cat /etc/layered; test -e /etc/motd && echo motd || echo no-motd; \
                  cat /etc/upper 2>/dev/null; grep ' / ' /proc/mounts";
    let c = Bundle::new(&["sh", "-c", script])
        .config(|v| v["root"]["readonly"] = false.into())
        .container();
    let dir = &c.bundle.dir;
    let cache = dir.join("cache");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[vm]\nrootfs_cache = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let rootfs = dir.join("rootfs");
    std::fs::write(rootfs.join("etc/motd"), "base\n").unwrap();
    let (base, top, upper, work) = (
        dir.join("base"),
        dir.join("top"),
        dir.join("upper"),
        dir.join("work"),
    );
    std::fs::rename(&rootfs, &base).unwrap();
    for d in [&rootfs, &top.join("etc"), &upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(top.join("etc/layered"), "top layer\n").unwrap();
    let whiteout = std::ffi::CString::new(top.join("etc/motd").to_str().unwrap()).unwrap();
    // SAFETY: mknod with a NUL-terminated path; a 0/0 character device is overlayfs's
    // whiteout.
    assert_eq!(
        unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o644, 0) },
        0
    );
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        top.display(),
        base.display(),
        upper.display(),
        work.display()
    );
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount the overlay");
    let unmount = || {
        let _ = std::process::Command::new("umount").arg(&rootfs).status();
    };

    let out = run_vm(&c, &config);
    let lowers = |stdout: &str| {
        let root = stdout.lines().last().unwrap_or_default().to_string();
        root.split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map_or(0, |l| l.split(':').count())
    };
    let first = out.stdout.clone();
    let made = images(&cache);
    // The upper gets a file: one layer more, the two lower layers' images reused.
    std::fs::write(rootfs.join("etc/upper"), "upper\n").unwrap();
    let out2 = run_vm(&c, &config);
    unmount();
    out.ok("first run");
    let out2 = out2.ok("second run");
    assert!(first.starts_with("top layer\nno-motd\n"), "{first}");
    assert_eq!(lowers(&first), 2, "two layers, two disks: {first}");
    assert_eq!(made.len(), 2, "one image per layer: {made:?}");
    assert!(
        out2.stdout.starts_with("top layer\nno-motd\nupper\n"),
        "{}",
        out2.stdout
    );
    assert_eq!(lowers(&out2.stdout), 3, "{}", out2.stdout);
    let now = images(&cache);
    assert_eq!(
        now.len(),
        3,
        "the upper's image beside the two layers': {now:?}"
    );
    assert!(made.iter().all(|m| now.contains(m)));
    assert_clean(&c);
}
