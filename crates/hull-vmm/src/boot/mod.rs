//! Putting a Linux kernel into guest memory: the uncompressed `vmlinux` through its PVH
//! entry (what hull's guest build makes, and the fastest way in), or a `bzImage` through
//! the Linux boot protocol's 64-bit entry. Both get the command line, an optional
//! initramfs and a map of guest RAM; `mptable` describes the CPUs and interrupt lines.

pub mod layout;
pub mod mptable;
pub mod shared;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use layout::*;

/// Why a kernel could not be put into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initramfs file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// linux-loader refused the kernel image.
    #[error("{}: not a loadable kernel: {source}", .path.display())]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    /// An ELF kernel without the PVH entry note cannot be started without firmware.
    #[error("{}: the ELF kernel has no PVH entry note; build it with CONFIG_PVH=y or boot its bzImage", .path.display())]
    NoPvhEntry { path: PathBuf },
    /// The initramfs does not fit between the kernel and the end of guest memory.
    #[error("the initramfs ({size} bytes) does not fit above the kernel in {memory} bytes of guest memory; give the VM more memory")]
    InitramfsTooBig { size: u64, memory: u64 },
    /// The command line is too long or has characters Linux cannot take.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Guest memory was too small for the boot structures.
    #[error("writing the boot structures into guest memory: {0}")]
    Memory(String),
}

/// What to boot.
pub struct BootSource<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Map the kernel's read-only segment and the initramfs from their files (see
    /// `shared`) instead of leaving anonymous copies: for anonymous guest memory only.
    pub share_file_pages: bool,
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off, `rbx` = the `hvm_start_info` address.
    Pvh { rip: u64, start_info: u64 },
    /// 64-bit long mode on identity page tables, `rsi` = the zero page.
    Linux64 { rip: u64, zero_page: u64 },
}

/// Where the pieces landed, for the log and for tests.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub entry: Entry,
    pub kernel_end: u64,
    /// Address and size of the initramfs, if there is one.
    pub initramfs: Option<(u64, u64)>,
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PVH_MAGIC: u32 = 0x336e_c578;
const PVH_MODLIST: u64 = PVH_MEMMAP + 0x80;
/// The bzImage's 64-bit entry sits 0x200 bytes into the protected-mode kernel.
const STARTUP_64_OFFSET: u64 = 0x200;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

pub fn load(memory: &GuestMemoryMmap, src: &BootSource) -> Result<Loaded, BootError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Read { path, source }
    };
    let mut kernel = File::open(src.kernel).map_err(read_err(src.kernel))?;
    let mut magic = [0u8; 4];
    kernel
        .read_exact(&mut magic)
        .and_then(|_| kernel.seek(SeekFrom::Start(0)))
        .map_err(read_err(src.kernel))?;
    let is_elf = magic == *b"\x7fELF";
    let kernel_err = |source| BootError::Kernel {
        path: src.kernel.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM));
    let result = if is_elf {
        Elf::load(memory, None, &mut kernel, himem).map_err(kernel_err)?
    } else {
        BzImage::load(memory, None, &mut kernel, himem).map_err(kernel_err)?
    };

    if is_elf && src.share_file_pages {
        let segments = shared::read_only_segments(&mut kernel).map_err(read_err(src.kernel))?;
        for segment in segments {
            share(memory, &kernel, segment, src.kernel)?;
        }
    }

    let mem_end = memory.last_addr().0 + 1;
    let initramfs = match src.initramfs {
        Some(path) => Some(load_initramfs(memory, path, result.kernel_end, mem_end)?),
        None => None,
    };
    if let (Some(path), Some((guest, len)), true) = (src.initramfs, initramfs, src.share_file_pages)
    {
        let file = File::open(path).map_err(read_err(path))?;
        let range = shared::FileRange {
            offset: 0,
            guest,
            len,
        };
        share(memory, &file, range, path)?;
    }
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(src.cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(memory, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = src.cmdline.len() as u32;

    let entry = if is_elf {
        let PvhBootCapability::PvhEntryPresent(rip) = result.pvh_boot_cap else {
            return Err(BootError::NoPvhEntry {
                path: src.kernel.to_path_buf(),
            });
        };
        write_pvh(memory, mem_end, initramfs)?;
        Entry::Pvh {
            rip: rip.0,
            start_info: PVH_START_INFO,
        }
    } else {
        let header = result.setup_header.ok_or_else(|| {
            BootError::Memory("linux-loader returned no setup header for a bzImage".into())
        })?;
        write_zero_page(memory, header, mem_end, cmdline_len, initramfs)?;
        Entry::Linux64 {
            rip: result.kernel_load.0 + STARTUP_64_OFFSET,
            zero_page: ZERO_PAGE,
        }
    };
    Ok(Loaded {
        entry,
        kernel_end: result.kernel_end,
        initramfs,
    })
}

fn share(
    memory: &GuestMemoryMmap,
    file: &File,
    range: shared::FileRange,
    path: &Path,
) -> Result<(), BootError> {
    let bytes = shared::map(memory, file, range).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(path = %path.display(), guest = range.guest, bytes, "mapped from the file, shared");
    Ok(())
}

/// The initramfs goes at the top of RAM, page-aligned, as bootloaders put it: clear of
/// the kernel's own decompression and bss, which grow upwards from it.
fn load_initramfs(
    memory: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let too_big = BootError::InitramfsTooBig {
        size,
        memory: mem_end,
    };
    let addr = mem_end.checked_sub(size).ok_or(too_big)? & !0xfff;
    if addr < kernel_end {
        return Err(BootError::InitramfsTooBig {
            size,
            memory: mem_end,
        });
    }
    memory
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

/// RAM as the guest may use it: below the EBDA, and from 1 MiB to the end. The gap
/// holds the MP table and the legacy ROM area.
fn ram_map(mem_end: u64) -> [(u64, u64, u32); 3] {
    [
        (0, EBDA, E820_RAM),
        (EBDA, HIMEM - EBDA, E820_RESERVED),
        (HIMEM, mem_end - HIMEM, E820_RAM),
    ]
}

fn write_pvh(
    memory: &GuestMemoryMmap,
    mem_end: u64,
    initramfs: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map = ram_map(mem_end);
    let mut start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        let at = PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write(memory, entry, at)?;
    }
    if let Some((paddr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        write(memory, module, PVH_MODLIST)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST;
    }
    write(memory, start_info, PVH_START_INFO)
}

fn write_zero_page(
    memory: &GuestMemoryMmap,
    header: linux_loader::loader::bootparam::setup_header,
    mem_end: u64,
    cmdline_len: u32,
    initramfs: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initramfs {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = ram_map(mem_end);
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len() as u8;
    write(memory, params, ZERO_PAGE)
}

fn write<T: vm_memory::ByteValued>(
    memory: &GuestMemoryMmap,
    value: T,
    at: u64,
) -> Result<(), BootError> {
    memory
        .write_obj(value, GuestAddress(at))
        .map_err(|e| BootError::Memory(format!("at {at:#x}: {e}")))
}
