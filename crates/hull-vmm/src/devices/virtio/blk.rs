//! virtio-blk on a raw image file.
//!
//! Request layout (virtio 1.x §5.2.6), as Linux builds it and as this device requires:
//! - the header (type, reserved, sector) alone in the first descriptor, device-readable
//!   and exactly 16 bytes: split or merged headers are refused (VIRTIO_F_ANY_LAYOUT is
//!   not something Linux's virtio-blk relies on);
//! - data buffers, all device-writable for IN and GET_ID, all device-readable for OUT;
//! - the status byte alone in the last descriptor, device-writable, exactly 1 byte.
//!
//! A request with a usable status descriptor gets a status (IOERR for a malformed
//! request, UNSUPP for an unknown type) and the used length counts the status byte and
//! whatever data was written to the guest. Without one (the status descriptor
//! device-readable or of another size), nothing in the chain is written and the used
//! length is 0.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::queue::{ActiveQueues, Buffer};
use super::{IrqTrigger, Result, VirtioDevice, VirtioError};

pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request: the queue less the header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
const HEADER_LEN: u32 = 16;
/// The bounce buffer between the image and guest memory; requests larger than this are
/// copied in pieces, so its size never depends on the guest.
const BOUNCE: usize = 64 << 10;
/// The used length is 32 bits and includes the status byte.
const MAX_DATA: u64 = u32::MAX as u64 - 1;
/// Config space: capacity (le64), size_max (le32, not offered), seg_max (le32).
const CONFIG_LEN: usize = 16;

/// The status byte's value, and the bytes written into the guest's data buffers.
type Outcome = (u8, u32);

fn ioerr(written: u32) -> Outcome {
    (VIRTIO_BLK_S_IOERR as u8, written)
}

pub struct Block {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<ActiveQueues>,
}

/// What requests are served from, apart from the queues (so both can be borrowed at
/// once).
struct Disk {
    file: File,
    read_only: bool,
    /// In sectors; a partial last sector of the image is not exposed.
    capacity: u64,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
}

