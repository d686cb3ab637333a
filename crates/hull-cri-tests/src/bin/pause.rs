//! The tests' pod sandbox image's process, as Kubernetes' pause: it holds the pod's
//! namespaces and does nothing, ends with SIGINT or SIGTERM (as PID 1 of its pid
//! namespace it gets only the signals it handles), and reaps the orphans of a pod that
//! shares its pid namespace. A small static binary, as registry.k8s.io/pause is, so a
//! VM pod's guest caches what a real pause image costs, not a shell's.

extern "C" fn stop(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

extern "C" fn reap(_: libc::c_int) {
    // SAFETY: waitpid is async-signal-safe; the status pointer may be null.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn on(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is a
    // plain extern "C" function that lives as long as the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            eprintln!("pause: sigaction({signal}) failed");
            std::process::exit(1);
        }
    }
}

fn main() {
    on(libc::SIGINT, stop);
    on(libc::SIGTERM, stop);
    on(libc::SIGCHLD, reap);
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}
