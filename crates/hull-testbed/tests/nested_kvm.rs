//! hull on a KVM that runs guests: one L1 boot (QEMU/TCG emulating AMD SVM, Debian's
//! cloud kernel with kvm-amd) serves every check, in order: /dev/kvm appears,
//! `hull check` measures its speed, `hull vmm` boots the hull guest to its init and ends
//! it with Ctrl-Alt-Del on SIGTERM, `hull run --isolation vm` under hull-vmm returns the
//! container's status; then (nested/guest.rs, nested/l2.rs) terminals with resizes,
//! virtio-blk, SMP, virtio-net on an inherited tap, concurrent sandboxes, and L1's
//! unhandled MSRs.
//!
//! Needs root, hull's release build (`cargo build --release`; scripts/test builds it
//! first) and the hull guest (`hull guest build`). Without them the test fails and says
//! what is missing: it never passes without having run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_testbed::{CommandOutput, Options, L1};

#[path = "nested/guest.rs"]
mod guest;
#[path = "nested/l2.rs"]
mod l2;

/// Host files for L1, removed with the guard.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bundle config running `script` (from `hull spec`, terminal off) and a `hull vmm`
/// config booting the guest hull's `current.json` in L1 names.
fn scratch_files(hull: &Path) -> (Scratch, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("hull-testbed-test.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir.clone());
    let spec = std::process::Command::new(hull)
        .arg("spec")
        .current_dir(&dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", hull.display()));
    assert!(spec.success(), "hull spec: {spec}");
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut files = guest::write_configs(&dir, &c);
    files.extend(l2::write_files(&dir));
    c["process"]["terminal"] = false.into();
    for (name, script) in [
        ("config-cat.json", "cat"),
        (
            "config-trap.json",
            "trap 'exit 9' TERM; while :; do sleep 0.1; done",
        ),
    ] {
        c["process"]["args"] = serde_json::json!(["sh", "-c", script]);
        std::fs::write(dir.join(name), c.to_string()).unwrap();
        files.push(name.to_string());
    }
    c["process"]["args"] = serde_json::json!(["sh", "-c", "uname -r; exit 7"]);
    std::fs::write(&path, c.to_string()).unwrap();
    files.extend(["config.json".to_string(), "vm.json".to_string()]);
    // The rootless spec for L1's user, whose ids L1 fills in for the placeholder.
    let rootless = dir.join("rootless");
    std::fs::create_dir_all(&rootless).unwrap();
    let spec = std::process::Command::new(hull)
        .args(["spec", "--rootless"])
        .current_dir(&rootless)
        .status()
        .unwrap();
    assert!(spec.success(), "hull spec --rootless: {spec}");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rootless.join("config.json")).unwrap()).unwrap();
    r["process"]["terminal"] = false.into();
    r["process"]["args"] = serde_json::json!(["sh", "-c", "uname -r; id -u; exit 7"]);
    for (map, id) in [("uidMappings", ROOTLESS_UID), ("gidMappings", ROOTLESS_GID)] {
        r["linux"][map] = serde_json::json!([{"containerID": 0, "hostID": id, "size": 1}]);
    }
    std::fs::write(dir.join("config-rootless.json"), r.to_string()).unwrap();
    files.push("config-rootless.json".to_string());
    // hull's own cmdline (BASE_CMDLINE): each port access of L2 is a nested VM exit,
    // costly under TCG, so no console chatter and no i8042 AUX probe (14 s with it, 4 s
    // without). The agent gets a virtio console to serve on (no one connects to it).
    let vm = serde_json::json!({
        "kernel": "/var/lib/hull/guest/vmlinux",
        "initramfs": "/var/lib/hull/guest/initramfs.cpio",
        "cmdline": format!(
            "{} tsc=reliable hull.console=hvc0",
            hull_sandbox::qemu::BASE_CMDLINE
        ),
        "vcpus": 1,
        "memory_mib": 128,
        "serial": "stdout",
        "console": {"socket": "/tmp/vmm-console.sock"},
        // Under TCG-in-TCG on a loaded host the guest's Ctrl-Alt-Del path (keyboard
        // interrupt, the agent's SIGTERM to its containers, the reset) took over the
        // default 3 s once: it may take its time, the reset must still come.
        "shutdown_grace_ms": 20000,
    });
    std::fs::write(dir.join("vm.json"), vm.to_string()).unwrap();
    (scratch, files)
}

/// Makes a busybox bundle at /tmp/b in L1 with the config from the host.
const MAKE_BUNDLE: &str =
    "set -e; mkdir -p /tmp/b/rootfs/bin /tmp/b/rootfs/proc /tmp/b/rootfs/sys \
    /tmp/b/rootfs/dev /tmp/b/rootfs/tmp; cp /bin/busybox /tmp/b/rootfs/bin/; \
    /bin/busybox --install -s /tmp/b/rootfs/bin; cp /testbed/files/config.json /tmp/b/";

