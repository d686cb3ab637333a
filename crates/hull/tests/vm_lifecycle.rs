//! VM containers through the runc lifecycle as engines drive it: `create` and `start`
//! as separate processes, the pid from --pid-file as the process to wait on (the test
//! is its subreaper, as conmon and containerd's shim are), state, exec, ps, pause,
//! events, update, kill and delete. Boots real VMs (QEMU/TCG here).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::vm::{assert_vm_gone, become_subreaper, create_vm, read_pid, wait_adopted};
use common::{host_kernel, Bundle, Container};

#[test]
fn create_then_start_runs_in_the_vm_and_the_reported_pid_carries_the_exit_status() {
    hull_only!();
    become_subreaper();
    let c = Bundle::new(&["sh", "-c", "uname -r; cat; echo to-stderr >&2; exit 7"]).container();
    let input = c.bundle.dir.join("input");
    std::fs::write(&input, "through the proxy\n").unwrap();
    let (out, pid_file) = create_vm(&c, Some(&input), &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "{out:?}");
    let pid = read_pid(&pid_file);
    let st = c.state();
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], pid, "state and --pid-file name the same process");
    assert_eq!(st["isolation"], "vm", "{st}");
    let list = c.hull(&["list", "--format", "json"]).ok("list");
    assert!(list.stdout.contains(r#""isolation":"vm""#), "{list:?}");
    // Nothing runs before start.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.init_output().0, "", "the container ran before start");
    c.start().ok("start");
    assert_eq!(wait_adopted(pid, Duration::from_secs(60)), 7);
    let (stdout, stderr) = c.init_output();
    let mut lines = stdout.lines();
    let kernel = lines.next().unwrap_or_default();
    assert!(
        !kernel.is_empty() && kernel != host_kernel(),
        "ran on the host's kernel: {stdout:?}"
    );
    assert_eq!(lines.next(), Some("through the proxy"), "{stdout:?}");
    assert_eq!(stderr, "to-stderr\n");
    assert_eq!(c.status(), "stopped");
    c.delete(false).ok("delete");
    assert_vm_gone(&c);
}

#[test]
fn the_annotation_gives_a_vm_through_create_and_start_or_a_conflict_is_refused() {
    hull_only!();
    become_subreaper();
    let c = Bundle::new(&["uname", "-r"])
        .config(|v| v["annotations"] = serde_json::json!({"io.hull.isolation": "vm"}))
        .container();
    // The operator asking for namespaces while the bundle asks for a VM: refused, and
    // nothing made.
    let (out, _) = create_vm(&c, None, &["--isolation", "namespace"]);
    out.assert_error("conflicting isolation", &["io.hull.isolation"]);
    assert!(!c.root.join(&c.id).exists());
    // Without a flag the annotation decides: the guest's kernel, not the host's.
    let (out, pid_file) = create_vm(&c, None, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    c.start().ok("start");
    assert_eq!(
        wait_adopted(read_pid(&pid_file), Duration::from_secs(60)),
        0
    );
    let kernel = c.init_output().0;
    assert!(
        !kernel.trim().is_empty() && kernel.trim() != host_kernel(),
        "{kernel:?}"
    );
    c.delete(false).ok("delete");
    assert_vm_gone(&c);
}

#[test]
fn hull_vm_as_a_command_name_and_the_config_file_choose_vm() {
    hull_only!();
    become_subreaper();
    let c = Bundle::new(&["true"]).container();
    let bin_dir = c.bundle.dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let hull_vm = bin_dir.join("hull-vm");
    std::os::unix::fs::symlink(&c.bin, &hull_vm).unwrap();
    let out = Command::new(&hull_vm)
        .args(["--root", &c.root.display().to_string()])
        .args(["create", "--bundle", &c.dir(), &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(c.state()["isolation"], "vm");
    c.delete(true).ok("delete --force");
    assert_vm_gone(&c);

    // config.toml's default; a mistake in it is an error naming the file.
    let conf = c.bundle.dir.join("config.toml");
    std::fs::write(&conf, "isolation = \"vm\"\n").unwrap();
    let out = c.hull_with(&["create", "--bundle", &c.dir(), &c.id], |cmd| {
        cmd.env("HULL_CONFIG", &conf);
    });
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.state()["isolation"], "vm");
    c.delete(true).ok("delete --force");
    std::fs::write(&conf, "isolaton = \"vm\"\n").unwrap();
    let out = c.hull_with(&["create", "--bundle", &c.dir(), &c.id], |cmd| {
        cmd.env("HULL_CONFIG", &conf);
    });
    out.assert_error("a misspelt key", &["config.toml"]);
    assert_vm_gone(&c);
}

#[test]
fn exec_ps_pause_events_update_and_kill_all_reach_the_guest() {
    hull_only!();
    become_subreaper();
    let c = Bundle::new(&["sh", "-c", "echo up; while :; do sleep 1; done"])
        .config(|v| v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864}))
        .container();
    let (out, pid_file) = create_vm(&c, None, &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.start().ok("start");
    assert_eq!(c.status(), "running");

    let out = c.exec(&[
        "sh",
        "-c",
        "echo in-exec; cat /sys/fs/cgroup/memory.max; exit 5",
    ]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(out.stdout, "in-exec\n67108864\n");

    // Detached: the pid reported stands for the exec and carries its status.
    let exec_pid = c.bundle.dir.join("exec.pid");
    let exec_pid_s = exec_pid.display().to_string();
    let out = c.exec_with(
        &["-d", "--pid-file", &exec_pid_s],
        &["sh", "-c", "sleep 1; exit 9"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        wait_adopted(read_pid(&exec_pid), Duration::from_secs(60)),
        9
    );

    // For engines (docker top looks the pids up in the host's ps): host pids, the
    // sandbox's, the proxy among them; never guest pids, which name host processes.
    let ps = c.hull(&["ps", "--format", "json", &c.id]).ok("ps");
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
    assert!(pids.contains(&c.pid()) && pids.len() >= 2, "{ps:?}");
    assert!(!pids.contains(&1), "{ps:?}");
    // For people: the container's processes, as the guest kernel numbers them.
    let table = c.hull(&["ps", &c.id]).ok("ps");
    let mut rows = table.stdout.lines();
    assert_eq!(
        rows.next(),
        Some("PID (in the container's VM)"),
        "{table:?}"
    );
    let guest: Vec<i32> = rows.filter_map(|r| r.trim().parse().ok()).collect();
    assert!(!guest.is_empty(), "{table:?}");

    c.hull(&["pause", &c.id]).ok("pause");
    assert_eq!(c.status(), "paused");
    c.hull(&["resume", &c.id]).ok("resume");
    assert_eq!(c.status(), "running");

    let ev = c.hull(&["events", "--stats", &c.id]).ok("events");
    let ev: serde_json::Value = serde_json::from_str(&ev.stdout).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
        "{ev}"
    );

    c.hull(&["update", "--memory", "100m", &c.id]).ok("update");
    let out = c.exec(&["cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(out.stdout.trim(), "104857600", "{out:?}");

    c.hull(&["kill", "--all", &c.id, "KILL"]).ok("kill --all");
    assert_eq!(
        wait_adopted(read_pid(&pid_file), Duration::from_secs(60)),
        137
    );
    assert_eq!(c.status(), "stopped");
    c.delete(false).ok("delete");
    assert_vm_gone(&c);
}

#[test]
fn a_killed_proxy_or_vmm_reads_as_stopped_and_delete_leaves_nothing() {
    hull_only!();
    become_subreaper();
    for victim in ["proxy", "vmm"] {
        let c = Bundle::new(&["sleep", "1000"]).container();
        let (out, pid_file) = create_vm(&c, None, &["--isolation", "vm"]);
        assert_eq!(out.code, 0, "{out:?}");
        c.start().ok("start");
        let proxy = read_pid(&pid_file);
        let target = match victim {
            "proxy" => proxy,
            _ => vmm_pid(&c),
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = wait_adopted(proxy, Duration::from_secs(30));
        if victim == "proxy" {
            assert_eq!(status, 137);
        } else {
            assert_eq!(status, 255, "the proxy reports a VM that died under it");
        }
        c.wait_status("stopped", Duration::from_secs(10));
        c.delete(false).ok("delete");
        assert_vm_gone(&c);
    }
}

/// The VMM of `c`: the process working in its sandbox directory that is not the proxy.
fn vmm_pid(c: &Container) -> i32 {
    let proxy = c.pid();
    let sandbox = c.root.join(&c.id).join("vm");
    let vmm = common::cleanup::processes_under(&sandbox)
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|&pid| {
            pid != proxy
                // hull-vmm works in the sandbox directory; QEMU chroots into its jail.
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|d| d == sandbox || d == sandbox.join("jail"))
        });
    vmm.expect("the VMM of this container")
}

#[test]
fn ids_with_dots_never_touch_each_other() {
    hull_only!();
    become_subreaper();
    // A namespace container named like a VM sandbox directory used to be.
    let web = Bundle::new(&["sleep", "1000"]).container();
    let dotted = format!("{}.vm", web.id);
    let out = web.hull(&["run", "-d", "--bundle", &web.dir(), &dotted]);
    assert_eq!(out.code, 0, "{out:?}");
    let vm = Container {
        id: web.id.clone(),
        root: web.root.clone(),
        bin: web.bin.clone(),
        bundle: Bundle::new(&["sleep", "1000"]),
    };
    std::fs::write(
        vm.bundle.dir.join("config.json"),
        serde_json::to_vec(&vm.bundle.config).unwrap(),
    )
    .unwrap();
    let (out, _) = create_vm(&vm, None, &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "{out:?}");
    vm.delete(true).ok("delete --force of the VM container");
    let st = web
        .hull(&["state", &dotted])
        .ok("state of the namespace container");
    assert!(st.stdout.contains("\"running\""), "{st:?}");
    web.hull(&["delete", "--force", &dotted]).ok("delete");
    assert!(!web.root.join(&dotted).exists());
}

#[test]
fn a_terminal_through_console_socket_with_resize_and_input() {
    hull_only!();
    become_subreaper();
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let script =
        "for i in $(seq 100); do [ \"$(stty size)\" = '40 100' ] && break; sleep 0.1; done; \
                  stty size; tty; read line; echo got:$line; exit 4";
    let c = Bundle::new(&["sh", "-c", script])
        .config(|v| {
            v["process"]["terminal"] = serde_json::json!(true);
            v["annotations"] = serde_json::json!({"io.hull.isolation": "vm"});
        })
        .container();
    let sock = c.bundle.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let accept = std::thread::spawn(move || common::console::receive_fd(&listener));
    let pid_file = c.bundle.dir.join("init.pid");
    let out = c.create_with(&[
        "--console-socket",
        &sock.display().to_string(),
        "--pid-file",
        &pid_file.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut master = accept.join().unwrap();
    // The engine resizes its end; the guest's terminal follows.
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through a valid pointer.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    c.start().ok("start");
    master.write_all(b"hello\n").unwrap();
    let out = common::console::read_master(&mut master, Duration::from_secs(60));
    // The guest's line discipline echoes the input whenever it arrives.
    assert!(out.contains("40 100\r\n/dev/pts/0\r\n"), "{out:?}");
    assert!(out.ends_with("got:hello\r\n"), "{out:?}");
    assert_eq!(
        wait_adopted(read_pid(&pid_file), Duration::from_secs(30)),
        4
    );
    c.delete(false).ok("delete");
    assert_vm_gone(&c);
}
