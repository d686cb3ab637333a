//! Filters are loaded in forked children so the test process itself stays unfiltered.
//! As root a child keeps CAP_SYS_ADMIN and loads without no_new_privs (the init's path
//! when process.noNewPrivileges is false); otherwise it sets no_new_privs first.

use super::*;
use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde_json::json;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

/// An errno no unfiltered call in these tests returns, so seeing it proves a rule matched.
const MARK: i32 = libc::ENOTUNIQ;
const SIGSYS: i32 = 128 + libc::SIGSYS;

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).expect("a valid linux.seccomp")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn wait(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => panic!("waitpid: {e}"),
        }
    }
}

fn child_prologue() -> Result<(), i32> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on a valid struct; keeps SIGSYS deaths from writing core files.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    if !is_root() && nix::sys::prctl::set_no_new_privs().is_err() {
        return Err(90);
    }
    Ok(())
}

/// Runs `f` in a forked child: its result is the exit code, a signal death is 128+signo.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only loads a filter (glibc's malloc is fork-safe), makes raw
    // syscalls and _exit()s; it never returns into the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match child_prologue() {
                Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(91),
                Err(code) => code,
            };
            // SAFETY: leaves the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => wait(child),
    }
}

fn try_load(p: &LinuxSeccomp) -> Result<Option<OwnedFd>, i32> {
    load(p).map_err(|e| {
        eprintln!("load: {e}");
        80
    })
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Makes a raw syscall and returns the errno it failed with (0 on success).
fn sys(nr: libc::c_long, a: u64, b: u64) -> i32 {
    // SAFETY: resets this thread's errno; the syscalls used only take integers.
    unsafe {
        *libc::__errno_location() = 0;
        if libc::syscall(nr, a, b) == -1 {
            errno()
        } else {
            0
        }
    }
}

fn getcwd_errno() -> i32 {
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is writable for its whole length.
    let r = unsafe { libc::getcwd(buf.as_mut_ptr().cast(), buf.len()) };
    if r.is_null() {
        errno()
    } else {
        0
    }
}

fn blocks_getcwd(extra: serde_json::Value) -> LinuxSeccomp {
    let mut v = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    profile(v)
}

#[test]
fn errno_rules_return_their_errno() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM},
        {"names": ["rmdir", "unlinkat"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK},
    ]}));
    let code = in_child(|| {
        if getcwd_errno() != 0 {
            return 1;
        }
        if let Err(c) = try_load(&p) {
            return c;
        }
        if getcwd_errno() != libc::EPERM {
            return 2;
        }
        // SAFETY: NUL-terminated literals; the parent does not exist, so unfiltered
        // these would fail with ENOENT and change nothing.
        if unsafe { libc::mkdir(c"/nonexistent-hull/x".as_ptr(), 0o700) } != -1
            || errno() != libc::EPERM
        {
            return 3;
        }
        // SAFETY: as above.
        if unsafe { libc::rmdir(c"/nonexistent-hull".as_ptr()) } != -1 || errno() != MARK {
            return 4;
        }
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn arg_filters_block_only_matching_values() {
    let eq = |v: u64| json!({"index": 0, "value": v, "op": "SCMP_CMP_EQ"});
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK,
         "args": [eq(999_001)]},
        // Same index twice: runc's "multiple rules", so either value matches.
        {"names": ["getsid"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK,
         "args": [eq(999_002), eq(999_003)]},
        // Different indexes: both must match.
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK,
         "args": [{"index": 0, "value": libc::PRIO_PGRP, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 999_004, "op": "SCMP_CMP_EQ"}]},
        // (arg1 & value) == valueTwo
        {"names": ["ioprio_get"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK,
         "args": [{"index": 1, "value": 0xff, "valueTwo": 0x42, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["getpgid"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_GT"}]},
    ]}));
    let code = in_child(|| {
        if let Err(c) = try_load(&p) {
            return c;
        }
        let prio_pgrp = libc::PRIO_PGRP as u64;
        let checks = [
            (sys(libc::SYS_getpgid, 999_001, 0) == MARK),
            (sys(libc::SYS_getpgid, 999_000, 0) != MARK),
            (sys(libc::SYS_getsid, 999_002, 0) == MARK),
            (sys(libc::SYS_getsid, 999_003, 0) == MARK),
            (sys(libc::SYS_getsid, 999_004, 0) != MARK),
            (sys(libc::SYS_getpriority, prio_pgrp, 999_004) == MARK),
            (sys(libc::SYS_getpriority, 0, 999_004) != MARK),
            (sys(libc::SYS_getpriority, prio_pgrp, 999_005) != MARK),
            (sys(libc::SYS_ioprio_get, 1, 0x0100_0042) == MARK),
            (sys(libc::SYS_ioprio_get, 1, 0x0100_0043) != MARK),
        ];
        match checks.iter().position(|ok| !ok) {
            Some(i) => 10 + i as i32,
            None => 0,
        }
    });
    assert_eq!(
        code, 0,
        "child exit {code}: 10+n = check n failed, 80 = load failed"
    );
}

#[test]
fn default_errno_with_allow_list() {
    let p = profile(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": MARK,
        "syscalls": [{"names": ["exit_group", "exit", "getpid", "brk", "mmap", "munmap",
            "madvise", "futex", "rt_sigreturn", "rt_sigprocmask", "write", "hull_no_such_call"],
            "action": "SCMP_ACT_ALLOW"}]}),
    );
    let code = in_child(|| {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as i64;
        if let Err(c) = try_load(&p) {
            return c;
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_getpid) } != me {
            return 1;
        }
        if sys(libc::SYS_getppid, 0, 0) != MARK {
            return 2;
        }
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn redundant_rules_and_unknown_names_are_skipped() {
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["hull_no_such_call", "getcwd"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["hull_no_such_call"], "action": "SCMP_ACT_KILL_PROCESS"},
    ]}));
    let code = in_child(|| match try_load(&p) {
        Ok(None) if getcwd_errno() == libc::EPERM => 0,
        Ok(_) => 1,
        Err(c) => c,
    });
    assert_eq!(code, 0);
}

