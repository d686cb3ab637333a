//! hull-proto: the protocol between hull on the host and hull-agent in the guest.
//!
//! One byte stream (virtio-vsock, or a virtio-serial port) carries frames. A frame names
//! a stream: stream 0 is the control channel, whose frames are JSON [`Message`]s; every
//! other stream carries raw bytes of one process's stdin, stdout or stderr, and an empty
//! frame on it means end of file. The host picks the stream numbers when it creates a
//! process, so both sides know them without a round trip.
//!
//! The agent opens with [`Message::Hello`] (repeating it until answered), the host
//! answers with its own, carrying its clock; a peer whose version differs is refused
//! before anything else is said. The agent goes first because on a virtio console its
//! end is a tty that must be in raw mode before any byte arrives.

mod frame;
mod message;

pub use frame::{encode_frame, Frame, FrameDecoder, StreamId, CONTROL, HEADER_LEN, MAX_PAYLOAD};
pub use message::{
    check_version, ErrorReply, ExtraFd, Layer, Message, MountFile, MountShare, NetInterface,
    NetRoute, ProcessIo, Reply, Request, Rootfs, MAX_EXTRA_FDS, POD_SHM, PROTOCOL_VERSION,
    STDIN_WINDOW,
};

/// Why bytes from the peer were refused.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A frame header announced more payload than any frame may carry.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: u32, max: usize },
    /// A control frame was not a valid message.
    #[error("malformed control message: {0}")]
    BadMessage(#[from] serde_json::Error),
    /// The peer speaks another major version of the protocol.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}; use a hull and a guest built from the same release")]
    Version { ours: u32, theirs: u32 },
    /// The peer sent something that does not fit the conversation so far.
    #[error("protocol violation: {0}")]
    Unexpected(String),
    /// The byte stream failed or ended.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
}

impl Frame {
    /// The control message this frame carries.
    pub fn message(&self) -> Result<Message, ProtoError> {
        if self.stream != CONTROL {
            return Err(ProtoError::Unexpected(format!(
                "data on stream {} where a control message was expected",
                self.stream
            )));
        }
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// Appends the frame carrying `msg` on the control stream to `out`.
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) {
    // Serializing our own types to JSON cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(msg).unwrap_or_default();
    encode_frame(CONTROL, &json, out);
}
