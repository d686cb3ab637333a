//! Guest pages that many VMs can share: the kernel's read-only segment (text and
//! rodata, about 11 MiB of the hull guest's 12.5 MiB image) and the initramfs are
//! mapped from their files, copy-on-write, over the guest memory that the loader filled
//! with the same bytes. Every VM that boots the same files then reads the same host
//! page-cache pages until it writes one (the kernel patches some text at boot; the
//! initramfs is freed and reused once unpacked), and a page the guest never touches is
//! never read in. Anonymous copies made each VM pay for the whole image.
//!
//! The files must not be changed in place while VMs use them: a private mapping sees
//! writes to pages it has not copied. hull's guest cache writes new files and renames
//! them, which leaves a running VM its own inode.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;

/// A file range to map at a guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRange {
    pub offset: u64,
    pub guest: u64,
    pub len: u64,
}

/// The read-only PT_LOAD segments of an ELF64 kernel, where linux-loader puts them (at
/// their physical address).
pub fn read_only_segments(file: &mut File) -> io::Result<Vec<FileRange>> {
    let mut header = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut header)?;
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = u16::from_le_bytes([header[0x36], header[0x37]]) as u64;
    let phnum = u16::from_le_bytes([header[0x38], header[0x39]]) as u64;
    if phentsize < 56 || phnum > 64 {
        return Ok(Vec::new());
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut table)?;
    let field = |entry: &[u8], at: usize| {
        u64::from_le_bytes(entry[at..at + 8].try_into().unwrap_or_default())
    };
    Ok(table
        .chunks_exact(phentsize as usize)
        .filter(|e| {
            let kind = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let flags = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            kind == PT_LOAD && flags & PF_W == 0
        })
        .map(|e| FileRange {
            offset: field(e, 8),
            guest: field(e, 24),
            len: field(e, 32),
        })
        .collect())
}

/// Maps the whole pages of `range` from `file` over guest memory, which must already
/// hold the same bytes (the partial last page stays the loader's copy). Returns the
/// bytes mapped: 0 where the range is not page-aligned or not inside one region.
pub fn map(memory: &GuestMemoryMmap, file: &File, range: FileRange) -> io::Result<u64> {
    let len = range.len & !(PAGE - 1);
    if len == 0 || !range.offset.is_multiple_of(PAGE) || !range.guest.is_multiple_of(PAGE) {
        return Ok(0);
    }
    let Some(region) = memory.find_region(GuestAddress(range.guest)) else {
        return Ok(0);
    };
    // A file-backed region (memfd, hugetlbfs) may be mapped by another process too,
    // which must keep seeing the guest's pages.
    let inside = memory
        .get_slice(GuestAddress(range.guest), len as usize)
        .is_ok();
    if !inside || region.file_offset().is_some() {
        return Ok(0);
    }
    let host = memory
        .get_host_address(GuestAddress(range.guest))
        .map_err(|e| io::Error::other(e.to_string()))?;
    // SAFETY: `host..host+len` lies inside guest memory's own mapping (checked above),
    // which the guest has not run on yet; MAP_FIXED replaces those pages with a private
    // mapping of the file bytes the loader just copied there, so the contents the
    // guest will see do not change. Nothing in this process holds a reference into
    // the replaced pages.
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            range.offset as libc::off_t,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile_in_tmp();
        f.write_all(bytes).unwrap();
        f
    }

    fn tempfile_in_tmp() -> File {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("hull-vmm-shared-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn mapped_pages_read_the_file_and_writes_stay_private() {
        let memory = crate::vstate::memory::anonymous(1 << 20).unwrap();
        let content: Vec<u8> = (0..3 * PAGE + 100).map(|i| (i % 251) as u8).collect();
        let file = file_with(&content);
        memory.write_slice(&content, GuestAddress(0x8000)).unwrap();
        let range = FileRange {
            offset: 0,
            guest: 0x8000,
            len: content.len() as u64,
        };
        assert_eq!(map(&memory, &file, range).unwrap(), 3 * PAGE);
        let mut back = vec![0u8; content.len()];
        memory.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, content);
        memory.write_obj(0xffu8, GuestAddress(0x8000)).unwrap();
        let mut first = [0u8; 1];
        (&file).seek(SeekFrom::Start(0)).unwrap();
        (&file).read_exact(&mut first).unwrap();
        assert_eq!(first[0], 0, "a guest write reached the file");
    }

    #[test]
    fn unaligned_or_outside_ranges_are_left_as_copies() {
        let memory = crate::vstate::memory::anonymous(1 << 20).unwrap();
        let file = file_with(&[1u8; 3 * PAGE as usize]);
        let at = |offset, guest, len| FileRange { offset, guest, len };
        assert_eq!(map(&memory, &file, at(100, 0x8000, PAGE * 2)).unwrap(), 0);
        assert_eq!(map(&memory, &file, at(0, 0x8100, PAGE * 2)).unwrap(), 0);
        assert_eq!(map(&memory, &file, at(0, 0x8000, 100)).unwrap(), 0);
        assert_eq!(
            map(&memory, &file, at(0, (1 << 20) - PAGE, 2 * PAGE)).unwrap(),
            0
        );
        assert_eq!(map(&memory, &file, at(0, 2 << 20, PAGE)).unwrap(), 0);
    }

    #[test]
    fn read_only_segments_are_found_in_the_program_headers() {
        // An ELF64 header and three program headers: text (R E), data (RW), a note.
        let mut elf = vec![0u8; 64 + 3 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let phdr = |elf: &mut Vec<u8>,
                    i: usize,
                    kind: u32,
                    flags: u32,
                    off: u64,
                    paddr: u64,
                    size: u64| {
            let e = &mut elf[64 + i * 56..64 + (i + 1) * 56];
            e[0..4].copy_from_slice(&kind.to_le_bytes());
            e[4..8].copy_from_slice(&flags.to_le_bytes());
            e[8..16].copy_from_slice(&off.to_le_bytes());
            e[24..32].copy_from_slice(&paddr.to_le_bytes());
            e[32..40].copy_from_slice(&size.to_le_bytes());
        };
        phdr(&mut elf, 0, PT_LOAD, 5, 0x20_0000, 0x100_0000, 0xaa_c2a0);
        phdr(&mut elf, 1, PT_LOAD, 6, 0xe0_0000, 0x1c0_0000, 0xc_2000);
        phdr(&mut elf, 2, 4, 4, 0xca_c234, 0x1aa_c234, 0x6c);
        let mut file = file_with(&elf);
        assert_eq!(
            read_only_segments(&mut file).unwrap(),
            [FileRange {
                offset: 0x20_0000,
                guest: 0x100_0000,
                len: 0xaa_c2a0
            }]
        );
    }
}
