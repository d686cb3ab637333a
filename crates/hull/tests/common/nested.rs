//! Where this host's /dev/kvm only emulates guest code (it cannot boot Linux), the
//! tests that need hull-vmm to boot the hull guest run their scenario in the nested
//! test bed instead (hull-testbed: an L1 guest of QEMU/TCG with emulated AMD SVM, whose
//! KVM runs guests): the same hull release build, the same guest, the same commands.
//! One L1 boot per `Nested`; its commands run in order.
//!
//! Needs the release build and the cached guest (scripts/test makes both); without
//! them the test fails and says what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_testbed::{CommandOutput, Options, L1};
use serde_json::Value;

pub struct Nested {
    l1: L1,
    scratch: PathBuf,
}

impl Nested {
    /// Boots L1 with `bundles` (name, config.json) ready to be made into busybox
    /// bundles at /tmp/NAME by `bundle_command`.
    pub fn boot(bundles: &[(&str, Value)]) -> Nested {
        let scratch = std::env::temp_dir().join(super::unique_name());
        std::fs::create_dir_all(&scratch).unwrap();
        let mut opts = Options::for_workspace();
        for (name, config) in bundles {
            let file = format!("{name}.json");
            std::fs::write(scratch.join(&file), config.to_string()).unwrap();
            opts.files.push((scratch.join(&file), file));
        }
        let l1 = L1::boot(&opts, &|m| eprintln!("hull-testbed: {m}"))
            .unwrap_or_else(|e| panic!("the nested test bed's L1 did not come up: {e}"));
        eprintln!(
            "running in the nested test bed (this host's KVM emulates): L1 {} up in {:.2} s",
            l1.kernel,
            l1.boot_time.as_secs_f64()
        );
        Nested { l1, scratch }
    }

    /// Runs `command` in L1 (busybox sh, hull on PATH, root) and prints what it did.
    pub fn run(&mut self, command: &str, timeout: Duration) -> CommandOutput {
        let out = self
            .l1
            .run(command, timeout)
            .unwrap_or_else(|e| panic!("L1: {command}: {e}"));
        eprintln!(
            "--- L1: exit {} in {:.2} s{}: {command}\n{}",
            out.code,
            out.elapsed.as_secs_f64(),
            if out.timed_out { " (timed out)" } else { "" },
            out.output
        );
        out
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The L1 command that makes /tmp/NAME a busybox bundle with the config given to
/// `Nested::boot` under NAME.
pub fn bundle_command(name: &str) -> String {
    let b = Path::new("/tmp").join(name);
    let b = b.display();
    format!(
        "mkdir -p {b}/rootfs/bin {b}/rootfs/proc {b}/rootfs/sys {b}/rootfs/dev {b}/rootfs/tmp \
         && cp /bin/busybox {b}/rootfs/bin/ && /bin/busybox --install -s {b}/rootfs/bin \
         && cp /testbed/files/{name}.json {b}/config.json"
    )
}

/// runc's spec running `args`, without a terminal.
pub fn config(args: &[&str]) -> Value {
    let mut c = super::runc_spec();
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(args);
    c
}
