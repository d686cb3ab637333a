//! Regression tests for runc's escapes through /proc and through the runtime's own
//! process: a fake procfs over /proc (CVE-2019-16884, CVE-2023-27561), a mount racing
//! over a procfs file the runtime writes (CVE-2025-52881), the runtime's init open to
//! the container before it execs (CVE-2016-9962), and inheritable capabilities that
//! nobody asked for (CVE-2022-29162). Each test does the attack and asserts it fails.

mod common;

use common::{add_bind, add_tmpfs, assert_clean, Bundle};
use serde_json::json;
use std::time::Duration;

/// A directory tree that looks like /proc to a runtime that writes through paths: an
/// LSM attr file, sysctls, and a cap_last_cap that would keep every capability above
/// CAP_CHOWN in the bounding set if believed.
fn fake_proc(dir: &std::path::Path) -> String {
    let fake = dir.join("fakeproc");
    for (f, v) in [
        ("self/attr/exec", ""),
        ("self/attr/apparmor/exec", ""),
        ("self/oom_score_adj", "0"),
        ("self/setgroups", "deny"),
        ("sys/kernel/cap_last_cap", "0"),
        ("sys/kernel/hostname", "fake"),
        ("kcore", ""),
    ] {
        let p = fake.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, v).unwrap();
    }
    fake.display().to_string()
}

#[test]
fn fake_procfs_bound_over_proc_is_refused() {
    // CVE-2019-16884: a volume mounted at /proc after procfs, so that the runtime's
    // writes of the LSM label (and sysctls, masks) land in the volume.
    let b = Bundle::new(&["true"]);
    let fake = fake_proc(&b.dir);
    let c = b
        .config(|c| {
            add_bind(c, &fake, "/proc", &["rw"]);
            c["linux"]["sysctl"] = json!({"kernel.hostname": "real"});
            c["hostname"] = json!(null);
        })
        .container();
    let out = c.run();
    out.assert_error("a directory bound over /proc", &["proc"]);
    assert_eq!(
        std::fs::read_to_string(format!("{fake}/sys/kernel/hostname")).unwrap(),
        "fake",
        "the runtime wrote a sysctl into the fake /proc"
    );
    assert_clean(&c);
}

#[test]
fn tmpfs_over_proc_is_refused() {
    // CVE-2019-16884 with an empty tmpfs instead of a prepared tree.
    let c = Bundle::new(&["true"])
        .config(|c| add_tmpfs(c, "/proc", &["size=64k"]))
        .container();
    let out = c.run();
    out.assert_error("a tmpfs over /proc", &["proc"]);
    assert_clean(&c);
}

#[test]
fn fake_procfs_through_a_symlinked_destination_is_refused() {
    // CVE-2023-27561 (runc 1.0.0-rc95 to 1.1.4): the destination does not say /proc,
    // but an earlier volume holds a symlink that routes it there.
    let b = Bundle::new(&["true"]);
    let fake = fake_proc(&b.dir);
    let vol = b.dir.join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::os::unix::fs::symlink("/proc", vol.join("evil")).unwrap();
    let vol = vol.display().to_string();
    let c = b
        .config(|c| {
            add_bind(c, &vol, "/vol", &["rw"]);
            add_bind(c, &fake, "/vol/evil", &["rw"]);
        })
        .container();
    let out = c.run();
    out.assert_error("a volume bound over /proc through a symlink", &["proc"]);
    assert_clean(&c);
}

#[test]
fn mount_over_a_procfs_file_is_refused() {
    // A config mount onto a file under /proc that the runtime writes (a sysctl), so the
    // value lands in a host file instead. Only lxcfs's files may be covered.
    let b = Bundle::new(&["true"]);
    let decoy = b.dir.join("decoy");
    std::fs::write(&decoy, "untouched").unwrap();
    let decoy_s = decoy.display().to_string();
    let c = b
        .config(|c| {
            add_bind(c, &decoy_s, "/proc/sys/kernel/hostname", &["rw"]);
            c["linux"]["sysctl"] = json!({"kernel.hostname": "real"});
            c["hostname"] = json!(null);
        })
        .container();
    let out = c.run();
    out.assert_error("a bind over /proc/sys/kernel/hostname", &["proc"]);
    assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "untouched");
    assert_clean(&c);
}

