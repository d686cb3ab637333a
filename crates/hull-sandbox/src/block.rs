//! Read-only disk images attached to a running VM over NBD, through the agent's
//! channel: a pod's later containers get their rootfs this way, since a microvm has no
//! disk hotplug and the VM booted with the sandbox's disk only. The guest kernel's nbd
//! client talks to a socket whose bytes the agent relays on one stream of hull-proto;
//! here one thread per image answers its requests from the image file. Everything the
//! guest sends is checked: the request magic and type, and every offset and length
//! against the image's size; anything else ends the image's stream (the guest's reads
//! then fail, the host is not touched).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_proto::{Request, StreamId};

use crate::client::AgentClient;
use crate::error::{Result, SandboxError};

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const REQUEST_LEN: usize = 28;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
/// The most one read may ask for: Linux's nbd caps a request at 65536 sectors.
pub const MAX_READ: u32 = 32 << 20;
const EINVAL: u32 = 22;
const EIO: u32 = 5;
const CALL: Duration = Duration::from_secs(60);

/// One NBD request, as the guest sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdRequest {
    pub kind: u16,
    pub handle: [u8; 8],
    pub offset: u64,
    pub len: u32,
}

/// What the parser makes of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Request(NbdRequest),
    /// Not a request: the stream cannot be trusted from here on.
    Bad(String),
}

/// Takes one request off the front of `buf`, if a whole one is there.
pub fn parse(buf: &mut Vec<u8>) -> Option<Parsed> {
    if buf.len() < REQUEST_LEN {
        return None;
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let magic = be32(&buf[0..4]);
    if magic != REQUEST_MAGIC {
        return Some(Parsed::Bad(format!("request magic {magic:#x}")));
    }
    let kind = u16::from_be_bytes([buf[6], buf[7]]);
    let mut handle = [0u8; 8];
    handle.copy_from_slice(&buf[8..16]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&buf[16..24]);
    let req = NbdRequest {
        kind,
        handle,
        offset: u64::from_be_bytes(off),
        len: be32(&buf[24..28]),
    };
    buf.drain(..REQUEST_LEN);
    Some(Parsed::Request(req))
}

/// The reply to a read of an image of `size` bytes: the data, or an error for a read
/// outside it.
pub fn answer(req: &NbdRequest, image: &File, size: u64) -> Vec<u8> {
    let header = |error: u32, extra: usize| {
        let mut out = Vec::with_capacity(16 + extra);
        out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&req.handle);
        out
    };
    let inside = req
        .offset
        .checked_add(u64::from(req.len))
        .is_some_and(|end| end <= size);
    if req.kind != CMD_READ || !inside || req.len > MAX_READ {
        return header(EINVAL, 0);
    }
    let len = req.len as usize;
    let mut out = header(0, len);
    out.resize(16 + len, 0);
    match image.read_exact_at(&mut out[16..], req.offset) {
        Ok(()) => out,
        Err(e) => {
            tracing::warn!("image read at {} (+{len}): {e}", req.offset);
            header(EIO, 0)
        }
    }
}

/// Serves one image's stream until the guest disconnects or breaks the protocol.
fn serve(agent: &AgentClient, stream: StreamId, rx: Receiver<Vec<u8>>, image: File, size: u64) {
    let mut buf = Vec::new();
    while let Ok(chunk) = rx.recv() {
        if chunk.is_empty() {
            break;
        }
        buf.extend_from_slice(&chunk);
        while let Some(parsed) = parse(&mut buf) {
            let req = match parsed {
                // The guest's nbd waits for the server to close the connection (its
                // DO_IT returns then): the end of the stream closes the router's socket.
                Parsed::Request(r) if r.kind == CMD_DISC => {
                    let _ = agent.send_data(stream, &[]);
                    return agent.unsubscribe(stream);
                }
                Parsed::Request(r) => r,
                Parsed::Bad(why) => {
                    tracing::warn!("image stream {stream}: {why}: ending it");
                    let _ = agent.send_data(stream, &[]);
                    return agent.unsubscribe(stream);
                }
            };
            if agent
                .send_data(stream, &answer(&req, &image, size))
                .is_err()
            {
                return;
            }
        }
    }
    agent.unsubscribe(stream);
}

struct Entry {
    name: String,
    stream: StreamId,
    refs: usize,
}

