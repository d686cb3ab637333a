//! The 8250 UART at COM1 (0x3f8), vm-superio's, writing what the guest sends to a
//! sink (a file, stdout, or a buffer in tests).

use std::io::Write;

use vm_superio::{Serial, Trigger};

use super::bus::PioDevice;

pub const COM1: u16 = 0x3f8;
pub const PORTS: u16 = 8;

/// No interrupt line yet: the guests so far poll the UART.
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

pub struct SerialDevice<W: Write + Send> {
    uart: Serial<NoIrq, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(out: W) -> Self {
        SerialDevice {
            uart: Serial::new(NoIrq, out),
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