impl Block {
    /// A disk backed by the raw image at `path`. `serial` (at most 20 bytes) is what
    /// the guest reads from /sys/block/vdX/serial.
    pub fn new(path: impl AsRef<Path>, read_only: bool, serial: &str) -> Result<Self> {
        let path = path.as_ref();
        if serial.len() > ID_BYTES {
            return Err(VirtioError::SerialTooLong(serial.to_owned()));
        }
        let open_err = |source| VirtioError::OpenImage {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // Seeking rather than metadata: a block device's metadata has length 0.
        let bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                "disk image {}: {} trailing bytes beyond the last whole sector are not exposed",
                path.display(),
                bytes % SECTOR_SIZE
            );
        }
        let capacity = bytes / SECTOR_SIZE;
        let mut id = [0; ID_BYTES];
        id[..serial.len()].copy_from_slice(serial.as_bytes());
        let mut features = 1 << VIRTIO_BLK_F_SEG_MAX;
        features |= if read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            1 << VIRTIO_BLK_F_FLUSH
        };
        let mut config = [0; CONFIG_LEN];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            disk: Disk {
                file,
                read_only,
                capacity,
                id,
                bounce: vec![0; BOUNCE],
            },
            features,
            config,
            active: None,
        })
    }

    /// In 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<IrqTrigger>,
        _features: u64,
    ) -> Result<()> {
        self.active = Some(ActiveQueues::new(
            "virtio-blk",
            memory,
            queues,
            interrupt,
            1,
        )?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<usize> {
        let active = self.active.as_mut().ok_or(VirtioError::NotActivated)?;
        active.process(index, |memory, chain| self.disk.serve(memory, chain))
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl Disk {
    /// Serves one chain; returns the used length.
    fn serve(&mut self, memory: &GuestMemoryMmap, chain: &[Buffer]) -> u32 {
        let Some((status, rest)) = chain.split_last() else {
            return 0;
        };
        if !status.writable || status.len != 1 {
            tracing::debug!("virtio-blk: request without a writable 1-byte status descriptor");
            return 0;
        }
        let (code, written) = self.execute(memory, rest);
        match memory.write_obj(code, status.addr) {
            Ok(()) => written + 1,
            Err(e) => {
                // Cannot happen (the chain was checked), but the data stays reported.
                tracing::debug!("virtio-blk: cannot write status: {e}");
                written
            }
        }
    }

    fn execute(&mut self, memory: &GuestMemoryMmap, bufs: &[Buffer]) -> Outcome {
        let Some((header, data)) = bufs.split_first() else {
            tracing::debug!("virtio-blk: request without a header");
            return ioerr(0);
        };
        if header.writable || header.len != HEADER_LEN {
            tracing::debug!(
                len = header.len,
                writable = header.writable,
                "virtio-blk: header is not one device-readable 16-byte descriptor"
            );
            return ioerr(0);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        if let Err(e) = memory.read_slice(&mut raw, header.addr) {
            tracing::debug!("virtio-blk: cannot read header: {e}");
            return ioerr(0);
        }
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector = [0; 8];
        sector.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector);
        match kind {
            VIRTIO_BLK_T_IN => self.transfer(memory, sector, data, true),
            VIRTIO_BLK_T_OUT => self.transfer(memory, sector, data, false),
            VIRTIO_BLK_T_FLUSH if !self.read_only => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK as u8, 0),
                Err(e) => {
                    tracing::warn!("virtio-blk: flush failed: {e}");
                    ioerr(0)
                }
            },
            VIRTIO_BLK_T_GET_ID => self.get_id(memory, data),
            _ => {
                tracing::debug!(kind, "virtio-blk: unsupported request type");
                (VIRTIO_BLK_S_UNSUPP as u8, 0)
            }
        }
    }

    /// IN (`to_guest`) or OUT: checks the whole request before touching the image or
    /// guest memory, then copies descriptor by descriptor through the bounce buffer.
    fn transfer(
        &mut self,
        memory: &GuestMemoryMmap,
        sector: u64,
        data: &[Buffer],
        to_guest: bool,
    ) -> Outcome {
        if !to_guest && self.read_only {
            tracing::debug!("virtio-blk: write to a read-only disk");
            return ioerr(0);
        }
        if data.len() > SEG_MAX as usize {
            tracing::debug!(
                segments = data.len(),
                "virtio-blk: more segments than seg_max"
            );
            return ioerr(0);
        }
        if let Some(b) = data.iter().find(|b| b.writable != to_guest) {
            tracing::debug!(
                addr = b.addr.raw_value(),
                to_guest,
                "virtio-blk: data buffer of the wrong direction"
            );
            return ioerr(0);
        }
        let bytes: u64 = data.iter().map(|b| u64::from(b.len)).sum();
        if !bytes.is_multiple_of(SECTOR_SIZE) || bytes > MAX_DATA {
            tracing::debug!(
                bytes,
                "virtio-blk: data length not a multiple of 512 or too large"
            );
            return ioerr(0);
        }
        let in_range = sector
            .checked_add(bytes / SECTOR_SIZE)
            .is_some_and(|end| end <= self.capacity);
        if !in_range {
            tracing::debug!(
                sector,
                bytes,
                capacity = self.capacity,
                "virtio-blk: request beyond the disk"
            );
            return ioerr(0);
        }
        // sector <= capacity <= u64::MAX / 512: no overflow.
        let mut offset = sector * SECTOR_SIZE;
        let mut written = 0u32;
        for b in data {
            let mut done = 0u32;
            while done < b.len {
                let n = (b.len - done).min(BOUNCE as u32);
                let chunk = &mut self.bounce[..n as usize];
                let addr = b.addr.unchecked_add(u64::from(done));
                let r = if to_guest {
                    self.file
                        .read_exact_at(chunk, offset)
                        .map_err(|e| e.to_string())
                        .and_then(|()| memory.write_slice(chunk, addr).map_err(|e| e.to_string()))
                } else {
                    memory
                        .read_slice(chunk, addr)
                        .map_err(|e| e.to_string())
                        .and_then(|()| {
                            self.file
                                .write_all_at(chunk, offset)
                                .map_err(|e| e.to_string())
                        })
                };
                if let Err(e) = r {
                    tracing::warn!(offset, "virtio-blk: I/O error: {e}");
                    return ioerr(written);
                }
                done += n;
                offset += u64::from(n);
                if to_guest {
                    written += n;
                }
            }
        }
        (VIRTIO_BLK_S_OK as u8, written)
    }

    /// GET_ID: the serial, NUL-padded to 20 bytes, into as much of the writable data
    /// buffers as there is (up to 20 bytes).
    fn get_id(&mut self, memory: &GuestMemoryMmap, data: &[Buffer]) -> Outcome {
        if data.is_empty() || data.iter().any(|b| !b.writable) {
            tracing::debug!("virtio-blk: GET_ID without writable data buffers");
            return ioerr(0);
        }
        let mut id: &[u8] = &self.id;
        let mut written = 0u32;
        for b in data {
            if id.is_empty() {
                break;
            }
            let n = id.len().min(b.len as usize);
            if let Err(e) = memory.write_slice(&id[..n], b.addr) {
                tracing::debug!("virtio-blk: cannot write id: {e}");
                return ioerr(written);
            }
            id = &id[n..];
            written += n as u32;
        }
        (VIRTIO_BLK_S_OK as u8, written)
    }
}
