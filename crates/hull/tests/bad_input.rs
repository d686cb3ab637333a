//! Bad input: each mistake exits 1 with one error line that names the problem, and
//! leaves nothing behind.

mod common;

use common::{assert_clean, Bundle, Container};
use serde_json::json;
use std::time::Duration;

/// `create` must fail with exit 1, an error mentioning one of `words`, and no leftovers.
fn refused(c: &Container, what: &str, words: &[&str]) {
    let out = c.create();
    out.assert_error(what, words);
    assert_clean(c);
    let list = c.hull(&["list", "-q"]).ok("list");
    assert_eq!(
        list.stdout, "",
        "expected no container listed after a failed create"
    );
}

#[test]
fn missing_config_json() {
    let c = Bundle::new(&["true"]).container();
    std::fs::remove_file(c.bundle.dir.join("config.json")).unwrap();
    refused(&c, "create without config.json", &["config.json"]);
}

#[test]
fn malformed_config_json() {
    let c = Bundle::new(&["true"]).container();
    std::fs::write(c.bundle.dir.join("config.json"), "{bad").unwrap();
    refused(
        &c,
        "create with malformed JSON",
        &["json", "invalid", "parse", "syntax"],
    );
}

#[test]
fn wrong_type_in_config() {
    let c = Bundle::new(&["true"])
        .config(|c| c["process"]["user"]["uid"] = json!(-1))
        .container();
    refused(&c, "create with uid -1", &["uid"]);
}

#[test]
fn unknown_oci_version_major() {
    hull_only!(); // runc 1.1 does not check ociVersion
    let c = Bundle::new(&["true"])
        .config(|c| c["ociVersion"] = json!("2.0.0"))
        .container();
    refused(&c, "create with ociVersion 2.0.0", &["ociVersion", "2.0.0"]);
}

#[test]
fn missing_rootfs_dir() {
    let c = Bundle::new(&["true"]).container();
    std::fs::remove_dir_all(&c.bundle.rootfs).unwrap();
    refused(&c, "create without rootfs", &["rootfs"]);
}

#[test]
fn empty_args() {
    let c = Bundle::new(&[]).container();
    refused(&c, "create with empty process.args", &["args"]);
}

#[test]
fn unknown_namespace_type() {
    let c = Bundle::new(&["true"])
        .config(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "bogus"}))
        })
        .container();
    refused(
        &c,
        "create with namespace type bogus",
        &["namespace", "bogus"],
    );
}

#[test]
fn duplicate_namespace() {
    let c = Bundle::new(&["true"])
        .config(|c| {
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "network"}))
        })
        .container();
    refused(
        &c,
        "create with two network namespaces",
        &["duplicate", "network"],
    );
}

#[test]
fn namespace_path_that_does_not_exist() {
    let c = Bundle::new(&["true"])
        .config(|c| c["linux"]["namespaces"][1]["path"] = json!("/nonexistent/netns"))
        .container();
    refused(
        &c,
        "create joining a missing netns path",
        &["/nonexistent/netns", "namespace"],
    );
}

