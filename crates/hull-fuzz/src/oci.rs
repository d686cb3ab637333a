//! The files hull reads from disk: a bundle's config.json and a container's state file.

use std::path::Path;

use hull_runtime::state::{ContainerState, Status};
use oci_spec::runtime::Spec;

/// An error must name the file it is about and say something beyond that.
fn assert_named(err: &str, file: &Path) {
    let name = file.display().to_string();
    assert!(
        err.contains(&name) && err.len() > name.len() + 8,
        "an error that does not say what is wrong: {err:?}"
    );
}

/// config.json as `create` reads it (parse and validate), and as the VM path hands it to
/// the guest. A spec that passes is also written into the state file by `create` and
/// read back by every later command, so it must survive that round trip.
pub fn config(data: &[u8]) {
    let file = Path::new("/nonexistent/hull-fuzz-bundle/config.json");
    match hull_runtime::spec::parse(data, file) {
        Ok(spec) => {
            let text = serde_json::to_vec(&spec).expect("a parsed spec serializes");
            if let Err(e) = serde_json::from_slice::<Spec>(&text) {
                panic!("a spec hull accepted does not read back from its state file: {e}");
            }
        }
        Err(e) => assert_named(&e.to_string(), file),
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bundle = file.parent().unwrap_or(file);
    if let Err(e) = hull_sandbox::container::guest_config::for_guest(text, bundle) {
        assert_named(&e.to_string(), file);
    }
}

/// A state file as `state`, `list` and every verb read it, and what `state` and
/// `list --format json` then print.
pub fn state(data: &[u8]) {
    let file = Path::new("/nonexistent/hull-fuzz-root/c/state.json");
    let s = match ContainerState::parse(data, file) {
        Ok(s) => s,
        Err(e) => return assert_named(&e.to_string(), file),
    };
    for status in [
        Status::Creating,
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Stopped,
    ] {
        let oci = serde_json::to_string(&s.oci(status)).expect("the OCI state serializes");
        assert!(oci.contains("\"ociVersion\""));
    }
    let _ = (s.bundle.display().to_string(), s.isolation.as_str());
    let text = serde_json::to_vec(&s).expect("a state serializes");
    if let Err(e) = ContainerState::parse(&text, file) {
        panic!("a state hull read does not read back once written: {e}");
    }
}
