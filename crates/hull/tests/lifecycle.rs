//! Container lifecycle: run, create/start/state, kill, delete, list, ps, pause/resume.

mod common;

use common::{assert_clean, Bundle};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A container that waits for /share/go, then exits 0.
fn waiting_bundle() -> Bundle {
    Bundle::new(&[
        "sh",
        "-c",
        "while [ ! -e /share/go ]; do sleep 0.05; done; echo done",
    ])
    .with_share()
}

#[test]
fn run_prints_output_and_propagates_exit_code() {
    let c = Bundle::new(&["sh", "-c", "echo hello from $(hostname); exit 3"]).container();
    let out = c.run();
    assert_eq!(
        out.code, 3,
        "expected the container's exit code 3, got {out:?}"
    );
    assert_eq!(
        out.stdout, "hello from runc\n",
        "expected the container's stdout"
    );
    assert_clean(&c);
}

#[test]
fn run_exit_code_of_killed_process_is_128_plus_signal() {
    // Without a pid namespace: a pid-1 shell could not SIGKILL itself.
    let c = Bundle::new(&["sh", "-c", "kill -9 $$"])
        .config(|c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "pid");
        })
        .container();
    let out = c.run();
    assert_eq!(out.code, 137, "expected 128+SIGKILL, got {out:?}");
    assert_clean(&c);
}

#[test]
fn create_start_state_transitions() {
    let c = waiting_bundle().container();
    c.create().ok("create");
    let st = c.state();
    assert_eq!(
        st["status"], "created",
        "expected status created after create: {st}"
    );
    let pid = st["pid"].as_i64().expect("created container has a pid");
    assert!(pid > 0, "expected a positive pid, got {pid}");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "init {pid} is alive"
    );
    assert_eq!(c.init_output().0, "", "expected no output before start");

    c.start().ok("start");
    assert_eq!(c.status(), "running", "expected status running after start");
    assert_eq!(c.pid() as i64, pid, "expected the same pid after start");

    std::fs::write(c.share("go"), "").unwrap();
    c.wait_status("stopped", T);
    assert_eq!(
        c.init_output().0,
        "done\n",
        "expected the process to have run to its end"
    );
    c.delete(false).ok("delete of a stopped container");
    assert_clean(&c);
}

#[test]
fn state_json_has_oci_fields() {
    let c = waiting_bundle().container();
    c.create().ok("create");
    let st = c.state();
    assert_eq!(st["id"], c.id.as_str(), "state.id");
    assert!(
        st["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "ociVersion 1.x: {st}"
    );
    assert!(st["pid"].as_i64().is_some_and(|p| p > 0), "state.pid: {st}");
    assert_eq!(st["status"], "created", "state.status: {st}");
    assert_eq!(
        st["bundle"],
        c.dir().as_str(),
        "state.bundle is the absolute bundle path"
    );
    let created = st["created"].as_str().expect("state.created is a string");
    assert!(
        created.len() >= 20 && created.ends_with('Z') && created.contains('T'),
        "expected an RFC 3339 UTC timestamp, got {created:?}"
    );
}

#[test]
fn kill_by_name_number_and_sigkill() {
    for (sig, name) in [("TERM", "TERM"), ("SIGUSR1", "USR1"), ("12", "USR2")] {
        let trap = format!(
            "trap 'echo {name} > /share/sig; exit 0' {name}; echo > /share/ready; while true; do sleep 0.05; done"
        );
        let c = Bundle::new(&["sh", "-c", &trap]).with_share().container();
        c.create().ok("create");
        c.start().ok("start");
        c.wait_share("ready", T); // sh has installed its trap
        c.kill(sig).ok(&format!("kill {sig}"));
        assert_eq!(
            c.wait_share("sig", T),
            format!("{name}\n"),
            "expected sh to trap {name}"
        );
        c.wait_status("stopped", T);
    }
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.kill("SIGKILL").ok("kill SIGKILL");
    c.wait_status("stopped", T);
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn kill_default_signal_is_sigterm() {
    let c = Bundle::new(&[
        "sh",
        "-c",
        "trap 'echo TERM > /share/sig; exit 0' TERM; echo > /share/ready; while true; do sleep 0.05; done",
    ])
    .with_share()
    .container();
    c.create().ok("create");
    c.start().ok("start");
    c.wait_share("ready", T);
    c.hull(&["kill", &c.id]).ok("kill without a signal");
    assert_eq!(
        c.wait_share("sig", T),
        "TERM\n",
        "expected SIGTERM by default"
    );
}

#[test]
fn kill_all_reaches_every_process() {
    // No pid namespace: killing init alone would leave the background sleeps running.
    let c = Bundle::new(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        .config(|c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != "pid");
        })
        .container();
    c.create().ok("create");
    c.start().ok("start");
    let needle = format!("/{}/", c.id);
    let deadline = std::time::Instant::now() + T;
    while common::pids_in_cgroup(&needle).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "expected 3 processes in the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.hull(&["kill", "--all", &c.id, "KILL"]).ok("kill --all");
    c.wait_status("stopped", T);
    let deadline = std::time::Instant::now() + T;
    while !common::pids_in_cgroup(&needle).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "expected kill --all to end every process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn delete_running_without_force_fails() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let out = c.delete(false);
    out.assert_error("delete of a running container", &["running", "not stopped"]);
    assert_eq!(
        c.status(),
        "running",
        "a refused delete leaves the container running"
    );
}

#[test]
fn delete_force_on_created_container() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    let pid = c.pid();
    c.delete(true).ok("delete --force (created)");
    assert!(
        !common::alive(pid),
        "expected init {pid} to be gone after delete --force"
    );
    assert_clean(&c);
}

