//! Signal names as `kill` accepts them: `KILL`, `SIGKILL`, `9`, `SIGRTMIN+3`.

use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// Parses a signal the way runc does; returns the raw number (real-time signals have no
/// `Signal` variant).
pub fn parse(text: &str) -> Result<i32> {
    let bad = || Error::InvalidSignal(text.to_string());
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rt) = name.strip_prefix("RTMIN") {
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    if let Some(rt) = name.strip_prefix("RTMAX") {
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.strip_prefix('-')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMAX() - off;
        return if n >= libc::SIGRTMIN() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    format!("SIG{name}")
        .parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("sigterm").unwrap(), 15);
        assert_eq!(parse("9").unwrap(), 9);
        assert_eq!(parse("SIGRTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        assert!(parse("NOPE").is_err());
        assert!(parse("0").is_err());
        assert!(parse("99").is_err());
    }
}
