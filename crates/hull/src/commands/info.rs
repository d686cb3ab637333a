//! Read-only commands: state, list, ps, events.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hull_lifecycle::Lifecycle;
use hull_runtime::container::{self, Container};
use hull_runtime::state::{Isolation, Status};

use super::out;

pub fn state(lc: &Lifecycle, id: &str) -> Result<i32> {
    let c = lc.load(id)?;
    let status = c.status();
    // The isolation beside the OCI fields (as runc's state has fields of its own): the
    // annotations stay config.json's, as the runtime-spec and hooks see them.
    let mut v = serde_json::to_value(c.state.oci(status))?;
    v["isolation"] = c.state.isolation.as_str().into();
    out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
    Ok(0)
}

/// The name of the user owning the state dir, as runc's OWNER column shows it.
fn owner(c: &Container) -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&c.dir.path).map(|m| m.uid()).unwrap_or(0);
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2].parse() == Ok(uid))
                .map(|f| f[0].to_string())
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

pub fn list(lc: &Lifecycle, format: &str, quiet: bool) -> Result<i32> {
    let all = container::list::list(&lc.root)?;
    if quiet {
        let ids: String = all.iter().map(|(c, _)| format!("{}\n", c.id())).collect();
        out(&ids)?;
        return Ok(0);
    }
    if format == "json" {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|(c, s)| {
                let mut v = serde_json::to_value(c.state.oci(*s)).unwrap_or_default();
                v["owner"] = owner(c).into();
                // A column only here: runc's table stays as engines parse it.
                v["isolation"] = c.state.isolation.as_str().into();
                v
            })
            .collect();
        out(&format!("{}\n", serde_json::to_string(&items)?))?;
        return Ok(0);
    }
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
    for (c, s) in &all {
        let pid = if *s == Status::Stopped {
            0
        } else {
            c.state.pid
        };
        rows.push([
            c.id().to_string(),
            pid.to_string(),
            s.to_string(),
            c.state.bundle.display().to_string(),
            c.state.created.clone(),
            owner(c),
        ]);
    }
    out(&tabulate(&rows))?;
    Ok(0)
}

/// Go's tabwriter as runc configures it (minwidth 12, padding 3, spaces).
fn tabulate(rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max((cell.chars().count() + 3).max(12));
        }
    }
    let mut s = String::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                s += cell;
            } else {
                s += &format!("{cell:<w$}", w = widths[i]);
            }
        }
        s.push('\n');
    }
    s
}

pub fn ps(lc: &Lifecycle, id: &str, format: &str, args: &[String]) -> Result<i32> {
    let c = lc.load(id)?;
    if format == "json" {
        // Engines read these as host pids (docker top filters the host's ps by them):
        // for a VM container, the sandbox's processes on the host (the proxy and the
        // VMM, its cgroup's), as Kata's shim reports the hypervisor; a guest pid there
        // would name an unrelated host process (guest pid 1, the host's init).
        let pids = match c.state.isolation {
            Isolation::Vm => c.state.cgroup.pids()?,
            Isolation::Namespace => lc.pids(&c)?,
        };
        out(&format!("{}\n", serde_json::to_string(&pids)?))?;
        return Ok(0);
    }
    let pids = lc.pids(&c)?;
    if c.state.isolation == Isolation::Vm {
        // The host's ps cannot see into the guest: its pids, as the guest numbers them.
        let mut text = String::from("PID (in the container's VM)\n");
        for p in pids {
            text += &format!("{p}\n");
        }
        out(&text)?;
        return Ok(0);
    }
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let ps = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("cannot run ps")?;
    if !ps.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&ps.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&ps.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column: pass ps options that show it")?;
    let mut shown = format!("{header}\n");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            shown += &format!("{l}\n");
        }
    }
    out(&shown)?;
    Ok(0)
}

pub fn events(lc: &Lifecycle, id: &str, stats: bool, interval: &str) -> Result<i32> {
    if stats {
        out(&format!("{}\n", lc.stats(id)?))?;
        return Ok(0);
    }
    let every = parse_duration(interval)?;
    lc.events(id, every, |line| {
        // A failed write other than a gone reader: the next line tries again.
        let _ = out(&format!("{line}\n"));
    })?;
    Ok(0)
}

/// Go-style durations as runc's --interval takes them: 5s, 500ms, 1m, 1m30s.
fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        bail!("--interval: empty duration");
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end]
            .parse()
            .with_context(|| format!("--interval {s:?}: bad number"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => bail!("--interval {s:?}: unknown unit {u:?} (use ms, s, m, h)"),
        };
        rest = &rest[u_end..];
        total += Duration::from_secs_f64(n * unit);
    }
    if total.is_zero() {
        bail!("--interval must be positive");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn table_like_runc() {
        let rows = vec![
            ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from),
            ["a", "1", "running", "/b", "t", "root"].map(String::from),
        ];
        let t = tabulate(&rows);
        assert!(
            t.starts_with("ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"),
            "{t}"
        );
    }
}
