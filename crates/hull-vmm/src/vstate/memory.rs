//! Guest memory: anonymous mappings, one region from guest address 0.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::error::{Result, VmmError};

pub fn anonymous(bytes: usize) -> Result<GuestMemoryMmap> {
    if bytes == 0 || !bytes.is_multiple_of(4096) {
        return Err(VmmError::Memory(format!(
            "{bytes} bytes is not a positive number of 4 KiB pages"
        )));
    }
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|e| VmmError::Memory(format!("cannot map {bytes} bytes: {e}")))
}
