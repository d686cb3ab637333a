//! `hull vmm` booting the hull guest's kernel with a busybox initramfs of the test's
//! own instead of the agent, so the guest itself reports what a container cannot ask
//! for: two vCPUs (hull gives a container no more vCPUs than L1 has CPUs, and L1 runs
//! one: its command channel and its timers were less reliable with two), each running,
//! the TSC-deadline timer on both, the PMU probe's verdict, and a raw virtio-blk disk
//! read whole.

use std::path::Path;

use hull_testbed::cpio::{self, Entry, Source};

use super::{exit_is, Checks};

const INIT: &str = "#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
echo \"nproc $(nproc)\"
for c in 1 0; do taskset -c $c awk '{print \"ran on cpu\", $39}' /proc/self/stat; done
echo \"tsc-deadline $(grep -c tsc_deadline_timer /proc/cpuinfo)\"
dmesg | grep -i 'performance events'
echo \"disk $(sha256sum /dev/vda)\"
reboot -f
";

/// Writes `l2.cpio` (busybox and the script above as /init) and `l2.json` (the VM)
/// into `dir`; returns their names.
pub fn write_files(dir: &Path) -> Vec<String> {
    let entries = vec![
        Entry::CharDev {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
        Entry::Dir { path: "bin".into() },
        Entry::File {
            path: "bin/busybox".into(),
            source: Source::Host("/bin/busybox".into()),
            mode: 0o755,
        },
        Entry::Symlink {
            path: "bin/sh".into(),
            target: "busybox".into(),
        },
        Entry::File {
            path: "init".into(),
            source: Source::Bytes(INIT.as_bytes().to_vec()),
            mode: 0o755,
        },
    ];
    cpio::write(&dir.join("l2.cpio"), &entries).unwrap();
    let vm = serde_json::json!({
        "kernel": "/var/lib/hull/guest/vmlinux",
        "initramfs": "/testbed/files/l2.cpio",
        "cmdline": format!("{} tsc=reliable", hull_sandbox::qemu::BASE_CMDLINE),
        "vcpus": 2,
        "memory_mib": 128,
        "serial": "stdout",
        "block": [{"path": "/tmp/disk.img", "read_only": true}],
    });
    std::fs::write(dir.join("l2.json"), vm.to_string()).unwrap();
    vec!["l2.cpio".into(), "l2.json".into()]
}

pub fn smp_checks(c: &mut Checks) {
    let cmd = "dd if=/dev/urandom of=/tmp/disk.img bs=1M count=16 2>/dev/null && \
        echo \"l1 $(sha256sum /tmp/disk.img)\" && hull vmm --config /testbed/files/l2.json";
    c.check("SMP, TSC-deadline, the PMU and a raw disk", cmd, 90, |o| {
        exit_is(o, 0)?;
        let lines: Vec<&str> = o.output.lines().map(str::trim_end).collect();
        for want in ["nproc 2", "ran on cpu 1", "ran on cpu 0", "tsc-deadline 2"] {
            if !lines.contains(&want) {
                return Err(format!("no line {want:?}"));
            }
        }
        let sum = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix)?.split_whitespace().next())
                .map(str::to_string)
        };
        match (sum("l1 "), sum("disk ")) {
            (Some(a), Some(b)) if a == b && a.len() == 64 => {}
            other => return Err(format!("the guest read other bytes: {other:?}")),
        }
        // L1's KVM has no vPMU (TCG's SVM gives L1 no counters): the guest's probe
        // (check_hw_exists) reads back 0 for what it wrote and goes without one.
        match o.output.contains("PMU not available due to virtualization") {
            true => Ok(()),
            false => Err("the guest did not report its PMU probe's verdict".into()),
        }
    });
}
