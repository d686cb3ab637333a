//! Faults and load, the fast versions of bench/faults and bench/load: lifecycle cycles
//! with the init SIGKILLed, hull itself SIGKILLed at random points of every verb, and
//! containers made and removed concurrently, in each isolation. After each, a census
//! (common/leaks.rs) must find no cgroup, mount, process, tap, socket or state entry
//! left, and `state`/`list` must stay parseable. VM parts boot real VMs (QEMU/TCG here).
//!
//! The tests share one process-wide census (descendants of the test process), so they
//! run one at a time.

mod common;

use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::leaks::{fd_count, World};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const VERBS: [&str; 6] = ["create", "start", "exec", "kill", "delete", "pause"];
const STATUSES: [&str; 5] = ["creating", "created", "running", "paused", "stopped"];

/// xorshift64*: enough randomness for kill delays, seeded from the clock and printed
/// so that a failing run can be told apart (no rand crate needed).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill delays seeded with {seed}");
        Rng(seed)
    }

    /// Uniform in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        max.mul_f64(x as f64 / (1u64 << 53) as f64)
    }
}

/// A container that lives through a cycle campaign: its long-lived processes (the init;
/// for a VM the proxy and the VMM) are watched for fd growth.
struct Witness {
    id: &'static str,
    pids: Vec<(&'static str, i32)>,
    fds: Vec<usize>,
}

impl Witness {
    fn new(w: &mut World, iso: &str) -> Witness {
        let id = "witness";
        let netns = (iso == "vm").then(|| w.add_netns());
        let b = w.bundle(id, &["sleep", "100000"], netns.as_deref());
        w.keep_netns.extend(netns);
        w.hull(&["--isolation", iso, "create", "--bundle", &b, id])
            .ok("witness create");
        w.hull(&["start", id]).ok("witness start");
        let pid = w.wait_status(id, "running")["pid"].as_i64().unwrap() as i32;
        let mut pids = vec![(if iso == "vm" { "proxy" } else { "init" }, pid)];
        if iso == "vm" {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
            let vmm = kids
                .split_whitespace()
                .next()
                .expect("the proxy has a VMM child");
            pids.push(("vmm", vmm.parse().unwrap()));
        }
        w.keep_pids.extend(pids.iter().map(|p| p.1));
        let mut witness = Witness {
            id,
            pids,
            fds: vec![],
        };
        witness.exec(w);
        witness.fds = witness.fd_counts();
        witness
    }

    fn exec(&self, w: &World) {
        w.hull(&["exec", self.id, "true"]).ok("exec in the witness");
    }

    fn fd_counts(&self) -> Vec<usize> {
        self.pids.iter().map(|&(_, p)| fd_count(p)).collect()
    }

