//! The Intel MultiProcessor table: how a guest without ACPI learns its CPUs, its
//! IO-APIC and which legacy interrupt line reaches which IO-APIC pin. Linux looks for
//! the floating pointer in the EBDA. Layouts from the MP specification 1.4, chapter 4.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA, IOAPIC, IRQ_MAX, LAPIC};
use super::BootError;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6, and the FPU and APIC feature flags: what the table needs to be believed.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// The most vCPUs one table describes here: APIC ids are bytes, and the IO-APIC takes
/// the id after the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Writes the floating pointer and the configuration table for `cpus` vCPUs at the EBDA.
pub fn write(memory: &GuestMemoryMmap, cpus: u8) -> Result<(), BootError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::Memory(format!(
            "{cpus} vCPUs: the MP table describes 1 to {MAX_CPUS}"
        )));
    }
    let table_addr = EBDA + 16;
    let table = config_table(cpus);
    let mut pointer = Vec::with_capacity(16);
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&(table_addr as u32).to_le_bytes());
    pointer.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    pointer[10] = checksum(&pointer);
    memory
        .write_slice(&pointer, GuestAddress(EBDA))
        .and_then(|_| memory.write_slice(&table, GuestAddress(table_addr)))
        .map_err(|e| BootError::Memory(format!("MP table: {e}")))
}

fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = if id == 0 { 0b11 } else { 0b01 }; // enabled, and BSP for the first
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC.to_le_bytes());
    count += 1;
    // Each ISA line straight to the IO-APIC pin of the same number, conforming polarity
    // and trigger (flags 0): the routing KVM's default GSI table implements.
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_VECTORED, 0, 0, 0, irq]);
        entries.extend_from_slice(&[ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of the BSP takes the 8259's ExtINT, LINT1 of every CPU takes NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = 44 + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(length as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum at 7, set below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"HULL-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The byte that makes all bytes of a structure sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn the_table_sums_to_zero_and_counts_its_entries() {
        for cpus in [1, 2, 64] {
            let t = config_table(cpus);
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(sum(&t), 0);
            assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count, cpus as u16 + 1 + 1 + 24 + 2);
            assert_eq!(
                t.len(),
                44 + 20 * cpus as usize + 8 * (count as usize - cpus as usize)
            );
        }
    }

    #[test]
    fn the_floating_pointer_finds_the_table() {
        let memory = crate::vstate::memory::anonymous(1 << 20).unwrap();
        write(&memory, 2).unwrap();
        let mut p = [0u8; 16];
        memory.read_slice(&mut p, GuestAddress(EBDA)).unwrap();
        assert_eq!(&p[..4], b"_MP_");
        assert_eq!(sum(&p), 0);
        let at = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as u64;
        let mut sig = [0u8; 4];
        memory.read_slice(&mut sig, GuestAddress(at)).unwrap();
        assert_eq!(&sig, b"PCMP");
        assert!(write(&memory, 0).is_err());
    }
}
