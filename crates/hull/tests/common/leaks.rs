//! A private world for fault and load tests (a `--root`, a cgroup parent, a shared
//! busybox rootfs, network namespaces) and a census of what hull left in it, by kind.
//!
//! Other agents and tests run containers on this host at the same time, so everything
//! counted is what this world made: cgroups below its parent, mounts and unix sockets
//! naming its directory, processes descended from the test process (a child subreaper:
//! whatever hull orphans or daemonises is re-parented to it) or in its cgroups, taps in
//! its network namespaces, entries of its `--root`. Callers serialise the tests that
//! use a world: the descendants of the test process must all be theirs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{cleanup, hull_bin, make_busybox_rootfs, run_with_timeout, runc_spec, unique_name};
use super::{Out, CMD_TIMEOUT};

/// What was left, per kind, each entry naming the thing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Leaks {
    pub cgroups: Vec<String>,
    pub mounts: Vec<String>,
    pub processes: Vec<String>,
    pub taps: Vec<String>,
    pub sockets: Vec<String>,
    pub state: Vec<String>,
}

impl Leaks {
    fn kinds(&self) -> [(&'static str, &Vec<String>); 6] {
        [
            ("cgroups", &self.cgroups),
            ("mounts", &self.mounts),
            ("processes", &self.processes),
            ("taps", &self.taps),
            ("sockets", &self.sockets),
            ("state", &self.state),
        ]
    }

    pub fn total(&self) -> usize {
        self.kinds().iter().map(|(_, v)| v.len()).sum()
    }

    /// What `self` has that `base` had not.
    pub fn since(&self, base: &Leaks) -> Leaks {
        let new = |now: &Vec<String>, was: &Vec<String>| -> Vec<String> {
            now.iter().filter(|x| !was.contains(x)).cloned().collect()
        };
        Leaks {
            cgroups: new(&self.cgroups, &base.cgroups),
            mounts: new(&self.mounts, &base.mounts),
            processes: new(&self.processes, &base.processes),
            taps: new(&self.taps, &base.taps),
            sockets: new(&self.sockets, &base.sockets),
            state: new(&self.state, &base.state),
        }
    }

    /// "cgroups 0, mounts 0, ..." and then what each non-empty kind holds.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .kinds()
            .iter()
            .map(|(k, v)| format!("{k} {}", v.len()))
            .collect();
        let mut s = counts.join(", ");
        for (k, v) in self.kinds() {
            if !v.is_empty() {
                s += &format!("\n  {k}: {v:?}");
            }
        }
        s
    }
}

pub struct World {
    pub tag: String,
    pub dir: PathBuf,
    pub root: PathBuf,
    bin: String,
    proto: Value,
    netns: Vec<String>,
    /// Network namespaces whose taps belong to a long-lived container, not leaks.
    pub keep_netns: Vec<String>,
    /// Long-lived processes (a witness container's) that are not leaks.
    pub keep_pids: Vec<i32>,
}

impl World {
    pub fn new() -> World {
        super::vm::become_subreaper();
        let tag = unique_name();
        let dir = PathBuf::from("/tmp").join(&tag);
        let rootfs = dir.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let mut proto = runc_spec();
        proto["process"]["terminal"] = json!(false);
        proto["root"]["path"] = json!(rootfs);
        World {
            root: dir.join("root"),
            tag,
            dir,
            bin: hull_bin(),
            proto,
            netns: vec![],
            keep_netns: vec![],
            keep_pids: vec![],
        }
    }

    /// A bundle `bundles/<id>` on the shared rootfs, cgroup `/<tag>/<id>`, in the
    /// network namespace `netns` when given.
    pub fn bundle(&self, id: &str, args: &[&str], netns: Option<&str>) -> String {
        let dir = self.dir.join("bundles").join(id);
        fs::create_dir_all(&dir).expect("mkdir bundle");
        let mut c = self.proto.clone();
        c["process"]["args"] = json!(args);
        c["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.tag));
        if let Some(ns) = netns {
            for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
                if n["type"] == "network" {
                    n["path"] = json!(format!("/run/netns/{ns}"));
                }
            }
        }
        fs::write(dir.join("config.json"), c.to_string()).expect("write config.json");
        dir.display().to_string()
    }

