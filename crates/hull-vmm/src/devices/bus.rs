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

/// A device in guest physical address space: the vCPU turns a KVM_EXIT_MMIO in its
/// window into these calls. `offset` is from the device's base address.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Guest-physical windows and their devices. Reads of addresses nobody claims return
/// zeroes and writes vanish, so a probing guest meets no device rather than an error.
#[derive(Default)]
pub struct MmioBus {
    devices: Vec<(u64, u64, Box<dyn MmioDevice>)>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `[base, base + len)`. Overlapping windows are a programming error.
    pub fn insert(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) {
        assert!(
            !self
                .devices
                .iter()
                .any(|(b, l, _)| base < b + l && *b < base + len),
            "MMIO window {base:#x}+{len:#x} overlaps another device"
        );
        self.devices.push((base, len, device));
    }

    fn find(&mut self, addr: u64) -> Option<(u64, &mut Box<dyn MmioDevice>)> {
        self.devices
            .iter_mut()
            .find(|(b, l, _)| addr >= *b && addr - *b < *l)
            .map(|(b, _, d)| (addr - *b, d))
    }

    pub fn read(&mut self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, d)) => d.read(offset, data),
            None => data.fill(0),
        }
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) {
        if let Some((offset, d)) = self.find(addr) {
            d.write(offset, data);
        }
    }
}

/// The buses a vCPU dispatches its exits to, shared by all vCPUs of a VM. One lock per
/// bus: device accesses are short, and a device shared by two vCPUs needs the order.
#[derive(Default)]
pub struct Buses {
    pub pio: std::sync::Mutex<PioBus>,
    pub mmio: std::sync::Mutex<MmioBus>,
}

impl Buses {
    pub fn new(pio: PioBus, mmio: MmioBus) -> Self {
        Buses {
            pio: pio.into(),
            mmio: mmio.into(),
        }
    }
}
