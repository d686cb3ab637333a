//! One VM per pod through the hull CLI: a sandbox VM container and member containers
//! that name it (`io.hull.sandbox`), created inside its running VM, their rootfs
//! attached over NBD. Boots real VMs (QEMU/TCG here), one per test.

mod common;

use std::time::{Duration, Instant};

use common::vm::{
    assert_vm_gone, become_subreaper, create_vm, guest_meminfo, read_pid, recorded_oom_kills,
    wait_adopted, wait_recorded_oom_kills,
};
use common::{Bundle, Container};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// A sandbox that brings up its loopback (CNI's loopback plugin does it in a pod) and
/// sleeps.
fn sandbox() -> (Container, i32) {
    let c = Bundle::new(&[
        "sh",
        "-c",
        "ip link set lo up; echo sandbox up; exec sleep 1000",
    ])
    .config(|v| {
        for set in ["bounding", "effective", "permitted"] {
            v["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_NET_ADMIN"));
        }
        v["hostname"] = json!("thepod");
    })
    .container();
    let (out, pid_file) = create_vm(&c, None, &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "sandbox create: {out:?}");
    c.start().ok("start the sandbox");
    (c, read_pid(&pid_file))
}

/// A member of `sandbox` (its namespaces as CRI gives them: the sandbox's pid's), in
/// the sandbox's --root.
fn member(sandbox: &Container, args: &[&str]) -> Container {
    member_with(sandbox, args, |_| {})
}

/// `member`, with `extra` applied to its config.json last.
fn member_with(
    sandbox: &Container,
    args: &[&str],
    extra: impl FnOnce(&mut serde_json::Value),
) -> Container {
    let pid = sandbox.pid();
    let sid = sandbox.id.clone();
    let mut c = Bundle::new(args)
        .config(|v| {
            v["annotations"] = json!({"io.hull.sandbox": sid});
            // The hostname is the sandbox's, whose UTS namespace it joins (CRI sets
            // none, or the same).
            v.as_object_mut().unwrap().remove("hostname");
            for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
                let name = match ns["type"].as_str().unwrap() {
                    "network" => "net",
                    "ipc" => "ipc",
                    "uts" => "uts",
                    _ => continue,
                };
                ns["path"] = json!(format!("/proc/{pid}/ns/{name}"));
            }
            extra(v);
        })
        .container();
    c.root = sandbox.root.clone();
    c
}

fn create_member(c: &Container) -> i32 {
    let (out, pid_file) = create_vm(c, None, &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "member create: {out:?}");
    read_pid(&pid_file)
}

/// The guest's nbd devices that run (an attached image each), seen from `c`.
fn running_nbds(c: &Container) -> String {
    let out = c
        .exec(&["sh", "-c", "cat /sys/block/nbd*/pid 2>/dev/null; true"])
        .ok("exec");
    out.stdout.trim().to_string()
}

fn boot_id(c: &Container) -> String {
    let out = c
        .exec(&["cat", "/proc/sys/kernel/random/boot_id"])
        .ok("boot_id");
    out.stdout.trim().to_string()
}

