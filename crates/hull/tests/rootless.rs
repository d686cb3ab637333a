//! Rootless hull: an unprivileged user, made by each test (useradd, subordinate ids from
//! /etc/subuid, newuidmap/newgidmap from Debian's uidmap), runs busybox containers with
//! `hull spec --rootless` configs. State goes to $XDG_RUNTIME_DIR/hull; no cgroup is
//! written unless one was delegated to the user; each limit that cannot be applied is
//! named on a line of its own; /sys/fs/cgroup is never writable (CVE-2023-25809).

mod common;

use common::rootless::{processes_of, TestUser};
use common::{make_busybox_rootfs, unique_name, Out};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A rootless bundle: rootfs plus the config the user's `hull spec --rootless` wrote.
struct Rootless {
    user: TestUser,
    id: String,
    dir: PathBuf,
    config: Value,
}

impl Rootless {
    fn new(args: &[&str]) -> Rootless {
        let id = unique_name();
        // useradd: at most 32 characters, no leading digit.
        let user = TestUser::new(&format!("hrl{}", &id["hull-test-".len()..]), &[]);
        let dir = PathBuf::from("/tmp").join(&id);
        let _ = fs::remove_dir_all(&dir);
        make_busybox_rootfs(&dir.join("rootfs"));
        let out = user
            .run(&user.home, &[&common::hull_bin(), "spec", "--rootless"])
            .ok("hull spec --rootless as the user");
        assert!(out.stderr.is_empty(), "{out:?}");
        let text = fs::read_to_string(user.home.join("config.json")).unwrap();
        let mut config: Value = serde_json::from_str(&text).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        // Absolute, so the test knows where a cgroup would be: it must not be there.
        config["linux"]["cgroupsPath"] = json!(format!("/{id}"));
        Rootless {
            user,
            id,
            dir,
            config,
        }
    }

    /// Maps container ids 1..65536 onto the user's subordinate ids, as podman does.
    fn with_subids(mut self) -> Rootless {
        let (u, g) = (self.user.subuid, self.user.subgid);
        self.config["linux"]["uidMappings"] = json!([
            {"containerID": 0, "hostID": self.user.uid, "size": 1},
            {"containerID": 1, "hostID": u.0, "size": u.1.min(65536)}
        ]);
        self.config["linux"]["gidMappings"] = json!([
            {"containerID": 0, "hostID": self.user.gid, "size": 1},
            {"containerID": 1, "hostID": g.0, "size": g.1.min(65536)}
        ]);
        self
    }

