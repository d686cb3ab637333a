//! The container process: env, cwd, user, umask, rlimits, oom score, no_new_privs,
//! capabilities, sysctl, personality.

mod common;

use common::{assert_clean, Bundle};
use serde_json::{json, Value};

fn run_sh(script: &str, edit: impl FnOnce(&mut Value)) -> String {
    let c = Bundle::new(&["sh", "-c", script]).config(edit).container();
    let out = c.run().ok(script);
    assert_clean(&c);
    out.stdout
}

/// The value of `Name:` in a /proc/self/status dump.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

#[test]
fn env_is_exactly_the_configured_one_plus_home() {
    let out = run_sh("echo \"$FOO\"; echo \"$HOME\"; env | sort", |c| {
        c["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY="]);
    });
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("bar baz"), "expected FOO with its space");
    assert_eq!(
        lines.next(),
        Some("/root"),
        "expected HOME from /etc/passwd for root"
    );
    let env: Vec<&str> = lines
        .filter(|l| !["SHLVL=", "PWD=", "_="].iter().any(|p| l.starts_with(p)))
        .collect();
    assert_eq!(
        env,
        ["EMPTY=", "FOO=bar baz", "HOME=/root", "PATH=/bin:/usr/bin"],
        "expected only the configured env"
    );
}

#[test]
fn cwd_is_set_and_created_if_missing() {
    assert_eq!(
        run_sh("pwd", |c| c["process"]["cwd"] = json!("/etc")),
        "/etc\n",
        "cwd /etc"
    );
    let out = run_sh("pwd", |c| c["process"]["cwd"] = json!("/home/test/new/dir"));
    assert_eq!(
        out, "/home/test/new/dir\n",
        "expected a missing cwd to be created"
    );
}

#[test]
fn user_uid_gid_and_additional_gids() {
    let out = run_sh("id; echo $HOME", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 65534]});
    });
    assert_eq!(
        out, "uid=1000(test) gid=1000(test) groups=5(tty),65534(nogroup)\n/home/test\n",
        "expected uid/gid 1000, exactly the additional gids, and HOME from /etc/passwd"
    );
}

#[test]
fn non_root_user_cannot_write_root_owned_files() {
    let out = run_sh("{ echo x > /tmp/root-only/f; } 2>&1; echo rc=$?", |c| {
        c["process"]["user"] = json!({"uid": 65534, "gid": 65534});
        common::add_tmpfs(c, "/tmp/root-only", &["mode=755"]);
    });
    assert!(
        out.contains("Permission denied"),
        "expected EACCES for nobody: {out:?}"
    );
}

#[test]
fn umask_is_applied() {
    let out = run_sh("umask; touch /tmp/f; stat -c %a /tmp/f", |c| {
        c["process"]["user"]["umask"] = json!(0o027);
        common::add_tmpfs(c, "/tmp", &["mode=1777"]);
    });
    assert_eq!(
        out, "0027\n640\n",
        "expected umask 0027 and a file created 0640"
    );
}

#[test]
fn rlimits_are_applied() {
    let out = run_sh(
        "ulimit -n; ulimit -Hn; grep core /proc/self/limits | tr -s ' '",
        |c| {
            c["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096}
            ]);
        },
    );
    assert_eq!(
        out, "512\n1000\nMax core file size 0 4096 bytes \n",
        "expected the configured NOFILE and CORE limits"
    );
}

#[test]
fn oom_score_adj_is_applied() {
    let out = run_sh("cat /proc/self/oom_score_adj", |c| {
        c["process"]["oomScoreAdj"] = json!(500)
    });
    assert_eq!(out, "500\n", "expected oom_score_adj 500");
}

#[test]
fn no_new_privileges_true_and_false() {
    let on = run_sh("cat /proc/self/status", |_| {});
    assert_eq!(
        status_field(&on, "NoNewPrivs"),
        "1",
        "expected NoNewPrivs 1 (runc spec sets it)"
    );
    let off = run_sh("cat /proc/self/status", |c| {
        c["process"]["noNewPrivileges"] = json!(false)
    });
    assert_eq!(
        status_field(&off, "NoNewPrivs"),
        "0",
        "expected NoNewPrivs 0 when false"
    );
}

#[test]
fn default_capabilities_of_runc_spec() {
    let st = run_sh("cat /proc/self/status", |_| {});
    // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
    for (field, want) in [
        ("CapInh", "0000000000000000"),
        ("CapPrm", "0000000020000420"),
        ("CapEff", "0000000020000420"),
        ("CapBnd", "0000000020000420"),
        // Ambient needs the inheritable bit too, which runc spec does not list.
        ("CapAmb", "0000000000000000"),
    ] {
        assert_eq!(status_field(&st, field), want, "expected {field} {want}");
    }
}

#[test]
fn capabilities_all_five_sets_for_non_root() {
    let st = run_sh("cat /proc/self/status", |c| {
        let caps = json!(["CAP_CHOWN", "CAP_NET_RAW"]);
        c["process"]["capabilities"] = json!({
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": caps, "ambient": caps
        });
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        c["process"]["noNewPrivileges"] = json!(false);
    });
    // CAP_CHOWN (0) and CAP_NET_RAW (13), kept across the uid change through ambient.
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&st, field),
            "0000000000002001",
            "expected {field} = CHOWN|NET_RAW"
        );
    }
}

#[test]
fn dropped_capability_is_enforced() {
    // Without CAP_CHOWN root cannot chown; with it, it can.
    let script = "touch /tmp/f; chown 1000 /tmp/f 2>&1; echo rc=$?";
    let denied = run_sh(script, |c| common::add_tmpfs(c, "/tmp", &[]));
    assert!(
        denied.ends_with("rc=1\n"),
        "expected chown to fail without CAP_CHOWN: {denied:?}"
    );
    let allowed = run_sh(script, |c| {
        common::add_tmpfs(c, "/tmp", &[]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_CHOWN"));
        }
    });
    assert_eq!(allowed, "rc=0\n", "expected chown to work with CAP_CHOWN");
}

#[test]
fn sysctl_is_applied_in_the_containers_namespaces() {
    let host_shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    let out = run_sh(
        "cat /proc/sys/kernel/shmmax /proc/sys/net/ipv4/ip_forward",
        |c| {
            c["linux"]["sysctl"] =
                json!({"kernel.shmmax": "123456789", "net.ipv4.ip_forward": "1"});
        },
    );
    assert_eq!(
        out, "123456789\n1\n",
        "expected the configured sysctls inside"
    );
    let after = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    assert_eq!(
        host_shmmax, after,
        "expected the host's kernel.shmmax unchanged"
    );
}

#[test]
fn args_are_passed_verbatim() {
    let c = Bundle::new(&["/bin/echo", "a b", "", "$HOME", "*"]).container();
    let out = c.run().ok("echo");
    assert_eq!(
        out.stdout, "a b  $HOME *\n",
        "expected args without shell expansion"
    );
}

#[test]
fn personality_linux32() {
    hull_only!(); // runc 1.1 ignores linux.personality
    let out = run_sh("uname -m", |c| {
        c["linux"]["personality"] = json!({"domain": "LINUX32"})
    });
    assert_eq!(
        out, "i686\n",
        "expected a 32-bit machine name under LINUX32"
    );
}
