//! The VMM runs jailed (issue 15): each promise checked from the host while the VMM
//! runs. hull-vmm with a tiny guest on this host's KVM (it confines itself once the VM
//! is built); QEMU under a VM container, as hull starts it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::vm::run_under_qemu;
use common::*;

/// `/proc/PID/status` field `name`, whitespace-joined.
fn status(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a jailed VMM must show, whatever the VMM: not root, no capability now or
/// later, no_new_privs, every thread filtered, namespaces of its own, a root holding
/// only `expected` (sorted names), and limits.
fn assert_jailed(pid: u32, uid: u32, expected: &[&str], bounding_may_keep: &str) {
    let id = format!("{uid} {uid} {uid} {uid}");
    assert_eq!(status(pid, "Uid"), id, "uid");
    assert_eq!(status(pid, "Gid"), id, "gid");
    // None, or only its own gid (QEMU's -runas sets that one).
    let groups = status(pid, "Groups");
    assert!(
        groups.is_empty() || groups == uid.to_string(),
        "groups {groups}"
    );
    for cap in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(status(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status(pid, "CapBnd"), bounding_may_keep, "CapBnd");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().file_name();
        let s = std::fs::read_to_string(format!(
            "/proc/{pid}/task/{}/status",
            task.to_string_lossy()
        ))
        .unwrap_or_default();
        // A thread that ended between the listing and the read has no status.
        if let Some(line) = s.lines().find(|l| l.starts_with("Seccomp:")) {
            assert_eq!(
                line.split_whitespace().nth(1),
                Some("2"),
                "thread {task:?}: {line}"
            );
        }
    }
    for ns in ["mnt", "net", "ipc", "uts"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(mine, its, "the {ns} namespace is the host's");
    }
    // Its root: what it sees of the file system. No /proc, so no host process either.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected, "the VMM's root");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    for (name, value) in [("Max open files", "4096"), ("Max file size", "67108864")] {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains(value), "{line}");
    }
}

/// A failed assertion must not leave the VMM it checked running.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill(2) on the test's own child's pid, not yet reaped.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn hull_vmm_confines_itself_before_the_guest_runs() {
    hull_only!();
    let dir = std::env::temp_dir().join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    // Outside the jail, where the VMM must not reach.
    let secret = std::env::temp_dir().join(format!("{}-secret", unique_name()));
    std::fs::write(&secret, "host only").unwrap();
    // out 'K' to COM1, then spin: a guest that runs until stopped.
    let spin = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xeb, 0xfe];
    std::fs::write(dir.join("kernel"), hull_vmm::tiny::pvh_elf(&spin)).unwrap();
    let jail = hull_sandbox::jail::JailId::claim().unwrap();
    let config = serde_json::json!({"kernel": dir.join("kernel"), "memory_mib": 16, "vcpus": 2,
        "serial": {"file": dir.join("serial")}, "shutdown_grace_ms": 100,
        "jail": {"root": dir, "uid": jail.uid, "gid": jail.gid}});
    std::fs::write(dir.join("vm.json"), config.to_string()).unwrap();
    let mut child = Command::new(hull_bin())
        .args(["vmm", "--config"])
        .arg(dir.join("vm.json"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reap = KillOnPanic(child.id());
    let start = Instant::now();
    while std::fs::read_to_string(dir.join("serial")).unwrap_or_default() != "K" {
        assert!(
            child.try_wait().unwrap().is_none(),
            "hull vmm ended: {:?}",
            child.wait_with_output()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the guest never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id();
    assert_jailed(
        pid,
        jail.uid,
        &["kernel", "serial", "vm.json"],
        "0000000000000000",
    );
    // The root is read-only, and the host's files are not there at all.
    let root = format!("/proc/{pid}/root");
    assert!(!Path::new(&root)
        .join(secret.strip_prefix("/").unwrap())
        .exists());
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mounts.lines().count(), 1, "{mounts}");
    assert!(mounts.contains(" / ro,nosuid,nodev,noexec"), "{mounts}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(jail);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&secret).unwrap();
}

/// QEMU as every VM container's: its own uid, `-chroot` into an empty directory;
/// CAP_SETUID, CAP_SETGID, CAP_SYS_CHROOT are all the bounding set kept for -runas and
/// -chroot, and none is held.
fn assert_qemu_jailed(qemu: u32) {
    let uid: u32 = status(qemu, "Uid")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid >= hull_sandbox::jail::ID_BASE, "QEMU runs as {uid}");
    assert_jailed(qemu, uid, &[], "00000000000400c0");
}

#[test]
fn qemu_runs_jailed_under_a_vm_container() {
    hull_only!();
    let c = Bundle::new(&["sleep", "30"]).container();
    let qemu = run_under_qemu(&c, None);
    assert_qemu_jailed(qemu);
    let out = c.hull(&["exec", &c.id, "sh", "-c", "echo still serving"]);
    assert_eq!(out.stdout, "still serving\n", "{out:?}");
    let out = c.hull(&["delete", "--force", &c.id]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// A VM that shares a directory: QEMU is jailed as any other (its uid, `-chroot` into
/// an empty directory, no capability); the guest's file operations are a
/// virtfs-proxy-helper's, chrooted into the shared directory and in namespaces of its
/// own, that QEMU reaches over a socket; the share works both ways.
#[test]
fn qemu_that_shares_a_directory_is_jailed_and_its_helper_chrooted_into_the_share() {
    hull_only!();
    let c = Bundle::new(&["sleep", "30"])
        .config(|v| {
            let vol = v["root"]["path"].as_str().unwrap().replace("rootfs", "vol");
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind"]}));
        })
        .container();
    let vol = c.bundle.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let qemu = run_under_qemu(&c, None);
    let _kill = KillOnPanic(qemu);
    assert_qemu_jailed(qemu);
    let state: serde_json::Value = serde_json::from_str(&c.hull(&["state", &c.id]).stdout).unwrap();
    let proxy = state["pid"].as_u64().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{proxy}/task/{proxy}/children")).unwrap();
    let helper = children
        .split_whitespace()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("virtfs-proxy"))
        })
        .expect("the 9p helper, a child of the proxy");
    let root = std::fs::read_link(format!("/proc/{helper}/root")).unwrap();
    assert_eq!(
        root,
        vol.canonicalize().unwrap(),
        "the helper's root is the share"
    );
    let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{helper}/ns/net")).unwrap(),
        mine
    );
    let helper_pid: u32 = helper.parse().unwrap();
    assert_eq!(status(helper_pid, "NoNewPrivs"), "1");
    assert_eq!(
        status(helper_pid, "CapBnd"),
        "0000000000000000",
        "it empties its bounding set"
    );
    let out = c.hull(&[
        "exec",
        &c.id,
        "sh",
        "-c",
        "echo from the guest > /vol/f; ls /vol",
    ]);
    assert_eq!(out.stdout, "f\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap(),
        "from the guest\n"
    );
    let out = c.hull(&["delete", "--force", &c.id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{helper}")).exists(),
        "the helper outlived its VM"
    );
}
