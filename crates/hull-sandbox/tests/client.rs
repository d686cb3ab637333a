//! The agent client against a fake agent on a Unix socket: Firecracker's hybrid vsock
//! handshake, hello, a request, stream data, and refusals.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use hull_proto::{
    encode_frame, encode_message, FrameDecoder, Message, Reply, Request, PROTOCOL_VERSION,
};
use hull_sandbox::client::{read_to_end, AgentClient};
use hull_sandbox::hypervisor::Transport;

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hull-client-{name}-{}.sock", std::process::id()))
}

/// The next message, or None when the client hung up.
fn next_message(s: &mut UnixStream, d: &mut FrameDecoder) -> Option<Message> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = d.next_frame().unwrap() {
            return Some(f.message().unwrap());
        }
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return None;
        }
        d.push(&buf[..n]);
    }
}

/// Accepts one connection: expects `CONNECT 1024`, answers `answer`, and if that is an
/// OK, plays an agent of protocol version `version`.
fn fake_agent(path: PathBuf, answer: &'static str, version: u32) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            s.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 1024\n");
        s.write_all(answer.as_bytes()).unwrap();
        if !answer.starts_with("OK") {
            return;
        }
        let mut d = FrameDecoder::new();
        let mut wire = Vec::new();
        let hello = Message::Hello {
            version,
            software: "fake-agent".into(),
            realtime: None,
        };
        encode_message(&hello, &mut wire);
        s.write_all(&wire).unwrap();
        // A client refusing this agent's version hangs up here.
        let Some(Message::Hello { realtime, .. }) = next_message(&mut s, &mut d) else {
            return;
        };
        assert!(realtime.is_some(), "the host sends its clock");
        let Some(Message::Request { id, request }) = next_message(&mut s, &mut d) else {
            return;
        };
        assert_eq!(request, Request::Ping);
        let mut wire = Vec::new();
        encode_frame(7, b"out", &mut wire);
        encode_frame(7, b"", &mut wire);
        let reply = Message::Response {
            id,
            reply: Ok(Reply::Pong),
        };
        encode_message(&reply, &mut wire);
        s.write_all(&wire).unwrap();
        let _ = s.read(&mut [0u8; 1]);
    })
}

#[test]
fn hybrid_vsock_hello_request_and_stream() {
    let path = socket_path("ok");
    let agent = fake_agent(path.clone(), "OK 1024\n", PROTOCOL_VERSION);
    let t = Transport::HybridVsock {
        socket: path.clone(),
        port: 1024,
    };
    let client = AgentClient::connect(&t, Duration::from_secs(10)).unwrap();
    assert_eq!(client.agent, "fake-agent");
    let out = client.subscribe(7);
    assert_eq!(
        client.call(Request::Ping, Duration::from_secs(10)).unwrap(),
        Reply::Pong
    );
    assert_eq!(read_to_end(&out, Duration::from_secs(10)).unwrap(), b"out");
    drop(client);
    agent.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_refused_connect_or_another_version_is_an_error() {
    let path = socket_path("refused");
    let agent = fake_agent(path.clone(), "NO\n", PROTOCOL_VERSION);
    let t = Transport::HybridVsock {
        socket: path.clone(),
        port: 1024,
    };
    let e = AgentClient::connect(&t, Duration::from_millis(300))
        .err()
        .unwrap();
    assert!(e.to_string().contains("NO"), "{e}");
    agent.join().unwrap();

    let agent = fake_agent(path.clone(), "OK 1024\n", PROTOCOL_VERSION + 1);
    let e = AgentClient::connect(&t, Duration::from_secs(10))
        .err()
        .unwrap();
    assert!(e.to_string().contains("version mismatch"), "{e}");
    agent.join().unwrap();
    let _ = std::fs::remove_file(&path);
}
