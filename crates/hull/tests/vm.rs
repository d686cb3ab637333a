//! `hull run` with VM isolation: the busybox bundle runs in the hull guest under QEMU
//! (TCG here). Needs the guest that `hull guest build` makes (scripts/test builds it);
//! without it these tests fail and say so.

mod common;

use common::{Bundle, Container};
use std::path::Path;
use std::process::Stdio;

/// No QEMU still running for this container, and no state directory.
fn assert_vm_gone(c: &Container) {
    let sandbox = c.root.join(&c.id);
    assert!(!sandbox.exists(), "{} was left behind", sandbox.display());
    let left = common::cleanup::processes_under(&sandbox);
    assert!(
        left.is_empty(),
        "a proxy or VMM of this container still runs: {left:?}"
    );
}

fn run_vm(c: &Container, extra: &[&str]) -> common::Out {
    let dir = c.dir();
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--bundle", &dir, &c.id]);
    c.hull(&args)
}

#[test]
fn run_in_a_vm_prints_exits_with_the_status_and_leaves_nothing() {
    hull_only!();
    let script = "echo hello from $(hostname); cat /sys/fs/cgroup/memory.max; exit 3";
    let c = Bundle::new(&["sh", "-c", script])
        .config(|v| {
            v["hostname"] = "in-a-vm".into();
            v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864});
        })
        .container();
    let out = run_vm(&c, &["--isolation", "vm"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "hello from in-a-vm\n67108864\n", "{out:?}");
    assert_vm_gone(&c);
}

#[test]
fn the_annotation_asks_for_a_vm_and_stdin_is_relayed() {
    hull_only!();
    let c = Bundle::new(&["sh", "-c", "uname -r; cat"])
        .config(|v| v["annotations"] = serde_json::json!({"io.hull.isolation": "vm"}))
        .container();
    let input = c.bundle.dir.join("input");
    std::fs::write(&input, "through the VM\n").unwrap();
    let dir = c.dir();
    let out = c.hull_with(&["run", "--bundle", &dir, &c.id], |cmd| {
        cmd.stdin(Stdio::from(std::fs::File::open(&input).unwrap()));
    });
    assert_eq!(out.code, 0, "{out:?}");
    let mut lines = out.stdout.lines();
    let guest_kernel = lines.next().unwrap_or_default();
    assert_ne!(
        guest_kernel,
        common::host_kernel(),
        "the container ran on the host's kernel"
    );
    assert_eq!(lines.next(), Some("through the VM"), "{out:?}");
    assert_vm_gone(&c);
}

#[test]
fn a_failing_container_in_a_vm_reports_and_cleans_up() {
    hull_only!();
    let c = Bundle::new(&["/no/such/program"]).container();
    let out = run_vm(&c, &["--isolation", "vm"]);
    out.assert_error("a missing program", &["/no/such/program"]);
    assert_vm_gone(&c);

    // Without a built guest: one clear line, nothing made.
    let dir = c.dir();
    let out = c.hull_with(
        &["run", "--isolation", "vm", "--bundle", &dir, &c.id],
        |cmd| {
            cmd.env("HULL_GUEST_DIR", "/nonexistent/hull-guest");
        },
    );
    out.assert_error("no guest", &["hull guest build"]);
    assert!(!Path::new(&c.root.join(&c.id)).exists());
}

