//! `hull list`: every container under the runtime root with its live status.

use std::path::Path;

use super::Container;
use crate::error::{Error, Result};
use crate::state::Status;

pub fn list(root: &Path) -> Result<Vec<(Container, Status)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(Error::Io {
                what: "cannot read the runtime root",
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(id) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Half-written or foreign directories are skipped, not fatal for the listing.
        if let Ok(c) = Container::load(root, &id) {
            let s = c.status();
            out.push((c, s));
        }
    }
    out.sort_by(|a, b| a.0.state.created.cmp(&b.0.state.created));
    Ok(out)
}