#[test]
fn delete_force_on_running_container() {
    let c = Bundle::new(&["sh", "-c", "sleep 1000 & sleep 1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.delete(true).ok("delete --force (running)");
    assert_clean(&c);
    let out = c.hull(&["state", &c.id]);
    out.assert_error("state after delete", &["not exist", "not found", "no such"]);
}

#[test]
fn list_table_quiet_and_json() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    let pid = c.pid();

    let table = c.hull(&["list"]).ok("list");
    let mut lines = table.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
        "list header"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), 6, "expected 6 columns in {:?}", table.stdout);
    assert_eq!(row[0], c.id, "list: id column");
    assert_eq!(row[1], pid.to_string(), "list: pid column");
    assert_eq!(row[2], "created", "list: status column");
    assert_eq!(row[3], c.dir(), "list: bundle column");
    assert_eq!(row[5], "root", "list: owner column");
    assert_eq!(
        lines.next(),
        None,
        "expected one container in a fresh --root"
    );

    let quiet = c.hull(&["list", "-q"]).ok("list -q");
    assert_eq!(
        quiet.stdout,
        format!("{}\n", c.id),
        "list -q prints ids only"
    );

    let js = c
        .hull(&["list", "--format", "json"])
        .ok("list --format json");
    let v: serde_json::Value = serde_json::from_str(&js.stdout).expect("list json parses");
    let arr = v.as_array().expect("list json is an array");
    assert_eq!(arr.len(), 1, "one container listed: {v}");
    assert_eq!(arr[0]["id"], c.id.as_str(), "list json id");
    assert_eq!(arr[0]["pid"], pid, "list json pid");
    assert_eq!(arr[0]["status"], "created", "list json status");
    assert_eq!(arr[0]["bundle"], c.dir().as_str(), "list json bundle");
}

#[test]
fn list_on_empty_root_prints_header_only() {
    let c = Bundle::new(&["true"]).container();
    let out = c.hull(&["list"]).ok("list on an empty root");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected just the header, got {:?}",
        out.stdout
    );
    assert!(lines[0].starts_with("ID"), "header starts with ID");
    let js = c
        .hull(&["list", "--format", "json"])
        .ok("list json on an empty root");
    // runc prints `null` (a nil Go slice); `[]` parses the same for every engine.
    assert!(
        ["null", "[]"].contains(&js.stdout.trim()),
        "expected null or [] for no containers, got {:?}",
        js.stdout
    );
}

#[test]
fn pid_file_holds_init_pid() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    let pid_file = c.bundle.dir.join("init.pid");
    c.create_with(&["--pid-file", &pid_file.display().to_string()])
        .ok("create --pid-file");
    let content = std::fs::read_to_string(&pid_file).expect("pid file written");
    assert_eq!(
        content.trim(),
        c.pid().to_string(),
        "pid file content equals state.pid"
    );
    assert!(
        !content.contains(char::is_whitespace),
        "runc writes the bare pid: {content:?}"
    );
}