/// The images attached to one VM, each once however many containers use it.
#[derive(Default)]
pub struct Images {
    by_file: Mutex<HashMap<(u64, u64), Entry>>,
    next: AtomicU32,
}

impl Images {
    /// Attaches `image` (or counts one more user of it, when attached already) and
    /// returns its name in the guest, where the agent has mounted it.
    pub fn attach(&self, agent: &Arc<AgentClient>, image: File) -> Result<String> {
        let meta = image
            .metadata()
            .map_err(|e| SandboxError::Vm(format!("rootfs image: {e}")))?;
        let key = (meta.dev(), meta.ino());
        let mut map = self.by_file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&key) {
            e.refs += 1;
            return Ok(e.name.clone());
        }
        let name = format!("img{}", self.next.fetch_add(1, Ordering::Relaxed));
        let stream = agent.stream();
        let rx = agent.subscribe(stream);
        let size = meta.len();
        let server = agent.clone();
        std::thread::Builder::new()
            .name(format!("nbd-{name}"))
            .spawn(move || serve(&server, stream, rx, image, size))
            .map_err(|e| SandboxError::Vm(format!("spawn the image server: {e}")))?;
        let request = Request::AttachImage {
            image: name.clone(),
            stream,
            size,
        };
        if let Err(e) = agent.call(request, CALL) {
            agent.unsubscribe(stream);
            return Err(e);
        }
        map.insert(
            key,
            Entry {
                name: name.clone(),
                stream,
                refs: 1,
            },
        );
        Ok(name)
    }

    /// One user less of `name`; the last one detaches it.
    pub fn release(&self, agent: &AgentClient, name: &str) {
        let mut map = self.by_file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = map.iter().find(|(_, e)| e.name == name).map(|(k, _)| *k) else {
            return;
        };
        let entry = map.get_mut(&key).expect("found above");
        entry.refs -= 1;
        if entry.refs > 0 {
            return;
        }
        let stream = entry.stream;
        map.remove(&key);
        let detach = Request::DetachImage { image: name.into() };
        if let Err(e) = agent.call(detach, CALL) {
            tracing::warn!("detach {name}: {e}");
        }
        agent.unsubscribe(stream);
    }

    /// How many images are attached (for tests and reports).
    pub fn count(&self) -> usize {
        self.by_file.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u16, offset: u64, len: u32) -> Vec<u8> {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(b"handle!!");
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn image() -> (File, std::path::PathBuf) {
        let p = std::env::temp_dir().join(format!("hull-block-{}", crate::random_u64()));
        std::fs::write(&p, (0..8192u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
        (File::open(&p).unwrap(), p)
    }

    #[test]
    fn reads_inside_the_image_are_answered_with_its_bytes() {
        let (f, p) = image();
        let mut buf = request(CMD_READ, 4096, 16);
        buf.extend_from_slice(&request(CMD_READ, 0, 4)[..10]);
        let Some(Parsed::Request(r)) = parse(&mut buf) else {
            panic!()
        };
        assert_eq!(buf.len(), 10, "a partial request stays for later");
        assert_eq!(parse(&mut buf), None);
        let reply = answer(&r, &f, 8192);
        assert_eq!(&reply[0..4], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
        assert_eq!(&reply[8..16], b"handle!!");
        assert_eq!(
            &reply[16..],
            &(4096..4112u32).map(|i| i as u8).collect::<Vec<_>>()
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn hostile_requests_get_errors_never_bytes_outside_the_image() {
        let (f, p) = image();
        for (kind, offset, len) in [
            (CMD_READ, 8190, 4),
            (CMD_READ, u64::MAX - 1, 4),
            (CMD_READ, 0, MAX_READ + 1),
            (1, 0, 4),
        ] {
            let mut buf = request(kind, offset, len);
            let Some(Parsed::Request(r)) = parse(&mut buf) else {
                panic!()
            };
            let reply = answer(&r, &f, 8192);
            assert_eq!(reply.len(), 16, "{kind} {offset} {len}");
            assert_eq!(&reply[4..8], &EINVAL.to_be_bytes());
        }
        let mut bad = request(CMD_READ, 0, 4);
        bad[0] = 0;
        assert!(matches!(parse(&mut bad), Some(Parsed::Bad(_))));
        std::fs::remove_file(p).unwrap();
    }
}
