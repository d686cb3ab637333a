//! `hull vmm --config FILE`: hull's own micro-VM monitor, in the foreground. Exits 0
//! when the guest resets or powers off, 128+N on stop signal N, 1 on an error.

use std::path::Path;

use anyhow::{Context, Result};
use hull_vmm::config::VmConfig;
use hull_vmm::machine::Machine;

pub fn run(config: &Path) -> Result<i32> {
    let config = VmConfig::from_file(config)?;
    let machine = Machine::build(&config).context("building the VM")?;
    tracing::debug!(cmdline = %machine.cmdline, "booting");
    let outcome = machine.run().context("running the VM")?;
    Ok(outcome.exit_code())
}
