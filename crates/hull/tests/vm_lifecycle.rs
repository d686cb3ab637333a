//! VM containers through the runc lifecycle as engines drive it: `create` and `start`
//! as separate processes, the pid from --pid-file as the process to wait on (the test
//! is its subreaper, as conmon and containerd's shim are), state, exec, ps, pause,
//! events, update, kill and delete. Boots real VMs (QEMU/TCG here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{host_kernel, Bundle, Container};

/// The test process adopts orphans, as conmon and containerd's shim do: the proxy that
/// `create` reports outlives `create` and is waited on here.
fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// The exit status of `pid`, a process this test adopted.
fn wait_adopted(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(e) => panic!("waitpid {pid}: {e} (not adopted?)"),
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// `hull --isolation vm create` with stdin from `input`; stdout and stderr of the
/// container land in init.out and init.err.
fn create_vm(c: &Container, input: Option<&Path>, global: &[&str]) -> (common::Out, PathBuf) {
    let pid_file = c.bundle.dir.join("init.pid");
    let mut cmd = Command::new(&c.bin);
    cmd.arg("--root").arg(&c.root).args(global);
    cmd.args(["create", "--bundle", &c.dir(), "--pid-file"])
        .arg(&pid_file)
        .arg(&c.id);
    let stdin = match input {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(std::fs::File::create(c.bundle.dir.join("init.out")).unwrap())
        .stderr(std::fs::File::create(c.bundle.dir.join("init.err")).unwrap());
    let status = cmd.status().expect("spawn create");
    let out = common::Out {
        code: status.code().unwrap_or(128),
        stdout: String::new(),
        stderr: c.init_output().1,
    };
    (out, pid_file)
}

/// No process of this container's sandbox left (proxy or VMM), no state directory.
fn assert_vm_gone(c: &Container) {
    let state = c.root.join(&c.id);
    assert!(!state.exists(), "{} was left behind", state.display());
    let left = common::cleanup::processes_under(&state);
    assert!(
        left.is_empty(),
        "a proxy or VMM of this container still runs: {left:?}"
    );
    let left: Vec<PathBuf> = common::cleanup::cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(&c.id))
        .filter(|p| p.join(&c.id).exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

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
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == sandbox)
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

/// An engine's network namespace: a veth whose far end (with an address and a default
/// route) is in a namespace of its own, as CNI's bridge plugin leaves it.
struct EngineNetwork {
    netns: String,
    host_veth: String,
    host_ip: String,
    container_ip: String,
    host_ip6: String,
    container_ip6: String,
}

impl EngineNetwork {
    fn new() -> EngineNetwork {
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        let subnet = std::process::id() % 200 + 20;
        let n = EngineNetwork {
            netns: format!("hull-test-{tag}"),
            host_veth: format!("hvh{tag}"),
            host_ip: format!("10.199.{subnet}.1"),
            container_ip: format!("10.199.{subnet}.2"),
            host_ip6: format!("fd00:68:{subnet}::1"),
            container_ip6: format!("fd00:68:{subnet}::2"),
        };
        let peer = format!("hvc{tag}");
        let sh = |cmd: String| {
            let ok = Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
            assert!(ok.success(), "{cmd}");
        };
        sh(format!("ip netns add {}", n.netns));
        sh(format!(
            "ip link add {} type veth peer name {peer}",
            n.host_veth
        ));
        sh(format!("ip link set {peer} netns {}", n.netns));
        sh(format!(
            "ip addr add {}/24 dev {} && ip link set {} up",
            n.host_ip, n.host_veth, n.host_veth
        ));
        sh(format!(
            "ip -n {ns} addr add {ip}/24 dev {peer} && ip -n {ns} link set {peer} up && ip -n {ns} route add default via {gw}",
            ns = n.netns,
            ip = n.container_ip,
            gw = n.host_ip
        ));
        // Dual stack, as a CNI config with an IPv6 range leaves it (no DAD: the test
        // does not wait for it).
        sh(format!(
            "ip addr add {}/64 dev {} nodad && ip -n {ns} addr add {ip6}/64 dev {peer} nodad && ip -n {ns} -6 route add default via {gw6}",
            n.host_ip6,
            n.host_veth,
            ns = n.netns,
            ip6 = n.container_ip6,
            gw6 = n.host_ip6
        ));
        n
    }
}

impl Drop for EngineNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_engines_network_namespace_is_mirrored_into_the_vm() {
    hull_only!();
    become_subreaper();
    let net = EngineNetwork::new();
    let script = format!(
        "ip -o -4 addr show eth0 | grep -q {ip}/24 && echo has-address; \
         ip -o -6 addr show eth0 | grep -q {ip6}/64 && echo has-address6; \
         echo from-the-vm | nc {host} 9000; echo from-v6 | nc {host6} 9001; \
         echo served | nc -l -p 8080",
        ip = net.container_ip,
        host = net.host_ip,
        ip6 = net.container_ip6,
        host6 = net.host_ip6
    );
    let netns = format!("/run/netns/{}", net.netns);
    let c = Bundle::new(&["sh", "-c", &script])
        .config(|v| {
            for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
                if ns["type"] == "network" {
                    ns["path"] = netns.clone().into();
                }
            }
        })
        .container();
    // The container reaches a server on the host through the engine's veth.
    let listener = std::net::TcpListener::bind(format!("{}:9000", net.host_ip)).unwrap();
    let listener6 = std::net::TcpListener::bind(format!("[{}]:9001", net.host_ip6)).unwrap();
    let (out, pid_file) = create_vm(&c, None, &["--isolation", "vm"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.start().ok("start");
    listener.set_nonblocking(false).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut got = String::new();
    use std::io::{BufRead, Read};
    std::io::BufReader::new(&conn).read_line(&mut got).unwrap();
    assert_eq!(got, "from-the-vm\n");
    // busybox nc waits for our end to close once its input is sent.
    drop(conn);
    // IPv6: the guest has the engine's address and default route.
    let (conn, _) = listener6.accept().unwrap();
    let mut got = String::new();
    std::io::BufReader::new(&conn).read_line(&mut got).unwrap();
    assert_eq!(got, "from-v6\n");
    drop(conn);
    // And the host reaches a server in the VM at the container's address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        if let Ok(mut s) = std::net::TcpStream::connect((net.container_ip.as_str(), 8080)) {
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            if !r.is_empty() {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no server at {}:8080",
            net.container_ip
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reply, "served\n");
    assert_eq!(
        wait_adopted(read_pid(&pid_file), Duration::from_secs(30)),
        0
    );
    assert_eq!(c.init_output().0, "has-address\nhas-address6\n");
    c.delete(false).ok("delete");
    assert_vm_gone(&c);
}

/// The host's hooks run for a VM container, against the proxy's pid and with the
/// runtime-spec's statuses; a prestart hook that builds the container's network in the
/// proxy's namespace (as docker's libnetwork-setkey does) has it mirrored into the VM;
/// hooks that would run in the container's namespaces are refused by name.
#[test]
fn the_hosts_hooks_run_and_a_prestart_hooks_network_reaches_the_vm() {
    hull_only!();
    become_subreaper();
    let tag = format!("{:x}", std::process::id() % 0xfffff);
    let subnet = std::process::id() % 200 + 20;
    let (host_if, peer) = (format!("hkh{tag}"), format!("hkc{tag}"));
    let c = Bundle::new(&["sh", "-c", "ip -o -4 addr show; sleep 1"]).container();
    let dir = c.bundle.dir.display().to_string();
    let record = |kind: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {dir}/{kind}.json")]});
    // Reads the proxy's pid from the state on stdin; puts a veth's end in its namespace.
    let network = format!(
        "pid=$(sed 's/.*\"pid\":\\([0-9]*\\).*/\\1/'); \
         ip link add {host_if} type veth peer name {peer} && \
         ip link set {peer} netns /proc/$pid/ns/net && \
         nsenter --net=/proc/$pid/ns/net ip addr add 10.198.{subnet}.2/24 dev {peer} && \
         nsenter --net=/proc/$pid/ns/net ip link set {peer} up"
    );
    let hooks = serde_json::json!({
        "prestart": [record("prestart"), {"path": "/bin/sh", "args": ["sh", "-c", network]}],
        "poststart": [record("poststart")],
        "poststop": [record("poststop")],
    });
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.bundle.dir.join("config.json")).unwrap()).unwrap();
    config["hooks"] = hooks.clone();
    // No network namespace path: the container's network is the one the hook builds.
    std::fs::write(c.bundle.dir.join("config.json"), config.to_string()).unwrap();
    let (out, pid_file) = create_vm(&c, None, &["--isolation", "vm"]);
    let _ = Command::new("ip")
        .args(["link", "del", &host_if])
        .stderr(Stdio::null())
        .status();
    assert_eq!(out.code, 0, "{out:?}");
    let proxy = read_pid(&pid_file);
    let state = |kind: &str| -> serde_json::Value {
        let text =
            std::fs::read_to_string(c.bundle.dir.join(format!("{kind}.json"))).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{kind}.json: {e}: {text:?}"))
    };
    let pre = state("prestart");
    assert_eq!(
        (pre["status"].as_str(), pre["pid"].as_i64()),
        (Some("created"), Some(proxy as i64))
    );
    c.start().ok("start");
    assert_eq!(state("poststart")["status"], "running");
    assert_eq!(wait_adopted(proxy, Duration::from_secs(60)), 0);
    let shown = c.init_output().0;
    assert!(
        shown.contains(&format!("10.198.{subnet}.2/24")),
        "the hook's network in the VM: {shown:?}"
    );
    c.delete(false).ok("delete");
    assert_eq!(state("poststop")["status"], "stopped");
    assert_vm_gone(&c);

    // createContainer hooks run in the container's namespaces: not in a VM's.
    config["hooks"] = serde_json::json!({"createContainer": [record("cc")]});
    std::fs::write(c.bundle.dir.join("config.json"), config.to_string()).unwrap();
    let (out, _) = create_vm(&c, None, &["--isolation", "vm"]);
    out.assert_error("a createContainer hook in a VM", &["createContainer"]);
    assert_vm_gone(&c);
}
