//! Per-thread syscall allowlists, one reviewed table per thread role, installed by each
//! thread before it touches guest input (Firecracker's model). Anything else kills the
//! process: a VMM thread making an unexpected syscall is a VMM compromised by its guest.
//!
//! Firecracker's x86_64 filters allow 27 syscalls on a vCPU thread; the table below is
//! what hull-vmm's vCPU run loop needs, each with the reason it is there.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Result, VmmError};

/// The KVM ioctls a vCPU thread issues (from linux/kvm.h: _IO/_IOR/_IOWR on 0xAE).
pub const KVM_RUN: u64 = 0xae80;
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
pub const KVM_TRANSLATE: u64 = 0xc018_ae85;
const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE];
/// FIONBIO (asm-generic/ioctls.h).
const VMM_IOCTLS: &[u64] = &[0x5421];

/// Syscalls a vCPU thread may make, and why.
pub const VCPU: &[(i64, &str)] = &[
    (
        libc::SYS_ioctl,
        "KVM_RUN; registers and KVM_TRANSLATE to report a failure (args checked)",
    ),
    (
        libc::SYS_write,
        "device output: the serial console's sink, interrupt eventfds",
    ),
    (libc::SYS_futex, "locks shared with the VMM thread"),
    (libc::SYS_mmap, "the allocator"),
    (libc::SYS_munmap, "the allocator"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_madvise, "the allocator returning memory"),
    (libc::SYS_mprotect, "the allocator growing a thread's arena"),
    (
        libc::SYS_rt_sigreturn,
        "return from the signal that kicks the vCPU out of KVM_RUN",
    ),
    (
        libc::SYS_sigaltstack,
        "thread exit tears down the alternate signal stack",
    ),
    (libc::SYS_rt_sigprocmask, "thread exit"),
    (libc::SYS_exit, "thread exit"),
];

/// Syscalls the VMM thread may make, and why. It runs the event loop: stop signals, a
/// stopped vCPU, virtio queue notifications and the device work they start; at the end
/// it stops the vCPUs.
pub const VMM: &[(i64, &str)] = &[
    (libc::SYS_epoll_wait, "the event loop"),
    (libc::SYS_epoll_pwait, "epoll_wait, as some libcs make it"),
    (libc::SYS_epoll_ctl, "registering the loop's fds"),
    (libc::SYS_epoll_create1, "the loop's epoll"),
    (libc::SYS_read, "the signalfd's siginfo; ioeventfd counts"),
    (libc::SYS_write, "interrupt eventfds; logs"),
    (libc::SYS_pread64, "virtio-blk reads"),
    (libc::SYS_pwrite64, "virtio-blk writes"),
    (libc::SYS_fdatasync, "virtio-blk flush"),
    (libc::SYS_getrandom, "virtio-rng"),
    (
        libc::SYS_close,
        "vsock connections; the loop's epoll at the end",
    ),
    (
        libc::SYS_fcntl,
        "F_GETFD only: debug builds check an fd before closing it (args checked)",
    ),
    (libc::SYS_accept4, "vsock: host processes connecting"),
    (
        libc::SYS_ioctl,
        "FIONBIO only: vsock's accepted host streams made non-blocking (args checked)",
    ),
    (libc::SYS_socket, "vsock: guest connections to host ports"),
    (libc::SYS_connect, "vsock: guest connections to host ports"),
    (libc::SYS_recvfrom, "vsock: host to guest bytes"),
    (libc::SYS_sendto, "vsock: guest to host bytes"),
    (libc::SYS_shutdown, "vsock: a guest's half-close"),
    (libc::SYS_mprotect, "the allocator growing a thread's arena"),
    (libc::SYS_futex, "joining the vCPU threads; locks"),
    (libc::SYS_getpid, "pthread_kill names the process"),
    (libc::SYS_tgkill, "the kick that interrupts KVM_RUN"),
    (libc::SYS_clock_nanosleep, "pacing repeated kicks"),
    (libc::SYS_mmap, "the allocator"),
    (libc::SYS_munmap, "the allocator; joined threads' stacks"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_madvise, "the allocator returning memory"),
    (libc::SYS_rt_sigprocmask, "thread exit"),
    (libc::SYS_sigaltstack, "thread exit"),
    (libc::SYS_exit, "thread exit"),
];

