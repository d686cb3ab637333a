//! A VM container's resources: the memory limit sizes the guest (plus the guest's own
//! overhead), the CPU quota picks the vCPUs, the same limits hold in the guest's
//! cgroup, and the host cgroup that holds the proxy and the VMM is sized for the whole
//! sandbox, so that the engine's accounting and limits cover the VM. Boots real VMs.

mod common;

use common::vm::{guest_meminfo, recorded_oom_kills, run_under_qemu, wait_recorded_oom_kills};
use common::{assert_clean, Bundle};

const MIB: i64 = 1 << 20;

#[test]
fn limits_size_the_guest_and_the_host_cgroup_holds_the_whole_sandbox() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"])
        .config(|v| {
            v["linux"]["resources"] = serde_json::json!({
                "memory": {"limit": 96 * MIB},
                "cpu": {"quota": 100000, "period": 100000, "shares": 512}
            })
        })
        .container();
    c.run_detached("vm").ok("run -d in a VM");
    // The guest: one vCPU for a quota of one CPU, its memory the limit plus 64 MiB.
    let out = c
        .exec(&[
            "sh",
            "-c",
            "nproc; grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/memory.max",
        ])
        .ok("exec");
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("1"), "vCPUs: {out:?}");
    let total_kib: i64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {out:?}"));
    let guest = 160 * MIB;
    assert!(
        total_kib * 1024 > guest - 32 * MIB && total_kib * 1024 <= guest,
        "the guest has {total_kib} KiB, for {guest} bytes asked: {out:?}"
    );
    assert_eq!(
        lines.next(),
        Some((96 * MIB).to_string().as_str()),
        "{out:?}"
    );
    // The host: the whole guest plus the VMM's 128 MiB, and the container's CPU limits.
    let limit: i64 = c
        .cgroup_read("memory", "memory.limit_in_bytes")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(limit, guest + 128 * MIB, "host memory limit");
    assert_eq!(c.cgroup_read("cpu", "cpu.cfs_quota_us").trim(), "100000");
    assert_eq!(c.cgroup_read("cpu", "cpu.shares").trim(), "512");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

/// `events` streams an "oom" event when the OOM killer strikes in the container's
/// cgroup, as runc's does: the host's in a namespace, the guest's in a VM.
#[test]
fn events_report_the_oom_killer_in_both_isolations() {
    hull_only!();
    for iso in ["namespace", "vm"] {
        let c = Bundle::new(&["sleep", "600"])
            .config(|v| {
                v["linux"]["resources"] =
                    serde_json::json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}})
            })
            .container();
        c.run_detached(iso).ok("run -d");
        let log = c.bundle.dir.join("events.out");
        let mut events = std::process::Command::new(&c.bin)
            .arg("--root")
            .arg(&c.root)
            .args(["events", "--interval", "100ms", &c.id])
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Let events take its first look before the kill.
        std::thread::sleep(std::time::Duration::from_millis(800));
        let out = c.exec(&["sh", "-c", "tail /dev/zero"]);
        assert_eq!(out.code, 137, "{iso}: the OOM killer's SIGKILL: {out:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let oom = format!(r#"{{"type":"oom","id":"{}"}}"#, c.id);
        while !std::fs::read_to_string(&log).unwrap().contains(&oom) {
            assert!(
                std::time::Instant::now() < deadline,
                "{iso}: no oom event: {}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = events.kill();
        let _ = events.wait();
        c.delete(true).ok("delete --force");
        assert_clean(&c);
    }
}

/// A VM container's proxy records each OOM kill in the guest as it happens, with nobody
/// watching: the agent answers its WatchOom when the cgroup's count grows.
#[test]
fn a_vm_containers_oom_kills_are_recorded_as_they_happen() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"])
        .config(|v| {
            v["linux"]["resources"] =
                serde_json::json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}})
        })
        .container();
    c.run_detached("vm").ok("run -d");
    assert_eq!(recorded_oom_kills(&c), None);
    for kills in 1..=2 {
        let out = c.exec(&["sh", "-c", "tail /dev/zero"]);
        assert_eq!(out.code, 137, "the OOM killer's SIGKILL: {out:?}");
        wait_recorded_oom_kills(&c, kills, std::time::Duration::from_secs(5));
    }
    assert_eq!(c.status(), "running");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

