//! The KVM VM: its fd and its memory, registered with KVM slot by slot.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::error::{kvm, Result, VmmError};

pub struct Vm {
    pub fd: VmFd,
    pub memory: GuestMemoryMmap,
    pub kvm: Kvm,
}

impl Vm {
    pub fn new(memory: GuestMemoryMmap) -> Result<Vm> {
        let kvm_handle = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let fd = kvm_handle.create_vm().map_err(kvm("create VM"))?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region stays mapped as long as `memory`, which the Vm owns and
            // which outlives the VM fd (fields drop in order: fd first).
            unsafe { fd.set_user_memory_region(r) }.map_err(kvm("set memory region"))?;
        }
        Ok(Vm {
            fd,
            memory,
            kvm: kvm_handle,
        })
    }

    /// The in-kernel PIC, IO-APIC, local APICs and PIT that a Linux guest expects, made
    /// before any vCPU (KVM requires that order). Tiny test guests go without: with an
    /// in-kernel APIC, KVM keeps a halted vCPU to itself instead of reporting the HLT.
    pub fn add_irqchip(&self) -> Result<()> {
        self.fd
            .set_tss_address(crate::boot::layout::KVM_TSS)
            .map_err(kvm("set TSS address"))?;
        self.fd.create_irq_chip().map_err(kvm("create irqchip"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(kvm("create PIT"))
    }
}