/// Under hull-vmm: stdin to stdout through `cat` byte for byte, memory.max read back
/// before and after `update`, and SIGTERM and SIGKILL through `kill` stopping a
/// container (the bundles' rootfs is /tmp/b's).
const VMM_CONTAINER_VERBS: &str = "set -e
export HULL_HYPERVISOR=hull-vmm
mk() { rm -rf /tmp/$1; mkdir -p /tmp/$1; cp -a /tmp/b/rootfs /tmp/$1/; cp /testbed/files/$2 /tmp/$1/config.json; }
stopped() { i=0; until hull state $1 | grep -q stopped; do i=$((i+1)); [ $i -lt 600 ] || return 1; sleep 0.1; done; }
mk s config-cat.json
head -c 300000 /dev/urandom > /tmp/in
hull run --isolation vm --bundle /tmp/s s1 < /tmp/in > /tmp/out
cmp /tmp/in /tmp/out && echo stdio byte-exact
mk t config-trap.json
hull run -d --isolation vm --bundle /tmp/t t1
echo memory.max $(hull exec t1 cat /sys/fs/cgroup/memory.max)
hull update --memory 33554432 t1
echo memory.max $(hull exec t1 cat /sys/fs/cgroup/memory.max)
hull kill t1 TERM; stopped t1; echo TERM stopped it; hull delete t1
hull run -d --isolation vm --bundle /tmp/t t2
hull kill t2 KILL; stopped t2; echo KILL stopped it; hull delete t2";

/// The ids in config-rootless.json that L1 replaces with its user's.
const ROOTLESS_UID: u32 = 4242424;
const ROOTLESS_GID: u32 = 4242425;

/// A user (uid and gid 1000, the group of /dev/kvm; L1 has no user database) runs a VM
/// container under hull-vmm without root: the
/// proxy is root of a user namespace mapping only the user, and hull-vmm keeps those
/// ids in its jail and clears its capabilities (`keep_ids`).
const VMM_ROOTLESS: &str = "set -e
chown 0:1000 /dev/kvm; chmod 0660 /dev/kvm
mkdir -p /run/user/1000 /tmp/rhome; chown 1000:1000 /run/user/1000 /tmp/rhome; chmod 700 /run/user/1000
rm -rf /tmp/rb; mkdir -p /tmp/rb; cp -a /tmp/b/rootfs /tmp/rb/
sed -e s/4242424/1000/ -e s/4242425/1000/ /testbed/files/config-rootless.json > /tmp/rb/config.json
chown -R 1000:1000 /tmp/rb
cd /tmp/rb
/usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups env -i HOME=/tmp/rhome XDG_RUNTIME_DIR=/run/user/1000 PATH=$PATH HULL_HYPERVISOR=hull-vmm hull --isolation vm run --bundle /tmp/rb r1";

/// Boots the guest with `hull vmm`, waits for its agent to serve, and sends SIGTERM.
const VMM_BOOT_AND_SIGTERM: &str = "hull vmm --config /testbed/files/vm.json >/tmp/vmm.out 2>&1 &
pid=$!
until grep -q 'ready at' /tmp/vmm.out; do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -TERM $pid; wait $pid; rc=$?; cat /tmp/vmm.out; exit $rc";

type Verdict = Result<(), String>;

/// Guest instructions a second (millions) below which L1's KVM is no better than this
/// machine's emulated one.
const MIN_NESTED_RATE: f64 = 10.0;

struct Checks<'a> {
    l1: &'a mut L1,
    failures: Vec<String>,
}

impl Checks<'_> {
    /// Runs `cmd` in L1, prints what it did, and records a failure when `verify`
    /// (or the run itself) says so.
    fn check(
        &mut self,
        name: &str,
        cmd: &str,
        timeout: u64,
        verify: impl FnOnce(&CommandOutput) -> Verdict,
    ) -> Option<CommandOutput> {
        match self.l1.run(cmd, Duration::from_secs(timeout)) {
            Ok(out) => {
                eprintln!(
                    "--- {name}: exit {} in {:.2} s: {cmd}\n{}",
                    out.code,
                    out.elapsed.as_secs_f64(),
                    out.output
                );
                if let Err(why) = verify(&out) {
                    self.failures.push(format!("{name}: {why}\n{}", out.output));
                }
                Some(out)
            }
            Err(e) => {
                self.failures.push(format!("{name}: {e}"));
                None
            }
        }
    }
}

fn exit_is(out: &CommandOutput, code: i32) -> Verdict {
    if out.code == code {
        Ok(())
    } else {
        Err(format!("exit {}, expected {code}", out.code))
    }
}

