//! `hull vmm --config FILE`: hull's own VMM booting the hull guest kernel on this host's
//! KVM, stopping on SIGTERM, and refusing bad configs. Needs the guest that
//! `hull guest build` makes (scripts/test builds it); without it these tests fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_sandbox::guest::{GuestAssets, DEFAULT_DIR};
use hull_sandbox::hypervisor::Accel;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(common::unique_name());
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guest() -> GuestAssets {
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_DIR.into());
    GuestAssets::locate(&dir)
        .unwrap_or_else(|e| panic!("{e} (scripts/test builds the guest before the tests)"))
}

/// Runs `hull vmm` on `config` (written to the dir), killing it after `limit`.
fn vmm(dir: &Path, config: serde_json::Value, limit: Duration) -> (Option<i32>, String) {
    let path = dir.join("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(common::hull_bin())
        .args(["vmm", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("hull vmm still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[test]
fn the_hull_guest_kernel_takes_what_hull_vmm_gives_it() {
    hull_only!();
    let g = guest();
    let d = Dir::new();
    let serial = d.0.join("serial");
    let memory: u64 = 128 << 20;
    // earlyprintk: the 8250 console registers long after the point this KVM reaches.
    let cmdline = "earlyprintk=serial,ttyS0 console=ttyS0 noxsave reboot=k panic=-1";
    let config = serde_json::json!({
        "kernel": g.vmlinux, "initramfs": g.initramfs, "cmdline": cmdline,
        "vcpus": 2, "memory_mib": memory >> 20, "serial": {"file": serial},
    });
    let emulating = Accel::detect() == Accel::Tcg;
    eprintln!(
        "booting the hull guest kernel under hull-vmm ({})",
        if emulating {
            "this KVM emulates guest code: the boot stops at an instruction it lacks"
        } else {
            "hardware KVM: the guest boots to its agent"
        }
    );
    let (code, err) = vmm(&d.0, config, Duration::from_secs(240));
    let log = std::fs::read_to_string(&serial).unwrap();
    let tail = || log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    let size = std::fs::metadata(&g.initramfs).unwrap().len();
    let initrd = (memory - size) & !0xfff;
    for line in [
        "Linux version 6.1".to_string(),
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".into(),
        format!(
            "BIOS-e820: [mem 0x0000000000100000-{:#018x}] usable",
            memory - 1
        ),
        "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]".into(),
        "Processors: 2".into(),
        format!("RAMDISK: [mem {initrd:#010x}-{:#010x}]", memory - 1),
        format!("Kernel command line: {cmdline}"),
        "Hypervisor detected: KVM".into(),
    ] {
        assert!(
            log.contains(&line),
            "no {line:?} on the console ({err}); it ends:\n{}",
            tail()
        );
    }
    if emulating {
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("the guest stopped at RIP 0x") && err.contains("KVM cannot emulate"),
            "{err}"
        );
    } else {
        assert_eq!(code, Some(0), "{err}\n{}", tail());
    }
}

/// Starts `hull vmm` on a tiny guest, waits until the guest printed `ready` on its
/// console, sends SIGTERM, and returns the exit code, how long the exit took, and the
/// console.
fn sigterm(code: &[u8], grace_ms: u64, ready: &str) -> (Option<i32>, Duration, String) {
    let d = Dir::new();
    let kernel = d.0.join("kernel");
    std::fs::write(&kernel, hull_vmm::tiny::pvh_elf(code)).unwrap();
    let serial = d.0.join("serial");
    let config = serde_json::json!({"kernel": kernel, "memory_mib": 16, "vcpus": 2,
        "serial": {"file": serial}, "shutdown_grace_ms": grace_ms});
    std::fs::write(d.0.join("vm.json"), config.to_string()).unwrap();
    let mut child = Command::new(common::hull_bin())
        .args(["vmm", "--config"])
        .arg(d.0.join("vm.json"))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&serial).unwrap_or_default() != ready {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the guest stopped by itself"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the guest never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "SIGTERM did not stop hull vmm"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let console = std::fs::read_to_string(&serial).unwrap();
    (status.code(), start.elapsed(), console)
}

#[test]
fn sigterm_asks_the_guest_by_ctrl_alt_del_and_it_shuts_down() {
    hull_only!();
    let (code, took, console) = sigterm(hull_vmm::tiny::PVH_WAIT_FOR_CTRL_ALT_DEL, 5000, "K");
    assert_eq!(code, Some(0), "{console}");
    assert_eq!(console, "KD");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn sigterm_stops_a_guest_that_ignores_it_after_the_grace_and_exits_143() {
    hull_only!();
    // jmp $: a guest that never reads its keyboard; writes `K` first to say it runs.
    let spin = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xeb, 0xfe];
    let (code, took, console) = sigterm(&spin, 500, "K");
    assert_eq!(code, Some(143), "{console}");
    assert!(took >= Duration::from_millis(500), "no grace: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn bad_configs_get_one_clear_error() {
    hull_only!();
    let d = Dir::new();
    let missing = d.0.join("nope.json");
    let missing_tap = format!("hvm{}", std::process::id() % 1_000_000);
    let out = Command::new(common::hull_bin())
        .args(["vmm", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot read the VM config") && err.contains("nope.json"),
        "{err}"
    );

    for (config, needle) in [
        (
            serde_json::json!({"kernel": "/k", "vcpu": 1}),
            "unknown field `vcpu`",
        ),
        (
            serde_json::json!({"kernel": "/k", "vcpus": 0}),
            "vcpus must be 1 to",
        ),
        (
            serde_json::json!({"kernel": d.0.join("no-kernel")}),
            "cannot read",
        ),
        (
            serde_json::json!({"kernel": "/k", "net": [{"tap": "t0", "guest_mac": "01:00:00:00:00:01"}]}),
            "multicast",
        ),
        (
            serde_json::json!({"kernel": "/k", "net": [{"tap": "lo"}]}),
            "lo exists and is not a tap device",
        ),
        // A tap that does not exist is made for the VM, and goes with it: here the
        // kernel is missing, so the VM never runs.
        (
            serde_json::json!({"kernel": d.0.join("no-kernel"), "net": [{"tap": &missing_tap}]}),
            "cannot read",
        ),
    ] {
        let (code, err) = vmm(&d.0, config, Duration::from_secs(30));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(
        !Path::new("/sys/class/net").join(&missing_tap).exists(),
        "the tap made for the VM was left behind"
    );
}

#[test]
fn the_teardown_helper_keeps_only_the_vm_and_ends_with_it() {
    hull_only!();
    let d = Dir::new();
    let kernel = d.0.join("kernel");
    std::fs::write(
        &kernel,
        hull_vmm::tiny::pvh_elf(hull_vmm::tiny::PVH_BANG_AND_TRIPLE_FAULT),
    )
    .unwrap();
    let serial = d.0.join("serial");
    let config = serde_json::json!({"kernel": kernel, "memory_mib": 16, "vcpus": 2,
        "serial": {"file": serial}});
    std::fs::write(d.0.join("vm.json"), config.to_string()).unwrap();
    // output() waits for end-of-file on stdout and stderr too: the helper must not
    // hold them.
    let out = Command::new(common::hull_bin())
        .args(["--debug", "vmm", "--config"])
        .arg(d.0.join("vm.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), "!");
    let line = err
        .lines()
        .find(|l| l.contains("VM teardown handed to a helper process"))
        .unwrap_or_else(|| panic!("no teardown helper: {err}"));
    let pid: u32 = line
        .split("pid=")
        .nth(1)
        .and_then(|p| {
            p.trim_matches('"')
                .split(['"', ' '])
                .next()
                .map(String::from)
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    // While it lives it holds the VM's fd, the two vCPUs' and its pipe from hull,
    // nothing else; then it ends by itself.
    let start = Instant::now();
    loop {
        if matches!(
            hull_runtime::state::process_stat(pid as i32),
            None | Some(('Z', _))
        ) {
            break;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let link = link.to_string_lossy().into_owned();
                assert!(
                    link.starts_with("anon_inode:kvm-v") || link.starts_with("pipe:"),
                    "the teardown helper holds {link}"
                );
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the teardown helper {pid} is still there"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
