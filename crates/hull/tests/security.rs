//! Regression tests for container breakouts that hit runc: CVE-2019-5736 (overwriting
//! the runtime binary through /proc/<pid>/exe), CVE-2024-21626 (a leaked fd as cwd),
//! CVE-2021-30465 (mount destinations through symlinks), and masked /proc paths.

mod common;

use common::{add_bind, add_tmpfs, assert_clean, Bundle};
use serde_json::json;
use std::time::Duration;

#[test]
fn runtime_binary_cannot_be_overwritten_through_proc_exe() {
    // CVE-2019-5736. Work on a copy of the binary so that a vulnerable runtime
    // corrupts only the copy.
    let b = Bundle::new(&["sleep", "1000"]).with_share();
    let copy = b.dir.join("runtime-copy");
    // HULL_BIN may name a runtime on PATH (HULL_BIN=runc).
    let bin = common::hull_bin();
    let src = if bin.contains('/') {
        std::path::PathBuf::from(&bin)
    } else {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| std::path::Path::new(d).join(&bin))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{bin} not found on PATH"))
    };
    std::fs::copy(&src, &copy).expect("copy the runtime binary");
    let before = std::fs::read(&copy).unwrap();
    let mut c = b.container();
    c.bin = copy.display().to_string();

    c.create().ok("create");
    // While init is still the runtime (waiting for start), a process in the container
    // writes to /proc/1/exe and keeps a read fd on it for later (hull's undumpable init
    // refuses even the open; `command` keeps that failure from ending the shell).
    let attack = "{ echo x > /proc/1/exe; } 2>/dev/null && echo direct >> /share/wrote; \
                  command exec 3</proc/1/exe 2>/dev/null || true; echo ready > /share/ready; \
                  while [ ! -e /share/go ]; do sleep 0.05; done; \
                  for i in 1 2 3 4 5; do { echo x >> /proc/self/fd/3; } 2>/dev/null && echo via-fd >> /share/wrote; sleep 0.1; done; \
                  echo done > /share/finished";
    c.exec_with(&["-d"], &["sh", "-c", attack])
        .ok("exec -d into the created container");
    c.wait_share("ready", Duration::from_secs(10));
    c.start().ok("start");
    // Now pid 1 runs the user's program: the runtime binary is no longer busy.
    std::fs::write(c.share("go"), "").unwrap();
    c.wait_share("finished", Duration::from_secs(10));

    assert_eq!(
        c.read_share("wrote"),
        "",
        "expected every write to the runtime binary to fail"
    );
    let after = std::fs::read(&copy).unwrap();
    assert!(
        before == after,
        "expected the runtime binary unchanged ({} -> {} bytes)",
        before.len(),
        after.len()
    );
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