    /// `hull ARGS` as the user, the config written first.
    fn hull(&self, args: &[&str]) -> Out {
        fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
        let mut all = vec![common::hull_bin()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.user.run(&self.dir, &all)
    }

    fn run(&self) -> Out {
        self.hull(&["run", "--bundle", &self.dir.display().to_string(), &self.id])
    }

    fn state_dir(&self) -> PathBuf {
        self.user.runtime_dir.join("hull").join(&self.id)
    }

    fn status(&self) -> String {
        let out = self.hull(&["state", &self.id]).ok("state");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        v["status"].as_str().unwrap_or_default().to_string()
    }

    fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status() != want {
            assert!(Instant::now() < deadline, "never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rootless {
    fn drop(&mut self) {
        let _ = self.hull(&["delete", "--force", &self.id]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Cgroup hierarchies of the host: (mount point) for every cgroup and cgroup2 mount.
fn hierarchies() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            matches!(f.get(sep + 1), Some(&"cgroup") | Some(&"cgroup2")).then(|| f[4].into())
        })
        .collect()
}

/// No hierarchy has a directory `rel` (the test's absolute cgroupsPath).
fn assert_no_cgroup(rel: &str) {
    for h in hierarchies() {
        let d = h.join(rel.trim_start_matches('/'));
        assert!(!d.exists(), "rootless hull made the cgroup {}", d.display());
    }
}

#[test]
fn spec_rootless_and_run_as_an_unprivileged_user() {
    let r = Rootless::new(&["sh", "-c", "id -u; cat /proc/self/uid_map; exit 7"]);
    let uid = &r.config["linux"]["uidMappings"][0];
    assert_eq!(
        uid["hostID"],
        json!(r.user.uid),
        "spec --rootless maps the user"
    );
    assert_eq!(uid["size"], json!(1));
    let out = r.run();
    assert_eq!(out.code, 7, "the process's exit status: {out:?}");
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "root in the container: {out:?}");
    assert_eq!(lines[1], ["0", &r.user.uid.to_string(), "1"], "{out:?}");
    assert!(out.stderr.is_empty(), "nothing to warn about: {out:?}");
    assert!(
        !r.state_dir().exists(),
        "state left in $XDG_RUNTIME_DIR/hull"
    );
    assert!(
        r.user.runtime_dir.join("hull").is_dir(),
        "state root defaults to $XDG_RUNTIME_DIR/hull"
    );
    assert_no_cgroup(&r.id);
}

#[test]
fn lifecycle_with_subordinate_ids() {
    let r = Rootless::new(&["sleep", "300"]).with_subids();
    let dir = r.dir.display().to_string();
    r.hull(&["create", "--bundle", &dir, &r.id]).ok("create");
    assert_eq!(r.status(), "created");
    let list = r.hull(&["list", "-q"]).ok("list");
    assert_eq!(list.stdout.trim(), r.id);
    r.hull(&["start", &r.id]).ok("start");
    assert_eq!(r.status(), "running");

    // Container uid 1000 is the user's subordinate uid start + 999 on the host.
    let out = r
        .hull(&[
            "exec",
            "--user",
            "1000:1000",
            &r.id,
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map",
        ])
        .ok("exec as uid 1000");
    assert!(out.stdout.starts_with("1000\n"), "{out:?}");
    let maps: Vec<Vec<u32>> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert!(
        maps.contains(&vec![1, r.user.subuid.0, r.user.subuid.1.min(65536)]),
        "the subordinate range is mapped: {out:?}"
    );
    r.hull(&["exec", "-d", "--user", "1000:1000", &r.id, "sleep", "300"])
        .ok("exec -d");
    let sub = r.user.subuid.0 + 999;
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_of(sub).is_empty() {
        assert!(Instant::now() < deadline, "no process of host uid {sub}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // No cgroup: `ps` and `kill --all` find the processes by pid namespace.
    let ps = r.hull(&["ps", "--format", "json", &r.id]).ok("ps");
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(pids.len(), 2, "init and the exec'd sleep: {ps:?}");
    assert!(pids.iter().any(|p| processes_of(sub).contains(p)), "{ps:?}");
    r.hull(&["pause", &r.id]).assert_error(
        "pause without a delegated cgroup",
        &["rootless", "delegated"],
    );

    r.hull(&["kill", "--all", &r.id, "KILL"]).ok("kill --all");
    r.wait_status("stopped");
    r.hull(&["delete", &r.id]).ok("delete");
    assert!(r.hull(&["list", "-q"]).ok("list").stdout.trim().is_empty());
    assert!(!r.state_dir().exists());
    assert!(
        processes_of(sub).is_empty(),
        "the exec'd process outlived delete"
    );
    assert_no_cgroup(&r.id);
}

#[test]
fn each_limit_that_cannot_be_applied_is_named_on_its_own_line() {
    let mut r = Rootless::new(&["true"]);
    r.config["linux"]["resources"] = json!({
        "memory": {"limit": 64 << 20},
        "pids": {"limit": 50},
        "devices": [{"allow": false, "access": "rwm"}]
    });
    let out = r.run();
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per limit, devices skipped: {out:?}"
    );
    for (line, field) in lines.iter().zip(["memory", "pids"]) {
        assert!(
            line.starts_with(&format!(
                "hull: rootless: linux.resources.{field} cannot be applied"
            )),
            "{line}"
        );
        assert!(line.contains("not writable to uid"), "{line}");
    }
    assert!(!r.state_dir().exists());
    assert_no_cgroup(&r.id);
}

/// A parent cgroup in `controllers`' hierarchies, owned by the user, as systemd's
/// Delegate=yes or an administrator would hand it over. Removed on drop.
struct Delegated {
    dirs: Vec<PathBuf>,
}

impl Delegated {
    fn new(user: &TestUser, name: &str, controllers: &[&str]) -> Delegated {
        let mut dirs = Vec::new();
        for c in controllers {
            let d = Path::new("/sys/fs/cgroup").join(c).join(name);
            fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            user.give(&d);
            dirs.push(d);
        }
        Delegated { dirs }
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        for d in &self.dirs {
            if let Ok(entries) = fs::read_dir(d) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(d);
        }
    }
}

#[test]
fn a_delegated_cgroup_gets_the_limits() {
    let mut r = Rootless::new(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; \
         ls /sys/fs/cgroup; mkdir /sys/fs/cgroup/memory/x 2>/dev/null && echo wrote; true",
    ]);
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        eprintln!("skipped: the host has no cgroup v1 memory hierarchy (this test delegates v1 directories)");
        return;
    }
    let parent = format!("{}-cg", r.id);
    let delegated = Delegated::new(&r.user, &parent, &["memory", "pids"]);
    r.config["linux"]["cgroupsPath"] = json!(format!("/{parent}/c"));
    r.config["linux"]["resources"] = json!({"memory": {"limit": 32 << 20}, "pids": {"limit": 50}});
    let out = r.run().ok("run in a delegated cgroup");
    assert_eq!(
        out.stdout,
        format!("{}\n50\nmemory\npids\n", 32 << 20),
        "limits applied; only the delegated hierarchies, read-only"
    );
    for d in &delegated.dirs {
        assert!(
            !d.join("c").exists(),
            "hull removed its cgroup {}",
            d.display()
        );
    }
    // Nothing outside what was delegated.
    for h in hierarchies() {
        let d = h.join(&parent);
        assert!(
            delegated.dirs.contains(&d) || !d.exists(),
            "{}",
            d.display()
        );
    }
}

#[test]
fn cve_2023_25809_sys_fs_cgroup_is_not_writable_rootless() {
    // runc's advisory: rootless, with /sys rbind'ed read-only (`runc spec --rootless`)
    // and no cgroup namespace, the container could write the host's cgroup directories
    // that the user owns (/sys/fs/cgroup/user.slice/...). The root half is in
    // security_mounts.rs (cgroupfs_is_read_only_and_holds_only_the_containers_cgroup).
    if !Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        eprintln!("skipped: the host has no cgroup v1 memory hierarchy to delegate");
        return;
    }
    let mut r = Rootless::new(&["true"]);
    // A host cgroup the user owns; the container's own cgroupsPath is not delegated.
    let owned = format!("{}-owned", r.id);
    let delegated = Delegated::new(&r.user, &owned, &["memory"]);
    let host_dir = &delegated.dirs[0];
    let script = format!(
        "mkdir {d}/escape 2>/dev/null && echo made; \
         {{ echo $$ > {d}/cgroup.procs; }} 2>/dev/null && echo joined; \
         ls /sys/fs/cgroup | wc -l",
        d = host_dir.display()
    );
    r.config["process"]["args"] = json!(["sh", "-c", script]);