#[test]
fn hull_runs_guests_on_nested_kvm() {
    assert!(
        nix_is_root(),
        "not run: the nested-KVM test bed needs root (QEMU, KVM, mounts in L1's image)"
    );
    let mut opts = Options::for_workspace();
    let (scratch, files) = scratch_files(&opts.hull);
    for f in files {
        opts.files.push((scratch.0.join(&f), f));
    }
    // The rootless check's change of ids (L1 has busybox, whose tools want names).
    opts.tools.push("/usr/bin/setpriv".into());
    // The engine's end of --console-socket, for the terminal checks.
    opts.files.push((
        env!("CARGO_BIN_EXE_hull-testbed-console").into(),
        "/usr/local/bin/hull-testbed-console".into(),
    ));
    let mut l1 = L1::boot(&opts, &|m| eprintln!("hull-testbed: {m}"))
        .unwrap_or_else(|e| panic!("not run: L1 did not come up: {e}"));
    eprintln!("L1 {} up in {:.2} s", l1.kernel, l1.boot_time.as_secs_f64());
    let mut c = Checks {
        l1: &mut l1,
        failures: Vec::new(),
    };
    kvm_checks(&mut c);
    vm_checks(&mut c);
    guest::terminal_checks(&mut c);
    guest::device_checks(&mut c);
    l2::smp_checks(&mut c);
    guest::network_checks(&mut c);
    guest::concurrency_checks(&mut c);
    guest::msr_checks(&mut c);
    let failures = std::mem::take(&mut c.failures);
    let (pid, dir) = (l1.pid(), l1.dir().to_path_buf());
    drop(l1);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) outlived its L1"
    );
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// /dev/kvm, `hull check`, and the test bed's own timeout.
fn kvm_checks(c: &mut Checks) {
    let modules = "test -c /dev/kvm && cut -d' ' -f1 /proc/modules";
    c.check("/dev/kvm", modules, 30, |o| {
        exit_is(o, 0)?;
        match o.output.lines().any(|l| l == "kvm_amd") {
            true => Ok(()),
            false => Err("kvm_amd is not loaded".into()),
        }
    });
    c.check("hull check", "hull check", 60, |o| {
        let kvm = o
            .output
            .lines()
            .find(|l| l.starts_with("kvm "))
            .unwrap_or("");
        let rate = kvm
            .split_once(" M guest instructions/s")
            .and_then(|(head, _)| head.rsplit(' ').next()?.parse::<f64>().ok());
        // This machine's emulated KVM measures ~4 M/s; nested KVM ran 46 to 950 M/s,
        // by how much of a core the host gave QEMU.
        match rate {
            None => Err(format!("no measured KVM speed: {kvm:?}")),
            Some(r) if r < MIN_NESTED_RATE => Err(format!("{r} M/s is emulated speed")),
            Some(_) if kvm.contains("hardware-accelerated") => exit_is(o, 0),
            Some(r) => {
                eprintln!("note: {r} M/s is below hull check's hardware threshold here");
                Ok(())
            }
        }
    });
    // L1 kills a command at its timeout and says so; the session goes on.
    c.check("timeout", "echo started; sleep 30", 1, |o| {
        // busybox's timeout says "Killed" after what the command printed.
        match (o.timed_out, o.code, o.output.starts_with("started\n")) {
            (true, 137, true) => Ok(()),
            other => Err(format!("not reported as killed at its timeout: {other:?}")),
        }
    });
}

/// `hull vmm` boots the guest; `hull run --isolation vm` under hull-vmm returns the
/// container's status.
fn vm_checks(c: &mut Checks) {
    c.check("hull vmm", VMM_BOOT_AND_SIGTERM, 60, |o| {
        exit_is(o, 0)?;
        // The guest's init is hull-agent: it says it serves, then takes hull vmm's
        // Ctrl-Alt-Del (SIGTERM) as the order to stop and powers off.
        for line in [
            "hull-agent: INFO: ready at",
            "Ctrl-Alt-Del: every container",
        ] {
            if !o.output.contains(line) {
                return Err(format!("the guest never printed {line:?}"));
            }
        }
        Ok(())
    });
    c.check("bundle", MAKE_BUNDLE, 30, |o| exit_is(o, 0));
    let l1_kernel = c.l1.kernel.clone();
    // Three runs: the lost shutdown reply (exit 1 instead of 7) showed in 2 of 4 runs
    // by hand, and in 3 of 3 here, before the agent waited for the host's hang-up.
    for i in 1..=3 {
        let cmd = format!("HULL_HYPERVISOR=hull-vmm hull run --isolation vm --bundle /tmp/b c{i}");
        c.check(&format!("hull run {i}"), &cmd, 60, |o| {
            exit_is(o, 7)?;
            let first = o.output.lines().next().unwrap_or("");
            match first.starts_with("6.1") && first != l1_kernel {
                true => Ok(()),
                false => Err(format!("first line {first:?} is not the guest's kernel")),
            }
        });
    }
    c.check("rootless hull run", VMM_ROOTLESS, 90, |o| {
        exit_is(o, 7)?;
        let lines: Vec<&str> = o.output.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.starts_with("6.1"))
            .ok_or("no guest kernel release in the output")?;
        match lines.get(i + 1) {
            Some(&"0") => Ok(()),
            other => Err(format!("the container's uid: {other:?}, not 0")),
        }
    });
    c.check("container verbs", VMM_CONTAINER_VERBS, 240, |o| {
        exit_is(o, 0)?;
        let want = "stdio byte-exact\nmemory.max max\nmemory.max 33554432\nTERM stopped it\nKILL stopped it\n";
        match o.output.ends_with(want) {
            true => Ok(()),
            false => Err(format!("expected the output to end with {want:?}")),
        }
    });
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
