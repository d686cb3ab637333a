//! virtio-vsock packets (virtio 1.2 §5.10.6): the 44-byte little-endian header, and
//! moving packets between descriptor chains and the device.
//!
//! Layout accepted. A chain is read (tx) or written (rx) as one byte stream across its
//! buffers, so the header may span descriptors or share one with the payload:
//! - tx: Linux (6.1 and later) puts the header in one descriptor and the payload in the
//!   next; any split is accepted. Every buffer must be device-readable, the chain must
//!   hold at least a header, `len` must be at most `MAX_PAYLOAD`, and the chain must
//!   hold exactly `HDR_LEN + len` bytes: a driver whose `len` disagrees with what it
//!   put in the ring is broken, and guessing which one is right would corrupt a
//!   stream.
//! - rx: Linux 6.1 gives two writable descriptors (header, then a 4 KiB buffer); 6.2
//!   and later give one writable buffer of header room plus 4 KiB. Either works: every
//!   buffer must be device-writable and the chain must have room for a header; the
//!   payload fills what follows, up to `MAX_PAYLOAD`.

use vm_memory::{Address, Bytes, GuestMemoryError, GuestMemoryMmap};

use super::super::queue::Buffer;

pub const HDR_LEN: usize = 44;
/// The largest payload the device reads from or writes to one chain (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). Guest `len`s above it are refused before any use.
pub const MAX_PAYLOAD: usize = 64 << 10;

pub const HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a tx chain is not a packet.
#[derive(Debug, thiserror::Error)]
pub enum TxFault {
    #[error("tx chain has a device-writable buffer")]
    WritableBuffer,
    #[error("tx chain holds {0} bytes, less than a header")]
    ShortHeader(u64),
    #[error("payload length {0} is over the {MAX_PAYLOAD}-byte cap")]
    LenOverCap(u32),
    #[error("header says {len} payload bytes, the chain holds {present}")]
    LenMismatch { len: u32, present: u64 },
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

fn total_len(chain: &[Buffer]) -> u64 {
    chain.iter().map(|b| u64::from(b.len)).sum()
}

/// Reads a tx packet: the header, and its payload into `payload[..len]` (`payload` is
/// at least MAX_PAYLOAD bytes). On a fault after the header was read the header comes
/// back with it, so the caller can reset the connection it names.
pub fn read_tx(
    memory: &GuestMemoryMmap,
    chain: &[Buffer],
    payload: &mut [u8],
) -> Result<Header, (Option<Header>, TxFault)> {
    if chain.iter().any(|b| b.writable) {
        return Err((None, TxFault::WritableBuffer));
    }
    let present = total_len(chain);
    if present < HDR_LEN as u64 {
        return Err((None, TxFault::ShortHeader(present)));
    }
    let mut raw = [0u8; HDR_LEN];
    read_at(memory, chain, 0, &mut raw).map_err(|e| (None, e.into()))?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len as usize > MAX_PAYLOAD || hdr.len as usize > payload.len() {
        return Err((Some(hdr), TxFault::LenOverCap(hdr.len)));
    }
    if present - HDR_LEN as u64 != u64::from(hdr.len) {
        let fault = TxFault::LenMismatch {
            len: hdr.len,
            present: present - HDR_LEN as u64,
        };
        return Err((Some(hdr), fault));
    }
    let dst = &mut payload[..hdr.len as usize];
    read_at(memory, chain, HDR_LEN as u64, dst).map_err(|e| (Some(hdr), e.into()))?;
    Ok(hdr)
}

/// Payload room of an rx chain (capped at MAX_PAYLOAD), or None if the chain is not a
/// usable rx buffer: a device-readable buffer, or no room for a header.
pub fn rx_capacity(chain: &[Buffer]) -> Option<usize> {
    if chain.iter().any(|b| !b.writable) {
        tracing::debug!("virtio-vsock: rx chain has a device-readable buffer");
        return None;
    }
    let total = total_len(chain);
    if total < HDR_LEN as u64 {
        tracing::debug!(total, "virtio-vsock: rx chain too small for a header");
        return None;
    }
    Some(((total - HDR_LEN as u64).min(MAX_PAYLOAD as u64)) as usize)
}

/// Writes a packet into an rx chain already checked by `rx_capacity`; returns the used
/// length.
pub fn write_rx(
    memory: &GuestMemoryMmap,
    chain: &[Buffer],
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, GuestMemoryError> {
    write_at(memory, chain, 0, &hdr.to_bytes())?;
    write_at(memory, chain, HDR_LEN as u64, payload)?;
    Ok((HDR_LEN + payload.len()) as u32)
}

/// Reads `dst.len()` bytes starting `offset` bytes into the chain's byte stream. The
/// caller checked the chain holds them.
fn read_at(
    memory: &GuestMemoryMmap,
    chain: &[Buffer],
    mut offset: u64,
    mut dst: &mut [u8],
) -> Result<(), GuestMemoryError> {
    for b in chain {
        if dst.is_empty() {
            break;
        }
        let len = u64::from(b.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(dst.len() as u64) as usize;
        let (now, rest) = dst.split_at_mut(n);
        // Inside guest memory: `walk` checked every buffer.
        memory.read_slice(now, b.addr.unchecked_add(offset))?;
        dst = rest;
        offset = 0;
    }
    Ok(())
}

fn write_at(
    memory: &GuestMemoryMmap,
    chain: &[Buffer],
    mut offset: u64,
    mut src: &[u8],
) -> Result<(), GuestMemoryError> {
    for b in chain {
        if src.is_empty() {
            break;
        }
        let len = u64::from(b.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(src.len() as u64) as usize;
        memory.write_slice(&src[..n], b.addr.unchecked_add(offset))?;
        src = &src[n..];
        offset = 0;
    }
    Ok(())
}
