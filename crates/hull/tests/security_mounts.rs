//! Regression tests for runc's escapes through the mounts the runtime makes for the
//! container: masks bound from a /dev/null that is a symlink (CVE-2025-31133), the
//! console bound onto a /dev/console that is a symlink (CVE-2025-52565), and a
//! writable cgroupfs (CVE-2023-25809, its root-mode half). Each test does the attack.

mod common;

use common::console::receive_fd;
use common::{assert_clean, Bundle};
use serde_json::json;
use std::os::unix::net::{UnixListener, UnixStream};

/// The config without its /dev tmpfs, so /dev is the image's own directory.
fn without_dev_tmpfs(c: &mut serde_json::Value) {
    c["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/dev");
}

#[test]
fn masks_are_not_bound_from_a_dev_null_symlink() {
    // CVE-2025-31133: the container's /dev/null is a symlink (here to a host file the
    // container can reach; in the attack, /proc/sys/kernel/core_pattern), so a masked
    // file would become a writable bind of its target.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /proc/keys; echo pwned > /proc/keys; echo wrote=$?",
    ])
    .with_share();
    let victim = b.dir.join("share/victim");
    std::fs::write(&victim, "host-file\n").unwrap();
    let dev = b.dir.join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::os::unix::fs::symlink("/share/victim", dev.join("null")).unwrap();
    let dev = dev.display().to_string();
    let c = b
        .config(|c| {
            without_dev_tmpfs(c);
            // Bound /dev: the runtime creates no device nodes, the image's stay.
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .insert(1, json!({"destination": "/dev", "type": "bind", "source": dev, "options": ["rbind", "rw"]}));
        })
        .container();
    let out = c.run();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "host-file\n",
        "a write to the masked /proc/keys reached the symlink's target"
    );
    if common::is_hull() {
        out.assert_error("/dev/null a symlink", &["/dev/null"]);
    } else if out.code == 0 {
        assert!(
            !out.stdout.contains("host-file"),
            "mask was the victim: {out:?}"
        );
    }
    assert_clean(&c);

    // A regular file there is refused too: masks would show its contents.
    let b = Bundle::new(&["cat", "/proc/keys"]);
    let dev = b.dir.join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::fs::write(dev.join("null"), "not-null\n").unwrap();
    let dev = dev.display().to_string();
    let c = b
        .config(|c| {
            without_dev_tmpfs(c);
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .insert(1, json!({"destination": "/dev", "type": "bind", "source": dev, "options": ["rbind", "rw"]}));
        })
        .container();
    let out = c.run();
    if common::is_hull() {
        out.assert_error("/dev/null a regular file", &["/dev/null"]);
    }
    assert!(
        !out.stdout.contains("not-null"),
        "mask showed the file: {out:?}"
    );
    assert_clean(&c);
}

#[test]
fn console_is_not_mounted_through_a_dev_console_symlink() {
    // CVE-2025-52565: /dev/console in the image is a symlink; binding the terminal onto
    // it must not land on the symlink's target (a host file reachable from the root).
    let b = Bundle::new(&["sh", "-c", "cat /share/victim"])
        .with_share()
        .config(|c| {
            c["process"]["terminal"] = json!(true);
            c["root"]["readonly"] = json!(false);
            without_dev_tmpfs(c);
        });
    let victim = b.dir.join("share/victim");
    std::fs::write(&victim, "host-file\n").unwrap();
    std::os::unix::fs::symlink("/share/victim", b.rootfs.join("dev/console")).unwrap();
    let c = b.container();
    let sock = c.bundle.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let accept = std::thread::spawn(move || receive_fd(&listener));
    let out = c.create_with(&["--console-socket", &sock.display().to_string()]);
    let share = c.bundle.dir.join("share");
    assert_eq!(
        common::mounts_under(&share),
        Vec::<String>::new(),
        "the terminal was mounted onto the symlink's target"
    );
    if common::is_hull() {
        assert_ne!(out.code, 0, "expected create to refuse: {out:?}");
        assert!(
            out.stderr.contains("/dev/console") && out.stderr.contains("symlink"),
            "expected the error to name /dev/console and the symlink: {out:?}"
        );
        // Unblocks the accepting thread; what it gets is of no interest.
        drop(UnixStream::connect(&sock));
        let _ = accept.join();
    } else if out.code == 0 {
        let _ = accept.join();
        // The mount is in the container's namespace: look there.
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid())).unwrap();
        c.delete(true).ok("delete --force");
        assert!(
            !info.contains(" /share/victim "),
            "the terminal was mounted onto /share/victim: {info}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host-file\n");
    assert_clean(&c);
}

#[test]
fn cgroupfs_is_read_only_and_holds_only_the_containers_cgroup() {
    // CVE-2023-25809 (rootless runc mounted /sys/fs/cgroup writable when cgroups were not
    // delegated). Its root-mode analogue: with the cgroup mount "ro", nothing the
    // container does changes a cgroup file, makes a cgroup, or moves a process, its own
    // cgroup's or any parent's. The rootless half is in rootless.rs
    // (cve_2023_25809_sys_fs_cgroup_is_not_writable_rootless).
    let script = "for f in memory/cgroup.procs memory/memory.limit_in_bytes pids/pids.max \
                  memory/../cgroup.procs memory/../../cgroup.procs; do \
                    { echo 1 > /sys/fs/cgroup/$f; } 2>/dev/null && echo wrote-$f; done; \
                  mkdir /sys/fs/cgroup/memory/x 2>/dev/null && echo made-cgroup; \
                  ls /sys/fs/cgroup/memory/ | grep -c '^hull-test' ; echo end";
    let c = Bundle::new(&["sh", "-c", script]).container();
    let out = c.run().ok("attempts to write the cgroupfs");
    assert_eq!(
        out.stdout, "0\nend\n",
        "expected every write and mkdir in the cgroupfs to fail, and no other cgroup visible"
    );
    assert!(!c.cgroup_dir("memory").join("x").exists());
    assert_clean(&c);

    // With "rw" asked for in config.json, root may write: the promise is read-only by
    // default, not a refusal of what the config says.
    let c = Bundle::new(&["sh", "-c", "mkdir /sys/fs/cgroup/memory/x && echo made"])
        .config(|c| {
            let m = c["mounts"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|m| m["type"] == "cgroup")
                .unwrap();
            m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
        })
        .container();
    let out = c.run().ok("mkdir in a read-write cgroupfs");
    assert_eq!(out.stdout, "made\n");
    let _ = std::fs::remove_dir(c.cgroup_dir("memory").join("x"));
    assert_clean(&c);
}
