//! A vCPU's state at power-on as Linux expects it from a boot loader: CPUID telling it
//! its APIC id and that it runs on a hypervisor (so it takes kvm-clock and needs no PIT
//! calibration), the MSRs a BIOS leaves, an initialised FPU, local APIC lines for
//! ExtINT and NMI, and on the boot vCPU the registers of the chosen entry.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{GDT, IDT, PD, PDPT, PML4};
use crate::boot::Entry;
use crate::error::{kvm, Result, VmmError};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// MTRRs on, write-back by default: without it Linux maps all memory uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Below the zero page, above the PVH structures.
const BOOT_STACK: u64 = 0x8ff0;

/// GDT flags (access byte plus the granularity nibble) for the entry segments.
const CODE64: u16 = 0xa09b;
const CODE32: u16 = 0xc09b;
const DATA: u16 = 0xc093;
const TSS: u16 = 0x008b;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

/// Everything but the entry registers: done for every vCPU, before any runs.
pub fn configure(kvm_handle: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<()> {
    set_cpuid(kvm_handle, vcpu, id, count)?;
    set_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU"))?;
    set_lapic_lines(vcpu)
}

fn set_cpuid(kvm_handle: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<()> {
    let mut cpuid = kvm_handle
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("get supported CPUID"))?;
    // KVM emulates the TSC-deadline timer but leaves its CPUID bit out of the supported
    // set (it says so through a capability instead), as QEMU and Firecracker know: a
    // guest without it programs its local APIC timer in one-shot mode, two MSR writes
    // a timer instead of one. Measured in the nested test bed, QEMU's guest had it and
    // hull-vmm's did not: the two VMMs' guests did not see the same clock hardware.
    let tsc_deadline = kvm_handle.check_extension(Cap::TscDeadlineTimer);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC id, logical CPU count, the hypervisor bit; HTT with siblings.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if tsc_deadline {
                    e.ecx |= CPUID1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            // Extended topology: the x2APIC id of this CPU.
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))
}

fn set_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| VmmError::UnexpectedExit(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    if set != entries.len() {
        let index = entries[set].index;
        return Err(VmmError::UnexpectedExit(format!(
            "KVM refused MSR {index:#x} ({set} of {} set)",
            entries.len()
        )));
    }
    Ok(())
}

/// LINT0 takes the 8259's interrupts, LINT1 NMIs, as a PC's BIOS wires them.
fn set_lapic_lines(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("get LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[reg + i] = b as i8;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set LAPIC"))
}

/// The boot vCPU's registers for `entry`, and the GDT (and page tables) it needs.
pub fn set_entry(vcpu: &VcpuFd, memory: &GuestMemoryMmap, entry: Entry) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    let mut regs = kvm_regs {
        rflags: 2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh { rip, start_info } => {
            write_gdt(memory, &mut sregs, CODE32)?;
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
        Entry::Linux64 { rip, zero_page } => {
            write_gdt(memory, &mut sregs, CODE64)?;
            write_page_tables(memory)?;
            sregs.cr3 = PML4;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = zero_page;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    vcpu.set_regs(&regs).map_err(kvm("set regs"))
}

fn write_gdt(memory: &GuestMemoryMmap, sregs: &mut kvm_sregs, code: u16) -> Result<()> {
    let table = [(0, 0), (code, 0xfffff), (DATA, 0xfffff), (TSS, 0x67)];
    for (i, &(flags, limit)) in table.iter().enumerate() {
        let at = GuestAddress(GDT + 8 * i as u64);
        memory
            .write_obj(gdt_entry(flags, limit), at)
            .map_err(|e| VmmError::Memory(format!("GDT: {e}")))?;
    }
    memory
        .write_obj(0u64, GuestAddress(IDT))
        .map_err(|e| VmmError::Memory(format!("IDT: {e}")))?;
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (8 * table.len() - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    sregs.cs = segment(code, 0xfffff, 1);
    let data = segment(DATA, 0xfffff, 2);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(TSS, 0x67, 3);
    Ok(())
}

/// A flat (base 0) descriptor as it sits in the GDT.
fn gdt_entry(flags: u16, limit: u32) -> u64 {
    let flags = u64::from(flags & 0xf0ff);
    let limit = u64::from(limit);
    (flags << 40) | ((limit & 0xf_0000) << 32) | (limit & 0xffff)
}

/// The same descriptor as KVM takes it for a loaded segment register.
fn segment(flags: u16, limit: u32, index: u16) -> kvm_segment {
    let bit = |n: u16| ((flags >> n) & 1) as u8;
    let granular = bit(15) == 1;
    kvm_segment {
        base: 0,
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: bit(7),
        dpl: ((flags >> 5) & 3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: 1 - bit(7),
        padding: 0,
    }
}

/// The first GiB identity-mapped with 2 MiB pages: enough for the kernel's own early
/// code, which builds its real page tables straight away.
fn write_page_tables(memory: &GuestMemoryMmap) -> Result<()> {
    let err = |e: vm_memory::GuestMemoryError| VmmError::Memory(format!("page tables: {e}"));
    memory
        .write_obj(PDPT | 0x3, GuestAddress(PML4))
        .map_err(err)?;
    memory
        .write_obj(PD | 0x3, GuestAddress(PDPT))
        .map_err(err)?;
    for i in 0..512u64 {
        memory
            .write_obj((i << 21) | 0x83, GuestAddress(PD + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        assert_eq!(gdt_entry(CODE64, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0xfffff), 0x00cf_9300_0000_ffff);
        let cs = segment(CODE64, 0xfffff, 1);
        assert_eq!((cs.l, cs.db, cs.type_, cs.limit), (1, 0, 0xb, 0xffff_ffff));
        let cs32 = segment(CODE32, 0xfffff, 1);
        assert_eq!((cs32.l, cs32.db, cs32.selector), (0, 1, 8));
        let tr = segment(TSS, 0x67, 3);
        assert_eq!((tr.s, tr.type_, tr.limit, tr.unusable), (0, 0xb, 0x67, 0));
    }
}
