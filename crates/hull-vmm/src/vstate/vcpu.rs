//! One vCPU: its registers at entry, and the run loop that turns VM exits into device
//! accesses or into the reason the guest stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use kvm_bindings::kvm_regs;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vm::Vm;
use crate::devices::bus::Buses;
use crate::error::{kvm, Result, VmmError};

/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;
/// The longest x86 instruction.
const MAX_INSN: usize = 15;

pub struct Vcpu {
    pub fd: VcpuFd,
    control: Arc<Control>,
}

/// Shared between the vCPU thread and whoever may stop it.
#[derive(Default)]
struct Control {
    /// Raised by the i8042 when the guest resets.
    reset: Arc<AtomicBool>,
    /// Raised by a `Kicker`.
    stop: AtomicBool,
    /// The pthread running the vCPU, while it runs (0 otherwise).
    thread: AtomicU64,
}

/// How a guest ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// HLT with nothing to wake it: the tiny guests' way of saying "done".
    Halted,
    /// The guest pulled the reset line (i8042): a reboot, which ends a micro-VM.
    Reset,
    /// A `Kicker` stopped it (SIGTERM handling, a timeout).
    Kicked,
}

/// Stops a running vCPU from another thread, whatever the guest is doing.
#[derive(Clone)]
pub struct Kicker(Arc<Control>);

/// The signal that interrupts KVM_RUN; its handler does nothing.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

extern "C" fn ignore_kick(_: libc::c_int) {}

impl Kicker {
    /// Asks the vCPU to stop and interrupts KVM_RUN until it has. The signal is
    /// repeated: one that lands between the loop's check and KVM_RUN would be lost.
    pub fn kick(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        for _ in 0..500 {
            let thread = self.0.thread.load(Ordering::SeqCst);
            if thread == 0 {
                return;
            }
            // SAFETY: `thread` is the live vCPU thread: it clears the value before it
            // leaves `run`, and we stop as soon as it has.
            unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Clears the running thread on every way out of `run`.
struct Running<'a>(&'a Control);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.thread.store(0, Ordering::SeqCst);
    }
}

/// A VM exit, copied out of kvm_run so the vCPU can be used again to handle it.
enum Exit {
    Handled,
    Halted,
    Internal,
    Shutdown,
    FailEntry(u64),
    Other(String),
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u64) -> Result<Vcpu> {
        Self::with_reset_line(vm, id, Arc::default())
    }

    /// A vCPU that stops when `reset` is raised: one line for all vCPUs of a VM, since
    /// any of them may be the one that pulls it.
    pub fn with_reset_line(vm: &Vm, id: u64, reset: Arc<AtomicBool>) -> Result<Vcpu> {
        let fd = vm.fd.create_vcpu(id).map_err(kvm("create vCPU"))?;
        // Here, not in `run`: the vCPU thread's seccomp filter has no rt_sigaction.
        install_kick_handler()?;
        Ok(Vcpu {
            fd,
            control: Arc::new(Control {
                reset,
                ..Default::default()
            }),
        })
    }

    /// The line an i8042 raises on reset.
    pub fn reset_line(&self) -> Arc<AtomicBool> {
        self.control.reset.clone()
    }

    pub fn kicker(&self) -> Kicker {
        Kicker(self.control.clone())
    }

    /// Real mode, flat segments at 0, starting at `entry`: where tiny payloads run.
    pub fn set_real_mode(&self, entry: u16) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(kvm("get sregs"))?;
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        self.fd.set_sregs(&sregs).map_err(kvm("set sregs"))?;
        let regs = kvm_regs {
            rip: u64::from(entry),
            rsp: 0x7000,
            // Bit 1 is reserved and always set.
            rflags: 2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(kvm("set regs"))
    }

    /// Runs the guest until it halts or something stops it.
    pub fn run(&mut self, buses: &Buses, memory: &GuestMemoryMmap) -> Result<Stopped> {
        let control = self.control.clone();
        // SAFETY: pthread_self has no preconditions.
        control
            .thread
            .store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
        let _running = Running(&control);
        loop {
            if control.stop.load(Ordering::SeqCst) {
                return Ok(Stopped::Kicked);
            }
            if control.reset.load(Ordering::SeqCst) {
                return Ok(Stopped::Reset);
            }
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    lock(&buses.pio).write(port, data);
                    Exit::Handled
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    lock(&buses.pio).read(port, data);
                    Exit::Handled
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    lock(&buses.mmio).write(addr, data);
                    Exit::Handled
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    lock(&buses.mmio).read(addr, data);
                    Exit::Handled
                }
                Ok(VcpuExit::Hlt) => Exit::Halted,
                Ok(VcpuExit::InternalError) => Exit::Internal,
                Ok(VcpuExit::Shutdown) => Exit::Shutdown,
                Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry(reason),
                Ok(other) => Exit::Other(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Handled,
                Err(e) => return Err(kvm("KVM_RUN")(e)),
            };
            match exit {
                Exit::Handled => {}
                Exit::Halted => return Ok(Stopped::Halted),
                Exit::Internal => return Err(self.internal_error(memory)),
                Exit::Shutdown => {
                    // A triple fault resets a PC, and it is how Linux's `reboot=t` and
                    // guests without a reset device end (as under QEMU's -no-reboot).
                    tracing::info!(rip = %format!("{:#x}", self.rip()), "triple fault: the guest reset");
                    return Ok(Stopped::Reset);
                }
                Exit::FailEntry(reason) => return Err(VmmError::FailEntry { reason }),
                Exit::Other(what) => return Err(VmmError::UnexpectedExit(what)),
            }
        }
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Names the instruction KVM could not emulate: its address and bytes, read from
    /// guest memory through the guest's own address translation.
    fn internal_error(&mut self, memory: &GuestMemoryMmap) -> VmmError {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR, `internal` is the union member KVM filled.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = self.rip();
        if suberror != INTERNAL_ERROR_EMULATION {
            return VmmError::InternalError { suberror, rip };
        }
        let cs_base = self.fd.get_sregs().map(|s| s.cs.base).unwrap_or(0);
        let linear = cs_base.wrapping_add(rip);
        let phys = match self.fd.translate_gva(linear) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => linear,
        };
        let mut bytes = Vec::with_capacity(MAX_INSN);
        for i in 0..MAX_INSN as u64 {
            match memory.read_obj::<u8>(GuestAddress(phys + i)) {
                Ok(b) => bytes.push(b),
                Err(_) => break,
            }
        }
        VmmError::EmulationFailure { rip, bytes }
    }
}

/// A device that panicked under the lock has not left its bus half-updated in any way
/// that matters more than stopping the VM would: the next access goes on.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handler (not SIG_DFL, which would end the process, nor SIG_IGN, which would not
/// interrupt KVM_RUN) for the kick signal, installed once per process.
fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut err = None;
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler; the handler does nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
                err = Some(std::io::Error::last_os_error());
            }
        }
    });
    match err {
        Some(e) => Err(VmmError::UnexpectedExit(format!(
            "cannot install the kick handler: {e}"
        ))),
        None => Ok(()),
    }
}
