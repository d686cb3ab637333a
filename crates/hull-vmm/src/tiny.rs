//! Tiny guest kernels: a few instructions in the two formats hull-vmm boots, a PVH ELF
//! and a bzImage. On a host whose KVM emulates every guest instruction they still run
//! in milliseconds, so tests exercise the real boot path with them, and `bench/vmm`
//! times VMM startup with the same file under hull-vmm and QEMU.

/// Where both images put their code: the conventional 1 MiB.
pub const LOAD_ADDR: u32 = 0x10_0000;

const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const CODE_OFFSET: usize = 0x1000;

/// 32-bit code (PVH entry): write `!` to COM1, then pull the i8042 reset line.
pub const PVH_BANG_AND_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'!', 0xee, // mov al, '!'; out dx, al
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al
    0xf4, // hlt
];

/// 32-bit code (PVH entry): write `!` to COM1, then triple-fault (an empty IDT, then
/// a division by zero): the reset every x86 VMM handles, QEMU's microvm (no i8042)
/// included. Not `int3`: KVM's instruction emulator lacks it.
pub const PVH_BANG_AND_TRIPLE_FAULT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'!', 0xee, // mov al, '!'; out dx, al
    0x0f, 0x01, 0x1d, 0x14, 0x00, 0x10, 0x00, // lidt [LOAD_ADDR + 20]
    0x31, 0xc9, // xor ecx, ecx
    0xf7, 0xf1, // div ecx: #DE, no IDT, so #DF, then a triple fault
    0xf4, 0x00, // hlt (not reached), padding
    0, 0, 0, 0, 0, 0, // at +20: the IDT descriptor, limit 0, base 0
];

/// 32-bit code (PVH entry): print `K`, poll the i8042 until the keyboard sends Delete
/// (0x53, scancode set 1), print `D` and pull the reset line: a guest that shuts down
/// on Ctrl-Alt-Del, as hull-vmm asks on SIGTERM.
pub const PVH_WAIT_FOR_CTRL_ALT_DEL: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'K', 0xee, // mov al, 'K'; out dx, al
    0xe4, 0x64, // poll: in al, 0x64
    0xa8, 0x01, // test al, 1 (output buffer full)
    0x74, 0xfa, // jz poll
    0xe4, 0x60, // in al, 0x60
    0x3c, 0x53, // cmp al, 0x53
    0x75, 0xf4, // jne poll
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'D', 0xee, // mov al, 'D'; out dx, al
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al
    0xf4, // hlt
];

/// 32-bit code (PVH entry): print the command line that `hvm_start_info` (at ebx)
/// points to, then reset: proof that the start info and the command line arrived.
pub const PVH_PRINT_CMDLINE: &[u8] = &[
    0x8b, 0x73, 0x18, // mov esi, [ebx + 0x18]   ; cmdline_paddr
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8a, 0x06, // loop: mov al, [esi]
    0x84, 0xc0, // test al, al
    0x74, 0x04, // jz done
    0xee, // out dx, al
    0x46, // inc esi
    0xeb, 0xf6, // jmp loop
    0xb0, 0xfe, 0xe6, 0x64, // done: mov al, 0xfe; out 0x64, al
    0xf4, // hlt
];

/// 64-bit code (bzImage 64-bit entry): print the command line the zero page (at rsi)
/// points to, then reset: proof of long mode, the page tables and the zero page.
pub const LINUX64_PRINT_CMDLINE: &[u8] = &[
    0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00, // mov esi, [rsi + 0x228]  ; hdr.cmd_line_ptr
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8a, 0x06, // loop: mov al, [rsi]
    0x84, 0xc0, // test al, al
    0x74, 0x06, // jz done
    0xee, // out dx, al
    0x48, 0xff, 0xc6, // inc rsi
    0xeb, 0xf4, // jmp loop
    0xb0, 0xfe, 0xe6, 0x64, // done: mov al, 0xfe; out 0x64, al
    0xf4, // hlt
];

/// An ELF64 executable loading `code` at `LOAD_ADDR`, with a PVH entry note pointing
/// at its first byte.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_offset = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD_ADDR.to_le_bytes());

    let mut elf = Vec::with_capacity(CODE_OFFSET + code.len());
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // 64-bit, LE, v1
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&u64::from(LOAD_ADDR).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [EHDR as u16, PHDR as u16, 2, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    let load = [1u32, 5]; // PT_LOAD, R+X
    let load_fields = [
        CODE_OFFSET as u64,
        LOAD_ADDR.into(),
        LOAD_ADDR.into(),
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ];
    let note_hdr = [4u32, 4]; // PT_NOTE, R
    let note_fields = [
        note_offset as u64,
        0,
        0,
        note.len() as u64,
        note.len() as u64,
        4,
    ];
    for (head, fields) in [(load, load_fields), (note_hdr, note_fields)] {
        head.iter()
            .for_each(|v| elf.extend_from_slice(&v.to_le_bytes()));
        fields
            .iter()
            .for_each(|v| elf.extend_from_slice(&v.to_le_bytes()));
    }
    elf.extend_from_slice(&note);
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    elf
}

/// A bzImage whose protected-mode part is `code` at the 64-bit entry (0x200 in), with
/// one setup sector and a boot protocol 2.15 header.
pub fn bzimage(code: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut image = vec![0u8; setup_len + 0x200];
    image[0x1f1] = SETUP_SECTS;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&LOAD_ADDR.to_le_bytes());
    image.extend_from_slice(code);
    image
}
