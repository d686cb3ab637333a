//! A VM container on the engine's network: the network namespace the engine made (or a
//! prestart hook filled) is mirrored into the VM, dual-stack, and the host's hooks run
//! against the proxy. Boots real VMs (QEMU/TCG here).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::vm::{assert_vm_gone, become_subreaper, create_vm, read_pid, wait_adopted};
use common::Bundle;

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
