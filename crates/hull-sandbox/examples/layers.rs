//! bench/layers: what a rootfs image costs per layer (layers.rs) against one image of
//! the whole tree (image.rs), the first time and every time after. Three layers as an
//! engine's overlay stacks them (busybox at the bottom, a 48 MiB runtime of 1500 files,
//! a small app on top), then a second image that shares the bottom two.
//!
//! Usage: layers [ROUNDS]  (as root: it mounts an overlay; default 5 rounds)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_sandbox::{image, layers};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Deterministic incompressible bytes (xorshift), so erofs does real work.
fn fill(dir: &Path, files: usize, bytes: usize, seed: u64) {
    let mut x = seed | 1;
    for i in 0..files {
        let sub = dir.join(format!("lib/m{:02}", i % 40));
        std::fs::create_dir_all(&sub).unwrap();
        let len = bytes / files + (i * 97) % 4096;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(sub.join(format!("f{i}.py")), data).unwrap();
    }
}

fn busybox(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static (scripts/install-deps)");
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if !a.is_empty() && a != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
}

fn overlay(root: &Path, name: &str, lowers: &[&Path]) -> PathBuf {
    let (m, u, w) = (
        root.join(name),
        root.join(format!("{name}.up")),
        root.join(format!("{name}.work")),
    );
    for d in [&m, &u, &w] {
        std::fs::create_dir_all(d).unwrap();
    }
    let lower: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        u.display(),
        w.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&m)
        .status()
        .unwrap();
    assert!(st.success(), "mount the overlay");
    m
}

fn stats(dir: &Path) -> (usize, f64) {
    let (mut files, mut bytes) = (0, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            files += 1;
            bytes += m.len();
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (files, bytes as f64 / (1 << 20) as f64)
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed(), v)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let root = PathBuf::from(format!("/var/tmp/hull-bench-layers-{}", std::process::id()));
    // Laid out as an engine's layer store (containers/storage's overlay/<id>/diff),
    // whose committed layers hull keys by identity.
    let layer = |id: &str| root.join("overlay").join(id).join("diff");
    let (base, runtime, app, app2) = (layer("base"), layer("runtime"), layer("app"), layer("app2"));
    busybox(&base);
    fill(&runtime, 1500, 48 << 20, 7);
    fill(&app, 20, 1 << 20, 11);
    fill(&app2, 20, 1 << 20, 13);
    let merged = overlay(&root, "merged", &[&app, &runtime, &base]);
    let merged2 = overlay(&root, "merged2", &[&app2, &runtime, &base]);
    let cache = |n: usize| root.join(format!("cache{n}"));

    println!("bench/layers: {rounds} rounds; first = a cold cache (mkfs.erofs), repeated = a hit");
    println!(
        "{:<28}{:>7}{:>8}{:>11}{:>8}{:>14}",
        "layer", "files", "MiB", "first ms", "MiB/s", "repeated us"
    );
    for (name, dir) in [
        ("app (top)", &app),
        ("runtime", &runtime),
        ("busybox (bottom)", &base),
    ] {
        let (files, mib) = stats(dir);
        let mut first = vec![];
        let mut again = vec![];
        for r in 0..rounds {
            let c = cache(100 + r);
            first
                .push(time(|| image::cached(dir, &c, &layers::layer_key(dir).unwrap()).unwrap()).0);
            again
                .push(time(|| image::cached(dir, &c, &layers::layer_key(dir).unwrap()).unwrap()).0);
        }
        let f = median(first);
        println!(
            "{name:<28}{files:>7}{mib:>8.1}{:>11.1}{:>8.0}{:>14}",
            f.as_secs_f64() * 1e3,
            mib / f.as_secs_f64(),
            median(again).as_micros()
        );
    }
    let (mut lf, mut lr, mut wf, mut wr, mut lshare, mut wshare) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let (c1, c2) = (cache(200 + r), cache(300 + r));
        let (t, imgs) = time(|| layers::rootfs_images(&merged, &c1).unwrap());
        assert_eq!(imgs.len(), 3, "one image per layer");
        lf.push(t);
        lr.push(time(|| layers::rootfs_images(&merged, &c1).unwrap()).0);
        lshare.push(time(|| layers::rootfs_images(&merged2, &c1).unwrap()).0);
        wf.push(time(|| image::cached_erofs(&merged, &c2).unwrap()).0);
        wr.push(time(|| image::cached_erofs(&merged, &c2).unwrap()).0);
        wshare.push(time(|| image::cached_erofs(&merged2, &c2).unwrap()).0);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (lf, lr, wf, wr, ls, ws) = (
        median(lf),
        median(lr),
        median(wf),
        median(wr),
        median(lshare),
        median(wshare),
    );
    println!(
        "rootfs, per layer (3 images): first {:.1} ms, repeated {:.3} ms",
        ms(lf),
        ms(lr)
    );
    println!(
        "rootfs, whole tree (1 image): first {:.1} ms, repeated {:.3} ms",
        ms(wf),
        ms(wr)
    );
    println!(
        "second image sharing 2 of 3 layers, first: per layer {:.1} ms, whole tree {:.1} ms",
        ms(ls),
        ms(ws)
    );
    println!(
        "ratio whole/per-layer: first {:.2}, repeated {:.1}, second image {:.1}",
        ms(wf) / ms(lf),
        ms(wr) / ms(lr),
        ms(ws) / ms(ls)
    );
    for m in [&merged, &merged2] {
        let _ = Command::new("umount").arg(m).status();
    }
    std::fs::remove_dir_all(&root).unwrap();
}
