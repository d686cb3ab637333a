//! Guest memory: one region from guest address 0, anonymous or backed by a memfd (which
//! another process, a snapshot or vhost-user backend, could map too), with optional
//! huge pages: transparent ones where the host's THP allows `madvise`, or 2 MiB pages
//! from hugetlbfs, which the host must have reserved.

use std::fs::File;
use std::os::fd::FromRawFd;

use serde::Deserialize;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use crate::error::{Result, VmmError};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Anonymous,
    Memfd,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HugePages {
    #[default]
    None,
    /// madvise(MADV_HUGEPAGE): the kernel backs the memory with 2 MiB pages when it can.
    Transparent,
    /// A hugetlbfs memfd of 2 MiB pages, allocated up front so a shortage is an error
    /// now rather than a SIGBUS when the guest touches the page.
    #[serde(rename = "2m")]
    Hugetlb2M,
}

const HUGE_2M: usize = 2 << 20;

pub fn anonymous(bytes: usize) -> Result<GuestMemoryMmap> {
    create(bytes, Backend::Anonymous, HugePages::None)
}

pub fn create(bytes: usize, backend: Backend, huge: HugePages) -> Result<GuestMemoryMmap> {
    if bytes == 0 || !bytes.is_multiple_of(4096) {
        return Err(VmmError::Memory(format!(
            "{bytes} bytes is not a positive number of 4 KiB pages"
        )));
    }
    let file = match (backend, huge) {
        (_, HugePages::Hugetlb2M) => Some(hugetlb_memfd(bytes)?),
        (Backend::Memfd, _) => Some(memfd(bytes, 0)?),
        (Backend::Anonymous, _) => None,
    };
    if file.is_none() && huge == HugePages::Transparent {
        return transparent_huge(bytes);
    }
    let range = (GuestAddress(0), bytes, file.map(|f| FileOffset::new(f, 0)));
    let memory = GuestMemoryMmap::from_ranges_with_files([range])
        .map_err(|e| VmmError::Memory(format!("cannot map {bytes} bytes: {e}")))?;
    let host = memory
        .get_host_address(GuestAddress(0))
        .map_err(|e| VmmError::Memory(e.to_string()))?;
    match huge {
        // A memfd: shmem's huge pages, where the host's shmem_enabled allows them.
        HugePages::Transparent => advise_huge(host.cast(), bytes)?,
        HugePages::None => advise_small(host.cast(), bytes)?,
        HugePages::Hugetlb2M => {}
    }
    Ok(memory)
}

/// madvise(MADV_NOHUGEPAGE): on a host whose THP is "always" (Debian's cloud kernel),
/// every 2 MiB the guest touches anywhere would be 2 MiB of host memory: 10 MiB of
/// the guest's first 16 MiB, where 4 KiB pages take a fraction (nested KVM, an idle
/// sandbox).
fn advise_small(at: *mut libc::c_void, bytes: usize) -> Result<()> {
    // SAFETY: advice on a live mapping of guest memory; it changes no contents.
    if unsafe { libc::madvise(at, bytes, libc::MADV_NOHUGEPAGE) } != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: a kernel without THP, whose pages are all small anyway.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(VmmError::Memory(format!(
                "madvise(MADV_NOHUGEPAGE) on guest memory: {e}"
            )));
        }
    }
    Ok(())
}

