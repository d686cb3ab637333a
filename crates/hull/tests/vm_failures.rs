//! A VM container whose sandbox cannot come up: a guest that does not boot, and one
//! whose agent never answers within the configured timeout. Each is one clear error
//! line from `create`, and nothing is left behind: no state, no process, no cgroup.
//! Boots real VMs (QEMU/TCG here).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::vm::assert_vm_gone;
use common::{assert_clean, Bundle, Container};

/// The cached guest's kernel (`hull guest build`, which scripts/test runs first).
fn guest_kernel() -> PathBuf {
    let text = std::fs::read_to_string("/var/lib/hull/guest/current.json")
        .expect("a built guest (scripts/test builds it before the tests)");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    PathBuf::from(v["vmlinux"].as_str().unwrap())
}

fn create_with(c: &Container, kernel: &Path, initramfs: &Path, timeout_s: u64) -> common::Out {
    let config = c.bundle.dir.join("hull.toml");
    std::fs::write(
        &config,
        format!(
            "[vm]\nhypervisor = \"qemu\"\nkernel = \"{}\"\ninitramfs = \"{}\"\nagent_timeout_s = {timeout_s}\n",
            kernel.display(),
            initramfs.display()
        ),
    )
    .unwrap();
    let args = ["--isolation", "vm", "create", "--bundle", &c.dir(), &c.id];
    c.hull_with(&args, |cmd| {
        cmd.env("HULL_CONFIG", &config);
    })
}

fn assert_nothing_left(c: &Container) {
    assert_vm_gone(c);
    assert_clean(c);
}

#[test]
fn a_guest_that_does_not_boot_is_one_error_and_leaves_nothing() {
    hull_only!();
    let c = Bundle::new(&["true"]).container();
    // No /init at all: the guest kernel panics, and the VM ends.
    let empty = c.bundle.dir.join("empty.cpio");
    std::fs::write(&empty, b"").unwrap();
    let started = Instant::now();
    let out = create_with(&c, &guest_kernel(), &empty, 60);
    out.assert_error("a guest without an init", &["vmm exited", "agent"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a VM that ended should not cost the agent timeout"
    );
    assert_nothing_left(&c);
}

#[test]
fn an_agent_that_never_answers_times_out_and_leaves_nothing() {
    hull_only!();
    let c = Bundle::new(&["true"]).container();
    // busybox's init instead of hull's agent: the guest runs, nothing answers.
    let tree = c.bundle.dir.join("initramfs");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("bin/busybox", tree.join("init")).unwrap();
    let cpio = c.bundle.dir.join("busybox.cpio");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            tree.display(),
            cpio.display()
        ))
        .status()
        .unwrap();
    assert!(ok.success(), "cpio");
    let started = Instant::now();
    let out = create_with(&c, &guest_kernel(), &cpio, 5);
    out.assert_error("an agent that never answers", &["5 s", "agent"]);
    assert!(started.elapsed() >= Duration::from_secs(5), "{out:?}");
    assert_nothing_left(&c);
}
