//! Cgroups (v1 controllers on this host): limits written, read inside, enforced,
//! changed by `update`, reported by `events --stats`.

mod common;

use common::{assert_clean, Bundle, Container};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

fn limited(args: &[&str], resources: serde_json::Value) -> Container {
    Bundle::new(args)
        .config(|c| {
            let r = c["linux"]["resources"].as_object_mut().unwrap();
            for (k, v) in resources.as_object().unwrap() {
                r.insert(k.clone(), v.clone());
            }
        })
        .container()
}

#[test]
fn process_joins_its_cgroup_in_every_controller() {
    let c = limited(&["sleep", "1000"], json!({}));
    c.create().ok("create");
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).unwrap();
    for ctrl in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ] {
        let line = cg
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|s| s.split(',').any(|x| x == ctrl))
            })
            .unwrap_or_else(|| panic!("no {ctrl} line in {cg}"));
        assert!(
            line.ends_with(&c.cgroup_path()),
            "expected {ctrl} cgroup {}: {line}",
            c.cgroup_path()
        );
    }
    let procs = c.cgroup_read("memory", "cgroup.procs");
    assert_eq!(
        procs,
        c.pid().to_string(),
        "expected init alone in the memory cgroup"
    );
}

#[test]
fn memory_limit_written_and_visible_inside() {
    let c = limited(
        &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
        json!({"memory": {"limit": 64 * MIB}}),
    );
    c.create().ok("create");
    let host = c.cgroup_read("memory", "memory.limit_in_bytes");
    assert_eq!(
        host,
        (64 * MIB).to_string(),
        "expected memory.limit_in_bytes on the host"
    );
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(10));
    assert_eq!(
        c.init_output().0,
        format!("{}\n", 64 * MIB),
        "expected the limit inside"
    );
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn memory_limit_is_enforced() {
    // tmpfs pages are charged to the writer's cgroup: 48 MiB cannot fit in 16 MiB.
    let script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; echo rc=$?; wc -c < /dev/shm/fill";
    let c = limited(
        &["sh", "-c", script],
        json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB}}),
    );
    c.create().ok("create");
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(20));
    let out = c.init_output().0;
    assert!(
        out.starts_with("rc=137\n"),
        "expected dd to be OOM-killed: {out:?}"
    );
    let written: u64 = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        written < 16 * MIB,
        "expected less than the limit written, got {written}"
    );
    let oom = c.cgroup_read("memory", "memory.oom_control");
    assert!(
        oom.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
        "expected an OOM kill counted in memory.oom_control: {oom:?}"
    );
    let max: u64 = c
        .cgroup_read("memory", "memory.max_usage_in_bytes")
        .parse()
        .unwrap();
    assert!(
        max <= 16 * MIB,
        "expected usage to stay under the limit, max {max}"
    );
}

#[test]
fn pids_limit_caps_a_fork_bomb() {
    // The subshell forks until refused; `read` is a builtin, so it needs no fork.
    let script = "(for i in $(seq 30); do sleep 5 & done) 2>/dev/null; read n < /sys/fs/cgroup/pids/pids.current; echo $n";
    let c = limited(&["sh", "-c", script], json!({"pids": {"limit": 10}}));
    c.create().ok("create");
    assert_eq!(
        c.cgroup_read("pids", "pids.max"),
        "10",
        "expected pids.max 10"
    );
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(20));
    let out = c.init_output().0;
    let current: u32 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pids.current printed: {out:?}"));
    assert!(current <= 10, "expected at most 10 tasks, saw {current}");
    assert!(
        current >= 5,
        "expected the loop to have forked up to the limit, saw {current}"
    );
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn cpu_shares_quota_period_and_cpuset() {
    let c = limited(
        &["sleep", "1000"],
        json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}}),
    );
    c.create().ok("create");
    assert_eq!(c.cgroup_read("cpu", "cpu.shares"), "512", "cpu.shares");
    assert_eq!(
        c.cgroup_read("cpu", "cpu.cfs_quota_us"),
        "50000",
        "cpu.cfs_quota_us"
    );
    assert_eq!(
        c.cgroup_read("cpu", "cpu.cfs_period_us"),
        "100000",
        "cpu.cfs_period_us"
    );
    assert_eq!(c.cgroup_read("cpuset", "cpuset.cpus"), "0", "cpuset.cpus");
    assert_eq!(c.cgroup_read("cpuset", "cpuset.mems"), "0", "cpuset.mems");
}

