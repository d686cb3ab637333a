//! `hull update`: resources from -r FILE (runtime-spec LinuxResources JSON) and/or flags.

use std::io::Read;

use anyhow::{bail, Context, Result};
use hull_lifecycle::Lifecycle;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use crate::cli::UpdateArgs;

pub fn update(lc: &Lifecycle, a: UpdateArgs) -> Result<i32> {
    let mut v: Value = match &a.resources {
        Some(p) => {
            let mut text = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read -r {}", p.display()))?;
            }
            serde_json::from_str(&text).context("-r: not a LinuxResources JSON object")?
        }
        None => json!({}),
    };
    let mut set = |section: &str, key: &str, val: Value| {
        if !v[section].is_object() {
            v[section] = json!({});
        }
        v[section][key] = val;
    };
    if let Some(w) = a.blkio_weight {
        set("blockIO", "weight", w.into());
    }
    if let Some(x) = a.cpu_period {
        set("cpu", "period", x.into());
    }
    if let Some(x) = a.cpu_quota {
        set("cpu", "quota", x.into());
    }
    if let Some(x) = a.cpu_share {
        set("cpu", "shares", x.into());
    }
    if let Some(x) = a.cpu_rt_period {
        set("cpu", "realtimePeriod", x.into());
    }
    if let Some(x) = a.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", x.into());
    }
    if let Some(x) = &a.cpuset_cpus {
        set("cpu", "cpus", x.clone().into());
    }
    if let Some(x) = &a.cpuset_mems {
        set("cpu", "mems", x.clone().into());
    }
    if let Some(x) = &a.memory {
        set("memory", "limit", parse_bytes(x)?.into());
    }
    if let Some(x) = &a.memory_reservation {
        set("memory", "reservation", parse_bytes(x)?.into());
    }
    if let Some(x) = &a.memory_swap {
        set("memory", "swap", parse_bytes(x)?.into());
    }
    if let Some(x) = a.pids_limit {
        set("pids", "limit", x.into());
    }
    let res: LinuxResources =
        serde_json::from_value(v).context("resources do not form a valid LinuxResources")?;
    lc.update(&a.id, &res)?;
    Ok(0)
}

/// Bytes with an optional k/m/g/t suffix (binary, as runc's RAMInBytes); -1 is unlimited.
fn parse_bytes(s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size (e.g. 64m, 1g, 1048576)"))?;
    if n < 0.0 {
        bail!("{s:?}: sizes are positive, or -1 for no limit");
    }
    Ok((n * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("lots").is_err());
    }
}
