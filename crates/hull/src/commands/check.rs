//! `hull check`: what this host offers for VM isolation, like `kata-runtime check`.
//! Exits 0 when VM mode can run at all (QEMU installed, or hardware KVM), else 1.

use anyhow::Result;

pub fn check(json: bool) -> Result<i32> {
    let report = hull_sandbox::check::probe();
    if json {
        super::out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        super::out(&report.to_string())?;
    }
    match report.missing() {
        None => Ok(0),
        Some(what) => {
            eprintln!("hull: {what}");
            Ok(1)
        }
    }
}
