//! Devices: the default set in /dev, `linux.devices` nodes, the devices cgroup.

mod common;

use common::{assert_clean, Bundle};
use serde_json::json;

fn run_sh(script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let c = Bundle::new(&["sh", "-c", script]).config(edit).container();
    let out = c.run().ok(script);
    assert_clean(&c);
    out.stdout
}

#[test]
fn default_devices_exist_with_right_numbers() {
    let script =
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done";
    let out = run_sh(script, |_| {});
    let want = [
        ("null", "1:3"),
        ("zero", "1:5"),
        ("full", "1:7"),
        ("random", "1:8"),
        ("urandom", "1:9"),
        ("tty", "5:0"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), want.len(), "one stat line per device: {out:?}");
    for ((name, num), line) in want.iter().zip(lines) {
        assert_eq!(
            line,
            format!("/dev/{name} character special file {num} 666"),
            "expected /dev/{name} as char {num} mode 666"
        );
    }
}

#[test]
fn default_devices_work() {
    let out = run_sh(
        "head -c 5 /dev/zero | wc -c; head -c 16 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok; \
         { echo x > /dev/full; } 2>&1; for l in fd stdin ptmx; do readlink /dev/$l; done",
        |_| {},
    );
    assert_eq!(
        out,
        "5\n16\nnull-ok\nsh: write error: No space left on device\n/proc/self/fd\n/proc/self/fd/0\npts/ptmx\n",
        "expected working zero/urandom/null/full and the standard /dev symlinks"
    );
}

#[test]
fn linux_devices_entry_is_created() {
    let out = run_sh(
        "stat -c '%F %t:%T %a %u %g' /dev/hulltest /dev/block0",
        |c| {
            c["linux"]["devices"] = json!([
                {"path": "/dev/hulltest", "type": "c", "major": 1, "minor": 3,
                 "fileMode": 0o640, "uid": 1000, "gid": 1000},
                {"path": "/dev/block0", "type": "b", "major": 7, "minor": 0,
                 "fileMode": 0o600, "uid": 0, "gid": 6}
            ]);
        },
    );
    assert_eq!(
        out, "character special file 1:3 640 1000 1000\nblock special file 7:0 600 0 6\n",
        "expected the configured type, numbers, mode and owner"
    );
}

#[test]
fn devices_cgroup_denies_unlisted_device() {
    // /dev/mem exists in the container but the cgroup allows only the defaults.
    let out = run_sh("{ head -c1 /dev/mem; } 2>&1; echo rc=$?", |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/mem", "type": "c", "major": 1, "minor": 1}]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_SYS_RAWIO"));
        }
    });
    assert!(
        out.contains("Operation not permitted"),
        "expected EPERM from the devices cgroup: {out:?}"
    );
    assert!(
        out.ends_with("rc=1\n"),
        "expected reading /dev/mem to fail: {out:?}"
    );
}

#[test]
fn devices_cgroup_allows_listed_device() {
    let out = run_sh("head -c 3 /dev/hullzero | wc -c", |c| {
        c["linux"]["devices"] =
            json!([{"path": "/dev/hullzero", "type": "c", "major": 1, "minor": 5}]);
        c["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"}));
    });
    assert_eq!(out, "3\n", "expected an allowed device to be readable");
}

#[test]
fn devices_cgroup_list_is_written() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    let list = c.cgroup_read("devices", "devices.list");
    for rule in ["c 1:3 rwm", "c 1:5 rwm", "c 1:9 rwm", "c 5:0 rwm"] {
        assert!(
            list.lines().any(|l| l == rule),
            "expected {rule:?} in devices.list: {list:?}"
        );
    }
    assert!(
        !list.contains("a *:* rwm"),
        "expected no allow-all rule: {list:?}"
    );
}
