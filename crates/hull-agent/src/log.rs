//! Logs go to the console (the VM's serial port), never to fds 0-2: those are lent to
//! containers while the agent creates them.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};

struct ConsoleLogger {
    out: Mutex<File>,
    max: Level,
}

/// The kernel starts init with the console on fds 0-2; a close-on-exec copy of fd 2
/// stays the agent's log when those are lent out.
pub fn init() {
    let Ok(fd) = nix::fcntl::fcntl(std::io::stderr(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
    else {
        return;
    };
    // SAFETY: fcntl just returned this fd, owned by nobody else.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let debug = std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "hull.debug"))
        .unwrap_or(false);
    let logger = ConsoleLogger {
        out: Mutex::new(file),
        max: if debug { Level::DEBUG } else { Level::INFO },
    };
    let _ = tracing::subscriber::set_global_default(logger);
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl tracing::Subscriber for ConsoleLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = Line(format!("hull-agent: {}: ", e.metadata().level()));
        e.record(&mut line);
        line.0.push('\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.0.as_bytes());
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
