//! One vCPU: its registers at entry, and the run loop that turns VM exits into device
//! accesses or into the reason the guest stopped.

use kvm_bindings::kvm_regs;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::vm::Vm;
use crate::devices::bus::PioBus;
use crate::error::{kvm, Result, VmmError};

/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;
/// The longest x86 instruction.
const MAX_INSN: usize = 15;

pub struct Vcpu {
    pub fd: VcpuFd,
}

/// How a guest ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// HLT with nothing to wake it: the tiny guests' way of saying "done".
    Halted,
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
        let fd = vm.fd.create_vcpu(id).map_err(kvm("create vCPU"))?;
        Ok(Vcpu { fd })
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
    pub fn run(&mut self, bus: &mut PioBus, memory: &GuestMemoryMmap) -> Result<Stopped> {
        loop {
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    bus.write(port, data);
                    Exit::Handled
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    bus.read(port, data);
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
                Exit::Shutdown => return Err(VmmError::Shutdown { rip: self.rip() }),
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
