//! containerd 1.6 driving the shim through `ctr`, in both isolations: the runtime
//! `io.containerd.hull-ns.v2` (namespaces) and `io.containerd.hull.v2` (a micro-VM per
//! container, QEMU/TCG here). Output and exit codes, stdin, a terminal, exec, ps,
//! pause/resume, metrics, kill --all, an image's snapshotter mounts, the events
//! containerd receives, a SIGKILLed shim; after each, nothing left.

mod common;

use std::time::Duration;

use common::{on_a_terminal, text, Containerd, Iso};

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn run_and_exit_codes(c: &Containerd, iso: Iso) {
    let id = format!("{}-once", c.ns);
    let out = c.run(
        iso,
        &["--rm"],
        &id,
        &["sh", "-c", "echo out; uname -r; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let shown = text(&out);
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("out"), "{out:?}");
    let kernel = lines.next().unwrap_or_default();
    assert_eq!(
        kernel != host_kernel(),
        iso == Iso::Vm,
        "kernel {kernel}: {out:?}"
    );

    let id = format!("{}-stdin", c.ns);
    let rootfs = c.dir.join("rootfs").display().to_string();
    let args = [
        "run",
        "--runtime",
        iso.runtime(),
        "--rm",
        "--rootfs",
        &rootfs,
        &id,
        "sh",
        "-c",
        "read a; read b; echo \"got $a $b\"; cat; echo end",
    ];
    c.ids.borrow_mut().push(id.clone());
    let out = c.ctr_input(&args, "one\ntwo\nthree\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out), "got one two\nthree\nend\n", "{out:?}");
}

fn detached_exec_ps_pause_metrics_kill(c: &Containerd, iso: Iso) {
    let id = format!("{}-bg", c.ns);
    let out = c.run(
        iso,
        &["-d"],
        &id,
        &["sh", "-c", "while :; do sleep 0.2; done"],
    );
    assert!(out.status.success(), "{out:?}");
    c.wait_task(&id, "RUNNING", Duration::from_secs(10));

    let exec = [
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo in-exec; exit 6",
    ];
    let out = c.ctr(&exec);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(6), "in-exec\n"),
        "{out:?}"
    );

    let exec = [
        "task",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "sh",
        "-c",
        "read a; echo \"got $a\"",
    ];
    let out = c.ctr_input(&exec, "through exec\n");
    assert_eq!(text(&out), "got through exec\n", "{out:?}");
    let line = format!(
        "{} task exec -t --exec-id e3 {id} sh -c 'tty; exit 9'",
        c.ctr_line()
    );
    let (code, shown) = on_a_terminal(&line);
    assert_eq!(code, Some(9), "ctr task exec -t: {shown:?}");
    assert!(shown.contains("/dev/pts/"), "ctr task exec -t: {shown:?}");

    let out = c.ctr(&["task", "ps", &id]);
    assert!(
        out.status.success() && text(&out).lines().count() >= 2,
        "{out:?}"
    );

    assert!(c.ctr(&["task", "pause", &id]).status.success());
    c.wait_task(&id, "PAUSED", Duration::from_secs(10));
    assert!(c.ctr(&["task", "resume", &id]).status.success());
    c.wait_task(&id, "RUNNING", Duration::from_secs(10));

    let out = c.ctr(&["task", "metrics", &id]);
    let m = text(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        m.contains("memory.usage_in_bytes") && m.contains("pids.current"),
        "{m}"
    );

    let out = c.ctr(&["task", "kill", "--all", "--signal", "KILL", &id]);
    assert!(out.status.success(), "{out:?}");
    c.wait_task(&id, "STOPPED", Duration::from_secs(30));
    assert!(c.ctr(&["task", "delete", &id]).status.success());
    assert!(c.ctr(&["container", "delete", &id]).status.success());
}

