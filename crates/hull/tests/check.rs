//! `hull check`: what this host offers for VM isolation (KVM and its measured speed,
//! vhost-vsock, QEMU, cgroups, guest assets), as text lines and as JSON.

mod common;

use common::{hull_bin, run_with_timeout, unique_name, Out};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `hull check ARGS`, with `path` as PATH when given.
fn check(args: &[&str], path: Option<&str>) -> Out {
    let dir = std::env::temp_dir().join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(hull_bin());
    cmd.arg("check").args(args).stdin(Stdio::null());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = run_with_timeout(&mut cmd, &dir, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn line<'a>(out: &'a Out, label: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .unwrap_or_else(|| panic!("no {label} line in {out:?}"))
}

fn has_kvm() -> bool {
    Path::new("/dev/kvm").exists()
}

#[test]
fn check_reports_a_measured_kvm_speed() {
    hull_only!();
    let out = check(&[], None);
    for label in ["kvm", "vhost-vsock", "qemu", "cgroups", "guest"] {
        line(&out, label);
    }
    let kvm = line(&out, "kvm");
    if has_kvm() {
        let rate = kvm
            .split(" M guest instructions/s")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok());
        assert!(
            kvm.contains("API 12") && rate.is_some_and(|r| r > 0.0),
            "the kvm line reports a measured rate: {kvm}"
        );
    }
    let qemu = line(&out, "qemu");
    if qemu.contains("QEMU emulator version") {
        assert_eq!(out.code, 0, "QEMU is installed: VM mode can run: {out:?}");
    } else if out.code != 0 {
        out.assert_error("check", &["apt-get install qemu-system-x86"]);
    }
}

#[test]
fn check_json_parses() {
    hull_only!();
    let out = check(&["--format", "json"], None);
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check --format json: {e}: {out:?}"));
    let verdict = v["kvm"]["accel"]["verdict"].as_str().unwrap_or_default();
    assert!(
        ["hardware", "emulated", "unusable", "absent"].contains(&verdict),
        "{v}"
    );
    if has_kvm() {
        assert!(
            v["kvm"]["accel"]["detail"]["ips"].as_u64().unwrap_or(0) > 0,
            "measured: {v}"
        );
        assert!(
            v["kvm"]["measurement"]["instructions"]
                .as_u64()
                .unwrap_or(0)
                > 0
        );
    }
    for key in ["vhost_vsock", "qemu", "cgroups", "guest"] {
        assert!(v[key].is_object(), "{key}: {v}");
    }
    assert_eq!(v["vm_capable"].as_bool(), Some(out.code == 0), "{out:?}");
}

#[test]
fn check_without_qemu_says_what_to_install() {
    hull_only!();
    let out = check(&[], Some("/nonexistent"));
    assert!(line(&out, "qemu").contains("not installed (apt-get install qemu-system-x86)"));
    if line(&out, "kvm").contains("hardware-accelerated") {
        assert_eq!(out.code, 0, "hardware KVM alone runs VM mode: {out:?}");
    } else {
        out.assert_error("check without QEMU", &["apt-get install qemu-system-x86"]);
    }
}

#[test]
fn check_rejects_bad_flags() {
    hull_only!();
    check(&["--format", "xml"], None).assert_error("check --format xml", &["text or json"]);
    check(&["extra"], None).assert_error("check extra", &["no arguments"]);
}
