//! The 8250 UART at COM1 (0x3f8), vm-superio's, writing what the guest sends to a
//! sink (a file, stdout, or a buffer in tests).

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

pub const COM1: u16 = 0x3f8;
pub const PORTS: u16 = 8;

/// The UART's interrupt: none for tiny guests that poll it, or an eventfd that KVM
/// turns into IRQ 4 (KVM_IRQFD) for Linux, whose tty layer waits for "transmitter
/// empty" interrupts.
pub enum Irq {
    None,
    Event(EventFd),
}

impl Trigger for Irq {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        match self {
            Irq::None => Ok(()),
            Irq::Event(fd) => fd.write(1),
        }
    }
}

pub struct SerialDevice<W: Write + Send> {
    uart: Serial<Irq, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART that the guest polls.
    pub fn new(out: W) -> Self {
        Self::with_irq(out, Irq::None)
    }

    pub fn with_irq(out: W, irq: Irq) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }
}

impl<W: Write + Send> PioDevice for SerialDevice<W> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // Registers are bytes; wider accesses read the first and zero the rest.
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}
