//! Port I/O: a guest `out`/`in` reaches the device whose port range holds the port.
//! Ports nobody claims read as all ones and swallow writes, as on a PC.

pub trait PioDevice: Send {
    /// `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

#[derive(Default)]
pub struct PioBus {
    devices: Vec<(u16, u16, Box<dyn PioDevice>)>,
}

impl PioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `len` ports from `base`. Overlapping ranges are a programming error.
    pub fn insert(&mut self, base: u16, len: u16, device: Box<dyn PioDevice>) {
        assert!(
            !self
                .devices
                .iter()
                .any(|(b, l, _)| base < b + l && *b < base + len),
            "port range {base:#x}+{len} overlaps another device"
        );
        self.devices.push((base, len, device));
    }

    fn find(&mut self, port: u16) -> Option<(u16, &mut Box<dyn PioDevice>)> {
        self.devices
            .iter_mut()
            .find(|(b, l, _)| port >= *b && port - *b < *l)
            .map(|(b, _, d)| (port - *b, d))
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((offset, d)) => d.read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8]) {
        if let Some((offset, d)) = self.find(port) {
            d.write(offset, data);
        }
    }
}
