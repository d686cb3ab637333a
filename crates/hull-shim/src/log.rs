//! The shim's log: its stderr, which the daemon points at the bundle's `log` fifo that
//! containerd copies into its own log. logrus's text shape, as Go shims write it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

fn line(level: &str, msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // A full or closed fifo (containerd gone) must never stall or end the shim.
    let _ = writeln!(
        std::io::stderr(),
        "time=\"{}.{:09}\" level={level} msg={:?} runtime=io.containerd.hull.v2",
        now.as_secs(),
        now.subsec_nanos(),
        msg
    );
}

pub fn debug(msg: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        line("debug", msg);
    }
}

pub fn info(msg: &str) {
    line("info", msg);
}

pub fn warn(msg: &str) {
    line("warning", msg);
}