    // 1. As `hull spec --rootless` writes it: /sys rbind ro, then the cgroup mount,
    //    which without a cgroup of the container's own is an empty read-only tmpfs.
    let out = r.run().ok("run with the rootless spec");
    assert_eq!(
        out.stdout.trim(),
        "0",
        "nothing written, nothing visible: {out:?}"
    );

    // 2. Without the cgroup mount, the host's hierarchies come with the /sys rbind:
    //    its "ro" holds for every mount under it.
    let mounts = r.config["mounts"].as_array_mut().unwrap();
    mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    let out = r.run().ok("run with only the /sys rbind");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "mkdir or join succeeded: {out:?}");
    assert_ne!(
        lines[0].trim(),
        "0",
        "the rbind shows the host's hierarchies: {out:?}"
    );

    assert!(!host_dir.join("escape").exists());
    let procs = fs::read_to_string(host_dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.trim().is_empty(),
        "a container process joined: {procs}"
    );
    assert_no_cgroup(&r.id);
}

#[test]
fn vm_isolation_rootless_needs_dev_kvm_and_says_so() {
    // Rootless VM isolation is for users who may open /dev/kvm (group kvm on Debian);
    // anyone else gets one clear line before anything is made (hull-sandbox's
    // rootless.rs says why there is no silent fallback to TCG).
    let r = Rootless::new(&["true"]);
    let mut open = r.user.command(&["sh", "-c", "exec 3<>/dev/kvm"]);
    if open.status().unwrap().success() {
        eprintln!(
            "not run: {} may open /dev/kvm on this host, so there is no refusal to see",
            r.user.name
        );
        return;
    }
    let dir = r.dir.display().to_string();
    let out = r.hull(&["--isolation", "vm", "run", "--bundle", &dir, &r.id]);
    out.assert_error("rootless VM without /dev/kvm", &["/dev/kvm"]);
    assert!(
        out.stderr
            .contains("rootless VM isolation needs read-write access to /dev/kvm")
            && out.stderr.contains("group kvm")
            && out.stderr.contains(&format!("uid {}", r.user.uid)),
        "{out:?}"
    );
    assert!(!r.state_dir().exists(), "state left");
    assert_no_cgroup(&r.id);
    assert!(
        processes_of(r.user.uid).is_empty(),
        "a process (VMM, proxy) was left"
    );
}