/// Syscalls the main thread may make once it has started the others: it waits for the
/// VMM thread, closes what the others handed back, starts the teardown helper (which
/// inherits this filter) and exits.
pub const MAIN: &[(i64, &str)] = &[
    (
        libc::SYS_futex,
        "joining the VMM thread; the vCPUs' results",
    ),
    (libc::SYS_rt_sigprocmask, "thread and process exit"),
    (libc::SYS_close, "the fds the other threads hand back"),
    (
        libc::SYS_close_range,
        "the teardown helper closing what it must not hold",
    ),
    (
        libc::SYS_fcntl,
        "F_GETFD only: debug builds check an fd before closing it (args checked)",
    ),
    (libc::SYS_getpid, "the teardown helper's PID 1 check"),
    (libc::SYS_pipe2, "the teardown helper's two pipes"),
    (
        libc::SYS_clone,
        "the teardown helper: CLONE_VM|SIGCHLD only (args checked)",
    ),
    (libc::SYS_read, "the teardown helper's ready byte; its wait"),
    (libc::SYS_write, "logs; the teardown helper's ready byte"),
    (
        libc::SYS_mincore,
        "the debug log's count of guest pages touched",
    ),
    (libc::SYS_mmap, "the allocator; the teardown helper's stack"),
    (libc::SYS_munmap, "the allocator; joined threads' stacks"),
    (libc::SYS_mprotect, "the allocator"),
    (libc::SYS_madvise, "the allocator returning memory"),
    (libc::SYS_brk, "the allocator"),
    (libc::SYS_sigaltstack, "thread exit"),
    (libc::SYS_exit, "the teardown helper's end"),
    (libc::SYS_exit_group, "the process's end"),
    (
        libc::SYS_unlink,
        "the vsock and console devices removing their listening sockets when dropped",
    ),
];

/// `ioctls`: the only requests the table's ioctl entry allows.
fn filter(table: &[(i64, &str)], ioctls: &[u64]) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(nr, _) in table {
        let r = if nr == libc::SYS_fcntl {
            let c = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::F_GETFD as u64,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| VmmError::Seccomp(e.to_string()))?;
            vec![c]
        } else if nr == libc::SYS_clone {
            let flags = (libc::CLONE_VM | libc::SIGCHLD) as u64;
            let c = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, flags)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| VmmError::Seccomp(e.to_string()))?;
            vec![c]
        } else if nr == libc::SYS_ioctl {
            ioctls
                .iter()
                .copied()
                .map(|req| {
                    SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                        .and_then(|c| SeccompRule::new(vec![c]))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| VmmError::Seccomp(e.to_string()))?
        } else {
            vec![]
        };
        rules.insert(nr, r);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| VmmError::Seccomp(e.to_string()))?;
    BpfProgram::try_from(f).map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Confines the calling thread to the VMM thread's allowlist, for the rest of its life.
pub fn install_vmm() -> Result<()> {
    let prog = filter(VMM, VMM_IOCTLS)?;
    seccompiler::apply_filter(&prog).map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Confines the calling (main) thread to its allowlist, once it has started the others.
pub fn install_main() -> Result<()> {
    let prog = filter(MAIN, &[])?;
    seccompiler::apply_filter(&prog).map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Confines the calling thread to the vCPU allowlist, for the rest of its life.
pub fn install_vcpu() -> Result<()> {
    let prog = filter(VCPU, VCPU_IOCTLS)?;
    seccompiler::apply_filter(&prog).map_err(|e| VmmError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlists_are_smaller_than_firecrackers() {
        // Firecracker v1.x, x86_64: vmm 50, api 31, vcpu 27 (hull-vmm has no API thread;
        // its main thread only waits and exits, held to the API thread's count).
        for (table, ioctls, firecracker) in [
            (VCPU, VCPU_IOCTLS, 27),
            (VMM, VMM_IOCTLS, 50),
            (MAIN, &[][..], 31),
        ] {
            assert!(table.len() < firecracker, "{} syscalls", table.len());
            let mut nrs: Vec<i64> = table.iter().map(|e| e.0).collect();
            nrs.sort();
            nrs.dedup();
            assert_eq!(nrs.len(), table.len(), "a syscall is listed twice");
            filter(table, ioctls).unwrap();
        }
    }
}
