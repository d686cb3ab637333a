//! `exec`: a new process in a running container's namespaces and cgroup.

mod common;

use common::{assert_clean, Bundle, Container};
use serde_json::json;
use std::time::Duration;

fn running() -> Container {
    let c = Bundle::new(&["sleep", "1000"])
        .config(|c| c["hostname"] = json!("exec-box"))
        .container();
    c.create().ok("create");
    c.start().ok("start");
    c
}

#[test]
fn exec_joins_namespaces_and_cgroup() {
    let c = running();
    let pid = c.pid();
    let kinds = ["pid", "net", "ipc", "uts", "mnt"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k};"))
        .collect();
    let out = c
        .exec(&[
            "sh",
            "-c",
            &format!("{script} hostname; cat /proc/self/cgroup"),
        ])
        .ok("exec");
    let lines: Vec<&str> = out.stdout.lines().collect();
    for (i, k) in kinds.iter().enumerate() {
        let init = std::fs::read_link(format!("/proc/{pid}/ns/{k}")).unwrap();
        assert_eq!(
            lines[i],
            init.display().to_string(),
            "expected exec in the init's {k} namespace"
        );
    }
    assert_eq!(
        lines[kinds.len()],
        "exec-box",
        "expected the container's hostname"
    );
    for line in &lines[kinds.len() + 1..] {
        let ctrl = line.split(':').nth(1).unwrap_or_default();
        if ["memory", "pids", "cpu", "freezer", "devices"].contains(&ctrl) {
            assert!(
                line.ends_with(&c.cgroup_path()),
                "expected exec in the container's {ctrl} cgroup: {line}"
            );
        }
    }
}

#[test]
fn exec_sees_the_container_rootfs_and_pid_namespace() {
    let c = running();
    let out = c
        .exec(&[
            "sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
        ])
        .ok("exec");
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("sleep 1000 "),
        "expected pid 1 to be the container's init"
    );
    let me: i32 = lines.next().unwrap_or_default().parse().expect("a pid");
    assert!(
        me > 1,
        "expected exec to get a pid inside the container's pid ns"
    );
}

#[test]
fn exec_exit_code_propagates() {
    let c = running();
    let out = c.exec(&["sh", "-c", "echo out; echo err >&2; exit 42"]);
    assert_eq!(out.code, 42, "expected exec's exit code 42: {out:?}");
    assert_eq!(out.stdout, "out\n", "expected exec's stdout");
    assert_eq!(out.stderr, "err\n", "expected exec's stderr");
}

#[test]
fn exec_env_cwd_user() {
    let c = running();
    let out = c
        .exec_with(
            &[
                "--env",
                "FOO=bar",
                "--env",
                "BAZ=qux quux",
                "--cwd",
                "/etc",
                "--user",
                "1000:1000",
            ],
            &["sh", "-c", "echo $FOO; echo $BAZ; pwd; id -u; id -g"],
        )
        .ok("exec with --env --cwd --user");
    assert_eq!(
        out.stdout, "bar\nqux quux\n/etc\n1000\n1000\n",
        "expected env, cwd and user applied"
    );
}

#[test]
fn exec_inherits_the_container_env_and_caps() {
    let c = running();
    let out = c
        .exec(&["sh", "-c", "echo $PATH; grep CapEff /proc/self/status"])
        .ok("exec");
    assert_eq!(
        out.stdout,
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCapEff:\t0000000020000420\n",
        "expected the config's env and capabilities for exec"
    );
}

#[test]
fn exec_process_file() {
    let c = running();
    let process = json!({
        "terminal": false,
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
        "args": ["sh", "-c", "echo $GREETING; pwd; id"],
        "env": ["PATH=/bin", "GREETING=hello process"],
        "cwd": "/tmp",
        "noNewPrivileges": true
    });
    let file = c.write_file("process.json", &process.to_string());
    let out = c.exec_with(&["--process", &file], &[]).ok("exec --process");
    assert_eq!(
        out.stdout, "hello process\n/tmp\nuid=1000(test) gid=1000(test) groups=5(tty)\n",
        "expected args, env, cwd and user from the process file"
    );
}

#[test]
fn exec_detached_with_pid_file() {
    let c = running();
    let pid_file = c.bundle.dir.join("exec.pid").display().to_string();
    let out = c.exec_with(&["-d", "--pid-file", &pid_file], &["sleep", "1000"]);
    assert_eq!(out.code, 0, "exec -d returns at once: {out:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        common::alive(pid),
        "expected the detached process {pid} alive"
    );
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.contains(&c.cgroup_path()),
        "expected {pid} in the container's cgroup: {cg}"
    );
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(
        comm, "sleep\n",
        "expected the pid file to name the exec'd process"
    );
    c.delete(true).ok("delete --force");
    assert!(
        !common::alive(pid),
        "expected delete --force to end the exec'd process too"
    );
    assert_clean(&c);
}

#[test]
fn exec_into_stopped_container_fails() {
    let c = Bundle::new(&["true"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(10));
    let out = c.exec(&["true"]);
    out.assert_error_code(
        "exec into a stopped container",
        255,
        &["stopped", "not running"],
    );
}

#[test]
fn exec_into_missing_container_fails() {
    let c = Bundle::new(&["true"]).container();
    let out = c.exec(&["true"]);
    out.assert_error_code(
        "exec into a missing container",
        255,
        &["not exist", "not found", "no such"],
    );
}

#[test]
fn exec_of_missing_binary_fails() {
    let c = running();
    let out = c.exec(&["/no/such/binary"]);
    out.assert_error_code(
        "exec of a missing binary",
        255,
        &["no such file", "not found"],
    );
    assert_eq!(
        c.status(),
        "running",
        "a failed exec leaves the container running"
    );
}

#[test]
fn exec_killed_by_signal_exits_128_plus_signal() {
    let c = running();
    let out = c.exec(&["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code, 137, "expected 128+SIGKILL from exec: {out:?}");
}

#[test]
fn exec_into_paused_container_fails() {
    let c = running();
    c.hull(&["pause", &c.id]).ok("pause");
    let out = c.exec(&["true"]);
    out.assert_error_code("exec into a paused container", 255, &["paused"]);
    c.hull(&["resume", &c.id]).ok("resume");
    c.exec(&["true"]).ok("exec after resume");
}
