//! Deferred teardown: the kernel's work of destroying a VM moves off the VMM's exit.
//!
//! Closing the last fd of a KVM VM runs `kvm_destroy_vm`, which waits for SRCU grace
//! periods (unregistering the in-kernel PIT, PIC and IO-APIC alone takes several);
//! measured here, about 20 ms of a tiny guest's 26 ms from exec to exit. Freeing guest
//! memory is the other cost, proportional to what the guest touched. QEMU's
//! `-run-with async-teardown=on` moves the memory part to a helper process; this moves
//! both: before the VMM exits, a helper cloned with CLONE_VM takes a reference to the
//! VM's and the vCPUs' fds (its own copy of the fd table) and to the address space
//! (shared), closes every other fd, and waits for the VMM to be gone. The VMM's exit
//! then drops only references; the helper's exit, a moment later, does the teardown.
//! Nothing outlives it: it ends when the VMM process ends, however that happens (its
//! pipe to the VMM reads end-of-file once the VMM's last thread has exited).
//!
//! The helper runs on its own small stack in the shared address space while the VMM
//! goes on exiting, so it makes raw system calls only: no libc (whose errno lives in
//! the VMM thread's TLS), no allocation, nothing that can panic.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The most fds the helper keeps: the VM's, one per vCPU (at most 254), its two pipe
/// ends.
const MAX_KEEP: usize = 258;
const STACK_SIZE: usize = 64 << 10;

/// What the helper reads, placed at the bottom of its own stack mapping so that the
/// VMM freeing its memory cannot pull it away.
#[repr(C)]
struct HelperArgs {
    /// Read end of a pipe whose write end only the VMM holds: EOF once it is gone.
    vmm_gone: i32,
    /// Write end of a pipe the VMM reads: one byte once the helper has closed what it
    /// must not hold (the VMM's stdout, device sockets and taps).
    ready: i32,
    /// The helper's copy of `vmm_gone`'s write end, closed first: while it holds it,
    /// it would wait forever.
    vmm_gone_w: i32,
    /// The fds to keep (the caller's and the two above), sorted; the first `count`.
    keep: [i32; MAX_KEEP],
    count: usize,
}