#[test]
fn members_share_the_sandbox_vm_and_its_network_and_every_verb_works() {
    hull_only!();
    become_subreaper();
    let (sb, _) = sandbox();
    let server = member(
        &sb,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; hostname; echo hello-from-server | nc -l -p 7777; exit 3",
        ],
    );
    let client = member(
        &sb,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; hostname; for i in $(seq 100); do nc 127.0.0.1 7777 2>/dev/null && exit 5; sleep 0.2; done; exit 9",
        ],
    );
    let t = Instant::now();
    let server_pid = create_member(&server);
    let first = t.elapsed();
    let t = Instant::now();
    let client_pid = create_member(&client);
    println!("member create (image made, attached, mounted, created in the guest): first {first:?}, second {:?}", t.elapsed());
    assert_eq!(server.status(), "created");
    assert_eq!(server.state()["isolation"], "vm");
    server.start().ok("start server");
    client.start().ok("start client");
    assert_eq!(
        wait_adopted(server_pid, MINUTE),
        3,
        "{:?}",
        server.init_output()
    );
    assert_eq!(
        wait_adopted(client_pid, MINUTE),
        5,
        "{:?}",
        client.init_output()
    );
    let (s_out, c_out) = (server.init_output().0, client.init_output().0);
    let sandbox_boot = boot_id(&sb);
    for out in [&s_out, &c_out] {
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(sandbox_boot.as_str()),
            "another VM: {out:?}"
        );
        assert_eq!(
            lines.next(),
            Some("thepod"),
            "the sandbox's UTS namespace: {out:?}"
        );
    }
    assert!(
        c_out.contains("hello-from-server"),
        "localhost between members: {c_out:?}"
    );
    assert_eq!(server.status(), "stopped");
    // One VMM: the sandbox's.
    let vmms = common::cleanup::processes_under(&sb.root);
    assert_eq!(
        vmms.iter()
            .filter(|(_, cmd)| cmd.contains("qemu-system"))
            .count(),
        1,
        "{vmms:?}"
    );

    // A long-running member through exec, ps, pause/resume, events, update, kill.
    let sleeper = member(&sb, &["sleep", "1000"]);
    let sleeper_pid = create_member(&sleeper);
    sleeper.start().ok("start sleeper");
    let out = sleeper
        .exec(&["sh", "-c", "hostname; echo exec-ok"])
        .ok("exec");
    assert_eq!(out.stdout, "thepod\nexec-ok\n");
    assert_eq!(boot_id(&sleeper), sandbox_boot);
    let ps = sleeper.hull(&["ps", &sleeper.id]).ok("ps");
    assert!(ps.stdout.lines().count() >= 2, "{ps:?}");
    let dir = sleeper.bundle.dir.join("exec.pid");
    let d = sleeper.hull(&[
        "exec",
        "-d",
        "--pid-file",
        dir.to_str().unwrap(),
        &sleeper.id,
        "sleep",
        "1000",
    ]);
    d.ok("exec -d");
    let exec_pid = read_pid(&dir);
    sleeper.hull(&["pause", &sleeper.id]).ok("pause");
    assert_eq!(sleeper.status(), "paused");
    sleeper.hull(&["resume", &sleeper.id]).ok("resume");
    assert_eq!(sleeper.status(), "running");
    let ev = sleeper
        .hull(&["events", "--stats", &sleeper.id])
        .ok("events");
    assert!(ev.stdout.contains(r#""type":"stats""#), "{ev:?}");
    let up = sleeper.hull(&["update", "--memory", "64M", &sleeper.id]);
    up.ok("update");
    sleeper
        .hull(&["kill", "--all", &sleeper.id, "KILL"])
        .ok("kill --all");
    assert_eq!(wait_adopted(sleeper_pid, MINUTE), 137);
    assert_eq!(
        wait_adopted(exec_pid, MINUTE),
        137,
        "the exec ended with its container"
    );

    // The sandbox cannot go while it has members; deleting members leaves the VM.
    let refused = sb.hull(&["delete", &sb.id]);
    refused.assert_error("sandbox with members", &[&server.id]);
    for m in [&server, &client, &sleeper] {
        m.delete(false).ok("delete member");
        assert!(!m.root.join(&m.id).exists());
    }
    assert_eq!(boot_id(&sb), sandbox_boot, "the VM outlives its members");
    assert_eq!(running_nbds(&sb), "", "every image detached");
    sb.kill("KILL").ok("kill sandbox");
    sb.wait_status("stopped", MINUTE);
    sb.delete(false).ok("delete sandbox");
    assert_vm_gone(&sb);
    for m in [&server, &client, &sleeper] {
        assert!(
            common::cleanup::processes_under(&m.bundle.dir).is_empty(),
            "a stand-in of {} still runs",
            m.id
        );
    }
}

#[test]
fn a_killed_sandbox_stops_its_members_and_delete_force_cleans_each() {
    hull_only!();
    become_subreaper();
    let (sb, proxy) = sandbox();
    let a = member(&sb, &["sleep", "1000"]);
    let b = member(&sb, &["sleep", "1000"]);
    let (pa, pb) = (create_member(&a), create_member(&b));
    a.start().ok("start a");
    // The proxy (and with it the VM) SIGKILLed: both members read as stopped.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(proxy), nix::sys::signal::SIGKILL).unwrap();
    assert_eq!(wait_adopted(pa, MINUTE), 255);
    assert_eq!(wait_adopted(pb, MINUTE), 255);
    assert_eq!(a.status(), "stopped");
    assert_eq!(b.status(), "stopped");
    a.delete(true).ok("delete --force a");
    // The sandbox with a member left: --force takes the member along.
    sb.delete(true).ok("delete --force sandbox");
    assert!(
        !b.root.join(&b.id).exists(),
        "the member went with its sandbox"
    );
    assert_vm_gone(&sb);
}

#[test]
fn a_member_needs_a_running_vm_sandbox() {
    hull_only!();
    // No such sandbox: an error, nothing made.
    let ghost = Bundle::new(&["true"])
        .config(|v| v["annotations"] = json!({"io.hull.sandbox": "no-such-sandbox"}))
        .container();
    let (out, _) = create_vm(&ghost, None, &["--isolation", "vm"]);
    out.assert_error(
        "member of a missing sandbox",
        &["no-such-sandbox", "create the sandbox first"],
    );
    assert!(!ghost.root.join(&ghost.id).exists());
    // Namespace isolation cannot join a VM.
    let (out, _) = create_vm(&ghost, None, &["--isolation", "namespace"]);
    out.assert_error("namespace member", &["only VM isolation"]);
    // A namespace container as the sandbox: refused, not a namespace member.
    let ns = Bundle::new(&["sleep", "1000"]).container();
    ns.run_detached("namespace").ok("run -d namespace sandbox");
    let mut m = Bundle::new(&["true"])
        .config(|v| v["annotations"] = json!({"io.hull.sandbox": ns.id}))
        .container();
    m.root = ns.root.clone();
    let (out, _) = create_vm(&m, None, &["--isolation", "vm"]);
    out.assert_error("member of a namespace sandbox", &["namespace container"]);
    assert!(!m.root.join(&m.id).exists());
}

/// `create` of a member, timed.
fn timed_create(c: &Container) -> (i32, Duration) {
    let t = Instant::now();
    let pid = create_member(c);
    (pid, t.elapsed())
}

#[test]
fn measure_adding_a_rootfs_to_a_running_pod_vm() {
    hull_only!();
    become_subreaper();
    let (sb, _) = sandbox();
    // Members on one rootfs tree (the first's): its image is made once, attached once.
    let first = member(&sb, &["sleep", "1000"]);
    let rootfs = first.bundle.rootfs.display().to_string();
    let same = |sb: &Container| {
        let mut c = member(sb, &["sleep", "1000"]);
        c.bundle.config["root"]["path"] = json!(rootfs);
        std::fs::write(
            c.bundle.dir.join("config.json"),
            serde_json::to_vec(&c.bundle.config).unwrap(),
        )
        .unwrap();
        c
    };
    let (_, made) = timed_create(&first);
    let second = same(&sb);
    let (_, shared) = timed_create(&second);
    assert_eq!(running_nbds(&sb).lines().count(), 1, "one image for both");
    first.delete(true).ok("delete first");
    // The last member of an image detaches it: the guest's nbd ends when the host
    // closes the image's stream (it once waited out its 5 s timeout).
    let t = std::time::Instant::now();
    second.delete(true).ok("delete second");
    let detach = t.elapsed();
    assert!(
        detach < std::time::Duration::from_secs(2),
        "delete of the image's last member took {detach:?}"
    );
    assert_eq!(running_nbds(&sb), "");
    let third = same(&sb);
    let (_, again) = timed_create(&third);
    third.delete(true).ok("delete third");
    println!(
        "member create: image made + attached + mounted {made:?}; image cached + attached + mounted {again:?}; image attached already {shared:?} \
         (so: mkfs.erofs ~{:?}, NBD attach + erofs mount ~{:?}, the container's creation in the guest ~{shared:?})",
        made.saturating_sub(again),
        again.saturating_sub(shared)
    );
    sb.delete(true).ok("delete sandbox");
    assert_vm_gone(&sb);
}

/// A pod's guest, a sandbox and a member, keeps under 16 MiB of its memory in use
/// (14.3 here; 16.4 when the agent booted from an initramfs), under 1 MiB of it
/// vmalloc'd. With the per-CPU allocator's default
/// 2 MiB units it was 19.9 MiB: a pod's mounts, cgroups and block devices overflow the
/// boot's per-CPU chunk, and the next chunk's memcg map alone is a zeroed 4 MiB
/// vmalloc (qemu.rs's `percpu_alloc=page` on BASE_CMDLINE).
#[test]
fn a_pod_guest_with_a_member_uses_under_16_mib() {
    hull_only!();
    become_subreaper();
    let (sb, _) = sandbox();
    let m = member(&sb, &["sleep", "1000"]);
    create_member(&m);
    m.start().ok("start the member");
    let info = guest_meminfo(&sb);
    let used_kib = info["MemTotal"] - info["MemFree"];
    let (vmalloc, percpu) = (info["VmallocUsed"], info["Percpu"]);
    println!("the pod's guest uses {used_kib} KiB: vmalloc {vmalloc} KiB, per-CPU {percpu} KiB");
    assert!(vmalloc < 1 << 10, "the pod's guest vmalloc'd {vmalloc} KiB");
    assert!(used_kib < 16 << 10, "the pod's guest uses {used_kib} KiB");
    m.delete(true).ok("delete the member");
    sb.delete(true).ok("delete the sandbox");
    assert_vm_gone(&sb);
}

/// A member's stand-in records each OOM kill in the guest as it happens (its proxy
/// passes the agent's WatchOom answers on), and the last before it exits.
#[test]
fn a_members_oom_kills_are_recorded_as_they_happen_and_at_its_exit() {
    hull_only!();
    become_subreaper();
    let (sb, _) = sandbox();
    let init = "while [ ! -e /dev/shm/go ]; do sleep 0.1; done; exec tail /dev/zero";
    let m = member_with(&sb, &["sh", "-c", init], |v| {
        v["linux"]["resources"] = json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    });
    let pid = create_member(&m);
    m.start().ok("start the member");
    let out = m.exec(&["sh", "-c", "tail /dev/zero"]);
    assert_eq!(out.code, 137, "the OOM killer's SIGKILL: {out:?}");
    wait_recorded_oom_kills(&m, 1, Duration::from_secs(5));
    assert_eq!(m.status(), "running");
    // Its init, killed by the OOM killer: the count is there when the stand-in exits.
    m.exec(&["touch", "/dev/shm/go"]).ok("touch /dev/shm/go");
    let status = wait_adopted(pid, MINUTE);
    assert_eq!((status, recorded_oom_kills(&m)), (137, Some(2)));
    m.delete(true).ok("delete the member");
    sb.delete(true).ok("delete the sandbox");
    assert_vm_gone(&sb);
}
