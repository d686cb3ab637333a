use std::path::PathBuf;

use super::*;

#[test]
fn instruction_rates_classify() {
    assert_eq!(
        Accel::classify(1_400_000),
        Accel::Emulated { ips: 1_400_000 }
    );
    assert_eq!(
        Accel::classify(HARDWARE_IPS - 1),
        Accel::Emulated {
            ips: HARDWARE_IPS - 1
        }
    );
    assert_eq!(
        Accel::classify(HARDWARE_IPS),
        Accel::Hardware { ips: HARDWARE_IPS }
    );
    assert!(Accel::classify(2_000_000_000).is_hardware());
    assert!(!Accel::Unusable("x".into()).is_hardware());
    assert_eq!(Accel::Absent("x".into()).ips(), None);
    assert_eq!(Accel::classify(5).ips(), Some(5));
}

#[test]
fn measurement_rate() {
    // 10 001 instructions in 14.0 ms: ~0.71 M/s, the emulated KVM of the dev machines.
    let m = Measurement {
        instructions: 20_001,
        nanos: 14_000_000,
        rounds: 2,
    };
    assert_eq!(m.ips(), 1_428_642);
    assert_eq!(millions(m.ips()), "1.4 M");
    assert_eq!(millions(1_234_000_000), "1234 M");
    assert_eq!(millions(12_000), "0.012 M");
    let zero = Measurement {
        instructions: 3,
        nanos: 0,
        rounds: 1,
    };
    assert_eq!(zero.ips(), 3_000_000_000);
}

#[test]
fn accel_json_shape() {
    let v = serde_json::to_value(Accel::Emulated { ips: 7 }).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"verdict": "emulated", "detail": {"ips": 7}})
    );
    let v = serde_json::to_value(Accel::Unusable("why".into())).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"verdict": "unusable", "detail": "why"})
    );
}

const HYBRID: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:32 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory
";

#[test]
fn cgroup_layouts_from_mountinfo() {
    let r = parse_cgroups(HYBRID);
    assert_eq!(r.layout, Some(CgroupLayout::Hybrid));
    assert_eq!(
        r.v1_controllers,
        ["cpu", "cpuacct", "memory", "name=systemd"]
    );
    assert_eq!(r.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));

    let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
    let r = parse_cgroups(unified);
    assert_eq!(r.layout, Some(CgroupLayout::V2));
    assert_eq!(r.unified, Some(PathBuf::from("/sys/fs/cgroup")));
    assert!(r.v1_controllers.is_empty());

    let v1: String = HYBRID
        .lines()
        .filter(|l| !l.contains("cgroup2"))
        .collect::<Vec<_>>()
        .join("\n");
    let r = parse_cgroups(&v1);
    assert_eq!(r.layout, Some(CgroupLayout::V1));
    assert_eq!(r.unified, None);

    let r = parse_cgroups("22 1 0:21 / /proc rw - proc proc rw\n");
    assert_eq!(r.layout, None);
}

#[test]
fn cgroup_lines() {
    let mut r = parse_cgroups(HYBRID);
    r.v2_controllers = vec!["hugetlb".into()];
    assert_eq!(
        r.to_string(),
        "hybrid: v1 hierarchies (cpu cpuacct memory name=systemd) + cgroup2 at /sys/fs/cgroup/unified (controllers: hugetlb)"
    );
}

#[test]
fn qemu_version_lines() {
    let out = "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
    let line = version_line(out).unwrap();
    assert_eq!(
        line,
        "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)"
    );
    assert_eq!(parse_release(&line), Some((7, 2, 15)));
    assert_eq!(
        parse_release("QEMU emulator version 8.1.0"),
        Some((8, 1, 0))
    );
    assert_eq!(parse_release("QEMU emulator version 9.0"), Some((9, 0, 0)));
    assert_eq!(
        parse_release("QEMU emulator version 6.2.0 (qemu-6.2.0-rc1)"),
        Some((6, 2, 0))
    );
    assert_eq!(parse_release("something else"), None);
    assert_eq!(version_line("\n\n"), None);

    let help = "Supported machines are:\nmicrovm              microvm (i386)\npc                   Standard PC (alias of pc-i440fx-7.2)\n";
    assert!(lists_machine(help, "microvm"));
    assert!(!lists_machine(help, "q35"));
}

fn sample() -> HostReport {
    HostReport {
        kvm: KvmReport {
            device: KVM_PATH.into(),
            api_version: Some(12),
            accel: Accel::Emulated { ips: 1_400_000 },
            measurement: None,
        },
        vhost_vsock: VsockReport {
            device: VSOCK_PATH.into(),
            present: false,
            error: None,
        },
        qemu: QemuReport {
            binary: QEMU_BINARY.into(),
            version: None,
            release: None,
            microvm: false,
            error: None,
        },
        cgroups: parse_cgroups(HYBRID),
        guest: GuestReport {
            dir: GUEST_DIR.into(),
            present: false,
            files: vec![],
        },
        vm_capable: false,
    }
}

#[test]
fn report_lines_are_aligned() {
    let text = sample().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    for (line, label) in lines
        .iter()
        .zip(["kvm", "vhost-vsock", "qemu", "cgroups", "guest"])
    {
        assert!(line.starts_with(label), "{line}");
        assert_eq!(line.as_bytes()[12], b' ', "{line}");
        assert_ne!(line.as_bytes()[13], b' ', "{line}");
    }
    assert!(lines[0].contains("API 12, emulated: 1.4 M guest instructions/s"));
    assert!(lines[2].ends_with("not installed (apt-get install qemu-system-x86)"));
    assert_eq!(lines[4], "guest        absent: run `hull guest build`");
}

#[test]
fn missing_says_what_to_install() {
    let mut r = sample();
    let msg = r.missing().unwrap();
    assert!(
        msg.contains("emulated") && msg.contains(QEMU_INSTALL),
        "{msg}"
    );
    r.vm_capable = true;
    assert_eq!(r.missing(), None);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["kvm"]["accel"]["verdict"], "emulated");
    assert_eq!(v["cgroups"]["layout"], "hybrid");
}

#[test]
fn the_rate_between_two_runs_cancels_the_cost_of_a_run() {
    use std::time::Duration;
    // As measured in a nested L1: 3.07 M iterations in 6.70 ms, 6.14 M in 12.91 ms; each
    // alone reads ~917 and ~952 M/s, their difference ~989 M/s.
    let m = super::kvm::marginal(
        Some((3_072_000, Duration::from_micros(6_700))),
        (6_144_000, Duration::from_micros(12_914)),
        7,
    );
    assert_eq!(
        (m.instructions, m.nanos, m.rounds),
        (6_144_000, 6_214_000, 7)
    );
    assert_eq!(m.ips(), 988_735_114);
    // No earlier run, or one that took longer (a cold first run): the last run alone.
    let alone = (1_000, Duration::from_millis(25));
    assert_eq!(super::kvm::marginal(None, alone, 2).instructions, 2_001);
    let cold = Some((500, Duration::from_millis(30)));
    assert_eq!(super::kvm::marginal(cold, alone, 2).nanos, 25_000_000);
}