/// Hands the last references to `keep` (the VM's and vCPUs' fds) and to the address
/// space to a helper process, which releases them after this process exits. Only for
/// a process that exits soon after, without unmapping guest memory (the mapping is
/// shared with the helper, so unmapping it here would free it here). Returns once the
/// helper holds nothing but `keep`.
pub fn defer(keep: &[RawFd]) -> io::Result<()> {
    // PID 1 of a PID namespace takes every process in it down when it exits, and
    // waits for them: nothing would be gained.
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        return Err(io::Error::other("hull is PID 1 of its namespace"));
    }
    if keep.iter().any(|&fd| fd < 0) {
        return Err(io::Error::other("a negative fd to keep"));
    }
    if keep.len() + 2 > MAX_KEEP {
        return Err(io::Error::other(format!(
            "{} fds to keep, at most {}",
            keep.len(),
            MAX_KEEP - 2
        )));
    }
    let (vmm_gone_r, vmm_gone_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    // SAFETY: a fresh anonymous mapping; it is never unmapped (the helper may still
    // run on it while this process exits), and the process ends soon after.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let count = keep.len() + 2;
    let mut sorted = [0i32; MAX_KEEP];
    sorted[..keep.len()].copy_from_slice(keep);
    sorted[keep.len()] = vmm_gone_r.as_raw_fd();
    sorted[keep.len() + 1] = ready_w.as_raw_fd();
    sorted[..count].sort_unstable();
    let args = stack.cast::<HelperArgs>();
    // SAFETY: the mapping is STACK_SIZE bytes, page-aligned, and far larger than
    // HelperArgs; nothing else refers to it yet.
    unsafe {
        args.write(HelperArgs {
            vmm_gone: vmm_gone_r.as_raw_fd(),
            ready: ready_w.as_raw_fd(),
            vmm_gone_w: vmm_gone_w.as_raw_fd(),
            keep: sorted,
            count,
        })
    };
    // SAFETY: the top of the mapping, 16-byte aligned, is the helper's stack (growing
    // down toward `args`, which it leaves alone: `helper` uses well under a page).
    let top = unsafe { stack.cast::<u8>().add(STACK_SIZE) };
    // The helper starts with every signal blocked (SIGKILL and SIGSTOP aside): it runs
    // on this thread's TLS, where a handler must never run while the VMM goes on.
    // SAFETY: zeroed sigsets are valid buffers for sigfillset and pthread_sigmask.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: plain sigset manipulation on local values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    // SAFETY: `helper` makes raw syscalls only (see the module comment); CLONE_VM
    // shares this address space, so `args` and the stack stay valid for it. SIGCHLD as
    // the exit signal lets whoever inherits it reap it.
    let pid = unsafe {
        libc::clone(
            helper,
            top.cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            args.cast(),
        )
    };
    let cloned = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    // Ours to close: the helper's ends (it has its own copies), and its readiness pipe
    // once it has spoken.
    drop((vmm_gone_r, ready_w));
    if let Err(e) = cloned {
        // SAFETY: no helper runs on the mapping.
        unsafe { libc::munmap(stack, STACK_SIZE) };
        return Err(e);
    }
    // One byte, or end-of-file if the helper ended first (read_exact retries EINTR).
    let ready = File::from(ready_r).read_exact(&mut [0u8]).is_ok();
    if !ready {
        // It is gone (or going) and holds nothing: reap it here.
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::other(
            "the teardown helper ended before it was ready",
        ));
    }
    // The write end of `vmm_gone` stays open until this process exits: that is the
    // helper's signal.
    let _ = vmm_gone_w.into_raw_fd();
    tracing::debug!(
        pid,
        fds = keep.len(),
        "VM teardown handed to a helper process"
    );
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just made and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The helper's body: keep `args.keep`, wait for the VMM's end, exit (which closes the
/// kept fds and releases the address space: the deferred teardown).
extern "C" fn helper(args: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `defer` placed a HelperArgs here, in a mapping never unmapped.
    let args = unsafe { &*args.cast::<HelperArgs>() };
    // SAFETY: closes the helper's own copy of the pipe end.
    unsafe { sys::syscall3(libc::SYS_close, args.vmm_gone_w as u64, 0, 0) };
    let mut next: u64 = 0;
    for &fd in args.keep.iter().take(args.count) {
        let fd = fd as u64;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, u64::from(u32::MAX));
    let one = 1u8;
    // SAFETY: writes one byte from the helper's stack to its own pipe end.
    unsafe {
        sys::syscall3(
            libc::SYS_write,
            args.ready as u64,
            &one as *const u8 as u64,
            1,
        )
    };
    // SAFETY: closes the helper's own pipe end.
    unsafe { sys::syscall3(libc::SYS_close, args.ready as u64, 0, 0) };
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`, on the helper's stack.
        let r = unsafe {
            sys::syscall3(
                libc::SYS_read,
                args.vmm_gone as u64,
                &mut byte as *mut u8 as u64,
                1,
            )
        };
        if r != -(libc::EINTR as i64) {
            break;
        }
    }
    // SAFETY: ends this helper (a process of one thread); its fds and its share of the
    // address space go with it.
    unsafe { sys::syscall3(libc::SYS_exit, 0, 0, 0) };
    0
}

/// close_range(2), or close(2) one by one where it fails (a kernel before 5.9, or a
/// seccomp profile that refuses it), up to a bound: a VMM's fd table is small.
fn close_range(first: u64, last: u64) {
    // SAFETY: closes fds of the helper's own table.
    let r = unsafe { sys::syscall3(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        for fd in first..=last.min(first + 4096) {
            // SAFETY: as above.
            unsafe { sys::syscall3(libc::SYS_close, fd, 0, 0) };
        }
    }
}

mod sys {
    /// A raw x86_64 system call with up to three arguments; returns the kernel's value
    /// (a negative errno on failure), touching no errno.
    ///
    /// # Safety
    /// The caller must pass arguments valid for syscall `nr`.
    pub unsafe fn syscall3(nr: i64, a: u64, b: u64, c: u64) -> i64 {
        let ret: i64;
        // SAFETY: the x86_64 syscall ABI: nr in rax, arguments in rdi, rsi, rdx; the
        // kernel clobbers rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            )
        };
        ret
    }
}
