//! What a VM container under hull-vmm gets in L1, each a real boot of the hull guest:
//! a terminal with resizes (the init's, and an exec's), virtio-blk reads of a file
//! bigger than a few MiB, virtio-net on a tap hull-vmm inherited (ping both ways),
//! several sandboxes at once, and no MSR that L1's KVM does not know but the guest's
//! PMU probe. (SMP: l2.rs.)

use std::path::Path;

use serde_json::{json, Value};

use super::{exit_is, Checks, Verdict};

/// The bundle configs these checks use, derived from `hull spec`'s `base`, written to
/// `dir` as `<name>.json` (L1 finds them in /testbed/files).
pub fn write_configs(dir: &Path, base: &Value) -> Vec<String> {
    let with = |args: &[&str], edit: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        c["process"]["terminal"] = false.into();
        c["process"]["args"] = json!(args);
        edit(&mut c);
        c
    };
    let configs = [
        (
            "tty",
            with(&["sh", "-c", TTY_SCRIPT], &|c| {
                c["process"]["terminal"] = true.into()
            }),
        ),
        ("idle", with(&["sleep", "60"], &|_| {})),
        ("blk", with(&["sh", "-c", BLK_SCRIPT], &|_| {})),
        (
            "net",
            with(&["sh", "-c", NET_SCRIPT], &|c| {
                for set in ["bounding", "effective", "permitted"] {
                    let caps = c["process"]["capabilities"][set].as_array_mut().unwrap();
                    caps.push("CAP_NET_RAW".into());
                }
                for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
                    if ns["type"] == "network" {
                        ns["path"] = "/run/netns/hullnet".into();
                    }
                }
            }),
        ),
        ("short", with(&["sh", "-c", "sleep 5; echo slept"], &|_| {})),
    ];
    configs
        .into_iter()
        .map(|(name, c)| {
            let file = format!("{name}.json");
            std::fs::write(dir.join(&file), c.to_string()).unwrap();
            file
        })
        .collect()
}

/// Waits (10 s at most each) for the window sizes the console helper sets.
const TTY_SCRIPT: &str = r#"for s in "40 100" "50 120"; do
  for i in $(seq 100); do [ "$(stty size)" = "$s" ] && break; sleep 0.1; done
  echo "size:$(stty size)"
done; tty; exit 5"#;

/// A bundle named $1 at /tmp/$1, its rootfs /tmp/b's, its config /testbed/files/$2.
const BUNDLE_FN: &str = "bundle() { rm -rf /tmp/$1; mkdir -p /tmp/$1 && cp -a /tmp/b/rootfs /tmp/$1/ && cp /testbed/files/$2 /tmp/$1/config.json; }
export HULL_HYPERVISOR=hull-vmm
";

/// The helper sets 40x100, then 50x120 once the container has seen the first.
fn tty_cmd(tail: &str) -> String {
    format!("hull-testbed-console /tmp/con.sock 40x100 'size:40 100=50x120' -- {tail}")
}

fn tty_verdict(o: &super::CommandOutput) -> Verdict {
    exit_is(o, 0)?;
    // The init's terminal gives "\r\n"; an exec's gives "\r\r\n": the guest's pty and
    // then the host-side slave the proxy relays into each add a CR (reported: the
    // exec's host slave is not raw). The sizes are what this check is about.
    if o.output.contains("\r\r\n") {
        eprintln!("note: this terminal doubles CRs (\\r\\r\\n)");
    }
    let text = o.output.replace('\r', "");
    if !text.contains("size:40 100\nsize:50 120\n/dev/pts/0\n") {
        return Err("the guest's terminal did not follow both sizes".into());
    }
    match o
        .output
        .lines()
        .any(|l| l.starts_with("reaped ") && l.ends_with(" exit 5"))
    {
        true => Ok(()),
        false => Err("the process on the terminal did not exit 5 through hull".into()),
    }
}

pub fn terminal_checks(c: &mut Checks) {
    let init = format!(
        "{BUNDLE_FN}bundle t tty.json || exit 1\n{} && hull delete t1",
        tty_cmd("sh -c 'hull --isolation vm create --console-socket /tmp/con.sock --bundle /tmp/t t1 && hull start t1'")
    );
    c.check("tty: the init's terminal, resized", &init, 90, tty_verdict);
    let exec = format!(
        "{BUNDLE_FN}bundle e idle.json && hull --isolation vm create --bundle /tmp/e e1 && hull start e1 || exit 1
{}; rc=$?; hull delete --force e1; exit $rc",
        tty_cmd(&format!(
            "hull exec -t -d --console-socket /tmp/con.sock e1 sh -c '{}'",
            TTY_SCRIPT.replace('\'', "'\\''")
        ))
    );
    c.check("tty: exec -t, resized", &exec, 90, tty_verdict);
}

/// Reads a 16 MiB file of random bytes from the erofs rootfs, a virtio-blk disk.
const BLK_SCRIPT: &str = "sha256sum /big";

