//! `hull run` with VM isolation: the container runs in a micro-VM booted with the hull
//! guest (hull-sandbox), in the foreground.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hull_sandbox::run::{run_foreground, RunOptions};

use crate::cli::{CreateArgs, Global};

/// The annotation that asks for VM isolation from inside the bundle, as Kata's
/// io.katacontainers.* annotations do.
const ANNOTATION: &str = "io.hull.isolation";

/// `--isolation` decides; without it, the bundle's annotation.
pub fn wanted(flag: Option<&str>, bundle: &Path) -> Result<bool> {
    if let Some(f) = flag {
        return Ok(f == "vm");
    }
    let Ok(text) = std::fs::read(bundle.join("config.json")) else {
        // The namespace path reports a missing config properly.
        return Ok(false);
    };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    Ok(v["annotations"][ANNOTATION].as_str() == Some("vm"))
}

pub fn run(g: &Global, a: &CreateArgs, detach: bool) -> Result<i32> {
    if detach {
        bail!("hull run --detach: VM isolation runs in the foreground; drop --detach");
    }
    if a.console_socket.is_some() || a.preserve_fds > 0 {
        bail!("hull run: --console-socket and --preserve-fds do not reach into a VM; the terminal and stdio are relayed by hull");
    }
    hull_runtime::spec::validate_id(&a.id)?;
    // Validates config.json the way the namespace runtime does, before a VM boots.
    hull_runtime::spec::Bundle::load(&a.bundle)?;
    let guest_dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(hull_sandbox::guest::DEFAULT_DIR));
    let opts = RunOptions {
        id: a.id.clone(),
        bundle: std::fs::canonicalize(&a.bundle)
            .with_context(|| format!("bundle {}", a.bundle.display()))?,
        state_root: g.root.clone(),
        guest_dir,
    };
    Ok(run_foreground(&opts)?)
}