#[test]
fn ps_table_and_json() {
    let c = Bundle::new(&["sh", "-c", "sleep 1000 & wait"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let pid = c.pid();
    let needle = format!("/{}/", c.id);
    let deadline = std::time::Instant::now() + T;
    while common::pids_in_cgroup(&needle).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "expected sh and sleep to be running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = c.hull(&["ps", &c.id]).ok("ps");
    let mut lines = table.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.split_whitespace().take(3).eq(["UID", "PID", "PPID"]),
        "ps -ef header: {header:?}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "expected sh and sleep: {:?}", table.stdout);
    assert!(
        rows.iter()
            .any(|r| r.split_whitespace().nth(1) == Some(&pid.to_string())),
        "expected init pid {pid} in {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.contains("sleep 1000")),
        "expected sleep in {rows:?}"
    );

    let js = c
        .hull(&["ps", "--format", "json", &c.id])
        .ok("ps --format json");
    let v: serde_json::Value = serde_json::from_str(&js.stdout).expect("ps json parses");
    let mut pids: Vec<i64> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p.as_i64())
        .collect();
    pids.sort();
    let mut want: Vec<i64> = common::pids_in_cgroup(&needle)
        .into_iter()
        .map(i64::from)
        .collect();
    want.sort();
    assert_eq!(
        pids, want,
        "ps json lists the host pids in the container's cgroup"
    );
}

#[test]
fn pause_freezes_and_resume_thaws() {
    // rename() so that the test never reads a half-written counter.
    let script =
        "i=0; while true; do i=$((i+1)); echo $i > /share/n.new; mv /share/n.new /share/n; sleep 0.02; done";
    let c = Bundle::new(&["sh", "-c", script]).with_share().container();
    c.create().ok("create");
    c.start().ok("start");
    c.wait_share("n", T);
    c.hull(&["pause", &c.id]).ok("pause");
    assert_eq!(c.status(), "paused", "status after pause");
    std::thread::sleep(Duration::from_millis(100));
    let before = c.read_share("n");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        c.read_share("n"),
        before,
        "expected the counter to stop while paused"
    );
    let list = c.hull(&["list"]).ok("list");
    assert!(
        list.stdout.contains("paused"),
        "list shows paused: {:?}",
        list.stdout
    );

    c.hull(&["resume", &c.id]).ok("resume");
    assert_eq!(c.status(), "running", "status after resume");
    std::thread::sleep(Duration::from_millis(400));
    let after: u64 = c.read_share("n").trim().parse().unwrap_or(0);
    let before: u64 = before.trim().parse().unwrap_or(0);
    assert!(
        after > before,
        "expected the counter to advance after resume ({before} -> {after})"
    );
    c.delete(true).ok("delete --force of a resumed container");
    assert_clean(&c);
}

#[test]
fn delete_force_on_paused_container() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.hull(&["pause", &c.id]).ok("pause");
    c.delete(true).ok("delete --force (paused)");
    assert_clean(&c);
}

#[test]
fn run_detach_returns_while_container_runs() {
    let c = waiting_bundle().container();
    let out = c.hull(&["run", "--detach", "--bundle", &c.dir(), &c.id]);
    assert_eq!(out.code, 0, "run --detach returns 0 at once: {out:?}");
    assert_eq!(c.status(), "running", "detached container is running");
    std::fs::write(c.share("go"), "").unwrap();
    c.wait_status("stopped", T);
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn delete_of_a_created_container() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    let pid = c.pid();
    if common::is_hull() {
        // runtime-spec (and the OCI validation suite): deleting a container that is not
        // stopped is an error with no effect; --force removes it.
        c.delete(false)
            .assert_error("delete of a created container", &["created"]);
        assert_eq!(c.status(), "created", "a refused delete leaves it created");
        assert!(common::alive(pid), "a refused delete leaves the init alive");
        c.delete(true).ok("delete --force of a created container");
    } else {
        // runc 1.1 deletes a created (never started) container without --force.
        c.delete(false).ok("delete of a created container");
    }
    assert!(
        !common::alive(pid),
        "expected the created init {pid} to be gone"
    );
    assert_clean(&c);
}

#[test]
fn delete_without_force_refuses_a_paused_container() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.hull(&["pause", &c.id]).ok("pause");
    c.delete(false)
        .assert_error("delete of a paused container", &["paused", "not stopped"]);
    assert_eq!(
        c.status(),
        "paused",
        "a refused delete leaves the container paused"
    );
}
