//! Terminals of VM containers as engines hand them out: `run` in the foreground with
//! `--console-socket`, and `exec -t -d --console-socket`. The guest's pty does the
//! terminal's work; the host's side passes bytes unchanged (no second "\r" before each
//! "\n", no second echo). Boots real VMs (QEMU/TCG here).

mod common;

use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{assert_clean, Bundle};

fn console_socket(
    dir: &std::path::Path,
    name: &str,
) -> (String, std::thread::JoinHandle<std::fs::File>) {
    let sock = dir.join(name);
    let listener = UnixListener::bind(&sock).unwrap();
    let accept = std::thread::spawn(move || common::console::receive_fd(&listener));
    (sock.display().to_string(), accept)
}

#[test]
fn run_in_the_foreground_and_exec_with_a_console_socket() {
    hull_only!();
    let c = Bundle::new(&["sh", "-c", "tty; echo one; exit 5"])
        .config(|v| v["process"]["terminal"] = serde_json::json!(true))
        .container();
    let (sock, accept) = console_socket(&c.bundle.dir, "run.sock");
    let args = [
        "--isolation",
        "vm",
        "run",
        "--console-socket",
        &sock,
        "--bundle",
        &c.dir(),
        &c.id,
    ];
    let reader = std::thread::spawn(move || {
        let mut master = accept.join().unwrap();
        common::console::read_master(&mut master, Duration::from_secs(60))
    });
    let out = c.hull(&args);
    assert_eq!(
        out.code, 5,
        "run --console-socket in the foreground: {out:?}"
    );
    let shown = reader.join().unwrap();
    assert_eq!(shown, "/dev/pts/0\r\none\r\n", "{shown:?}");
    assert_clean(&c);

    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("vm").ok("run -d");
    let (sock, accept) = console_socket(&c.bundle.dir, "exec.sock");
    let pid_file = c.bundle.dir.join("exec.pid").display().to_string();
    let flags = [
        "-t",
        "-d",
        "--console-socket",
        &sock,
        "--pid-file",
        &pid_file,
    ];
    c.exec_with(&flags, &["sh", "-c", "echo one; echo two"])
        .ok("exec -t -d --console-socket");
    let mut master = accept.join().unwrap();
    let shown = common::console::read_master(&mut master, Duration::from_secs(60));
    assert_eq!(shown, "one\r\ntwo\r\n", "{shown:?}");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}
