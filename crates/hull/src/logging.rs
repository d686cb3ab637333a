//! --log, --log-format and --debug, as runc has them. Without --log, messages go to
//! stderr.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::Level;

use crate::cli::Global;

pub struct LogTarget {
    /// Logs go to a file: errors are recorded there as well as on stderr.
    pub to_file: bool,
}

pub fn init(g: &Global) -> LogTarget {
    let level = if g.debug { Level::DEBUG } else { Level::WARN };
    let json = g.log_format.as_deref() == Some("json");
    let file = g
        .log
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    let to_file = file.is_some();
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