pub fn device_checks(c: &mut Checks) {
    let blk = format!(
        "{BUNDLE_FN}bundle k blk.json && dd if=/dev/urandom of=/tmp/k/rootfs/big bs=1M count=16 2>/dev/null && (cd /tmp/k/rootfs && sha256sum big) && hull run --isolation vm --bundle /tmp/k k1"
    );
    c.check("virtio-blk: a 16 MiB file of the rootfs", &blk, 90, |o| {
        exit_is(o, 0)?;
        let sums: Vec<&str> = o
            .output
            .lines()
            .filter(|l| l.ends_with("big"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        match sums.as_slice() {
            [l1, guest] if l1 == guest && l1.len() == 64 => Ok(()),
            other => Err(format!("the guest read other bytes: {other:?}")),
        }
    });
}

/// The container pings L1, then waits until it has answered one ping from L1.
const NET_SCRIPT: &str = "ping -c 2 -W 5 10.77.0.1; echo ping-rc=$?; \
    for i in $(seq 150); do awk '/^Icmp:/ {n = $10} END {exit n > 0 ? 0 : 1}' /proc/net/snmp && break; sleep 0.2; done; \
    awk '/^Icmp:/ {print \"in-echos\", $10}' /proc/net/snmp; exit 3";

/// An engine's network as CNI leaves it: a namespace with one end of a veth and an
/// address, the other end in L1. Once the container has pinged L1, the namespace's
/// own address goes, so only the guest can answer L1's ping.
const NET_CMD: &str = "ip() { /usr/sbin/ip \"$@\"; }
set -e
ip netns add hullnet
ip link add hn0 type veth peer name hn1
ip link set hn1 netns hullnet
ip addr add 10.77.0.1/24 dev hn0; ip link set hn0 up
ip -n hullnet addr add 10.77.0.2/24 dev hn1; ip -n hullnet link set hn1 up
set +e
hull run --isolation vm --bundle /tmp/n n1 >/tmp/n1.out 2>&1 & p=$!
for i in $(seq 300); do grep -q ping-rc /tmp/n1.out && break; sleep 0.2; done
ip -n hullnet addr flush dev hn1
ok=no; for i in $(seq 20); do ping -c 1 -W 1 10.77.0.2 >/dev/null && { ok=yes; break; }; done
echo \"L1 to the guest: $ok\"
wait $p; rc=$?; cat /tmp/n1.out
ip netns del hullnet; ip link del hn0 2>/dev/null
exit $rc";

pub fn network_checks(c: &mut Checks) {
    let cmd = format!("{BUNDLE_FN}bundle n net.json\n{NET_CMD}");
    c.check(
        "virtio-net on an inherited tap, ping both ways",
        &cmd,
        120,
        |o| {
            exit_is(o, 3)?;
            for want in [
                "ping-rc=0",
                "2 packets transmitted, 2 packets received",
                "L1 to the guest: yes",
            ] {
                if !o.output.contains(want) {
                    return Err(format!("no {want:?}"));
                }
            }
            match o.output.lines().find(|l| l.starts_with("in-echos ")) {
                Some(l) if l != "in-echos 0" => Ok(()),
                other => Err(format!(
                    "the guest counted no echo request from L1: {other:?}"
                )),
            }
        },
    );
}

/// Several sandboxes at once. The issue's eight concurrent `sleep 25` runs (one L1 CPU)
/// were no hang of hull's, measured: without the doorbell L1 itself froze (its own
/// `timeout` never fired); with it, all eight exited 0 after 135 s, each VM booting
/// at ~230 exits/s while sharing L1's one CPU (a nested exit costs L1 milliseconds
/// under TCG); with two L1 CPUs, after 45 s. Four short ones must all end.
const CONCURRENT: usize = 4;

pub fn concurrency_checks(c: &mut Checks) {
    let cmd = format!(
        "{BUNDLE_FN}bundle s short.json
for i in $(seq {CONCURRENT}); do (hull run --isolation vm --bundle /tmp/s s$i >/tmp/s$i.out 2>&1; echo \"rc=$? at $(cut -d' ' -f1 /proc/uptime)\" >>/tmp/s$i.out) & done
echo \"started at $(cut -d' ' -f1 /proc/uptime)\"; wait; cat /tmp/s*.out"
    );
    c.check("concurrent sandboxes", &cmd, 150, |o| {
        exit_is(o, 0)?;
        let ok = o.output.lines().filter(|l| l.starts_with("rc=0 ")).count();
        let slept = o.output.lines().filter(|l| *l == "slept").count();
        match (ok, slept) {
            (CONCURRENT, CONCURRENT) => Ok(()),
            other => Err(format!("{other:?} of {CONCURRENT} ran and exited 0")),
        }
    });
}

/// Every MSR access L1's KVM did not handle, over all the boots before: only the
/// guest's PMU probe (arch/x86/events/core.c, check_hw_exists: the last free counter,
/// PERFCTR3, written with its value XOR 0xffff), which KVM without a vPMU ignores.
pub fn msr_checks(c: &mut Checks) {
    c.check(
        "unhandled MSRs",
        "dmesg | grep -iE 'unhandled (wr|rd)msr'",
        10,
        |o| {
            let lines: Vec<&str> = o.output.lines().collect();
            let unknown: Vec<&&str> = lines
                .iter()
                .filter(|l| !l.ends_with("Unhandled WRMSR(0xc0010007) = 0xffff"))
                .collect();
            match (lines.len(), unknown.is_empty()) {
                (0, _) => Err("not even the PMU probe's write: is L1's log intact?".into()),
                (_, true) => Ok(()),
                _ => Err(format!(
                    "unhandled MSR accesses besides the PMU probe: {unknown:?}"
                )),
            }
        },
    );
}