    fn assert_no_fd_growth(&self) {
        let now = self.fd_counts();
        for (i, &(name, pid)) in self.pids.iter().enumerate() {
            assert_eq!(
                now[i], self.fds[i],
                "the witness's {name} ({pid}) went from {} to {} fds",
                self.fds[i], now[i]
            );
        }
    }
}

/// The census is what every other test here rests on: it must see a container that was
/// not deleted (its cgroups, its init, its state entry) and a mount left in the world,
/// and nothing once they are gone.
#[test]
fn the_census_sees_what_is_left_behind() {
    hull_only!();
    let _serial = serial();
    let w = World::new();
    let base = w.census(&[]);
    let b = w.bundle("left", &["sleep", "100000"], None);
    w.hull(&["create", "--bundle", &b, "left"]).ok("create");
    let mnt = w.dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs");
    let left = w.census(&[]).since(&base);
    assert!(
        !left.cgroups.is_empty()
            && left.processes.len() == 1
            && left.state == ["left"]
            && left.mounts.len() == 1,
        "the census missed a live container or a mount: {}",
        left.summary()
    );
    nix::mount::umount(&mnt).unwrap();
    w.hull(&["delete", "--force", "left"]).ok("delete --force");
    let left = w.census(&[]).since(&base);
    assert_eq!(left.total(), 0, "{}", left.summary());
}

/// `n` cycles of create, start, SIGKILL of the init, delete. In a VM the init is in
/// the guest: even cycles `hull kill ID KILL`, odd ones SIGKILL the proxy from the host.
fn cycles(iso: &str, n: usize) {
    let _serial = serial();
    let mut w = World::new();
    let witness = Witness::new(&mut w, iso);
    let netns = (iso == "vm").then(|| w.add_netns());
    let base = w.census(&[witness.id]);
    for i in 0..n {
        let id = format!("cycle-{i}");
        let b = w.bundle(&id, &["sleep", "100000"], netns.as_deref());
        w.hull(&["--isolation", iso, "create", "--bundle", &b, &id])
            .ok("create");
        w.hull(&["start", &id]).ok("start");
        let pid = w.wait_status(&id, "running")["pid"].as_i64().unwrap() as i32;
        if iso == "vm" && i % 2 == 0 {
            w.hull(&["kill", &id, "KILL"]).ok("kill");
        } else {
            // SAFETY: kill(2) of the pid this container's state reports.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        w.wait_status(&id, "stopped");
        w.hull(&["delete", &id]).ok("delete");
        witness.exec(&w);
    }
    let left = w.census(&[witness.id]).since(&base);
    eprintln!("{n} {iso} cycles: leaked {}", left.summary());
    assert_eq!(
        left.total(),
        0,
        "{n} {iso} cycles leaked {}",
        left.summary()
    );
    witness.assert_no_fd_growth();
}

#[test]
fn namespace_cycles_with_the_init_sigkilled_leak_nothing() {
    hull_only!();
    cycles("namespace", 50);
}

#[test]
fn vm_cycles_with_the_init_or_the_proxy_sigkilled_leak_nothing() {
    hull_only!();
    cycles("vm", 5);
}

fn verb_args<'a>(verb: &str, id: &'a str, bundle: &'a str, iso: &'a str) -> Vec<&'a str> {
    match verb {
        "create" => vec!["--isolation", iso, "create", "--bundle", bundle, id],
        "start" => vec!["start", id],
        "exec" => vec!["exec", id, "true"],
        "kill" => vec!["kill", id, "KILL"],
        "delete" => vec!["delete", "--force", id],
        "pause" => vec!["pause", id],
        _ => unreachable!("{verb}"),
    }
}

/// Brings `id` to where `verb` starts (absent, created or running); its bundle.
fn setup(w: &World, iso: &str, verb: &str, id: &str, netns: Option<&str>) -> String {
    let b = w.bundle(id, &["sleep", "100000"], netns);
    if verb != "create" {
        w.hull(&["--isolation", iso, "create", "--bundle", &b, id])
            .ok("create");
        if verb != "start" {
            w.hull(&["start", id]).ok("start");
        }
    }
    b
}

/// Runs `verb` and SIGKILLs hull after `delay` (if it still runs): whether it did.
fn run_killed(w: &World, args: &[&str], delay: Duration) -> bool {
    let mut child = w
        .command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hull");
    std::thread::sleep(delay);
    let hit = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    child.wait().unwrap();
    hit
}

/// `state` and `list` after hull died in `verb`: what is wrong with them.
fn check_after(w: &World, verb: &str, id: &str) -> Vec<String> {
    let mut bad = vec![];
    let crashed = |o: &common::Out| o.code >= 101 || o.stderr.contains("panicked");
    let st = w.hull(&["state", id]);
    if crashed(&st) {
        bad.push(format!("state crashed: {st:?}"));
    } else if st.code == 0 {
        match serde_json::from_str::<Value>(&st.stdout) {
            Ok(v) if v["id"] == id && STATUSES.contains(&v["status"].as_str().unwrap_or("")) => {}
            _ => bad.push(format!("state shows a corrupt entry: {st:?}")),
        }
    } else if !["create", "delete"].contains(&verb) || st.stderr.trim().lines().count() != 1 {
        bad.push(format!("state failed though the container exists: {st:?}"));
    }
    let list = w.hull(&["list", "--format", "json"]);
    match serde_json::from_str::<Value>(&list.stdout) {
        Ok(Value::Array(entries)) if list.code == 0 => {
            for e in entries {
                if !STATUSES.contains(&e["status"].as_str().unwrap_or("")) {
                    bad.push(format!("list shows a corrupt entry: {e}"));
                }
            }
        }
        Ok(Value::Null) if list.code == 0 => {}
        _ => bad.push(format!("list failed: {list:?}")),
    }
    bad
}