/// A pty: ctr's console goes raw, the shim hands hull --console-socket and passes
/// ctr's window size on (ResizePty) once the process runs.
fn terminal(c: &Containerd, iso: Iso) {
    let id = format!("{}-tty", c.ns);
    c.ids.borrow_mut().push(id.clone());
    // Until ResizePty has arrived, busybox's stty finds the size 0 0 and fails.
    let script = "tty; i=0; until [ -n \"$(stty size 2>/dev/null | grep -v \"^0 0$\")\" ] \
                  || [ $i -gt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size; exit 4";
    let line = format!(
        "stty rows 30 cols 100; {} run --runtime {} -t --rm --rootfs {} {id} sh -c '{script}'",
        c.ctr_line(),
        iso.runtime(),
        c.dir.join("rootfs").display()
    );
    let (code, shown) = on_a_terminal(&line);
    assert_eq!(code, Some(4), "ctr run -t: {shown:?}");
    assert!(shown.contains("/dev/pts/0"), "ctr run -t: {shown:?}");
    assert!(shown.contains("30 100"), "the window size: {shown:?}");
}

/// From an image: the overlayfs snapshotter's mounts, made by the shim at the rootfs.
fn image(c: &Containerd, iso: Iso) {
    let tar = c.dir.join("image.tar");
    common::image::build(&c.dir.join("rootfs"), "hull.test/busybox:1", &["sh"], &tar);
    let out = c.ctr(&["images", "import", &tar.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let id = format!("{}-image", c.ns);
    let flags = [
        "run",
        "--runtime",
        iso.runtime(),
        "--rm",
        "hull.test/busybox:1",
    ];
    let script = "echo written > /tmp/f; cat /tmp/f; exit 7";
    let out = c.run_image(&flags, &id, &["sh", "-c", script]);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(7), "written\n"),
        "{out:?}"
    );
}

/// An OOM kill under a memory limit reaches containerd as TaskOOM while the container
/// runs (for a VM, from the guest's cgroup as the kill happens, not at the init's exit).
fn oom(c: &Containerd, iso: Iso) {
    let id = format!("{}-oom", c.ns);
    let script = "tail /dev/zero; exec sleep 600";
    let flags = ["-d", "--memory-limit", "33554432"];
    let out = c.run(iso, &flags, &id, &["sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    c.wait_event(&["/tasks/oom", &id], Duration::from_secs(10));
    let ls = text(&c.ctr(&["task", "ls"]));
    let running = ls
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&id) && l.contains("RUNNING"));
    assert!(running, "the init should still run at TaskOOM:\n{ls}");
    let out = c.ctr(&["task", "kill", "--signal", "KILL", &id]);
    assert!(out.status.success(), "{out:?}");
    c.wait_task(&id, "STOPPED", Duration::from_secs(30));
    assert!(c.ctr(&["task", "delete", &id]).status.success());
    assert!(c.ctr(&["container", "delete", &id]).status.success());
}

fn assert_events(c: &Containerd) {
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
    ] {
        c.wait_event(&[topic], Duration::from_secs(5));
    }
}

fn flow(iso: Iso) {
    if iso == Iso::Vm {
        common::require_guest();
    }
    let c = Containerd::start();
    run_and_exit_codes(&c, iso);
    detached_exec_ps_pause_metrics_kill(&c, iso);
    terminal(&c, iso);
    image(&c, iso);
    oom(&c, iso);
    assert_events(&c);
    c.assert_clean();
}

/// containerd notices the dead shim, runs `delete` (which kills what hull left: the
/// container's init, or the VM's proxy and VMM), and publishes the task's exit.
fn killed_shim(iso: Iso) {
    if iso == Iso::Vm {
        common::require_guest();
    }
    let c = Containerd::start();
    let id = format!("{}-victim", c.ns);
    let out = c.run(
        iso,
        &["-d"],
        &id,
        &["sh", "-c", "while :; do sleep 0.2; done"],
    );
    assert!(out.status.success(), "{out:?}");
    c.wait_task(&id, "RUNNING", Duration::from_secs(10));
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_event(&["/tasks/exit", &id, "137"], Duration::from_secs(30));
    // containerd 1.6 forgets the task once its cleanup ran.
    c.wait_task(&id, "", Duration::from_secs(30));
    assert!(c.ctr(&["container", "delete", &id]).status.success());
    c.assert_clean();
}

#[test]
fn namespaces_through_ctr() {
    flow(Iso::Namespace);
}

#[test]
fn vms_through_ctr() {
    flow(Iso::Vm);
}

#[test]
fn a_killed_namespace_shim_is_cleaned_up() {
    killed_shim(Iso::Namespace);
}

#[test]
fn a_killed_vm_shim_is_cleaned_up() {
    killed_shim(Iso::Vm);
}