#[test]
fn update_flags_change_a_running_container() {
    let c = limited(
        &["sleep", "1000"],
        json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 20}, "cpu": {"shares": 512}}),
    );
    c.create().ok("create");
    c.start().ok("start");
    c.hull(&[
        "update",
        "--memory",
        "128M",
        "--pids-limit",
        "30",
        "--cpu-share",
        "256",
        &c.id,
    ])
    .ok("update with flags");
    assert_eq!(
        c.cgroup_read("memory", "memory.limit_in_bytes"),
        (128 * MIB).to_string(),
        "memory after update"
    );
    assert_eq!(
        c.cgroup_read("pids", "pids.max"),
        "30",
        "pids.max after update"
    );
    assert_eq!(
        c.cgroup_read("cpu", "cpu.shares"),
        "256",
        "cpu.shares after update"
    );
    assert_eq!(c.status(), "running", "update keeps the container running");
}

#[test]
fn update_from_resources_file_and_stdin() {
    let c = limited(&["sleep", "1000"], json!({"memory": {"limit": 64 * MIB}}));
    c.create().ok("create");
    c.start().ok("start");
    let file = c.write_file(
        "res.json",
        &json!({"memory": {"limit": 96 * MIB}, "cpu": {"quota": 20000, "period": 100000}})
            .to_string(),
    );
    c.hull(&["update", "-r", &file, &c.id]).ok("update -r file");
    assert_eq!(
        c.cgroup_read("memory", "memory.limit_in_bytes"),
        (96 * MIB).to_string(),
        "memory after update -r"
    );
    assert_eq!(
        c.cgroup_read("cpu", "cpu.cfs_quota_us"),
        "20000",
        "cfs_quota after update -r"
    );

    let stdin = std::fs::File::open(c.write_file("pids.json", r#"{"pids":{"limit":40}}"#)).unwrap();
    c.hull_with(&["update", "-r", "-", &c.id], |cmd| {
        cmd.stdin(stdin);
    })
    .ok("update -r -");
    assert_eq!(
        c.cgroup_read("pids", "pids.max"),
        "40",
        "pids.max after update -r -"
    );
}

#[test]
fn events_stats_reports_memory_and_pids() {
    let c = limited(
        &["sh", "-c", "sleep 1000 & wait"],
        json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 50}}),
    );
    c.create().ok("create");
    c.start().ok("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.cgroup_read("pids", "pids.current") != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "expected sh and sleep to run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.hull(&["events", "--stats", &c.id]).ok("events --stats");
    let v: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("events --stats prints one JSON object");
    assert_eq!(v["type"], "stats", "event type");
    assert_eq!(v["id"], c.id.as_str(), "event id");
    let usage = &v["data"]["memory"]["usage"];
    assert!(
        usage["usage"].as_u64().is_some_and(|u| u > 0),
        "expected memory usage > 0: {usage}"
    );
    assert_eq!(
        usage["limit"],
        64 * MIB,
        "expected the memory limit in stats: {usage}"
    );
    assert_eq!(
        v["data"]["pids"]["current"], 2,
        "expected sh and sleep in pids stats"
    );
    assert_eq!(
        v["data"]["pids"]["limit"], 50,
        "expected pids limit in stats"
    );
    assert!(
        v["data"]["cpu"]["usage"]["total"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "expected cpu usage"
    );
}

/// docker 20.10 writes 0 for "unset" in every config.json (blockIO.weight 0 among
/// them, and this host has no blkio.weight file): runc skips such fields, so must hull,
/// or every `docker run --runtime hull` fails.
#[test]
fn zero_values_that_mean_unset_are_not_written() {
    let c = limited(
        &["true"],
        json!({
            "blockIO": {"weight": 0, "leafWeight": 0},
            "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0, "realtimePeriod": 0},
            "memory": {"limit": 0, "reservation": 0, "swap": 0},
            "pids": {"limit": 0}
        }),
    );
    let out = c.run();
    assert_eq!(out.code, 0, "{out:?}");
    assert_clean(&c);
}
