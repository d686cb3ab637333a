//! Rootless VM isolation for a user who may open /dev/kvm (group kvm on Debian). This
//! host's /dev/kvm is root's only, and a test must not change it: each test gives its
//! user a node of its own (the same device, 10:232, made in the test's directory,
//! group the user's) bound over /dev/kvm in a private mount namespace, and runs hull
//! as the user from there. The proxy is root of a user namespace that maps only the
//! user; the VMM is the user, jailed; state, the rootfs image cache and every process
//! are the user's, and delete leaves none of them.

mod common;

use std::path::PathBuf;

use common::rootless::{kvm_node, processes_of, with_kvm, TestUser};
use common::{make_busybox_rootfs, run_with_timeout, unique_name, Out, CMD_TIMEOUT};
use serde_json::{json, Value};

struct KvmUser {
    user: TestUser,
    dir: PathBuf,
    node: PathBuf,
}

impl KvmUser {
    fn new() -> KvmUser {
        let id = unique_name();
        let user = TestUser::new(&format!("hrv{}", &id["hull-test-".len()..]), &[]);
        let dir = PathBuf::from("/tmp").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        let node = kvm_node(&dir, &user);
        KvmUser { user, dir, node }
    }

    /// `args` as the user, with /dev/kvm its own in a private mount namespace.
    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = with_kvm(&self.user.command(args), &self.node);
        cmd.current_dir(&self.dir);
        run_with_timeout(&mut cmd, &self.dir, CMD_TIMEOUT)
    }

    fn hull(&self, args: &[&str]) -> Out {
        let bin = common::hull_bin();
        let mut all = vec![bin.as_str()];
        all.extend(args);
        self.run(&all)
    }

    /// A busybox bundle with the user's `hull spec --rootless` config, running `args`.
    fn bundle(&self, args: &[&str]) -> PathBuf {
        let b = self.dir.join("bundle");
        make_busybox_rootfs(&b.join("rootfs"));
        self.user.give(&self.dir);
        let bundle = b.display().to_string();
        self.hull(&["spec", "--rootless", "--bundle", &bundle])
            .ok("spec --rootless");
        let path = b.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["root"]["readonly"] = json!(false);
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        b
    }
}

impl Drop for KvmUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The user's processes, once those that ended have been reaped (an orphaned proxy is
/// init's to reap, a moment after it exits).
fn left_of(uid: u32) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left: Vec<String> = processes_of(uid)
            .into_iter()
            .map(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                format!("{p}: {stat}")
            })
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_user_who_may_open_dev_kvm_runs_a_vm_container_without_root() {
    hull_only!();
    let k = KvmUser::new();
    let script = "uname -r; id -u; cat /proc/self/uid_map; echo written > /tmp/f; cat /tmp/f";
    let bundle = k.bundle(&["sh", "-c", script]);
    let dir = bundle.display().to_string();
    let out = k.hull(&["--isolation", "vm", "run", "--bundle", &dir, "rv1"]);
    let out = out.ok("rootless run in a VM");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert_ne!(
        lines[0],
        host_release(),
        "the guest's kernel, not the host's"
    );
    assert_eq!(lines[1], "0", "root in the container");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        map,
        ["0", &k.user.uid.to_string(), "1"],
        "mapped to the user"
    );
    assert_eq!(lines[3], "written", "the guest's overlay takes the write");
    let cache = k.user.home.join(".cache/hull/rootfs-cache");
    let images: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(
        images.len(),
        1,
        "the user's own image cache: {}",
        cache.display()
    );
    assert!(!k.user.runtime_dir.join("hull/rv1").exists(), "state left");
    assert_eq!(left_of(k.user.uid), Vec::<String>::new(), "processes left");
}

#[test]
fn a_rootless_vms_proxy_and_vmm_hold_nothing_of_the_host() {
    hull_only!();
    let k = KvmUser::new();
    let bundle = k.bundle(&["sleep", "60"]);
    let dir = bundle.display().to_string();
    k.hull(&["--isolation", "vm", "run", "-d", "--bundle", &dir, "rv2"])
        .ok("run -d");
    let state: Value = serde_json::from_str(&k.hull(&["state", "rv2"]).ok("state").stdout).unwrap();
    let proxy = state["pid"].as_u64().unwrap();
    let status = |pid: u64, key: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let children = std::fs::read_to_string(format!("/proc/{proxy}/task/{proxy}/children")).unwrap();
    let vmm: u64 = children.split_whitespace().next().unwrap().parse().unwrap();
    let uid = k.user.uid.to_string();
    for pid in [proxy, vmm] {
        assert_eq!(
            status(pid, "Uid").split_whitespace().next(),
            Some(uid.as_str())
        );
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        assert_eq!(
            map.split_whitespace().collect::<Vec<_>>(),
            ["0", uid.as_str(), "1"]
        );
    }
    // The VMM: chrooted into an empty directory, no_new_privs, filtered.
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .collect();
    assert!(root.is_empty(), "the VMM's root is not empty");
    // ... and cannot write to it: it keeps CAP_SYS_CHROOT of its namespace, and a
    // directory of its own there would let it chroot again below and climb out.
    let mountinfo = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
    let jail = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(3).is_some_and(|r| r.ends_with("/vm/jail")))
        .unwrap_or_else(|| panic!("no jail mount in {mountinfo}"));
    assert!(
        jail.split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
        "the VMM's root is writable: {jail}"
    );
    assert_eq!(status(vmm, "NoNewPrivs"), "1");
    assert_eq!(status(vmm, "Seccomp"), "2");
    let out = k
        .hull(&["exec", "rv2", "sh", "-c", "echo exec; id -u"])
        .ok("exec");
    assert_eq!(out.stdout, "exec\n0\n");
    k.hull(&["delete", "--force", "rv2"]).ok("delete --force");
    assert_eq!(left_of(k.user.uid), Vec::<String>::new(), "processes left");
    assert!(!k.user.runtime_dir.join("hull/rv2").exists(), "state left");
}
