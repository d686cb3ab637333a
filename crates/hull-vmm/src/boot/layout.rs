//! Where things go in guest physical memory. The low addresses follow the PC layout
//! Linux expects (real-mode area, EBDA below 640 KiB, the kernel at 1 MiB); devices
//! live in the 32-bit hole below 4 GiB, so guest RAM stops short of it.

/// The boot GDT (null, code, data, TSS) and an empty IDT, for the entry state.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// PVH: `hvm_start_info`, followed by its memory map.
pub const PVH_START_INFO: u64 = 0x6000;
pub const PVH_MEMMAP: u64 = 0x6040;
/// Linux boot protocol: the zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// 64-bit entry: identity-mapped page tables for the first GiB (2 MiB pages).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// The kernel command line (x86's COMMAND_LINE_SIZE is 2048 bytes).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// The extended BIOS data area, where Linux looks for the MP table.
pub const EBDA: u64 = 0x9fc00;
/// Where memory above the real-mode area starts and the kernel is loaded.
pub const HIMEM: u64 = 0x10_0000;
/// The first virtio-mmio window, then one per device, each `MMIO_SIZE` long.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
/// Guest RAM must end below the device windows.
pub const RAM_MAX: u64 = 0xc000_0000;
/// The local APIC and IO-APIC, where the MP table says they are.
pub const LAPIC: u32 = 0xfee0_0000;
pub const IOAPIC: u32 = 0xfec0_0000;
/// KVM needs three pages of guest-physical space for the TSS on Intel hosts.
pub const KVM_TSS: usize = 0xfffb_d000;
/// Legacy interrupts: the keyboard on 1, COM1 on 4; virtio devices from 5 up to the
/// IO-APIC's 23.
pub const IRQ_KEYBOARD: u32 = 1;
pub const IRQ_COM1: u32 = 4;
pub const IRQ_VIRTIO_FIRST: u32 = 5;
pub const IRQ_MAX: u32 = 23;
