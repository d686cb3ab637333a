//! A reader that goes away: every command whose output is read through a pipe ends
//! quietly when its reader closes after one byte (`hull ... | head -c1`), as runc and
//! coreutils do: killed by SIGPIPE (or done before the reader left), nothing on
//! stderr, no panic and no abort. In each isolation, since `ps`, `events` and `state`
//! of a VM container ask its agent in the guest.

mod common;

use common::vm::assert_vm_gone;
use common::{assert_clean, Bundle, Container};

/// `hull ARGS | head -c1` under bash, bounded by `timeout`; returns hull's exit status
/// as the shell reports it (141 = SIGPIPE) and what hull wrote to stderr.
fn piped_to_head(c: &Container, args: &[&str]) -> (i32, String) {
    let err = c.bundle.dir.join("piped.err");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"timeout 60 "$@" 2>"$ERR" | head -c1 >/dev/null; echo "${PIPESTATUS[0]}""#)
        .arg("bash")
        .arg(&c.bin)
        .arg("--root")
        .arg(&c.root)
        .args(args)
        .env("ERR", &err)
        .output()
        .expect("run bash");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1);
    (status, std::fs::read_to_string(&err).unwrap_or_default())
}

/// Every piped command on the running container `c`.
fn every_command_ends_quietly(c: &Container) {
    let commands: [(&[&str], bool); 10] = [
        (&["features"], false),
        (&["check"], false),
        (&["list"], false),
        (&["list", "--format", "json"], false),
        (&["state", &c.id], false),
        (&["ps", &c.id], false),
        (&["ps", "--format", "json", &c.id], false),
        (&["events", "--stats", &c.id], false),
        // A stream without end: only the reader's going away ends it.
        (&["events", "--interval", "100ms", &c.id], true),
        (&["--help"], false),
    ];
    for (args, endless) in commands {
        let (status, stderr) = piped_to_head(c, args);
        eprintln!("hull {args:?} | head -c1: exit status {status}");
        // `check` exits 1 where VM isolation cannot run; its reason is its own line.
        let quiet = stderr.is_empty() || (args == ["check"] && !stderr.contains("panic"));
        assert!(quiet, "hull {args:?} | head -c1: stderr {stderr:?}");
        let ok = if endless {
            status == 141
        } else {
            [0, 141].contains(&status) || (args == ["check"] && status == 1)
        };
        assert!(
            ok,
            "hull {args:?} | head -c1: exit status {status}, stderr {stderr:?}"
        );
        closed_before_the_first_write(c, args);
    }
}

/// The reader gone before hull writes at all: the first write meets EPIPE, so hull
/// must die of SIGPIPE, silently.
fn closed_before_the_first_write(c: &Container, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let out = std::process::Command::new(&c.bin)
        .arg("--root")
        .arg(&c.root)
        .args(args)
        .stdout(std::process::Stdio::from(w))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "hull {args:?}: {:?} {stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "hull {args:?} into a closed pipe: {stderr}"
    );
}

#[test]
fn piped_into_head_every_command_ends_quietly_in_namespaces() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("namespace").ok("run -d");
    every_command_ends_quietly(&c);
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn piped_into_head_every_command_ends_quietly_in_a_vm() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("vm").ok("run -d in a VM");
    assert_eq!(c.state()["isolation"], "vm");
    every_command_ends_quietly(&c);
    // The container and its VM outlived the readers that went away.
    assert_eq!(c.status(), "running");
    c.delete(true).ok("delete --force");
    assert_vm_gone(&c);
}
