//! Container root filesystems as disk images: an erofs image of the bundle's rootfs
//! (read-only and compact; the agent lays a tmpfs overlay on top).

use std::path::Path;
use std::process::Command;

use crate::error::{Result, SandboxError};

pub fn erofs_from_dir(dir: &Path, image: &Path) -> Result<()> {
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(image)
        .arg(dir)
        .output()
        .map_err(|e| {
            SandboxError::Tool(format!(
                "cannot run mkfs.erofs: {e} (apt-get install erofs-utils)"
            ))
        })?;
    if !out.status.success() {
        return Err(SandboxError::Tool(format!(
            "mkfs.erofs {} from {} failed: {}",
            image.display(),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
