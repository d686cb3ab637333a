//! The processes' stdin: what the host sends is written without ever blocking the
//! agent's loop. A process that does not read its stdin would otherwise stop the
//! agent in `write` while that process waits for the agent to drain its stdout: a
//! deadlock (`sh -c 'head -c 1M /dev/zero; wc -c'` with a megabyte of input).
//!
//! Bytes the pipe does not take at once wait here, and the host learns of every byte
//! taken (written, or dropped because the process closed its stdin) through
//! `Message::Consumed`, so it never has more than `STDIN_WINDOW` in flight per stream.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::Result;
use hull_proto::{StreamId, STDIN_WINDOW};

use crate::containers::Key;
use crate::io::set_nonblocking;

struct Pipe {
    fd: File,
    key: Key,
    pending: VecDeque<u8>,
    /// The host sent EOF: close once `pending` is written.
    eof: bool,
}

#[derive(Default)]
pub struct Stdins {
    pipes: HashMap<StreamId, Pipe>,
    /// Bytes taken and not yet reported to the host, by stream.
    consumed: BTreeMap<StreamId, u64>,
}

impl Stdins {
    pub fn insert(&mut self, stream: StreamId, fd: OwnedFd, key: Key) -> Result<()> {
        set_nonblocking(&fd)?;
        let pipe = Pipe {
            fd: File::from(fd),
            key,
            pending: VecDeque::new(),
            eof: false,
        };
        self.pipes.insert(stream, pipe);
        Ok(())
    }

    pub fn contains(&self, stream: StreamId) -> bool {
        self.pipes.contains_key(&stream)
    }

    /// A data frame from the host; an empty one is the end of the stream.
    pub fn receive(&mut self, stream: StreamId, payload: &[u8]) {
        let Some(pipe) = self.pipes.get_mut(&stream) else {
            // Closed already: the bytes are taken, by dropping them.
            self.take(stream, payload.len());
            return;
        };
        if payload.is_empty() {
            pipe.eof = true;
        } else if pipe.pending.len() as u64 + payload.len() as u64 > STDIN_WINDOW {
            tracing::warn!(
                "stdin stream {stream}: the host sent past its window of {STDIN_WINDOW} bytes; closing it"
            );
            self.close(stream);
            self.take(stream, payload.len());
            return;
        } else {
            pipe.pending.extend(payload);
        }
        self.flush(stream);
    }

    /// Writes what the pipe takes now; closes it at EOF or when the reader is gone.
    pub fn flush(&mut self, stream: StreamId) {
        let Some(pipe) = self.pipes.get_mut(&stream) else {
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while !pipe.pending.is_empty() {
            let (front, _) = pipe.pending.as_slices();
            match pipe.fd.write(front) {
                Ok(n) => {
                    pipe.pending.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // The process closed its stdin: the rest goes, as with a pipe.
                    tracing::debug!("stdin stream {stream}: {e}");
                    broken = true;
                    break;
                }
            }
        }
        let done = broken || (pipe.eof && pipe.pending.is_empty());
        self.take(stream, written);
        if done {
            self.close(stream);
        }
    }

    /// Closes the stdin of every process `matches` picks (exited, deleted, CloseStdin).
    pub fn close_where(&mut self, matches: impl Fn(&Key) -> bool) {
        let streams: Vec<StreamId> = self
            .pipes
            .iter()
            .filter(|(_, p)| matches(&p.key))
            .map(|(s, _)| *s)
            .collect();
        for s in streams {
            self.close(s);
        }
    }

    fn close(&mut self, stream: StreamId) {
        if let Some(pipe) = self.pipes.remove(&stream) {
            // A socket pair (a preserved fd read and written) has another copy of this
            // end, for its output: only a shutdown gives the process its EOF.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&pipe.fd),
                nix::sys::socket::Shutdown::Write,
            );
            self.take(stream, pipe.pending.len());
        }
    }

    fn take(&mut self, stream: StreamId, bytes: usize) {
        if bytes > 0 {
            *self.consumed.entry(stream).or_default() += bytes as u64;
        }
    }

    /// The pipes with bytes waiting, to poll for POLLOUT.
    pub fn waiting(&self) -> impl Iterator<Item = (StreamId, BorrowedFd<'_>)> {
        self.pipes
            .iter()
            .filter(|(_, p)| !p.pending.is_empty())
            .map(|(s, p)| (*s, p.fd.as_fd()))
    }

    /// What to report to the host as consumed since the last call.
    pub fn take_consumed(&mut self) -> BTreeMap<StreamId, u64> {
        std::mem::take(&mut self.consumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), w)
    }

    fn key() -> Key {
        ("c".into(), None)
    }

    #[test]
    fn a_full_pipe_never_blocks_and_every_byte_arrives_in_order() {
        let (mut reader, w) = pipe();
        let mut s = Stdins::default();
        s.insert(5, w, key()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(50_000) {
            s.receive(5, chunk);
        }
        // A pipe holds 64 KiB: the rest waits, and only what was written is reported.
        let first = s.take_consumed()[&5];
        assert!(first < data.len() as u64, "{first}");
        assert_eq!(s.waiting().count(), 1);
        s.receive(5, b"");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < data.len() {
            let n = reader.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            s.flush(5);
        }
        assert_eq!(got, data);
        // EOF after the last byte: the pipe is closed.
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
        assert_eq!(first + s.take_consumed()[&5], data.len() as u64);
        assert!(!s.contains(5));
    }

    #[test]
    fn bytes_for_a_closed_stdin_are_reported_consumed() {
        let (reader, w) = pipe();
        let mut s = Stdins::default();
        s.insert(7, w, key()).unwrap();
        drop(reader);
        s.receive(7, b"abc");
        assert!(!s.contains(7), "EPIPE closes it");
        s.receive(7, b"defg");
        assert_eq!(s.take_consumed()[&7], 7);
    }

    #[test]
    fn closing_a_process_stdin_reports_what_was_waiting() {
        let (_reader, w) = pipe();
        let mut s = Stdins::default();
        s.insert(9, w, key()).unwrap();
        s.receive(9, &vec![1u8; 100_000]);
        s.close_where(|k| k.0 == "c");
        assert_eq!(s.take_consumed()[&9], 100_000);
        assert_eq!(s.waiting().count(), 0);
    }

    #[test]
    fn a_host_past_its_window_loses_the_stream_not_the_agent() {
        let (_reader, w) = pipe();
        let mut s = Stdins::default();
        s.insert(3, w, key()).unwrap();
        for _ in 0..10 {
            s.receive(3, &vec![0u8; 64 * 1024]);
        }
        assert!(!s.contains(3));
        assert_eq!(s.take_consumed()[&3], 10 * 64 * 1024);
    }
}
