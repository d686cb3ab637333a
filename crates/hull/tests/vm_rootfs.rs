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
