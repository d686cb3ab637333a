//! hull-proto from both ends: the host's reader (hull-sandbox's client, which reads what
//! the agent in the guest sends) and the agent's decoding of what the host sends.

use std::path::Path;

use hull_proto::{check_version, FrameDecoder, Message, Request, CONTROL};

use crate::input::Input;

/// Bytes from a hostile guest's agent, read by the host's reader thread: it routes
/// replies and output to whoever waits, and ends every wait once the stream ends.
pub fn host(data: &[u8]) {
    if let Err(e) = hull_sandbox::client::fuzz_agent_bytes(data) {
        panic!("the host's reader: {e}");
    }
}

/// Bytes from the host as the agent decodes them, cut where the first byte says (the
/// agent feeds its decoder whatever a non-blocking read returned), and the JSON that
/// requests carry parsed as the agent parses it.
pub fn agent(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(cut) = input.u8() else {
        return;
    };
    let rest = input.up_to(data.len());
    let mut decoder = FrameDecoder::new();
    for chunk in rest.chunks(usize::from(cut % 64) + 1) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) if frame.stream == CONTROL => match frame.message() {
                    Ok(msg) => handle(msg),
                    Err(e) => assert!(!e.to_string().is_empty()),
                },
                Ok(Some(_)) => {}
                Ok(None) => break,
                // The agent drops the connection: the stream is out of sync.
                Err(e) => return assert!(e.to_string().contains("exceeds")),
            }
        }
        assert!(decoder.pending() <= rest.len());
    }
}

fn handle(msg: Message) {
    let config = Path::new("/nonexistent/hull-fuzz-agent/config.json");
    match msg {
        Message::Hello { version, .. } => {
            if let Err(e) = check_version(version) {
                assert!(e.to_string().contains("version"), "{e}");
            }
        }
        Message::Request { request, .. } => match request {
            Request::CreateContainer { config: text, .. } => {
                // The agent writes the config into a bundle that hull-runtime loads.
                if let Err(e) = hull_runtime::spec::parse(text.as_bytes(), config) {
                    assert!(e.to_string().contains("config.json"), "{e}");
                }
            }
            Request::Exec { process, .. } => {
                let _ = serde_json::from_str::<oci_spec::runtime::Process>(&process);
            }
            Request::Update { resources, .. } => {
                let _ = serde_json::from_str::<oci_spec::runtime::LinuxResources>(&resources);
            }
            _ => {}
        },
        Message::Response { .. } | Message::Consumed { .. } => {}
    }
}
