//! Command-line features engines rely on: --preserve-fds, --no-pivot, --log with the
//! logrus JSON shape podman parses, exec with a pty relayed by hull, events streaming,
//! features, and tmpcopyup.

mod common;

use common::{add_tmpfs, assert_clean, Bundle};
use serde_json::Value;
use std::os::fd::AsRawFd;
use std::time::Duration;

#[test]
fn preserve_fds_passes_extra_fds() {
    let c = Bundle::new(&["sh", "-c", "cat <&3; cat <&4"]).container();
    let a = c.write_file("fd3.txt", "from-fd-3\n");
    let b = c.write_file("fd4.txt", "from-fd-4\n");
    let f3 = std::fs::File::open(a).unwrap();
    let f4 = std::fs::File::open(b).unwrap();
    let (r3, r4) = (f3.as_raw_fd(), f4.as_raw_fd());
    let out = c.hull_with(
        &["run", "--preserve-fds", "2", "--bundle", &c.dir(), &c.id],
        |cmd| common::hand_over(cmd, vec![r3, r4]),
    );
    let out = out.ok("run --preserve-fds 2");
    assert_eq!(
        out.stdout, "from-fd-3\nfrom-fd-4\n",
        "the preserved fds reach the process"
    );
    assert_clean(&c);
}

#[test]
fn no_pivot_runs_in_its_rootfs() {
    let c = Bundle::new(&["sh", "-c", "test -x /bin/busybox && echo rootfs-ok"]).container();
    let out = c
        .hull(&["run", "--no-pivot", "--bundle", &c.dir(), &c.id])
        .ok("run --no-pivot");
    assert_eq!(out.stdout, "rootfs-ok\n");
    assert_clean(&c);
}

#[test]
fn log_json_has_logrus_fields() {
    hull_only!();
    let c = Bundle::new(&["true"]).container();
    let log = c.bundle.dir.join("hull.log");
    let out = c.hull(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "start",
        "no-such-container",
    ]);
    assert_eq!(out.code, 1, "start of a missing container fails: {out:?}");
    let text = std::fs::read_to_string(&log).expect("the --log file was written");
    let last: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {text:?}"));
    assert_eq!(last["level"], "error", "logrus level: {last}");
    assert!(
        last["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("does not exist"),
        "logrus msg names the problem: {last}"
    );
    assert!(last["time"].is_string(), "logrus time: {last}");
}

#[test]
fn exec_tty_is_relayed_by_hull() {
    // runc 1.1's `exec -t` without --console-socket needs its own stdin to be a terminal.
    hull_only!();
    let c = Bundle::new(&["sleep", "100"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let out = c.exec_with(&["-t"], &["tty"]).ok("exec -t tty");
    assert!(
        out.stdout.starts_with("/dev/pts/"),
        "the exec'd process has a pty: {:?}",
        out.stdout
    );
    c.kill("KILL").ok("kill");
    c.wait_status("stopped", Duration::from_secs(10));
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn events_stream_until_the_container_stops() {
    // runc 1.1's `events` keeps running after the container has stopped.
    hull_only!();
    let c = Bundle::new(&["sleep", "1"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let out = c
        .hull(&["events", "--interval", "200ms", &c.id])
        .ok("events --interval");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(
        lines.len() >= 2,
        "several stats events before the stop: {lines:?}"
    );
    for ev in &lines {
        assert_eq!(ev["type"], "stats");
        assert_eq!(ev["id"], c.id.as_str());
        assert!(ev["data"]["pids"]["current"].is_number(), "pids in {ev}");
    }
    c.wait_status("stopped", Duration::from_secs(10));
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn features_describe_the_runtime() {
    let c = Bundle::new(&["true"]).container();
    let out = c.hull(&["features"]).ok("features");
    let f: Value = serde_json::from_str(&out.stdout).expect("features JSON");
    assert!(f["ociVersionMax"]
        .as_str()
        .unwrap_or_default()
        .starts_with("1."));
    let ns = f["linux"]["namespaces"].as_array().expect("namespaces");
    for want in ["pid", "user", "cgroup", "mount", "network"] {
        assert!(ns.iter().any(|n| n == want), "{want} in {ns:?}");
    }
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
}

#[test]
fn tmpcopyup_keeps_the_image_contents() {
    hull_only!();
    let out = {
        let c = Bundle::new(&[
            "sh",
            "-c",
            "grep -c root /etc/passwd; touch /etc/new && echo writable",
        ])
        .config(|v| {
            v["root"]["readonly"] = Value::Bool(true);
            add_tmpfs(v, "/etc", &["tmpcopyup", "mode=755"]);
        })
        .container();
        let out = c.run().ok("run with a tmpcopyup tmpfs on /etc");
        assert_clean(&c);
        out
    };
    assert_eq!(
        out.stdout, "1\nwritable\n",
        "the tmpfs starts with /etc's files"
    );
}

/// A reader that went away (`hull state ID | grep -q running`) ends hull quietly, by
/// SIGPIPE as it would a C tool, not with a panic's backtrace on stderr: every command
/// whose output is read through a pipe (issue 15's list).
#[test]
fn a_closed_stdout_ends_hull_by_sigpipe_not_a_panic() {
    hull_only!();
    use std::os::unix::process::ExitStatusExt;
    let c = Bundle::new(&["sleep", "600"]).container();
    c.hull(&["run", "-d", "--bundle", &c.dir(), &c.id])
        .ok("run -d");
    let root = c.root.display().to_string();
    let commands: [&[&str]; 8] = [
        &["features"],
        &["--help"],
        &["check"],
        &["--root", &root, "list"],
        &["--root", &root, "state", &c.id],
        &["--root", &root, "ps", &c.id],
        &["--root", &root, "events", "--stats", &c.id],
        &["--root", &root, "events", "--interval", "100ms", &c.id],
    ];
    for args in commands {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = std::process::Command::new(&c.bin)
            .args(args)
            .stdout(std::process::Stdio::from(w))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "hull {args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "hull {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}