#[test]
fn unknown_rlimit() {
    let c = Bundle::new(&["true"])
        .config(|c| {
            c["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}])
        })
        .container();
    refused(&c, "create with RLIMIT_BOGUS", &["RLIMIT_BOGUS", "rlimit"]);
}

#[test]
fn bind_mount_of_missing_source() {
    let c = Bundle::new(&["true"])
        .config(|c| common::add_bind(c, "/nonexistent/src", "/x", &[]))
        .container();
    refused(&c, "create binding a missing source", &["/nonexistent/src"]);
}

#[test]
fn unknown_filesystem_type() {
    let c = Bundle::new(&["true"])
        .config(|c| {
            let m = json!({"destination": "/x", "type": "bogusfs", "source": "none"});
            c["mounts"].as_array_mut().unwrap().push(m);
        })
        .container();
    refused(
        &c,
        "create mounting type bogusfs",
        &["/x", "bogusfs", "no such device"],
    );
}

#[test]
fn missing_executable() {
    let c = Bundle::new(&["/no/such/binary"]).container();
    let out = c.run();
    out.assert_error("run of a missing executable", &["/no/such/binary"]);
    assert_clean(&c);
}

#[test]
fn invalid_container_ids() {
    let c = Bundle::new(&["true"]).container();
    for id in ["../escape", "a/b", "with space", ""] {
        let out = c.hull(&["create", "--bundle", &c.dir(), id]);
        out.assert_error(&format!("create with id {id:?}"), &["id"]);
    }
    assert!(
        !c.bundle.dir.join("escape").exists(),
        "expected no state dir outside --root"
    );
}

#[test]
fn mount_destination_escaping_root_is_confined_or_refused() {
    let host_etc_before = std::fs::read_dir("/etc").unwrap().count();
    let c = Bundle::new(&["sh", "-c", "grep ' /etc ' /proc/mounts; ls /etc | wc -l"])
        .config(|c| common::add_tmpfs(c, "../../etc", &[]))
        .container();
    let out = c.run();
    if out.code == 0 {
        // Confined: the tmpfs covers the container's /etc, inside its rootfs.
        assert!(
            out.stdout.starts_with("tmpfs /etc tmpfs"),
            "expected a tmpfs at the container's /etc: {out:?}"
        );
        assert!(
            out.stdout.ends_with("\n0\n"),
            "expected the container's /etc to be the empty tmpfs: {out:?}"
        );
    } else {
        out.assert_error("mount destination ../../etc", &["destination", "../../etc"]);
    }
    assert_eq!(
        std::fs::read_dir("/etc").unwrap().count(),
        host_etc_before,
        "host /etc unchanged"
    );
    assert!(
        c.bundle.rootfs.join("etc/passwd").exists(),
        "rootfs /etc/passwd untouched"
    );
    assert_clean(&c);
}

#[test]
fn duplicate_id_is_refused_and_first_survives() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("first create");
    let pid = c.pid();
    let out = c.hull(&["create", "--bundle", &c.dir(), &c.id]);
    out.assert_error("second create with the same id", &["exist"]);
    assert_eq!(c.status(), "created", "the first container is untouched");
    assert_eq!(c.pid(), pid, "the first container keeps its pid");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn start_twice_is_refused() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("first start");
    let out = c.start();
    out.assert_error(
        "start of a running container",
        &["running", "not in created state", "already"],
    );
    assert_eq!(c.status(), "running", "still running");
}

#[test]
fn start_of_stopped_container_is_refused() {
    let c = Bundle::new(&["true"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(10));
    c.start()
        .assert_error("start of a stopped container", &["stopped"]);
}

#[test]
fn kill_of_stopped_container_is_refused() {
    let c = Bundle::new(&["true"]).container();
    c.create().ok("create");
    c.start().ok("start");
    c.wait_status("stopped", Duration::from_secs(10));
    c.kill("KILL")
        .assert_error("kill of a stopped container", &["not running", "stopped"]);
}

#[test]
fn unknown_signal_is_refused() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.kill("BOGUS")
        .assert_error("kill with signal BOGUS", &["signal", "BOGUS"]);
    assert_eq!(
        c.status(),
        "created",
        "a refused kill leaves the container alone"
    );
}

#[test]
fn commands_on_a_missing_container() {
    let c = Bundle::new(&["true"]).container();
    for args in [
        vec!["state", c.id.as_str()],
        vec!["start", c.id.as_str()],
        vec!["kill", c.id.as_str(), "KILL"],
        vec!["delete", c.id.as_str()],
        vec!["ps", c.id.as_str()],
        vec!["pause", c.id.as_str()],
    ] {
        let out = c.hull(&args);
        out.assert_error(&args.join(" "), &["not exist", "not found", "no such"]);
    }
}

#[test]
fn delete_force_of_a_missing_container_succeeds() {
    let c = Bundle::new(&["true"]).container();
    let out = c.delete(true);
    assert_eq!(
        out.code, 0,
        "runc's delete --force of a missing container exits 0: {out:?}"
    );
}

#[test]
fn terminal_flags_without_terminal_config() {
    let c = Bundle::new(&["true"]).container();
    let sock = c.bundle.dir.join("nothing.sock").display().to_string();
    let out = c.create_with(&["--console-socket", &sock]);
    out.assert_error(
        "--console-socket with process.terminal false",
        &["console", "terminal"],
    );
    assert_clean(&c);
}
