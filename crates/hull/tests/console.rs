//! `--console-socket`: the runtime sends the pty master over a unix socket
//! (SCM_RIGHTS); the container's terminal output arrives through it.

mod common;

use common::console::{read_master, receive_fd};
use common::{assert_clean, Bundle, Container};
use serde_json::json;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// Creates `c` with a console socket, starts it and returns what its terminal printed.
fn run_on_terminal(c: &Container) -> String {
    let sock = c.bundle.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let accept = std::thread::spawn(move || receive_fd(&listener));
    c.create_with(&["--console-socket", &sock.display().to_string()])
        .ok("create --console-socket");
    let mut master = accept.join().expect("receive the pty master");
    c.start().ok("start");
    let out = read_master(&mut master, Duration::from_secs(20));
    c.wait_status("stopped", Duration::from_secs(10));
    out
}

fn terminal_bundle(script: &str) -> Bundle {
    Bundle::new(&["sh", "-c", script]).config(|c| c["process"]["terminal"] = json!(true))
}

#[test]
fn console_socket_receives_the_pty_master() {
    let c = terminal_bundle("tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; echo $TERM")
        .container();
    let out = run_on_terminal(&c);
    assert_eq!(
        out, "/dev/pts/0\r\nall-ttys\r\nxterm\r\n",
        "expected the container's stdio on /dev/pts/0 of its own devpts, output through the master"
    );
    c.delete(false).ok("delete");
    assert_clean(&c);
}

#[test]
fn dev_console_is_the_terminal() {
    let c = terminal_bundle("[ -c /dev/console ] && echo console-ok; ls /dev/pts").container();
    let out = run_on_terminal(&c);
    assert!(
        out.starts_with("console-ok\r\n"),
        "expected /dev/console as a char device: {out:?}"
    );
    assert!(
        out.contains('0') && out.contains("ptmx"),
        "expected pts/0 and ptmx in the container's devpts: {out:?}"
    );
}

#[test]
fn console_size_is_applied() {
    let c = terminal_bundle("stty size")
        .config(|c| c["process"]["consoleSize"] = json!({"height": 40, "width": 100}))
        .container();
    let out = run_on_terminal(&c);
    assert_eq!(out, "40 100\r\n", "expected the configured console size");
}

#[test]
fn terminal_input_reaches_the_container() {
    let c = terminal_bundle("read line; echo got:$line").container();
    let sock = c.bundle.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let accept = std::thread::spawn(move || receive_fd(&listener));
    c.create_with(&["--console-socket", &sock.display().to_string()])
        .ok("create --console-socket");
    let mut master = accept.join().expect("receive the pty master");
    c.start().ok("start");
    use std::io::Write;
    master
        .write_all(b"hello\n")
        .expect("write to the pty master");
    let out = read_master(&mut master, Duration::from_secs(20));
    assert!(
        out.ends_with("got:hello\r\n"),
        "expected the line echoed back through the pty: {out:?}"
    );
}

#[test]
fn terminal_without_console_socket_is_refused() {
    let c = terminal_bundle("true").container();
    let out = c.create();
    out.assert_error(
        "create with terminal but no --console-socket",
        &["console", "terminal"],
    );
    assert_clean(&c);
}