#[test]
fn delete_force_ends_a_vm_whose_hull_was_killed_and_leaves_nothing() {
    hull_only!();
    let c = Bundle::new(&["sleep", "1000"]).container();
    let dir = c.dir();
    let mut child = std::process::Command::new(&c.bin)
        .args([
            "--root",
            &c.root.display().to_string(),
            "run",
            "--isolation",
            "vm",
        ])
        .args(["--bundle", &dir, &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sandbox = c.root.join(&c.id).join("vm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !sandbox.join("console.log").exists() {
        assert!(std::time::Instant::now() < deadline, "no sandbox appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Without --force a running VM container is refused.
    let out = c.hull(&["delete", &c.id]);
    out.assert_error("delete of a running VM container", &["--force"]);
    // hull killed mid-way: the VM goes with it, and delete --force removes the rest.
    child.kill().unwrap();
    child.wait().unwrap();
    let out = c.hull(&["delete", "--force", &c.id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_vm_gone(&c);
}

#[test]
fn a_container_runs_in_a_vm_booted_by_hull_vmm() {
    hull_only!();
    use hull_sandbox::hypervisor::Accel;
    let script = "echo hello from $(hostname); cat; exit 3";
    let c = Bundle::new(&["sh", "-c", script])
        .config(|v| v["hostname"] = "in-hull-vmm".into())
        .container();
    if Accel::detect() != Accel::Kvm {
        eprintln!(
            "this host's /dev/kvm emulates guest code (see `hull check`) and cannot boot \
             the guest: checked here that this failure reaches the user in one clear error, \
             soon, and leaves nothing behind; the full boot runs in the nested test bed"
        );
        let dir = c.dir();
        let start = std::time::Instant::now();
        let out = c.hull_with(
            &["run", "--isolation", "vm", "--bundle", &dir, &c.id],
            |cmd| {
                cmd.env("HULL_HYPERVISOR", "hull-vmm");
            },
        );
        assert_ne!(out.code, 0, "{out:?}");
        assert!(
            out.stderr.contains("hull-vmm exited with 1")
                && out.stderr.contains("KVM cannot emulate the instruction"),
            "{out:?}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
        assert_vm_gone(&c);
        let mut config = common::nested::config(&["sh", "-c", script]);
        config["hostname"] = "in-hull-vmm".into();
        let mut l1 = common::nested::Nested::boot(&[("b", config)]);
        let cmd = format!(
            "{} && echo through vsock > /tmp/in && HULL_HYPERVISOR=hull-vmm hull run \
             --isolation vm --bundle /tmp/b c </tmp/in; echo exit $?; hull list -q",
            common::nested::bundle_command("b")
        );
        let out = l1.run(&cmd, std::time::Duration::from_secs(180));
        assert_eq!(
            out.output, "hello from in-hull-vmm\nthrough vsock\nexit 3\n",
            "in L1"
        );
        return;
    }
    let input = c.bundle.dir.join("input");
    std::fs::write(&input, "through vsock\n").unwrap();
    let dir = c.dir();
    let out = c.hull_with(
        &["run", "--isolation", "vm", "--bundle", &dir, &c.id],
        |cmd| {
            cmd.env("HULL_HYPERVISOR", "hull-vmm")
                .stdin(Stdio::from(std::fs::File::open(&input).unwrap()));
        },
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(
        out.stdout, "hello from in-hull-vmm\nthrough vsock\n",
        "{out:?}"
    );
    assert_vm_gone(&c);
}

#[test]
fn sigterm_to_hull_vmm_lets_the_container_stop_gracefully() {
    hull_only!();
    use hull_sandbox::hypervisor::Accel;
    use std::io::{BufRead, Read};
    let script = "trap 'echo got TERM; exit 7' TERM; echo up; while :; do sleep 0.1; done";
    if Accel::detect() != Accel::Kvm {
        // This host's KVM cannot boot the guest: the same steps in the nested test bed.
        let mut l1 =
            common::nested::Nested::boot(&[("t", common::nested::config(&["sh", "-c", script]))]);
        let cmd = format!(
            "{}; HULL_HYPERVISOR=hull-vmm hull run --isolation vm --bundle /tmp/t t >/tmp/out 2>/tmp/err &
pid=$!
until grep -qs up /tmp/out; do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
vmm=$(ps -o pid,args | awk '/ vmm --config/ && !/awk/ {{print $1}}')
kill -TERM $vmm; wait $pid; echo exit $?; cat /tmp/out; hull list -q; echo ---; cat /tmp/err",
            common::nested::bundle_command("t")
        );
        let out = l1.run(&cmd, std::time::Duration::from_secs(180));
        // hull's stderr, after the line, is there for the log only.
        let (stdout, _) = out.output.split_once("---\n").unwrap_or((&out.output, ""));
        assert_eq!(stdout, "exit 7\nup\ngot TERM\n", "in L1");
        return;
    }
    let c = Bundle::new(&["sh", "-c", script]).container();
    let dir = c.dir();
    let mut child = std::process::Command::new(&c.bin)
        .args(["--root", &c.root.display().to_string()])
        .args(["run", "--isolation", "vm", "--bundle", &dir, &c.id])
        .env("HULL_HYPERVISOR", "hull-vmm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "up\n", "the container started in the VM");

    // `hull vmm` works in the sandbox directory (and names its files relative to it).
    let sandbox = c.root.join(&c.id).join("vm");
    let vmm = common::cleanup::processes_under(&sandbox)
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains(" vmm "))
        .map(|(pid, _)| pid)
        .expect("the hull-vmm process of this container");
    // The VMM types Ctrl-Alt-Del; the agent gives the container SIGTERM and its grace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got TERM\n");
    assert_eq!(status.code(), Some(7), "the container's exit status");
    assert_vm_gone(&c);
}
