//! Guest memory: one region from guest address 0, anonymous or backed by a memfd (which
//! another process, a snapshot or vhost-user backend, could map too), with optional
//! huge pages: transparent ones where the host's THP allows `madvise`, or 2 MiB pages
//! from hugetlbfs, which the host must have reserved.

use std::fs::File;
use std::os::fd::FromRawFd;

use serde::Deserialize;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
    let range = (GuestAddress(0), bytes, file.map(|f| FileOffset::new(f, 0)));
    let memory = GuestMemoryMmap::from_ranges_with_files([range])
        .map_err(|e| VmmError::Memory(format!("cannot map {bytes} bytes: {e}")))?;
    if huge == HugePages::Transparent {
        for region in memory.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            // SAFETY: advice on the region's own live mapping; it changes no contents.
            let r =
                unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
            if r != 0 {
                return Err(VmmError::Memory(format!(
                    "transparent huge pages: madvise: {} (is /sys/kernel/mm/transparent_hugepage/enabled \"never\"?)",
                    std::io::Error::last_os_error()
                )));
            }
        }
    }
    Ok(memory)
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