#[test]
fn kill_trap_trace_and_log_actions() {
    for (act, want) in [
        ("SCMP_ACT_KILL_PROCESS", SIGSYS),
        ("SCMP_ACT_KILL_THREAD", SIGSYS),
        ("SCMP_ACT_KILL", SIGSYS),
        ("SCMP_ACT_TRAP", SIGSYS),
        // No tracer attached: the kernel fails the call with ENOSYS.
        ("SCMP_ACT_TRACE", libc::ENOSYS),
        ("SCMP_ACT_LOG", 0),
    ] {
        let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": act}]}));
        let code = in_child(|| match try_load(&p) {
            Ok(_) => sys(libc::SYS_getppid, 0, 0),
            Err(c) => c,
        });
        assert_eq!(code, want, "{act}");
    }
}

#[test]
fn architectures_and_flags() {
    #[cfg(target_arch = "x86_64")]
    let archs = json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    #[cfg(not(target_arch = "x86_64"))]
    let archs = json!(["SCMP_ARCH_NATIVE"]);
    let supported = supported_flags();
    assert!(supported.contains(&"SECCOMP_FILTER_FLAG_TSYNC"));
    for flag in known_flags() {
        let p = blocks_getcwd(json!({"architectures": archs, "flags": [flag]}));
        let want_ok = supported.contains(flag);
        let code = in_child(|| match load(&p) {
            Ok(_) if want_ok && getcwd_errno() == libc::EPERM => 0,
            Err(SeccompError::FlagUnsupported { .. }) if !want_ok => 0,
            other => {
                eprintln!("{flag}: {other:?}");
                1
            }
        });
        assert_eq!(code, 0, "{flag}");
    }
    let bogus = json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]});
    assert!(serde_json::from_value::<LinuxSeccomp>(bogus).is_err());
}

