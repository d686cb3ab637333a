//! The shim's log: its stderr, which the daemon points at the bundle's `log` fifo that
//! containerd copies into its own log. logrus's text shape, as Go shims write it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// RFC 3339 in UTC, as logrus writes `time`.
fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

fn line(level: &str, msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // A full or closed fifo (containerd gone) must never stall or end the shim.
    let _ = writeln!(
        std::io::stderr(),
        "time=\"{}\" level={level} msg={msg:?} runtime=io.containerd.hull.v2",
        rfc3339(now)
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

#[cfg(test)]
mod tests {
    #[test]
    fn times_as_logrus_writes_them() {
        let t = std::time::Duration::new(1_796_421_261, 5);
        assert_eq!(super::rfc3339(t), "2026-12-04T21:54:21.000000005Z");
        assert_eq!(
            super::rfc3339(std::time::Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
