//! User namespaces: uidMappings/gidMappings as seen inside and from the host.

mod common;

use common::{assert_clean, host_ns, Bundle};
use serde_json::json;

fn userns_bundle(args: &[&str]) -> Bundle {
    Bundle::new(args).config(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        // A cgroup mount needs privileges over the hierarchy that a userns root lacks.
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    })
}

fn words(s: &str) -> Vec<Vec<String>> {
    s.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn maps_are_visible_inside() {
    let script =
        "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; id -g; readlink /proc/self/ns/user";
    let c = userns_bundle(&["sh", "-c", script]).container();
    let out = c.run().ok("run in a user namespace");
    let w = words(&out.stdout);
    assert_eq!(w.len(), 5, "five lines of output: {:?}", out.stdout);
    assert_eq!(w[0], ["0", "100000", "65536"], "uid_map inside");
    assert_eq!(w[1], ["0", "200000", "65536"], "gid_map inside");
    assert_eq!(w[2], ["0"], "uid 0 inside");
    assert_eq!(w[3], ["0"], "gid 0 inside");
    assert_ne!(w[4][0], host_ns("user"), "expected a new user namespace");
    assert_clean(&c);
}

#[test]
fn container_process_runs_as_the_mapped_host_ids() {
    let c = userns_bundle(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let pid = c.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        ["100000"; 4],
        "expected host uid 100000 for container root"
    );
    assert_eq!(
        field("Gid:"),
        ["200000"; 4],
        "expected host gid 200000 for container root"
    );
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn unmapped_files_show_as_overflow_ids() {
    // The rootfs belongs to host root, which has no mapping in the container.
    let c = userns_bundle(&["stat", "-c", "%u:%g", "/bin/busybox"]).container();
    let out = c.run().ok("stat in a user namespace");
    assert_eq!(
        out.stdout, "65534:65534\n",
        "expected unmapped owner as nobody:nogroup"
    );
}