/// An OOM kill that ends the container's init is reported too, although no sample
/// came between the kill and the stop: `events` ends right after the stop with the
/// kill as its last line (the shim waits for it to publish TaskOOM before TaskExit).
#[test]
fn events_report_an_oom_kill_that_stopped_the_container() {
    hull_only!();
    for iso in ["namespace", "vm"] {
        let hog = "sleep 2; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived";
        let c = Bundle::new(&["sh", "-c", hog])
            .config(|v| {
                v["linux"]["resources"] =
                    serde_json::json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}})
            })
            .container();
        c.run_detached(iso).ok("run -d");
        let started = std::time::Instant::now();
        let events = std::process::Command::new(&c.bin)
            .arg("--root")
            .arg(&c.root)
            .args(["events", "--interval", "60s", &c.id])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&events.stdout);
        assert!(events.status.success(), "{iso}: {events:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{iso}: events outlived the container by far: {:?}",
            started.elapsed()
        );
        let oom = format!(r#"{{"type":"oom","id":"{}"}}"#, c.id);
        assert_eq!(out.lines().last(), Some(oom.as_str()), "{iso}: {out}");
        c.delete(true).ok("delete --force");
        assert_clean(&c);
    }
}

/// Memory the guest frees goes back to the host (virtio-balloon free page reporting,
/// QEMU): 80 MB written to a tmpfs in the container and removed leave the VMM's RSS
/// where it was, not 80 MB higher, within seconds.
#[test]
fn memory_the_guest_frees_goes_back_to_the_host() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"])
        .config(|v| v["root"]["readonly"] = false.into())
        .container();
    c.run_detached("vm").ok("run -d in a VM");
    let proxy = c.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{proxy}/task/{proxy}/children")).unwrap_or_default();
    let vmm: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no VMM under the proxy {proxy}"));
    let rss_mib = || -> i64 {
        let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
        let kib: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024
    };
    let before = rss_mib();
    let script = "dd if=/dev/zero of=/tmp/big bs=1M count=80 2>/dev/null; rm /tmp/big; echo freed";
    let out = c.exec(&["sh", "-c", script]).ok("write and remove 80 MB");
    assert_eq!(out.stdout, "freed\n");
    // Without reporting the 80 MB the guest touched stay in the VMM's RSS.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = rss_mib();
        if now <= before + 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM's RSS is {now} MiB after the guest freed 80 MB, {before} MiB before"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

/// `[vm] huge_pages` decides for QEMU as for hull-vmm: off (the default), QEMU runs
/// with transparent huge pages disabled, so its guest RAM (which it madvises for them)
/// costs the host what the guest touched in 4 KiB pages; on, QEMU keeps its own choice.
#[test]
fn qemu_guest_memory_is_in_small_pages_unless_huge_pages_are_asked_for() {
    hull_only!();
    for huge in [false, true] {
        let c = Bundle::new(&["sleep", "600"]).container();
        let conf = c.bundle.dir.join("hull.toml");
        std::fs::write(&conf, format!("[vm]\nhuge_pages = {huge}\n")).unwrap();
        let qemu = run_under_qemu(&c, Some(&conf));
        let field = |file: &str, key: &str| -> String {
            std::fs::read_to_string(format!("/proc/{qemu}/{file}"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {key} in /proc/{qemu}/{file}"))
        };
        assert_eq!(
            field("status", "THP_enabled:"),
            if huge { "1" } else { "0" }
        );
        if !huge {
            assert_eq!(field("smaps_rollup", "AnonHugePages:"), "0 kB");
        }
        c.delete(true).ok("delete --force");
        assert_clean(&c);
    }
}

/// The guest's kernel keeps its own memory small: QEMU's virtio-mmio offers 1024-entry
/// queues and virtio-console fills its receive queues with a 4 KiB buffer an entry,
/// which took 8 MiB of unreclaimable slab (11.3 MiB in all) until the guest kernel
/// capped queues at 256 entries (guest/virtio-mmio-queue-size.patch): 4.5 MiB now.
#[test]
fn the_guest_kernel_keeps_under_8_mib_of_unreclaimable_slab() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("vm").ok("run -d in a VM");
    let kib = guest_meminfo(&c)["SUnreclaim"];
    assert!(kib < 8 << 10, "the guest's unreclaimable slab is {kib} KiB");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

/// The guest boots from the agent's read-only disk, and the agent's binary is not a
/// copy in the guest's RAM: from an initramfs (or copied into a sealed memfd) its 2.6
/// MiB would be shmem for the VM's life, and all of it would have been read.
#[test]
fn the_guest_boots_from_the_agents_disk_and_keeps_little_of_the_agent_in_ram() {
    hull_only!();
    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("vm").ok("run -d in a VM");
    let cmdline = c.exec(&["cat", "/proc/cmdline"]).ok("cmdline").stdout;
    let info = guest_meminfo(&c);
    let (shmem, cached) = (info["Shmem"], info["Cached"]);
    println!("guest: Shmem {shmem} KiB, Cached {cached} KiB");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
    assert!(
        cmdline.contains("root=/dev/vda ro rootfstype=erofs"),
        "{cmdline}"
    );
    assert!(shmem < 1 << 10, "the guest holds {shmem} KiB of shmem");
    // The container's busybox and the agent's working set; the whole agent read in
    // 128 KiB windows made it ~3.7 MiB.
    assert!(cached < 3 << 10, "the guest caches {cached} KiB");
}