#[test]
fn procfs_writes_ignore_mounts_racing_over_proc_files() {
    // CVE-2025-52881: after the runtime has checked the config's mounts, something in the
    // container's mount namespace mounts over the procfs files it is about to write and
    // read (a createContainer hook stands in for the racing process, deterministically).
    // The sysctl must reach the kernel, not the decoy, and a lying cap_last_cap must not
    // leave capabilities in the bounding set.
    let b = Bundle::new(&["sh", "-c", "hostname; grep CapBnd /proc/self/status"]);
    let decoy = b.dir.join("decoy");
    std::fs::write(&decoy, "untouched").unwrap();
    let zero = b.dir.join("zero");
    std::fs::write(&zero, "0\n").unwrap();
    let proc_sys = b.rootfs.join("proc/sys/kernel");
    let script = format!(
        "mount --bind {} {}/hostname && mount --bind {} {}/cap_last_cap",
        decoy.display(),
        proc_sys.display(),
        zero.display(),
        proc_sys.display()
    );
    let c = b
        .config(|c| {
            c["linux"]["sysctl"] = json!({"kernel.hostname": "from-sysctl"});
            c["hostname"] = json!(null);
            c["hooks"] = json!({"createContainer": [
                {"path": "/bin/sh", "args": ["sh", "-c", script]}
            ]});
        })
        .container();
    let out = c.run();
    assert_eq!(
        std::fs::read_to_string(&decoy).unwrap(),
        "untouched",
        "the runtime's sysctl write went to the file mounted over /proc/sys/kernel/hostname"
    );
    if common::is_hull() {
        let out = out.ok("run with mounts over procfs files");
        // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29): runc's spec.
        assert_eq!(
            out.stdout, "from-sysctl\nCapBnd:\t0000000020000420\n",
            "expected the sysctl in the kernel and only the configured bounding set"
        );
    } else if out.code == 0 {
        assert!(out.stdout.contains("CapBnd:\t0000000020000420"), "{out:?}");
    }
    assert_clean(&c);
}

#[test]
fn waiting_init_cannot_be_inspected_or_used_by_the_container() {
    // CVE-2016-9962: between create and start the init is still the runtime, holding
    // fds of the host (its procfs, the exec fifo's directory). A process of the
    // container (root, same capabilities) must not open /proc/1/fd, environ, mem or
    // exe, nor walk through one of those fds to the host's root.
    let b = Bundle::new(&["true"]);
    let marker = b.dir.join("host-marker");
    std::fs::write(&marker, "host-secret").unwrap();
    let marker_rel = marker.strip_prefix("/").unwrap().display().to_string();
    let c = b.container();
    c.create().ok("create");
    let script = format!(
        "for n in 0 1 2 3 4 5 6 7 8 9; do readlink /proc/1/fd/$n >/dev/null 2>&1 && echo fd-$n-read; done; \
         cat /proc/1/environ >/dev/null 2>&1 && echo environ-read; \
         head -c1 /proc/1/mem >/dev/null 2>&1 && echo mem-read; \
         readlink /proc/1/exe >/dev/null 2>&1 && echo exe-read; \
         for n in 3 4 5 6 7 8 9 10 11 12; do \
           cat /proc/1/fd/$n/1/root/{marker_rel} 2>/dev/null; \
           cat /proc/1/fd/$n/../../1/root/{marker_rel} 2>/dev/null; \
         done; echo end"
    );
    let out = c
        .exec(&["sh", "-c", &script])
        .ok("exec into the created container");
    assert_eq!(c.status(), "created", "the init still waits for start");
    assert_eq!(
        out.stdout, "end\n",
        "expected the waiting init out of the container's reach: {out:?}"
    );
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn inheritable_capabilities_are_empty_unless_asked() {
    // CVE-2022-29162: runc < 1.1.2 set the inheritable set to the bounding set, so a
    // non-root user could exec a binary with inheritable file capabilities and gain them.
    let b = Bundle::new(&["sh", "-c", "grep CapInh /proc/self/status; sleep 1000"]);
    let c = b.container();
    c.create().ok("create");
    c.start().ok("start");
    let inh = |out: common::Out| out.stdout.lines().next().unwrap_or_default().to_string();
    wait_init_output(&c);
    let (init_out, _) = c.init_output();
    assert_eq!(
        init_out.lines().next(),
        Some("CapInh:\t0000000000000000"),
        "init: expected no inheritable capabilities"
    );
    let out = c.exec(&["grep", "CapInh", "/proc/self/status"]).ok("exec");
    assert_eq!(inh(out), "CapInh:\t0000000000000000", "exec");
    let out = c
        .exec_with(
            &["--cap", "CAP_SYS_ADMIN"],
            &["grep", "CapInh", "/proc/self/status"],
        )
        .ok("exec --cap");
    assert_eq!(
        inh(out),
        "CapInh:\t0000000000000000",
        "exec --cap must not add to the inheritable set"
    );
    let out = c
        .exec_with(
            &["--user", "1000:1000"],
            &["grep", "CapInh", "/proc/self/status"],
        )
        .ok("exec as a user");
    assert_eq!(inh(out), "CapInh:\t0000000000000000", "exec as uid 1000");
    c.delete(true).ok("delete --force");
    assert_clean(&c);

    // Asked for: exactly what the config says.
    let c = Bundle::new(&["grep", "CapInh", "/proc/self/status"])
        .config(|c| c["process"]["capabilities"]["inheritable"] = json!(["CAP_KILL"]))
        .container();
    let out = c.run().ok("run with inheritable CAP_KILL");
    assert_eq!(out.stdout, "CapInh:\t0000000000000020\n");
    assert_clean(&c);
}

/// Waits until the started init has written its first line.
fn wait_init_output(c: &common::Container) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.init_output().0.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the init printed nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
