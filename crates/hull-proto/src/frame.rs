//! Frames: `stream: u32 BE, len: u32 BE, payload[len]`.
//!
//! The decoder is incremental (the agent feeds it whatever a non-blocking read returned)
//! and bounds its memory: a header announcing more than [`MAX_PAYLOAD`] is an error
//! before a byte of it is buffered, so a hostile peer cannot make it allocate.

use crate::ProtoError;

pub type StreamId = u32;

/// The control channel; every other stream carries process I/O.
pub const CONTROL: StreamId = 0;
pub const HEADER_LEN: usize = 8;
/// Large enough for any config.json, small enough that a hostile length costs nothing.
pub const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: StreamId,
    pub payload: Vec<u8>,
}

impl Frame {
    /// An empty data frame: the end of that stream.
    pub fn is_eof(&self) -> bool {
        self.stream != CONTROL && self.payload.is_empty()
    }
}

/// Appends one frame to `out`. Payloads over [`MAX_PAYLOAD`] are split across frames,
/// which is harmless for data streams; control messages never come near it.
pub fn encode_frame(stream: StreamId, payload: &[u8], out: &mut Vec<u8>) {
    let mut chunks = payload.chunks(MAX_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        push_header(stream, 0, out);
        return;
    }
    for chunk in chunks {
        push_header(stream, chunk.len(), out);
        out.extend_from_slice(chunk);
    }
}

fn push_header(stream: StreamId, len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&stream.to_be_bytes());
    // len <= MAX_PAYLOAD < u32::MAX by construction.
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames (compacted lazily).
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `None` when more bytes are needed. After an error the
    /// stream is out of sync and must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        let len = u32::from_be_bytes([avail[4], avail[5], avail[6], avail[7]]);
        if len as usize > MAX_PAYLOAD {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_PAYLOAD,
            });
        }
        let end = HEADER_LEN + len as usize;
        if avail.len() < end {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..end].to_vec();
        self.start += end;
        if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { stream, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = Vec::new();
        encode_frame(0, b"{}", &mut wire);
        encode_frame(7, b"hello", &mut wire);
        encode_frame(7, b"", &mut wire);
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].payload, b"hello");
        assert!(got[2].is_eof());
        assert!(!got[0].is_eof());
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversized_header_is_refused_without_buffering() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        let err = d.next_frame().unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn large_payload_is_split() {
        let big = vec![1u8; MAX_PAYLOAD + 10];
        let mut wire = Vec::new();
        encode_frame(3, &big, &mut wire);
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let a = d.next_frame().unwrap().unwrap();
        let b = d.next_frame().unwrap().unwrap();
        assert_eq!((a.payload.len(), b.payload.len()), (MAX_PAYLOAD, 10));
        assert!(d.next_frame().unwrap().is_none());
    }
}
