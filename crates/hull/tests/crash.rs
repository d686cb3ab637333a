//! hull itself killed half-way: nothing may stay behind once `delete --force` has run.

mod common;

use common::{assert_clean, Bundle};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Children of `pid` whose command line starts with `prefix`.
fn children_running(pid: u32, prefix: &str) -> Vec<i32> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).starts_with(prefix) {
            found.push(p);
        }
    }
    found
}

#[test]
fn sigkill_during_create_then_delete_force_leaves_nothing() {
    hull_only!();
    // The createRuntime hook holds create half-way: state dir, cgroup, namespaces,
    // mounts and the init all exist while it sleeps.
    let c = Bundle::new(&["true"])
        .config(|v| {
            v["hooks"] = json!({"createRuntime": [
                {"path": "/bin/sleep", "args": ["sleep", "30"]}
            ]});
        })
        .container();
    let mut create = Command::new(&c.bin)
        .arg("--root")
        .arg(&c.root)
        .args(["create", "--bundle", &c.dir(), &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn create");
    let deadline = Instant::now() + Duration::from_secs(20);
    let hook = loop {
        let hooks = children_running(create.id(), "sleep");
        if let Some(&p) = hooks.first() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the createRuntime hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    create.kill().expect("SIGKILL hull create");
    create.wait().unwrap();

    // The half-made container is visible and reads as stopped: its creator is gone.
    let st = c.state();
    assert_eq!(
        st["status"], "stopped",
        "state after the creator died: {st}"
    );

    c.delete(true).ok("delete --force after a killed create");
    assert_clean(&c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::alive(hook) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !common::alive(hook),
        "the hook {hook} outlived the hull that ran it"
    );
}
