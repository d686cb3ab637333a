//! `hull vmm --config FILE`: hull's own micro-VM monitor, in the foreground. Exits 0
//! when the guest resets or powers off, 128+N on stop signal N, 1 on an error.
//! The kernel's teardown of the VM is left to a helper that outlives hull by a few
//! milliseconds (`hull_vmm::teardown`) unless the config turns that off.

use std::path::Path;

use anyhow::{Context, Result};
use hull_vmm::config::VmConfig;
use hull_vmm::machine::Machine;

pub fn run(config: &Path) -> Result<i32> {
    let config = VmConfig::from_file(config)?;
    let mut machine = Machine::build(&config).context("building the VM")?;
    // This process exits right after the VM: the kernel's teardown of the VM (SRCU
    // grace periods, freeing guest memory) need not hold up whoever waits for it.
    if config.deferred_teardown {
        machine.defer_teardown();
    }
    machine.confine_caller();
    // Everything the VM needs is open: give up the rest before the guest runs.
    if let Some(jail) = &config.jail {
        hull_vmm::jail::enter(jail).context("confining the VMM")?;
    }
    tracing::debug!(cmdline = %machine.cmdline, "booting");
    let outcome = machine.run().context("running the VM")?;
    Ok(outcome.exit_code())
}
