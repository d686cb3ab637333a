//! --log, --log-format and --debug, as runc has them. Without --log, messages go to
//! stderr.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};

use crate::cli::Global;

pub struct LogTarget {
    /// Logs go to a file: errors are recorded there as well as on stderr.
    pub to_file: bool,
}

pub fn init(g: &Global) -> LogTarget {
    let json = g.log_format.as_deref() == Some("json");
    let file = g
        .log
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    let to_file = file.is_some();
    if file.is_none() && !g.debug && !json {
        // The common case (no --log, no --debug): warnings to stderr without setting up
        // tracing-subscriber, which costs every container start ~1 MiB of RSS here.
        let _ = tracing::subscriber::set_global_default(StderrWarnings);
        return LogTarget { to_file };
    }
    let level = if g.debug { Level::DEBUG } else { Level::WARN };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    match (file, json) {
        (Some(f), true) => builder
            .json()
            .flatten_event(true)
            .with_writer(Mutex::new(f))
            .init(),
        (Some(f), false) => builder.with_writer(Mutex::new(f)).init(),
        (None, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        (None, false) => builder.without_time().with_writer(std::io::stderr).init(),
    }
    LogTarget { to_file }
}

/// Prints warnings and errors as `hull: warning: message key=value`.
struct StderrWarnings;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}{}", self.0);
        } else {
            self.0 += &format!(" {}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for StderrWarnings {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::WARN
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = Line(String::new());
        e.record(&mut line);
        let kind = if *e.metadata().level() == Level::ERROR {
            "error"
        } else {
            "warning"
        };
        eprintln!("hull: {kind}: {}", line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