#[test]
fn invalid_profiles_are_refused() {
    let rule = |r: serde_json::Value| json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [r]});
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
            "default action",
        ),
        (
            rule(json!({"names": ["read", "write"], "action": "SCMP_ACT_NOTIFY"})),
            "for the write syscall",
        ),
        (
            rule(json!({"names": ["sendmsg"], "action": "SCMP_ACT_NOTIFY"})),
            "for the sendmsg syscall",
        ),
        (
            rule(json!({"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000})),
            "errnoRet 70000 of SCMP_ACT_ERRNO is out of range",
        ),
        (
            rule(json!({"names": ["getcwd"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]})),
            "syscall getcwd: argument index 6",
        ),
        (
            rule(json!({"names": [""], "action": "SCMP_ACT_ERRNO"})),
            "empty string",
        ),
    ];
    for (v, needle) in cases {
        let p = profile(v);
        // In a child all the same: should a check be missing, the filter must not land
        // in the test process.
        let code = in_child(|| match load(&p) {
            Err(e) if e.to_string().contains(needle) => 0,
            other => {
                eprintln!("{needle}: {other:?}");
                1
            }
        });
        assert_eq!(code, 0, "{needle}");
    }
}

#[test]
fn without_nnp_load_needs_cap_sys_admin() {
    if !is_root() {
        eprintln!("skipped: needs root to hold and then drop CAP_SYS_ADMIN");
        return;
    }
    let p = blocks_getcwd(json!({}));
    let code = in_child(|| {
        use caps::{CapSet, Capability};
        if caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_err() {
            return 1;
        }
        match load(&p) {
            Err(
                e @ SeccompError::Load {
                    errno: Some(Errno::EACCES),
                    ..
                },
            ) if e.to_string().contains("no_new_privs") => {}
            other => {
                eprintln!("{other:?}");
                return 2;
            }
        }
        if nix::sys::prctl::set_no_new_privs().is_err() {
            return 3;
        }
        match try_load(&p) {
            Ok(_) if getcwd_errno() == libc::EPERM => 0,
            Ok(_) => 4,
            Err(c) => c,
        }
    });
    assert_eq!(code, 0);
}

#[test]
fn notify_rule_returns_a_working_listener() {
    if !check_api(6, ScmpVersion::from((2, 5, 0))).unwrap_or(false) {
        eprintln!("skipped: no seccomp user notification on this host");
        return;
    }
    let p = profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}));
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    // SAFETY: as in `in_child`; the child blocks in getppid until we answer.
    let child = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let run = || -> i32 {
                if let Err(c) = child_prologue() {
                    return c;
                }
                let fd = match try_load(&p) {
                    Ok(Some(fd)) => fd,
                    Ok(None) => return 2,
                    Err(c) => return c,
                };
                if fdpass::send_fd(theirs.as_fd(), b"n", fd.as_fd()).is_err() {
                    return 3;
                }
                // SAFETY: getppid has no preconditions.
                match unsafe { libc::syscall(libc::SYS_getppid) } {
                    4242 => 0,
                    _ => 4,
                }
            };
            let code = run();
            // SAFETY: leaves the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    let agent = || -> Result<(), String> {
        let mut buf = [0u8; 8];
        let (_, fd) = fdpass::recv_fd(ours.as_fd(), &mut buf).map_err(|e| e.to_string())?;
        let fd = fd.ok_or("the child sent no fd")?;
        let mut pfd = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut pfd, 10_000u16) {
            Ok(1) => {}
            other => return Err(format!("no notification within 10 s: {other:?}")),
        }
        let req = ScmpNotifReq::receive(fd.as_raw_fd()).map_err(|e| e.to_string())?;
        let name = req.data.syscall.get_name().map_err(|e| e.to_string())?;
        if name != "getppid" || req.pid as i32 != child.as_raw() {
            return Err(format!("unexpected notification: {name} from {}", req.pid));
        }
        ScmpNotifResp::new_val(req.id, 4242, ScmpNotifRespFlags::empty())
            .respond(fd.as_raw_fd())
            .map_err(|e| e.to_string())
    };
    if let Err(e) = agent() {
        let _ = kill(child, Signal::SIGKILL);
        panic!("{e} (child exited {})", wait(child));
    }
    assert_eq!(wait(child), 0);
}

#[test]
fn send_to_listener_delivers_state_and_fd() {
    let dir = std::env::temp_dir().join(format!("hull-seccomp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, fd) = fdpass::recv_fd(conn.as_fd(), &mut buf).unwrap();
        let mut data = buf[..n].to_vec();
        conn.read_to_end(&mut data).unwrap();
        let msg: serde_json::Value = serde_json::from_slice(&data).unwrap();
        (msg, fd)
    });

    let (pr, pw) = nix::unistd::pipe().unwrap();
    let state = json!({"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 42,
        "bundle": "/b", "annotations": {"a": "b"}});
    send_to_listener(&sock, "MKNOD=/dev/null", 42, &state, pw.as_fd()).unwrap();
    drop(pw);
    let (msg, fd) = agent.join().unwrap();
    assert_eq!(msg["ociVersion"], "1.0.2");
    assert_eq!(msg["fds"], json!(["seccompFd"]));
    assert_eq!(msg["pid"], 42);
    assert_eq!(msg["metadata"], "MKNOD=/dev/null");
    assert_eq!(msg["state"], state);

    let mut w = std::fs::File::from(fd.expect("the seccomp fd came along"));
    w.write_all(b"ok").unwrap();
    drop(w);
    let mut got = String::new();
    std::fs::File::from(pr).read_to_string(&mut got).unwrap();
    assert_eq!(got, "ok");

    let missing = dir.join("nobody.sock");
    let err = send_to_listener(&missing, "", 1, &json!({}), w_fd_dummy()).unwrap_err();
    assert!(matches!(err, SeccompError::Connect { .. }));
    assert!(err.to_string().contains("nobody.sock"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn w_fd_dummy() -> BorrowedFd<'static> {
    // SAFETY: fd 2 stays open for the life of the test process.
    unsafe { BorrowedFd::borrow_raw(2) }
}

#[test]
fn reported_features_parse_as_oci_names() {
    for a in supported_actions() {
        serde_json::from_value::<LinuxSeccompAction>(json!(a)).expect(a);
    }
    for a in supported_archs() {
        serde_json::from_value::<Arch>(json!(a)).expect(a);
    }
    for f in known_flags() {
        serde_json::from_value::<LinuxSeccompFilterFlag>(json!(f)).expect(f);
    }
    for o in supported_operators() {
        serde_json::from_value::<LinuxSeccompOperator>(json!(o)).expect(o);
    }
    #[cfg(target_arch = "x86_64")]
    assert!(supported_archs().contains(&"SCMP_ARCH_X86_64"));
    assert!(libseccomp_version().is_some());
}
