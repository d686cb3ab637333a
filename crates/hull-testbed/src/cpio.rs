//! L1's image, written straight to a file with hull-sandbox's newc writer: members
//! stream from their host files instead of being gathered in memory. Uncompressed on
//! purpose: under TCG the kernel's gunzip of ~40 MiB costs more than QEMU loading the
//! raw bytes.

use std::io::BufWriter;
use std::path::Path;

pub use hull_sandbox::cpio::{Entry, Source};

use crate::error::{io_err, Result};

/// Writes `entries` to the archive `out`.
pub fn write(out: &Path, entries: &[Entry]) -> Result<()> {
    let file = std::fs::File::create(out).map_err(io_err("cannot create", out))?;
    let mut file = BufWriter::with_capacity(1 << 20, file);
    hull_sandbox::cpio::write(&mut file, entries).map_err(io_err("cannot write", out))
}
