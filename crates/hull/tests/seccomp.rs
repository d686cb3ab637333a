//! Seccomp: filters from linux.seccomp, loaded in filter mode, with errno and args.

mod common;

use common::{add_tmpfs, assert_clean, Bundle};
use serde_json::{json, Value};

fn run_sh(script: &str, seccomp: Value) -> String {
    let c = Bundle::new(&["sh", "-c", script])
        .config(|c| {
            add_tmpfs(c, "/tmp", &[]);
            c["linux"]["seccomp"] = seccomp;
        })
        .container();
    let out = c.run().ok(script);
    assert_clean(&c);
    out.stdout
}

fn allow_all_but(syscalls: Value) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    })
}

#[test]
fn errno_rule_blocks_mkdir() {
    let filter = allow_all_but(json!([
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    ]));
    let out = run_sh("mkdir /tmp/x 2>&1; echo rc=$?; touch /tmp/y && echo touch-ok; grep ^Seccomp: /proc/self/status", filter);
    assert_eq!(
        out,
        "mkdir: can't create directory '/tmp/x': Operation not permitted\nrc=1\ntouch-ok\nSeccomp:\t2\n",
        "expected mkdir to fail with EPERM, other calls to work, and filter mode (2)"
    );
}

#[test]
fn errno_ret_is_honoured() {
    let filter = allow_all_but(json!([
        {"names": ["fchmodat", "chmod", "fchmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
    ]));
    let out = run_sh("touch /tmp/f; chmod 600 /tmp/f 2>&1; echo rc=$?", filter);
    assert!(
        out.contains("Permission denied"),
        "expected EACCES (13) from the filter: {out:?}"
    );
    assert!(out.ends_with("rc=1\n"), "expected chmod to fail: {out:?}");
}

#[test]
fn argument_conditions_select_calls() {
    // Refuse kill(_, SIGUSR1) only: kill -0 still works.
    let filter = allow_all_but(json!([{
        "names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
        "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]
    }]));
    let out = run_sh(
        "kill -0 $$ && echo zero-ok; kill -USR1 $$ 2>&1; echo rc=$?",
        filter,
    );
    assert!(
        out.starts_with("zero-ok\n"),
        "expected kill -0 to pass the filter: {out:?}"
    );
    assert!(
        out.contains("Operation not permitted"),
        "expected kill -USR1 to get EPERM: {out:?}"
    );
}

#[test]
fn default_errno_with_allow_list() {
    // Everything is EPERM except what sh, echo and a runtime's last steps before execve
    // need (runc checks /proc/self/fd with fstatfs); mkdir is not listed.
    let allowed = [
        "read",
        "write",
        "openat",
        "open",
        "close",
        "fstat",
        "newfstatat",
        "stat",
        "lstat",
        "mmap",
        "munmap",
        "mprotect",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "execve",
        "exit",
        "exit_group",
        "wait4",
        "fork",
        "vfork",
        "clone",
        "clone3",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "prlimit64",
        "getcwd",
        "dup2",
        "dup3",
        "fcntl",
        "lseek",
        "access",
        "faccessat",
        "faccessat2",
        "readlink",
        "readlinkat",
        "getrandom",
        "futex",
        "sigaltstack",
        "getdents64",
        "pipe",
        "pipe2",
        "statx",
        "rseq",
        "prctl",
        "capget",
        "capset",
        "setgroups",
        "setuid",
        "setgid",
        "setresuid",
        "setresgid",
        "chdir",
        "fchdir",
        "umask",
        "getpgrp",
        "setpgid",
        "getpgid",
        "kill",
        "tgkill",
        "writev",
        "readv",
        "pread64",
        "sched_getaffinity",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "nanosleep",
        "clock_nanosleep",
        "clock_gettime",
        "gettid",
        "fstatfs",
        "statfs",
        "close_range",
        "dup",
        "getdents",
        "madvise",
        "mremap",
        "sched_yield",
        "getrlimit",
        "setrlimit",
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "epoll_pwait",
        "waitid",
        "tkill",
        "sendto",
        "recvfrom",
        "socketpair",
        "sendmsg",
        "recvmsg",
        "openat2",
        "exit_group",
    ];
    let filter = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": allowed.to_vec(), "action": "SCMP_ACT_ALLOW"}]
    });
    let out = run_sh("echo before; mkdir /tmp/d 2>&1; echo rc=$?", filter);
    assert!(
        out.starts_with("before\n"),
        "expected listed calls to work: {out:?}"
    );
    assert!(
        out.ends_with("Operation not permitted\nrc=1\n"),
        "expected mkdir (not listed) to fail with EPERM: {out:?}"
    );
}