/// For every verb: its duration measured once, then `trials` runs of it SIGKILLed after
/// a delay uniform over that duration; after each, state/list checked and `delete
/// --force` must leave nothing.
fn kill_trials(iso: &str, trials: usize) {
    let _serial = serial();
    let mut w = World::new();
    let mut rng = Rng::new();
    let netns = (iso == "vm").then(|| w.add_netns());
    let base = w.census(&[]);
    let mut problems = vec![];
    for verb in VERBS {
        let id = format!("measure-{verb}");
        let b = setup(&w, iso, verb, &id, netns.as_deref());
        let t0 = Instant::now();
        w.hull(&verb_args(verb, &id, &b, iso)).ok(verb);
        let took = t0.elapsed();
        w.hull(&["delete", "--force", &id]).ok("delete --force");
        let mut hits = 0;
        for i in 0..trials {
            let id = format!("{verb}-{i}");
            let b = setup(&w, iso, verb, &id, netns.as_deref());
            let delay = rng.below(took);
            hits += run_killed(&w, &verb_args(verb, &id, &b, iso), delay) as usize;
            let mut bad = check_after(&w, verb, &id);
            let del = w.hull(&["delete", "--force", &id]);
            if del.code != 0 {
                bad.push(format!("delete --force failed: {del:?}"));
            }
            let left = w.census(&[]).since(&base);
            if left.total() > 0 {
                bad.push(format!("leaked {}", left.summary()));
            }
            if !bad.is_empty() {
                problems.push(format!("{iso} {verb} killed after {delay:?}: {bad:?}"));
                break;
            }
        }
        eprintln!("{iso} {verb}: {trials} trials over {took:?}, {hits} killed mid-way");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn hull_sigkilled_in_any_namespace_verb_leaves_state_list_and_delete_working() {
    hull_only!();
    kill_trials("namespace", 10);
}

#[test]
fn hull_sigkilled_in_any_vm_verb_leaves_state_list_and_delete_working() {
    hull_only!();
    kill_trials("vm", 10);
}

/// `n` containers created and started concurrently, all reached by state, exec and
/// kill, then deleted concurrently; nothing left.
fn load(iso: &str, n: usize) {
    let _serial = serial();
    let mut w = World::new();
    let ids: Vec<String> = (0..n).map(|i| format!("load-{i}")).collect();
    let nets: Vec<Option<String>> = ids
        .iter()
        .map(|_| (iso == "vm").then(|| w.add_netns()))
        .collect();
    let base = w.census(&[]);
    let bundles: Vec<String> = ids
        .iter()
        .zip(&nets)
        .map(|(id, ns)| w.bundle(id, &["sleep", "100000"], ns.as_deref()))
        .collect();
    let each = |f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for i in 0..n {
                s.spawn(move || f(i));
            }
        })
    };
    let w = &w;
    each(&|i| {
        w.hull(&[
            "--isolation",
            iso,
            "create",
            "--bundle",
            &bundles[i],
            &ids[i],
        ])
        .ok("create");
        w.hull(&["start", &ids[i]]).ok("start");
    });
    each(&|i| {
        assert_eq!(w.state(&ids[i]).unwrap()["status"], "running");
        w.hull(&["exec", &ids[i], "true"]).ok("exec");
        w.hull(&["kill", &ids[i], "KILL"]).ok("kill");
    });
    each(&|i| {
        w.wait_status(&ids[i], "stopped");
        w.hull(&["delete", &ids[i]]).ok("delete");
    });
    let list = w.hull(&["list", "--format", "json"]).ok("list");
    assert!(matches!(list.stdout.trim(), "[]" | "null"), "{list:?}");
    let left = w.census(&[]).since(&base);
    assert_eq!(
        left.total(),
        0,
        "{n} concurrent {iso} containers leaked {}",
        left.summary()
    );
}

#[test]
fn twenty_namespace_containers_at_once_leak_nothing() {
    hull_only!();
    load("namespace", 20);
}

#[test]
fn four_vm_containers_at_once_leak_nothing() {
    hull_only!();
    load("vm", 4);
}