fn advise_huge(at: *mut libc::c_void, bytes: usize) -> Result<()> {
    // SAFETY: advice on a live mapping of guest memory; it changes no contents.
    if unsafe { libc::madvise(at, bytes, libc::MADV_HUGEPAGE) } != 0 {
        return Err(VmmError::Memory(format!(
            "transparent huge pages: madvise: {} (is /sys/kernel/mm/transparent_hugepage/enabled \"never\"?)",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Anonymous memory for transparent huge pages, mapped at a 2 MiB-aligned address: KVM
/// maps a guest page with a 2 MiB entry only where guest-physical and host-virtual
/// addresses agree modulo 2 MiB (QEMU aligns its RAM the same way), and without that
/// the guest takes one nested page fault per 4 KiB page it touches.
///
/// The mapping is never unmapped: vm-memory takes a mapping it did not make as
/// borrowed, and a VM's memory lives as long as its `hull vmm` process anyway.
fn transparent_huge(bytes: usize) -> Result<GuestMemoryMmap> {
    let reserve = bytes + HUGE_2M;
    // SAFETY: a new private anonymous mapping at an address the kernel picks; nothing
    // else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(VmmError::Memory(format!(
            "cannot map {bytes} bytes: {}",
            std::io::Error::last_os_error()
        )));
    }
    let start = (base as usize).next_multiple_of(HUGE_2M);
    let head = start - base as usize;
    let tail = reserve - head - bytes;
    // SAFETY: both ranges lie inside the mapping just made, outside [start, start+bytes),
    // and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((start + bytes) as *mut libc::c_void, tail);
        }
    }
    advise_huge(start as *mut libc::c_void, bytes)?;
    // SAFETY: `start..start+bytes` is a live mapping of this process (made above) that
    // stays mapped for the life of the process.
    let region = unsafe {
        MmapRegionBuilder::new(bytes)
            .with_raw_mmap_pointer(start as *mut u8)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
    }
    .map_err(|e| VmmError::Memory(format!("cannot map {bytes} bytes: {e}")))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| {
        VmmError::Memory(format!(
            "{bytes} bytes do not fit the guest's address space"
        ))
    })?;
    GuestMemoryMmap::from_regions(vec![region])
        .map_err(|e| VmmError::Memory(format!("cannot map {bytes} bytes: {e}")))
}

fn memfd(bytes: usize, flags: libc::c_uint) -> Result<File> {
    // SAFETY: a NUL-terminated name; the returned fd is new and owned by the File.
    let fd = unsafe { libc::memfd_create(c"hull-vmm-guest".as_ptr(), libc::MFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(VmmError::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(bytes as u64)
        .map_err(|e| VmmError::Memory(format!("sizing the guest memfd to {bytes} bytes: {e}")))?;
    Ok(file)
}

fn hugetlb_memfd(bytes: usize) -> Result<File> {
    if !bytes.is_multiple_of(HUGE_2M) {
        return Err(VmmError::Memory(format!(
            "2 MiB huge pages: {} MiB is not a multiple of 2 MiB",
            bytes >> 20
        )));
    }
    let file = memfd(bytes, libc::MFD_HUGETLB | libc::MFD_HUGE_2MB)?;
    // SAFETY: fallocate on our own fd over the range just sized.
    let r = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, bytes as i64) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(VmmError::Memory(format!(
            "2 MiB huge pages: the host could not give {} of them ({e}); reserve them with `echo N > /proc/sys/vm/nr_hugepages`",
            bytes / HUGE_2M
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_huge_pages_sit_on_2_mib_boundaries() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.as_deref().unwrap_or("[never]").contains("[never]") {
            println!("not run: this host's transparent huge pages are off");
            return;
        }
        for mib in [6, 128] {
            let memory = create(mib << 20, Backend::Anonymous, HugePages::Transparent).unwrap();
            let host = memory.get_host_address(GuestAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_2M, 0, "{mib} MiB at {host:#x}");
            let end = memory.get_host_address(GuestAddress((mib << 20) as u64 - 1));
            assert_eq!(end.unwrap() as usize, host + (mib << 20) - 1);
        }
    }

    /// The VmFlags line of the mapping that holds `addr`, from /proc/self/smaps.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn small_pages_are_asked_for_whatever_the_hosts_thp_policy() {
        for backend in [Backend::Anonymous, Backend::Memfd] {
            let memory = create(8 << 20, backend, HugePages::None).unwrap();
            let host = memory.get_host_address(GuestAddress(0)).unwrap() as usize;
            let flags = vm_flags(host);
            assert!(flags.split(' ').any(|f| f == "nh"), "{backend:?}: {flags}");
        }
    }
}
