//! --log, --log-format and --debug, as runc has them. Engines parse runc's logrus lines
//! (podman reads `msg` from the JSON form), so hull writes the same shapes:
//!   json: {"level":"error","msg":"...","time":"2026-11-23T17:00:00.1Z"}
//!   text: time="2026-11-23T17:00:00.1Z" level=error msg="..."
//! Without --log and --debug, warnings go to stderr as `hull: warning: ...`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata};

use crate::cli::Global;

pub struct LogTarget {
    /// Logs go to a file: errors are recorded there as well as on stderr.
    pub to_file: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `hull: warning: ...` for people at a terminal.
    Plain,
    Text,
    Json,
}

struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
    max: Level,
}

pub fn init(g: &Global) -> LogTarget {
    let file = g
        .log
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    let to_file = file.is_some();
    let json = g.log_format.as_deref() == Some("json");
    let format = match (json, to_file || g.debug) {
        (true, _) => Format::Json,
        (false, true) => Format::Text,
        (false, false) => Format::Plain,
    };
    let out: Box<dyn Write + Send> = match file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stderr()),
    };
    let logger = Logger {
        out: Mutex::new(out),
        format,
        max: if g.debug { Level::DEBUG } else { Level::WARN },
    };
    let _ = tracing::subscriber::set_global_default(logger);
    LogTarget { to_file }
}

/// The message and the other fields of one event.
#[derive(Default)]
struct Fields {
    msg: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.msg = value;
        } else {
            self.rest.push((field.name(), value));
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        _ => "debug",
    }
}

fn line(format: Format, level: Level, f: &Fields) -> String {
    let level = level_name(level);
    match format {
        Format::Plain => {
            let mut s = format!("hull: {level}: {}", f.msg);
            for (k, v) in &f.rest {
                s += &format!(" {k}={v}");
            }
            s
        }
        Format::Text => {
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let mut s = format!(
                "time={} level={level} msg={}",
                q(&hull_runtime::state::rfc3339_now()),
                q(&f.msg)
            );
            for (k, v) in &f.rest {
                s += &format!(" {k}={}", q(v));
            }
            s
        }
        Format::Json => {
            let mut m = serde_json::Map::new();
            m.insert("level".into(), level.into());
            m.insert("msg".into(), f.msg.clone().into());
            m.insert("time".into(), hull_runtime::state::rfc3339_now().into());
            for (k, v) in &f.rest {
                m.insert((*k).into(), v.clone().into());
            }
            serde_json::Value::Object(m).to_string()
        }
    }
}

impl tracing::Subscriber for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut f = Fields::default();
        e.record(&mut f);
        let text = line(self.format, *e.metadata().level(), &f);
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{text}");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrus_shapes() {
        let f = Fields {
            msg: "container \"x\" does not exist".into(),
            rest: vec![("id", "x".into())],
        };
        let j: serde_json::Value =
            serde_json::from_str(&line(Format::Json, Level::ERROR, &f)).unwrap();
        assert_eq!(j["level"], "error");
        assert_eq!(j["msg"], "container \"x\" does not exist");
        assert_eq!(j["id"], "x");
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
        let t = line(Format::Text, Level::WARN, &f);
        assert!(
            t.starts_with("time=\"")
                && t.contains(" level=warning msg=\"container \\\"x\\\" does not exist\" id=\"x\""),
            "{t}"
        );
        assert_eq!(
            line(Format::Plain, Level::WARN, &f),
            "hull: warning: container \"x\" does not exist id=x"
        );
    }
}
