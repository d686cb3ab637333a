//! The i8042 keyboard controller's one job in a micro-VM: the reset line. A guest
//! without ACPI reboots (Linux's `reboot=k`) by writing 0xFE to the command port; the
//! vCPU loop then ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::bus::PioDevice;

pub const BASE: u16 = 0x60;
/// 0x60 (data) to 0x64 (status/command).
pub const PORTS: u16 = 5;
const COMMAND: u16 = 4;
const PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    reset: Arc<AtomicBool>,
}

impl I8042 {
    /// `reset` is raised when the guest pulls the reset line.
    pub fn new(reset: Arc<AtomicBool>) -> Self {
        I8042 { reset }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // No keyboard: empty output buffer, nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == COMMAND && data.first() == Some(&PULSE_RESET) {
            self.reset.store(true, Ordering::SeqCst);
        }
    }
}
