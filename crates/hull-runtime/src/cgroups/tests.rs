//! Tests against the host's real cgroups (root only). Every cgroup lives under a
//! `/hull-test-<unique>` parent that a Drop guard removes in every hierarchy, also when
//! an assertion fails.

use std::io::{Read, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::devices::tests::rule;
use super::*;

fn root() -> bool {
    let ok = nix::unistd::Uid::effective().is_root() && Path::new("/sys/fs/cgroup").exists();
    if !ok {
        eprintln!("skipped: needs root and /sys/fs/cgroup");
    }
    ok
}

fn unique_parent() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "/hull-test-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Owns the test's cgroup tree and child processes; cleans both up on drop.
struct Guard {
    cg: Cgroup,
    parent: String,
    children: Vec<Child>,
}

impl Guard {
    fn new(name: &str) -> Guard {
        let parent = unique_parent();
        let cg = Cgroup::resolve(Some(&format!("{parent}/{name}")), name).unwrap();
        Guard {
            cg,
            parent,
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, script: &str) -> u32 {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn parent_dirs(&self) -> Vec<std::path::PathBuf> {
        self.cg
            .hierarchies()
            .map(|h| h.mount_point().join(self.parent.trim_start_matches('/')))
            .collect()
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A frozen task cannot die: thaw before killing.
        let _ = self.cg.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.destroy();
        for d in self.parent_dirs() {
            assert!(d.to_string_lossy().contains("/hull-test-"));
            rmdir_tree(&d);
        }
    }
}

fn file(h: &Hierarchy, name: &str) -> String {
    std::fs::read_to_string(h.dir().join(name))
        .unwrap()
        .trim()
        .to_owned()
}

fn hier<'a>(cg: &'a Cgroup, controller: &str) -> Option<&'a Hierarchy> {
    cg.hierarchies().find(|h| h.has(controller))
}

fn limits() -> LinuxResources {
    let mem = LinuxMemoryBuilder::default()
        .limit(64i64 << 20)
        .reservation(32i64 << 20)
        .build()
        .unwrap();
    let cpu = LinuxCpuBuilder::default()
        .shares(512u64)
        .quota(50_000i64)
        .period(100_000u64)
        .cpus("0")
        .build()
        .unwrap();
    LinuxResourcesBuilder::default()
        .memory(mem)
        .cpu(cpu)
        .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
        .devices(vec![
            rule(false, None, None, None, Some("rwm")),
            rule(
                true,
                Some(LinuxDeviceType::C),
                Some(1),
                Some(3),
                Some("rwm"),
            ),
            rule(true, Some(LinuxDeviceType::C), Some(136), None, Some("rw")),
        ])
        .build()
        .unwrap()
}

#[test]
fn life_cycle_on_this_host() {
    if !root() {
        return;
    }
    let mut g = Guard::new("c1");
    let path = format!("{}/c1", g.parent);
    assert_eq!(g.cg.path(), path);
    g.cg.create(Some(&limits())).unwrap();
    for h in g.cg.hierarchies() {
        assert!(h.dir().is_dir(), "{}", h.dir().display());
        assert_eq!(h.created.len(), 2, "{h:?}");
    }
    // A state.json round trip keeps what destroy needs.
    let json = serde_json::to_string(&g.cg).unwrap();
    let back: Cgroup = serde_json::from_str(&json).unwrap();
    assert_eq!(back, g.cg);

    let v2 = g.cg.version() == CgroupVersion::V2;
    if let Some(h) = hier(&g.cg, "memory") {
        assert_eq!(file(h, "memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(
            file(h, "memory.soft_limit_in_bytes"),
            (32u64 << 20).to_string()
        );
    } else if v2 {
        let u = g.cg.unified.as_ref().unwrap();
        assert_eq!(file(u, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(file(u, "cpu.max"), "50000 100000");
    }
    if let Some(h) = hier(&g.cg, "pids") {
        assert_eq!(file(h, "pids.max"), "32");
    }
    if let Some(h) = hier(&g.cg, "cpu") {
        assert_eq!(file(h, "cpu.shares"), "512");
        assert_eq!(file(h, "cpu.cfs_quota_us"), "50000");
        assert_eq!(file(h, "cpu.cfs_period_us"), "100000");
    }
    if let Some(h) = hier(&g.cg, "cpuset") {
        assert_eq!(file(h, "cpuset.cpus"), "0");
        let parent = Hierarchy {
            dir: h.dir().parent().unwrap().to_path_buf(),
            ..h.clone()
        };
        assert!(
            !file(&parent, "cpuset.mems").is_empty(),
            "parent inherited mems"
        );
    }
    if let Some(h) = hier(&g.cg, "devices") {
        let list = file(h, "devices.list");
        assert!(
            list.contains("c 1:3 rwm") && list.contains("c 136:* rw"),
            "{list}"
        );
        assert!(!list.contains("a *:*"), "{list}");
    }

    // Join a process, then freeze, thaw, count and measure it.
    let pid = g.spawn("exec sleep 5");
    g.cg.add_task(pid as i32).unwrap();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for h in g.cg.hierarchies() {
        let line = own
            .lines()
            .find(|l| l.split(':').nth(1) == Some(h.controllers()));
        assert_eq!(
            line.and_then(|l| l.splitn(3, ':').nth(2)),
            Some(h.path()),
            "{own}"
        );
    }
    assert_eq!(g.cg.pids().unwrap(), vec![pid as i32]);
    assert!(!g.cg.is_frozen().unwrap());
    g.cg.freeze().unwrap();
    assert!(g.cg.is_frozen().unwrap());
    g.cg.thaw().unwrap();
    assert!(!g.cg.is_frozen().unwrap());

    let s = g.cg.stats().unwrap();
    assert_eq!(s.pids.current, 1);
    assert_eq!(s.pids.limit, 32);
    assert_eq!(s.memory.usage.limit, 64 << 20);
    assert!(!s.memory.raw.is_empty());
    let v = serde_json::to_value(&s).unwrap();
    for key in ["cpu", "cpuset", "memory", "pids", "blkio", "hugetlb"] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }

    // hull update: raise, then lower, memory together with memory+swap.
    if let Some(h) =
        hier(&g.cg, "memory").filter(|h| h.dir().join("memory.memsw.limit_in_bytes").exists())
    {
        for (limit, swap) in [(128i64 << 20, 256i64 << 20), (32 << 20, 48 << 20)] {
            let mem = LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(swap)
                .build()
                .unwrap();
            g.cg.apply(
                &LinuxResourcesBuilder::default()
                    .memory(mem)
                    .build()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(file(h, "memory.limit_in_bytes"), limit.to_string());
            assert_eq!(file(h, "memory.memsw.limit_in_bytes"), swap.to_string());
        }
    }

    // A live task keeps the cgroup busy: destroy must say so, not hang.
    let started = std::time::Instant::now();
    assert!(matches!(g.cg.destroy(), Err(CgroupError::Busy { .. })));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    for c in &mut g.children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    g.cg.destroy().unwrap();
    for h in g.cg.hierarchies() {
        assert!(!h.dir().exists(), "{} left behind", h.dir().display());
    }
    for d in g.parent_dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    g.cg.destroy().unwrap();
}

#[test]
fn failed_create_leaves_nothing() {
    if !root() {
        return;
    }
    let mut g = Guard::new("bad");
    let cpu = LinuxCpuBuilder::default()
        .cpus("4000-4001")
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default().cpu(cpu).build().unwrap();
    let e = g.cg.create(Some(&r)).unwrap_err();
    assert!(e.to_string().contains("cpuset.cpus"), "{e}");
    for d in g.parent_dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert!(g.cg.hierarchies().all(|h| h.created.is_empty()));
}

#[test]
fn existing_cgroup_is_joined_not_removed() {
    if !root() {
        return;
    }
    let mut g = Guard::new("first");
    g.cg.create(None).unwrap();
    let mut again = Cgroup::resolve(Some(g.cg.path()), "x").unwrap();
    again.create(None).unwrap();
    assert!(again.hierarchies().all(|h| h.created.is_empty()));
    again.destroy().unwrap();
    assert!(g.cg.hierarchies().all(|h| h.dir().is_dir()));
}

/// Disables `controller` in `root`'s cgroup.subtree_control on drop if it was off before.
struct RestoreSubtree {
    file: std::path::PathBuf,
    controller: &'static str,
    was_on: bool,
}

impl RestoreSubtree {
    fn new(root: &str, controller: &'static str) -> RestoreSubtree {
        let file = std::path::Path::new(root).join("cgroup.subtree_control");
        let was_on = std::fs::read_to_string(&file)
            .is_ok_and(|s| s.split_whitespace().any(|c| c == controller));
        RestoreSubtree {
            file,
            controller,
            was_on,
        }
    }
}

impl Drop for RestoreSubtree {
    /// Retried: while another test's cgroup below the root still has the controller
    /// the write fails with EBUSY, and a single try left it on (seen after a full run).
    fn drop(&mut self) {
        for _ in 0..50 {
            let on = std::fs::read_to_string(&self.file)
                .is_ok_and(|s| s.split_whitespace().any(|c| c == self.controller));
            if !on || self.was_on {
                return;
            }
            if std::fs::write(&self.file, format!("-{}", self.controller)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!(
            "note: {} is still enabled in {}",
            self.controller,
            self.file.display()
        );
    }
}

#[test]
fn hugetlb_limit_where_the_host_has_it() {
    if !root() {
        return;
    }
    // Declared first, dropped last (after the cgroups are gone): the test must not leave
    // +hugetlb in the cgroup2 root's subtree_control, where it would stop crun's bench
    // setup (binding hugetlb to a v1 hierarchy) on this hybrid host.
    let _restore = RestoreSubtree::new("/sys/fs/cgroup/unified", "hugetlb");
    let mut g = Guard::new("huge");
    let in_v1 = hier(&g.cg, "hugetlb").is_some();
    let in_v2 = g.cg.unified.as_ref().is_some_and(|u| {
        read(&u.mount, "cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
    });
    let limit = LinuxHugepageLimitBuilder::default()
        .page_size("2MB")
        .limit(4i64 << 20)
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![limit])
        .build()
        .unwrap();
    let res = g.cg.create(Some(&r));
    if !in_v1 && !in_v2 {
        let e = res.unwrap_err();
        assert!(e.to_string().contains("hugetlb"), "{e}");
        return;
    }
    res.unwrap();
    let (h, f) = match hier(&g.cg, "hugetlb") {
        Some(h) => (h, "hugetlb.2MB.limit_in_bytes"),
        None => (g.cg.unified.as_ref().unwrap(), "hugetlb.2MB.max"),
    };
    assert_eq!(file(h, f), (4u64 << 20).to_string());
}

#[test]
fn device_filter_is_enforced_on_cgroup2() {
    if !root() {
        return;
    }
    let mut g = Guard::new("dev");
    g.cg.create(None).unwrap();
    let Some(u) = g.cg.unified.clone() else {
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    };
    let script =
        "read x; if head -c1 /dev/zero >/dev/null 2>&1; then echo ok; else echo denied; fi";
    let check = |g: &mut Guard| -> String {
        let pid = g.spawn(script);
        g.cg.add_task(pid as i32).unwrap();
        let child = g.children.last_mut().unwrap();
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child.wait().unwrap();
        out.trim().to_owned()
    };
    let null_only = [
        rule(false, None, None, None, Some("rwm")),
        rule(
            true,
            Some(LinuxDeviceType::C),
            Some(1),
            Some(3),
            Some("rwm"),
        ),
    ];
    v2_devices::apply(&u.dir, &null_only).unwrap();
    assert_eq!(check(&mut g), "denied");
    assert_eq!(v2_devices::count_attached(&u.dir).unwrap(), 1);

    let mut with_zero = null_only.to_vec();
    with_zero.push(rule(
        true,
        Some(LinuxDeviceType::C),
        Some(1),
        Some(5),
        Some("r"),
    ));
    v2_devices::apply(&u.dir, &with_zero).unwrap();
    assert_eq!(
        v2_devices::count_attached(&u.dir).unwrap(),
        1,
        "old filter detached"
    );
    assert_eq!(check(&mut g), "ok");
}

#[test]
fn missing_v1_only_controller_is_named() {
    if !root() {
        return;
    }
    let g = Guard::new("net");
    if hier(&g.cg, "net_cls").is_some() {
        return;
    }
    let net = oci_spec::runtime::LinuxNetworkBuilder::default()
        .class_id(0x10001u32)
        .build()
        .unwrap();
    let r = LinuxResourcesBuilder::default()
        .network(net)
        .build()
        .unwrap();
    let mut cg = g.cg.clone();
    let e = cg.create(Some(&r)).unwrap_err();
    assert!(e.to_string().contains("net_cls"), "{e}");
    for d in g.parent_dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// The cgroup2 half of this host seen as a unified-only host: exercises the v2 paths
/// (controller enabling, cgroup.freeze, v2 stats) where no pure v2 host is at hand.
#[test]
fn unified_code_paths_on_the_cgroup2_mount() {
    if !root() {
        return;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(line) = mountinfo.lines().find(|l| l.contains(" - cgroup2 ")) else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let layout = path::detect(line, "0::/\n").unwrap();
    assert_eq!(layout.version, CgroupVersion::V2);
    // Declared before the cgroups, dropped after them: on this hybrid host the cgroup2
    // root's subtree_control is shared with everyone, and creating a cgroup here enables
    // the accounting controllers (hugetlb among them) up to it.
    let mount_point = line.split_whitespace().nth(4).unwrap();
    let _restore: Vec<RestoreSubtree> = v2::ACCOUNTING
        .iter()
        .map(|c| RestoreSubtree::new(mount_point, c))
        .collect();
    let parent = unique_parent();
    let cg = layout.place(Some(&format!("{parent}/v2")), "v2").unwrap();
    let mut g = Guard {
        cg,
        parent,
        children: Vec::new(),
    };
    let u = g.cg.unified.clone().unwrap();
    let available = read(&u.mount, "cgroup.controllers").unwrap();

    if !available.split_whitespace().any(|c| c == "pids") {
        let r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(5).build().unwrap())
            .build()
            .unwrap();
        let e = g.cg.create(Some(&r)).unwrap_err();
        assert!(matches!(e, CgroupError::ControllerMissing { .. }), "{e}");
        assert!(e.to_string().contains("pids"), "{e}");
        assert!(!g.parent_dirs()[0].exists());
    }

    g.cg.create(None).unwrap();
    let parent_dir = u.dir.parent().unwrap();
    let enabled = read(parent_dir, "cgroup.subtree_control").unwrap();
    for c in v2::ACCOUNTING {
        if available.split_whitespace().any(|a| a == *c) {
            assert!(enabled.contains(c), "{c} not enabled: {enabled}");
        }
    }
    let pid = g.spawn("exec sleep 5");
    g.cg.add_task(pid as i32).unwrap();
    assert_eq!(g.cg.pids().unwrap(), vec![pid as i32]);
    g.cg.freeze().unwrap();
    assert!(g.cg.is_frozen().unwrap());
    g.cg.thaw().unwrap();
    assert!(!g.cg.is_frozen().unwrap());
    let s = g.cg.stats().unwrap();
    assert!(s.cpu.psi.is_some() || !u.dir.join("cpu.pressure").exists());

    for c in &mut g.children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    g.cg.destroy().unwrap();
    assert!(!g.parent_dirs()[0].exists());
}
