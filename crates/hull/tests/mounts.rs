//! Mounts: tmpfs options, bind mounts, read-only root, standard filesystems, masked
//! and read-only paths, rootfs propagation.

mod common;

use common::{add_bind, add_tmpfs, assert_clean, Bundle};
use serde_json::json;

/// Runs `script`; returns (exit code, stdout, stderr) and checks cleanup.
fn run_sh(script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> common::Out {
    let c = Bundle::new(&["sh", "-c", script]).config(edit).container();
    let out = c.run();
    assert_clean(&c);
    out
}

/// The /proc/mounts line inside for mount point `dst`, from `out`.
fn mount_line<'a>(out: &'a str, dst: &str) -> Option<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(dst))
}

#[test]
fn tmpfs_with_size_and_mode() {
    let out = run_sh(
        "cat /proc/mounts; stat -c %a /mnt/scratch; echo hi > /mnt/scratch/f && cat /mnt/scratch/f",
        |c| add_tmpfs(c, "/mnt/scratch", &["size=1m", "mode=1770"]),
    )
    .ok("tmpfs");
    let line = mount_line(&out.stdout, "/mnt/scratch").expect("tmpfs mounted at /mnt/scratch");
    assert!(
        line.starts_with("tmpfs /mnt/scratch tmpfs "),
        "expected a tmpfs: {line}"
    );
    assert!(line.contains("size=1024k"), "expected size=1024k in {line}");
    assert!(
        out.stdout.ends_with("1770\nhi\n"),
        "expected mode 1770 and a writable tmpfs: {:?}",
        out.stdout
    );
}

#[test]
fn bind_mount_of_host_dir_read_only() {
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /data/hello; touch /data/new 2>&1; echo rc=$?; cat /proc/mounts",
    ]);
    let host_dir = b.dir.join("hostdata");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "from host\n").unwrap();
    let src = host_dir.display().to_string();
    let c = b
        .config(|c| add_bind(c, &src, "/data", &["ro"]))
        .container();

    let out = c.run().ok("run with a ro bind mount");
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("from host"),
        "expected the host file inside: {out:?}"
    );
    let err = lines.next().unwrap_or_default();
    assert!(
        err.contains("Read-only file system"),
        "expected touch to fail with EROFS: {err:?}"
    );
    assert_eq!(lines.next(), Some("rc=1"), "expected touch to fail");
    let line = mount_line(&out.stdout, "/data").expect("/data is a mount");
    assert!(
        line.split_whitespace().nth(3).unwrap().starts_with("ro"),
        "expected /data ro: {line}"
    );
    assert!(
        !host_dir.join("new").exists(),
        "expected nothing written to the host dir"
    );
    assert_clean(&c);
}

#[test]
fn readonly_rootfs_refuses_writes() {
    let out = run_sh("touch /x 2>&1; echo rc=$?", |_| {}).ok("run");
    assert!(
        out.stdout.contains("Read-only file system"),
        "expected EROFS: {:?}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("rc=1\n"),
        "expected touch /x to fail: {:?}",
        out.stdout
    );
}

#[test]
fn writable_rootfs_when_not_readonly() {
    let c = Bundle::new(&["sh", "-c", "echo written > /x"])
        .config(|c| c["root"]["readonly"] = json!(false))
        .container();
    c.run().ok("write to a writable rootfs");
    let host = std::fs::read_to_string(c.bundle.rootfs.join("x")).unwrap_or_default();
    assert_eq!(
        host, "written\n",
        "expected /x to land in the bundle's rootfs"
    );
    assert_clean(&c);
}

#[test]
fn standard_filesystems_are_mounted() {
    let out = run_sh("cat /proc/mounts", |_| {}).ok("cat /proc/mounts");
    for (dst, fstype) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
    ] {
        let line = mount_line(&out.stdout, dst)
            .unwrap_or_else(|| panic!("{dst} not mounted: {}", out.stdout));
        assert_eq!(
            line.split_whitespace().nth(2),
            Some(fstype),
            "expected {fstype} at {dst}: {line}"
        );
    }
    let sys = mount_line(&out.stdout, "/sys").unwrap();
    assert!(
        sys.split_whitespace().nth(3).unwrap().starts_with("ro"),
        "expected /sys ro: {sys}"
    );
    let root = mount_line(&out.stdout, "/").expect("a root mount");
    assert!(
        root.split_whitespace().nth(3).unwrap().starts_with("ro"),
        "expected / ro: {root}"
    );
}

