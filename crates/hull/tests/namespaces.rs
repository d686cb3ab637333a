//! Namespaces: new ones differ from the host's, joined ones are the given ones.

mod common;

use common::{assert_clean, host_ns, Bundle};
use serde_json::json;
use std::process::Command;

/// Runs `script` in a container whose config `edit` changed; returns stdout (exit 0).
fn run_sh(script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let c = Bundle::new(&["sh", "-c", script]).config(edit).container();
    let out = c.run().ok(script);
    assert_clean(&c);
    out.stdout
}

/// Adds a namespace entry to the config. With a cgroup namespace, drops the
/// /sys/fs/cgroup mount these tests do not need (runc 1.1 then mounts every v1
/// hierarchy of the host by its mount point's name, which fails for one outside
/// /sys/fs/cgroup such as crun's hugetlb mount).
fn add_ns(c: &mut serde_json::Value, ns: serde_json::Value) {
    if ns["type"] == "cgroup" {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    }
    c["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
}

#[test]
fn hostname_comes_from_config() {
    let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = run_sh("hostname; cat /proc/sys/kernel/hostname", |c| {
        c["hostname"] = json!("hull-box");
    });
    assert_eq!(
        out, "hull-box\nhull-box\n",
        "expected the configured hostname inside"
    );
    let host_after = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        host_before, host_after,
        "expected the host's hostname unchanged"
    );
}

#[test]
fn container_process_is_pid_1() {
    let out = run_sh("echo $$; ps -o pid,comm", |_| {});
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("1"),
        "expected `echo $$` to print 1, got {out:?}"
    );
    let pids: Vec<&str> = lines
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(pids.contains(&"1"), "expected pid 1 in ps inside: {out:?}");
    assert!(
        pids.len() <= 3,
        "expected only the container's processes in ps: {out:?}"
    );
}

#[test]
fn new_namespaces_differ_from_the_host() {
    let kinds = ["uts", "ipc", "mnt", "net", "pid", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k};"))
        .collect();
    let out = run_sh(&script, |c| add_ns(c, json!({"type": "cgroup"})));
    let inside: Vec<&str> = out.lines().collect();
    assert_eq!(
        inside.len(),
        kinds.len(),
        "one readlink per namespace: {out:?}"
    );
    for (k, got) in kinds.iter().zip(inside) {
        let host = host_ns(k);
        assert!(
            got.starts_with(&format!("{k}:[")),
            "expected a {k} ns link, got {got:?}"
        );
        assert_ne!(
            got, host,
            "expected a new {k} namespace, got the host's {host}"
        );
    }
}

#[test]
fn namespaces_not_in_config_are_the_hosts() {
    // runc spec has no cgroup or user namespace: the container shares the host's.
    let out = run_sh(
        "readlink /proc/self/ns/cgroup; readlink /proc/self/ns/user",
        |_| {},
    );
    let inside: Vec<&str> = out.lines().collect();
    assert_eq!(
        inside,
        [host_ns("cgroup"), host_ns("user")],
        "expected the host's cgroup and user ns"
    );
}

#[test]
fn cgroup_namespace_roots_the_container_cgroup() {
    let out = run_sh("cat /proc/self/cgroup", |c| {
        add_ns(c, json!({"type": "cgroup"}))
    });
    for line in out.lines() {
        let path = line.rsplit(':').next().unwrap_or_default();
        assert_eq!(
            path, "/",
            "expected every cgroup to read / inside a cgroup ns: {out:?}"
        );
    }
}

/// A network namespace made with `ip netns add`, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(name: &str) -> NetNs {
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name}");
        NetNs(name.to_string())
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn joins_an_existing_network_namespace_by_path() {
    let netns = NetNs::new(&common::unique_name());
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(netns.path()).expect("netns file").ino();
    let path = netns.path();
    let out = run_sh(
        "readlink /proc/self/ns/net; cat /proc/net/dev | wc -l",
        |c| {
            for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
                if ns["type"] == "network" {
                    ns["path"] = json!(path);
                }
            }
        },
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("net:[{ino}]").as_str()),
        "expected to join {path}"
    );
    // A fresh netns has only lo: two header lines plus one device.
    assert_eq!(
        lines.next(),
        Some("3"),
        "expected only lo in the joined netns: {out:?}"
    );
}

#[test]
fn joins_the_uts_namespace_of_another_container() {
    let first = Bundle::new(&["sleep", "1000"])
        .config(|c| c["hostname"] = json!("first"))
        .container();
    first.create().ok("create first");
    let pid = first.pid();
    let uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    let out = run_sh("hostname; readlink /proc/self/ns/uts", |c| {
        c.as_object_mut().unwrap().remove("hostname");
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "uts" {
                ns["path"] = json!(format!("/proc/{pid}/ns/uts"));
            }
        }
    });
    assert_eq!(
        out,
        format!("first\n{}\n", uts.display()),
        "expected the first container's uts ns"
    );
}

#[test]
fn time_namespace_applies_offsets() {
    hull_only!(); // runc 1.1 does not know the time namespace
    let host_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = run_sh(
        "readlink /proc/self/ns/time; cut -d' ' -f1 /proc/uptime",
        |c| {
            add_ns(c, json!({"type": "time"}));
            c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400, "nanosecs": 0},
                                           "monotonic": {"secs": 86400, "nanosecs": 0}});
        },
    );
    let mut lines = out.lines();
    let ns = lines.next().unwrap_or_default();
    assert_ne!(ns, host_ns("time"), "expected a new time namespace");
    let uptime: f64 = lines
        .next()
        .unwrap_or_default()
        .parse()
        .expect("uptime inside");
    assert!(
        uptime >= host_uptime + 86000.0,
        "expected boottime offset of a day: {uptime} vs {host_uptime}"
    );
}
