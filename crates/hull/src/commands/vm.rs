//! `hull run` with VM isolation: the container runs in a micro-VM booted with the hull
//! guest (hull-sandbox), in the foreground.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hull_runtime::spec::Bundle;
use hull_sandbox::run::{run_foreground, RunOptions};

use crate::cli::{CreateArgs, Global};

/// The annotation that asks for VM isolation from inside the bundle, as Kata's
/// io.katacontainers.* annotations do.
const ANNOTATION: &str = "io.hull.isolation";

/// `--isolation` decides; without it, the bundle's annotation.
pub fn wanted(flag: Option<&str>, bundle: &Bundle) -> bool {
    match flag {
        Some(f) => f == "vm",
        None => bundle
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .is_some_and(|v| v == "vm"),
    }
}

/// `a`'s id is validated and its bundle loaded (and so checked) by the caller.
pub fn run(g: &Global, a: &CreateArgs, detach: bool) -> Result<i32> {
    if detach {
        bail!("hull run --detach: VM isolation runs in the foreground; drop --detach");
    }
    if a.console_socket.is_some() || a.preserve_fds > 0 {
        bail!("hull run: --console-socket and --preserve-fds do not reach into a VM; the terminal and stdio are relayed by hull");
    }
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