    /// `hull --root ROOT args...`, stdin from /dev/null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn hull(&self, args: &[&str]) -> Out {
        run_with_timeout(&mut self.command(args), &self.dir, CMD_TIMEOUT)
    }

    /// `state ID` parsed, or None if it failed.
    pub fn state(&self, id: &str) -> Option<Value> {
        let out = self.hull(&["state", id]);
        (out.code == 0).then(|| serde_json::from_str(&out.stdout).expect("state prints JSON"))
    }

    pub fn wait_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            let st = self.state(id);
            if let Some(st) = st.as_ref().filter(|s| s["status"] == want) {
                return st.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {want}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An engine's network namespace: a veth whose peer is in a second namespace of
    /// ours (no interface of the host's namespace is touched).
    pub fn add_netns(&mut self) -> String {
        let i = self.netns.len() / 2;
        let (ns, peer) = (format!("{}-n{i}", self.tag), format!("{}-p{i}", self.tag));
        let sh = |cmd: String| {
            let ok = Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
            assert!(ok.success(), "{cmd}");
        };
        sh(format!("ip netns add {ns} && ip netns add {peer}"));
        self.netns.extend([ns.clone(), peer.clone()]);
        sh(format!(
            "ip -n {ns} link add eth0 type veth peer name p0 netns {peer} && \
             ip -n {ns} addr add 10.252.{}.2/24 dev eth0 && ip -n {ns} link set eth0 up && \
             ip -n {peer} link set p0 up && ip -n {ns} route add default via 10.252.{}.1",
            i % 250,
            i % 250
        ));
        ns
    }

    /// Reaps orphans re-parented to the test process once they are dead. Call only
    /// while no `Child` of this process is being waited for elsewhere.
    pub fn reap(&self) {
        let me = std::process::id() as i32;
        for (pid, (state, ppid)) in processes() {
            if state == 'Z' && ppid == me {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
    }

    /// What is left, by kind; `keep` names containers that are meant to run still.
    pub fn census(&self, keep: &[&str]) -> Leaks {
        self.reap();
        let kept = |first: &str| keep.contains(&first);
        let mut left = Leaks::default();
        for h in cleanup::cgroup_hierarchies() {
            walk_cgroups(
                &h.join(&self.tag),
                &h.join(&self.tag),
                &kept,
                &mut left.cgroups,
            );
        }
        let dir = self.dir.display().to_string();
        for line in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f[3].contains(&dir) || f[4].contains(&dir) {
                left.mounts.push(f[4].to_string());
            }
        }
        left.processes = self.stray_processes(keep);
        for ns in self.netns.iter().filter(|n| !self.keep_netns.contains(n)) {
            let links = Command::new("ip")
                .args(["-n", ns, "-o", "link"])
                .output()
                .unwrap();
            for l in super::text(&links)
                .lines()
                .filter(|l| l.contains("hulltap"))
            {
                left.taps.push(format!(
                    "{ns}: {}",
                    l.split(':').nth(1).unwrap_or("").trim()
                ));
            }
        }
        let mut unix = fs::read_to_string("/proc/net/unix").unwrap();
        for ns in self.netns.iter().step_by(2) {
            let o = Command::new("ip")
                .args(["netns", "exec", ns, "cat", "/proc/net/unix"])
                .output()
                .unwrap();
            unix += &super::text(&o);
        }
        left.sockets = unix
            .lines()
            .filter(|l| l.contains(&dir) && !keep.iter().any(|k| l.contains(&format!("/{k}/"))))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
            .collect();
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !kept(&name) {
                    left.state.push(name);
                }
            }
        }
        left
    }

    /// Live descendants of the test process and processes in our cgroups, but those of
    /// the kept containers. One SIGKILLed a moment ago (its pid namespace ended) may
    /// still be on its way out: counted only if alive a second later.
    fn stray_processes(&self, keep: &[&str]) -> Vec<String> {
        let me = std::process::id() as i32;
        let all = processes();
        let mut found = BTreeSet::new();
        let mut todo = vec![me];
        while let Some(p) = todo.pop() {
            for (&pid, &(_, ppid)) in &all {
                if ppid == p {
                    found.insert(pid);
                    todo.push(pid);
                }
            }
        }
        let mine = format!("/{}/", self.tag);
        for &pid in all.keys() {
            let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let kept = keep.iter().any(|k| cg.contains(&format!("{mine}{k}\n")));
            if cg.contains(&mine) && !kept {
                found.insert(pid);
            }
        }
        found.retain(|p| !self.keep_pids.contains(p));
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            self.reap();
            found.retain(|&p| cleanup::alive(p));
            if found.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        found.into_iter().map(describe).collect()
    }
}

fn walk_cgroups(top: &Path, dir: &Path, kept: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let rel = p.strip_prefix(top).unwrap().display().to_string();
        if !kept(rel.split('/').next().unwrap_or("")) {
            out.push(p.display().to_string());
        }
        walk_cgroups(top, &p, kept, out);
    }
}

/// Every process: pid -> (state letter, ppid).
fn processes() -> std::collections::HashMap<i32, (char, i32)> {
    let mut out = std::collections::HashMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if let Some(ppid) = f.next().and_then(|s| s.parse().ok()) {
            out.insert(pid, (state, ppid));
        }
    }
    out
}

/// A leaked process as a failure names it: pid, command line, parent, pid namespace.
fn describe(pid: i32) -> String {
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap_or_default();
    let ppid = processes().get(&pid).map(|p| p.1).unwrap_or(0);
    format!("{pid} ({}; ppid {ppid}; {})", cmd.trim(), ns.display())
}

/// Open fds of `pid`.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = run_with_timeout(
                    &mut self.command(&["delete", "--force", &id]),
                    &self.dir,
                    Duration::from_secs(30),
                );
            }
        }
        for (pid, _) in cleanup::processes_under(&self.dir) {
            // SAFETY: kill(2) of a process that runs from our own directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for h in cleanup::cgroup_hierarchies() {
            let top = h.join(&self.tag);
            let mut dirs = vec![];
            walk_cgroups(&top, &top, &|_| false, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
            for d in dirs.iter().map(PathBuf::from).chain([top]) {
                let _ = fs::remove_dir(d);
            }
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        self.reap();
        cleanup::remove_bundle_dir(&self.dir);
    }
}