#[test]
fn cgroup_mount_shows_the_containers_own_cgroup() {
    let out = run_sh("ls /sys/fs/cgroup; cat /sys/fs/cgroup/pids/pids.max", |c| {
        c["linux"]["resources"]["pids"] = json!({"limit": 77});
    })
    .ok("read cgroups inside");
    for ctrl in ["cpu", "cpuacct", "memory", "pids", "devices", "freezer"] {
        assert!(
            out.stdout.lines().any(|l| l == ctrl),
            "expected {ctrl} under /sys/fs/cgroup: {:?}",
            out.stdout
        );
    }
    assert!(
        out.stdout.ends_with("77\n"),
        "expected the container's pids.max 77: {:?}",
        out.stdout
    );
}

#[test]
fn masked_paths_read_empty() {
    // Only the masked paths this host's kernel has (a VM kernel may lack /proc/kcore).
    let files: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ]
    .into_iter()
    .filter(|p| std::path::Path::new(p).exists())
    .collect();
    assert!(
        !files.is_empty(),
        "expected some maskable /proc files on the host"
    );
    let mut script: String = files.iter().map(|f| format!("wc -c < {f};")).collect();
    script.push_str("ls -A /sys/firmware | wc -l; echo end");
    let out = run_sh(&script, |_| {}).ok("read masked paths");
    let want = "0\n".repeat(files.len() + 1) + "end\n";
    assert_eq!(
        out.stdout, want,
        "expected {files:?} and /sys/firmware to read empty"
    );
}

#[test]
fn readonly_paths_refuse_writes() {
    let out = run_sh(
        "{ echo x > /proc/sys/kernel/domainname; } 2>&1; echo rc=$?; grep ' /proc/sys ' /proc/mounts",
        |c| {
            // Even with CAP_SYS_ADMIN, the read-only mount must refuse the write.
            for set in ["bounding", "effective", "permitted"] {
                let caps = c["process"]["capabilities"][set].as_array_mut().unwrap();
                caps.push(json!("CAP_SYS_ADMIN"));
            }
        },
    )
    .ok("write to a read-only path");
    assert!(
        out.stdout.contains("Read-only file system"),
        "expected EROFS: {:?}",
        out.stdout
    );
    assert!(
        out.stdout.contains("rc=1"),
        "expected writing /proc/sys to fail: {:?}",
        out.stdout
    );
    let line = mount_line(&out.stdout, "/proc/sys").expect("/proc/sys is a mount");
    assert!(
        line.split_whitespace().nth(3).unwrap().starts_with("ro"),
        "expected /proc/sys ro: {line}"
    );
}

#[test]
fn mount_destination_is_created_nested() {
    let out = run_sh("grep ' /a/b/c ' /proc/mounts", |c| {
        add_tmpfs(c, "/a/b/c", &[])
    })
    .ok("nested mount");
    assert!(
        out.stdout.starts_with("tmpfs /a/b/c tmpfs"),
        "expected a tmpfs at /a/b/c: {:?}",
        out.stdout
    );
}

#[test]
fn bind_mount_of_a_single_file() {
    let b = Bundle::new(&["cat", "/etc/motd"]);
    let file = b.dir.join("motd");
    std::fs::write(&file, "hello file\n").unwrap();
    let src = file.display().to_string();
    let c = b
        .config(|c| add_bind(c, &src, "/etc/motd", &["ro"]))
        .container();
    let out = c.run().ok("bind a file");
    assert_eq!(
        out.stdout, "hello file\n",
        "expected the host file's content at /etc/motd"
    );
    assert_clean(&c);
}

#[test]
fn rootfs_propagation_private_and_invalid() {
    let out = run_sh("awk '$5 == \"/\"' /proc/self/mountinfo", |c| {
        c["linux"]["rootfsPropagation"] = json!("private");
    })
    .ok("rootfsPropagation private");
    assert!(
        !out.stdout.contains("shared:"),
        "expected a private root: {:?}",
        out.stdout
    );
    assert!(!out.stdout.is_empty(), "expected a root mount line");

    let out = run_sh("true", |c| c["linux"]["rootfsPropagation"] = json!("bogus"));
    out.assert_error(
        "rootfsPropagation bogus",
        &["rootfsPropagation", "propagation"],
    );
}
