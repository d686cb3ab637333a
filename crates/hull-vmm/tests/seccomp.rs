//! The vCPU thread's seccomp allowlist: a tiny guest runs under it, and a syscall off
//! the list kills the process. Each case runs in a forked child, which the filter kills.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use hull_vmm::devices::bus::{Buses, MmioBus, PioBus};
use hull_vmm::devices::serial::{SerialDevice, COM1, PORTS};
use hull_vmm::vstate::vcpu::{Stopped, Vcpu};
use hull_vmm::vstate::{memory, vm::Vm};
use vm_memory::{Bytes, GuestAddress};

/// Runs `child` in a forked process; returns what it wrote to the pipe and how it ended.
fn in_child(child: impl FnOnce(std::fs::File)) -> (Vec<u8>, nix::sys::wait::WaitStatus) {
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only runs `child` and _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(r);
            child(std::fs::File::from(w));
            // SAFETY: leave without the test harness's handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut out = Vec::new();
            std::fs::File::from(r).read_to_end(&mut out).unwrap();
            (out, nix::sys::wait::waitpid(child, None).unwrap())
        }
    }
}

#[test]
fn a_guest_runs_under_the_vcpu_filter_and_a_forbidden_syscall_kills() {
    let (out, status) = in_child(|mut report| {
        let mem = memory::anonymous(1 << 20).unwrap();
        let code: &[u8] = &[0xba, 0xf8, 0x03, 0xb0, b'o', 0xee, 0xb0, b'k', 0xee, 0xf4];
        mem.write_slice(code, GuestAddress(0x1000)).unwrap();
        let vm = Vm::new(mem).unwrap();
        let mut vcpu = Vcpu::new(&vm, 0).unwrap();
        vcpu.set_real_mode(0x1000).unwrap();
        // SAFETY: dup of our own pipe fd, owned by the new File only.
        let sink = unsafe {
            std::fs::File::from(OwnedFd::from_raw_fd(libc::dup(
                std::os::fd::AsRawFd::as_raw_fd(&report),
            )))
        };
        let mut bus = PioBus::new();
        bus.insert(COM1, PORTS, Box::new(SerialDevice::new(sink)));
        // Made here and never dropped in the thread: dropping the serial sink is a
        // close(2), which the vCPU filter does not allow either.
        let buses = Buses::new(bus, MmioBus::new());
        let t = std::thread::spawn(move || {
            hull_vmm::seccomp::install_vcpu().unwrap();
            let r = vcpu.run(&buses, &vm.memory);
            assert_eq!(r.unwrap(), Stopped::Halted);
            report.write_all(b" ran;").unwrap();
            // Not on the list: the process dies here.
            // SAFETY: a plain syscall with no pointers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            report.write_all(b" survived").unwrap();
        });
        let _ = t.join();
    });
    assert_eq!(String::from_utf8_lossy(&out), "ok ran;");
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
        ),
        "{status:?}"
    );
}

#[test]
fn the_main_threads_filter_kills_on_a_file_open_a_thread_clone_or_a_socket() {
    for (name, forbidden) in [("openat", 0usize), ("a thread's clone", 1), ("socket", 2)] {
        let (out, status) = in_child(|mut report| {
            // What the main thread does after the VM: write, close, a CLONE_VM child.
            hull_vmm::seccomp::install_main().unwrap();
            report.write_all(b"filtered;").unwrap();
            // SAFETY: plain syscalls; the forbidden one kills before it does anything.
            unsafe {
                match forbidden {
                    0 => {
                        libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY);
                    }
                    1 => {
                        let flags = libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND;
                        libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                    }
                    _ => {
                        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    }
                }
            }
            report.write_all(b" survived").unwrap();
        });
        assert_eq!(String::from_utf8_lossy(&out), "filtered;", "{name}");
        assert!(
            matches!(
                status,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{name}: {status:?}"
        );
    }
}
