//! `--preserve-fds` into a VM container: fds cannot cross into a VM, their bytes do.
//! A read-only file, a pipe written by the container and a socket both ways reach the
//! process as fds 3, 4 and 5 of `run`, and of `exec`; what a byte stream cannot stand
//! for is refused before anything is made. Boots real VMs (QEMU/TCG here).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{assert_clean, host_kernel, Bundle};

fn read_all(mut from: impl Read) -> String {
    let mut s = String::new();
    from.read_to_string(&mut s).unwrap();
    s
}

/// fd 3: a file the process reads; fd 4: a pipe it writes; fd 5: a socket it reads a
/// line from and answers on. Returns what to hand over and the test's own ends.
fn three_fds(c: &common::Container) -> (Vec<OwnedFd>, OwnedFd, UnixStream) {
    let file = c.write_file("fd3.txt", "from-fd-3\n");
    let file = std::fs::File::open(file).unwrap();
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.write_all(b"ping\n").unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (vec![file.into(), pipe_w, theirs.into()], pipe_r, ours)
}

const SCRIPT: &str = "uname -r; cat <&3; echo to-fd-4 >&4; read x <&5; echo got-$x >&5";

#[test]
fn run_and_exec_hand_files_pipes_and_sockets_into_the_vm() {
    hull_only!();
    let c = Bundle::new(&["sh", "-c", SCRIPT]).container();
    let (handed, pipe_r, ours) = three_fds(&c);
    let raw: Vec<RawFd> = handed.iter().map(|f| f.as_raw_fd()).collect();
    let args = [
        "--isolation",
        "vm",
        "run",
        "--preserve-fds",
        "3",
        "--bundle",
        &c.dir(),
        &c.id,
    ];
    let out = c.hull_with(&args, |cmd| common::hand_over(cmd, raw));
    drop(handed);
    let out = out.ok("run --preserve-fds 3 in a VM");
    let mut lines = out.stdout.lines();
    let kernel = lines.next().unwrap_or_default();
    assert!(
        !kernel.is_empty() && kernel != host_kernel(),
        "ran on the host's kernel: {out:?}"
    );
    assert_eq!(lines.next(), Some("from-fd-3"), "fd 3, read: {out:?}");
    assert_eq!(
        read_all(std::fs::File::from(pipe_r)),
        "to-fd-4\n",
        "fd 4, written"
    );
    assert_eq!(read_all(&ours), "got-ping\n", "fd 5, both ways");
    assert_clean(&c);

    // The same through exec, in a running VM container.
    let c = Bundle::new(&["sleep", "600"]).container();
    c.run_detached("vm").ok("run -d in a VM");
    let (handed, pipe_r, ours) = three_fds(&c);
    let raw: Vec<RawFd> = handed.iter().map(|f| f.as_raw_fd()).collect();
    let args = ["exec", "--preserve-fds", "3", &c.id, "sh", "-c", SCRIPT];
    let out = c.hull_with(&args, |cmd| common::hand_over(cmd, raw));
    drop(handed);
    let out = out.ok("exec --preserve-fds 3 in a VM");
    assert!(out.stdout.ends_with("from-fd-3\n"), "{out:?}");
    assert_eq!(read_all(std::fs::File::from(pipe_r)), "to-fd-4\n");
    assert_eq!(read_all(&ours), "got-ping\n");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn what_a_byte_stream_cannot_stand_for_is_refused_and_nothing_is_left() {
    hull_only!();
    let c = Bundle::new(&["true"]).container();
    let dir = std::fs::File::open("/").unwrap();
    let raw = vec![dir.as_raw_fd()];
    let args = [
        "--isolation",
        "vm",
        "create",
        "--preserve-fds",
        "1",
        "--bundle",
        &c.dir(),
        &c.id,
    ];
    let out = c.hull_with(&args, |cmd| common::hand_over(cmd, raw));
    out.assert_error("a directory fd", &["fd 3 is a directory"]);
    assert!(!c.root.join(&c.id).exists(), "state was left behind");

    let listener_path = c.bundle.dir.join("listen.sock");
    let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    let raw = vec![listener.as_raw_fd()];
    let out = c.hull_with(&args, |cmd| common::hand_over(cmd, raw));
    out.assert_error("a listening socket", &["listening socket"]);
    // More fds asked for than are open (fds 3 and 4 may be cargo's jobserver).
    let args = [
        "--isolation",
        "vm",
        "create",
        "--preserve-fds",
        "60",
        "--bundle",
        &c.dir(),
        &c.id,
    ];
    let out = c.hull(&args);
    out.assert_error("fds that are not open", &["is not open"]);
    assert_clean(&c);
}