#[test]
fn runtime_binary_of_a_waiting_init_cannot_be_made_writable() {
    // CVE-2019-5736 once more, from a root that may remount (a privileged container,
    // or the host): the copy the init runs from must be out of every namespace's reach,
    // not just a read-only mount that a remount would make writable again.
    let b = Bundle::new(&["true"]);
    let c = b.container();
    c.create().ok("create");
    let exe = format!("/proc/{}/exe", c.pid());
    let clear_rdonly = MountAttr {
        attr_set: 0,
        attr_clr: 1, // MOUNT_ATTR_RDONLY
        propagation: 0,
        userns_fd: 0,
    };
    let path = std::ffi::CString::new(exe.clone()).unwrap();
    // SAFETY: mount_setattr reads a NUL-terminated path and `clear_rdonly`, whose
    // size is passed along.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            &clear_rdonly as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(r < 0, "mount_setattr made {exe} writable");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{exe}: {err}");
    let w = std::fs::OpenOptions::new().write(true).open(&exe);
    assert!(w.is_err(), "{exe} opened for writing");
    c.delete(true).ok("delete --force");
    assert_clean(&c);
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[test]
fn leaked_fd_as_cwd_cannot_escape_the_root() {
    // CVE-2024-21626: cwd /proc/self/fd/N must not resolve to a host directory the
    // runtime left open. Either refuse, or run inside the root with no stray fds.
    for n in 3..=9 {
        let script = "pwd; ls /proc/self/fd | tr '\\n' ' '";
        let c = Bundle::new(&["sh", "-c", script])
            .config(|c| c["process"]["cwd"] = json!(format!("/proc/self/fd/{n}")))
            .container();
        let out = c.run();
        if out.code == 0 {
            assert!(
                !out.stdout.contains("unreachable"),
                "fd {n}: cwd outside the root: {out:?}"
            );
            let fds = out.stdout.lines().nth(1).unwrap_or_default();
            assert_eq!(
                fds, "0 1 2 3 ",
                "fd {n}: expected only stdio (+ ls's own fd) in the container"
            );
        } else {
            assert!(
                !out.stderr.trim().is_empty(),
                "fd {n}: expected an error on stderr: {out:?}"
            );
        }
        assert_clean(&c);
    }
}

#[test]
fn leaked_fd_as_exec_cwd_cannot_escape_the_root() {
    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    for n in 3..=9 {
        let cwd = format!("/proc/self/fd/{n}");
        let out = c.exec_with(
            &["--cwd", &cwd],
            &["sh", "-c", "pwd; ls /proc/self/fd | tr '\\n' ' '"],
        );
        if out.code == 0 {
            assert!(
                !out.stdout.contains("unreachable"),
                "exec cwd fd {n}: outside the root: {out:?}"
            );
            assert_eq!(
                out.stdout.lines().nth(1),
                Some("0 1 2 3 "),
                "exec cwd fd {n}: stray fds"
            );
        } else {
            assert!(
                !out.stderr.trim().is_empty(),
                "exec cwd fd {n}: expected an error: {out:?}"
            );
        }
    }
}

#[test]
fn no_runtime_fds_leak_into_the_container() {
    // ls as the container's init itself: no shell that could hold pipe fds of its own.
    // Its one extra fd (3) is the directory it lists.
    let c = Bundle::new(&["ls", "/proc/self/fd"]).container();
    let out = c.run().ok("list fds");
    assert_eq!(
        out.stdout, "0\n1\n2\n3\n",
        "expected only stdio in the container's init"
    );

    let c = Bundle::new(&["sleep", "1000"]).container();
    c.create().ok("create");
    c.start().ok("start");
    let out = c.exec(&["ls", "/proc/self/fd"]).ok("exec");
    assert_eq!(
        out.stdout, "0\n1\n2\n3\n",
        "expected only stdio in an exec'd process"
    );
    let out = c.exec(&["ls", "/proc/1/fd"]).ok("exec");
    assert_eq!(
        out.stdout, "0\n1\n2\n",
        "expected only stdio in the running init"
    );
}

#[test]
fn mount_destination_through_symlink_stays_in_rootfs() {
    // CVE-2021-30465-style: destinations that are symlinks out of the rootfs must be
    // resolved inside it.
    let b = Bundle::new(&[
        "sh",
        "-c",
        "ls /etc; grep -E ' /(etc|tmp) ' /proc/mounts | cut -d' ' -f2,3",
    ]);
    std::os::unix::fs::symlink("/etc", b.rootfs.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../tmp", b.rootfs.join("evil2")).unwrap();
    let marker = b.dir.join("marker-dir");
    std::fs::create_dir(&marker).unwrap();
    let name = format!("{}-marker", b.name);
    std::fs::write(marker.join(&name), "").unwrap();
    let src = marker.display().to_string();
    let c = b
        .config(|c| {
            add_bind(c, &src, "/evil", &["ro"]);
            add_tmpfs(c, "/evil2", &["size=1k"]);
        })
        .container();
    let host_tmp_mounts = common::mounts_under(std::path::Path::new("/tmp")).len();
    let out = c.run();
    assert!(
        !std::path::Path::new("/etc").join(&name).exists(),
        "host /etc untouched"
    );
    assert_eq!(
        common::mounts_under(std::path::Path::new("/etc")),
        Vec::<String>::new(),
        "no mount on host /etc"
    );
    assert_eq!(
        common::mounts_under(std::path::Path::new("/tmp")).len(),
        host_tmp_mounts,
        "no new mount on host /tmp"
    );
    if out.code == 0 {
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&name.as_str()),
            "expected the marker alone in the container's /etc: {out:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("/etc ")),
            "expected a mount at the container's /etc: {out:?}"
        );
        assert!(
            lines.contains(&"/tmp tmpfs"),
            "expected the tmpfs at the container's /tmp: {out:?}"
        );
    } else {
        assert!(
            !out.stderr.trim().is_empty(),
            "expected an error when refusing: {out:?}"
        );
    }
    assert_clean(&c);
}

#[test]
fn container_cannot_undo_masks_or_remount() {
    let script = "umount /proc/keys 2>/dev/null; wc -c < /proc/keys; \
                  umount /proc/sys 2>/dev/null; { echo 1 > /proc/sysrq-trigger; } 2>/dev/null; echo sysrq=$?; \
                  mount -o remount,rw / 2>/dev/null; echo remount=$?; \
                  mount -t proc proc /tmp 2>/dev/null; echo mount=$?; \
                  mkdir /sys/fs/cgroup/memory/escape 2>/dev/null; echo cgmkdir=$?";
    let c = Bundle::new(&["sh", "-c", script]).container();
    let out = c.run().ok("attempts to undo the confinement");
    assert_eq!(
        out.stdout, "0\nsysrq=1\nremount=1\nmount=1\ncgmkdir=1\n",
        "expected masks to stay, and writes, remounts and new mounts to fail"
    );
    assert!(
        !c.cgroup_dir("memory").join("escape").exists(),
        "no cgroup made from inside"
    );
    assert_clean(&c);
}

#[test]
fn container_cannot_see_host_processes() {
    let c = Bundle::new(&["sh", "-c", "ls /proc | grep -c '^[0-9]'"]).container();
    let out = c.run().ok("count processes");
    let n: u32 = out.stdout.trim().parse().unwrap_or(99);
    assert!(
        n <= 3,
        "expected only the container's own processes in its /proc, saw {n}"
    );
}

/// A rootfs whose /proc is a symlink: runc and crun refuse ("must be mounted on
/// ordinary directory"); hull used to create the link's target inside the rootfs and
/// mount procfs there, away from where the masks expect /proc.
#[test]
fn proc_on_a_symlink_is_refused() {
    let b = Bundle::new(&["true"]);
    let proc_dir = b.rootfs.join("proc");
    let _ = std::fs::remove_dir(&proc_dir);
    std::os::unix::fs::symlink("/elsewhere", &proc_dir).unwrap();
    let c = b.container();
    let out = c.run();
    out.assert_error("/proc a symlink", &["ordinary directory"]);
    assert!(
        !c.bundle.rootfs.join("elsewhere").exists(),
        "the symlink's target was created in the rootfs"
    );
    assert_clean(&c);
}
