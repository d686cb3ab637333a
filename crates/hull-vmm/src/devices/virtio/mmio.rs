//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2): a 4 KiB window of 32-bit
//! registers, then the device's configuration space from 0x100.
//!
//! Queue checks happen when the driver writes QueueReady: a queue whose size is not a
//! power of two within QueueNumMax, or whose rings are misaligned or not entirely in
//! guest memory, is refused (QueueReady keeps reading 0). Linux does not read
//! QueueReady back, so such a driver goes on to DRIVER_OK; activating with a queue not
//! ready fails, and the device then shows DEVICE_NEEDS_RESET with a config-change
//! interrupt. Either way only that guest's device stops working.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{IrqTrigger, Result, VirtioDevice, VirtioError};
use crate::devices::bus::MmioDevice;

/// The size of a device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
pub const VERSION: u32 = 2;
/// "hull", little-endian; Linux does not look at it.
pub const VENDOR_ID: u32 = 0x6c6c_7568;
/// Where the device configuration space begins in the window.
pub const CONFIG_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;
/// QueueNotify, where a KVM ioeventfd (datamatch: the queue index) can take over
/// notifications from the vCPU thread; the device's `process_queue` is then called by
/// whoever waits on that eventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// The kernel command-line entry by which Linux finds a virtio-mmio device at `base`
/// raising `irq` (drivers/virtio/virtio_mmio.c, `virtio_mmio.device=`).
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// A queue as the driver configures it, raw, until QueueReady checks it.
#[derive(Clone, Copy, Debug)]
struct QueueConfig {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            // A driver that never writes QueueNum gets the largest queue.
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// The virtio-queue `Queue` for this configuration, or why there is none. Checked
    /// here rather than by `Queue`'s setters, which log and keep the previous value on
    /// a bad one: that would leave the device using addresses the driver did not give.
    fn build(&self, memory: &GuestMemoryMmap) -> std::result::Result<Queue, String> {
        let size = u16::try_from(self.size)
            .ok()
            .filter(|s| *s != 0 && s.is_power_of_two() && *s <= self.max_size)
            .ok_or_else(|| {
                format!(
                    "size {} is not a power of two in 1..={}",
                    self.size, self.max_size
                )
            })?;
        let n = u64::from(size);
        // (name, address, alignment, bytes), from §2.7 "Virtqueue alignment" and the
        // split ring layouts (flags, idx, ring, event word).
        let parts = [
            ("descriptor table", self.desc, 16, 16 * n),
            ("driver area", self.driver, 2, 6 + 2 * n),
            ("device area", self.device, 4, 6 + 8 * n),
        ];
        for (name, addr, align, len) in parts {
            if !addr.is_multiple_of(align) {
                return Err(format!("{name} at {addr:#x} is not {align}-byte aligned"));
            }
            let end = addr.checked_add(len);
            if end.is_none()
                || !GuestMemoryBackend::check_range(memory, GuestAddress(addr), len as usize)
            {
                return Err(format!(
                    "{name} at {addr:#x}+{len:#x} is not all guest memory"
                ));
            }
        }
        if self.driver == 0 {
            // virtio-queue takes an avail ring at 0 for an unconfigured queue.
            return Err("driver area at address 0".into());
        }
        let mut q = Queue::new(self.max_size).map_err(|e| e.to_string())?;
        q.try_set_size(size).map_err(|e| e.to_string())?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|e| e.to_string())?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|e| e.to_string())?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|e| e.to_string())?;
        q.set_ready(true);
        if !q.is_valid(memory) {
            return Err("virtio-queue finds the rings invalid".into());
        }
        Ok(q)
    }
}

/// A virtio device's MMIO window. Insert it in the MMIO bus at a base address, register
/// `interrupt().eventfd()` with KVM_IRQFD for its GSI, and give the guest
/// `cmdline_entry(base, gsi)`.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    memory: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    device_type: u32,
    offered: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    activated: bool,
}

impl MmioTransport {
    /// `memory` is the guest's, against which queues are checked and which the device
    /// gets on activation.
    pub fn new(memory: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self> {
        let (device_type, offered, queues) = {
            let d = device.lock().unwrap_or_else(PoisonError::into_inner);
            let queues = d
                .queue_max_sizes()
                .iter()
                .map(|&m| QueueConfig::new(m))
                .collect();
            (
                d.device_type(),
                d.features() | 1 << VIRTIO_F_VERSION_1,
                queues,
            )
        };
        Ok(MmioTransport {
            device,
            memory,
            irq: Arc::new(IrqTrigger::new()?),
            device_type,
            offered,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated: false,
        })
    }

    /// The interrupt: its eventfd goes to KVM_IRQFD.
    pub fn interrupt(&self) -> Arc<IrqTrigger> {
        self.irq.clone()
    }

    /// The device, for whoever processes its queues outside the transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.irq.needs_reset() {
            VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// The features the driver accepted (meaningful once FEATURES_OK stuck).
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        // A panic elsewhere must not take the vCPU thread down with it.
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers change only while the selected queue is not ready and the device
    /// not yet running.
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        let driver_ok = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        let q = self.queues.get_mut(self.queue_sel as usize)?;
        if driver_ok || q.ready {
            tracing::debug!("virtio-mmio: queue register write to a live queue ignored");
            return None;
        }
        Some(q)
    }

    fn register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.irq.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            // The configuration space never changes under the driver.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                tracing::debug!(
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn set_register(&mut self, offset: u32, v: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => self.set_driver_features(v),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.configurable_queue() {
                    q.size = v;
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.set_queue_ready(v),
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.irq.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.set_address(|q| &mut q.desc, false, v),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.set_address(|q| &mut q.desc, true, v),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.set_address(|q| &mut q.driver, false, v),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.set_address(|q| &mut q.driver, true, v),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.set_address(|q| &mut q.device, false, v),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.set_address(|q| &mut q.device, true, v),
            _ => tracing::debug!(
                offset,
                "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn set_address(&mut self, field: fn(&mut QueueConfig) -> &mut u64, high: bool, v: u32) {
        if let Some(q) = self.configurable_queue() {
            let a = field(q);
            *a = if high {
                (*a & 0xffff_ffff) | u64::from(v) << 32
            } else {
                (*a & !0xffff_ffff) | u64::from(v)
            };
        }
    }

    fn set_driver_features(&mut self, v: u32) {
        if self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK) != 0 {
            tracing::debug!("virtio-mmio: feature write after FEATURES_OK ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | u64::from(v) << 32,
            // No feature lives above bit 63; accepting one there is accepting one not
            // offered. Bit 63 stands in for it, so FEATURES_OK is refused.
            _ if v != 0 => self.driver_features |= 1 << 63,
            _ => {}
        }
    }

    fn set_queue_ready(&mut self, v: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            tracing::debug!("virtio-mmio: QueueReady write after DRIVER_OK ignored");
            return;
        }
        let index = self.queue_sel;
        let memory = self.memory.clone();
        let Some(q) = self.selected_queue() else {
            tracing::debug!(
                index,
                "virtio-mmio: QueueReady for a queue that does not exist"
            );
            return;
        };
        match v {
            0 => q.ready = false,
            1 => match q.build(&memory) {
                Ok(_) => q.ready = true,
                Err(why) => tracing::debug!(index, "virtio-mmio: queue refused: {why}"),
            },
            _ => tracing::debug!(index, v, "virtio-mmio: QueueReady takes 0 or 1"),
        }
    }

    fn notify(&mut self, v: u32) {
        if !self.activated {
            tracing::debug!("virtio-mmio: notify before the device is active ignored");
            return;
        }
        let index = v as usize;
        if index >= self.queues.len() {
            tracing::debug!(index, "virtio-mmio: notify of a queue that does not exist");
            return;
        }
        if let Err(e) = self.lock_device().process_queue(index) {
            tracing::debug!(index, "virtio-mmio: queue not processed: {e}");
        }
    }

    /// Status only gains bits, in the order of §3.1.1 (ACKNOWLEDGE, DRIVER, FEATURES_OK,
    /// DRIVER_OK); a bit out of order does not stick, the others in the same write do.
    /// Clearing bits takes a reset (writing 0).
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set; Linux writes back what it read.
        let v = v & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if v & self.status != self.status {
            tracing::debug!(
                old = self.status,
                new = v,
                "virtio-mmio: status bits cleared without a reset; ignored"
            );
            return;
        }
        let new = v & !self.status;
        let mut status = self.status;
        if new & VIRTIO_CONFIG_S_FAILED != 0 {
            status |= VIRTIO_CONFIG_S_FAILED;
        }
        if new & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if new & VIRTIO_CONFIG_S_DRIVER != 0 && status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            status |= VIRTIO_CONFIG_S_DRIVER;
        }
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 && status & VIRTIO_CONFIG_S_DRIVER != 0 {
            match self.unacceptable_features() {
                None => status |= VIRTIO_CONFIG_S_FEATURES_OK,
                Some(why) => tracing::debug!("virtio-mmio: FEATURES_OK refused: {why}"),
            }
        }
        let activate =
            new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FEATURES_OK != 0;
        if activate {
            status |= VIRTIO_CONFIG_S_DRIVER_OK;
        }
        if new & status != new {
            tracing::debug!(
                status,
                requested = new,
                "virtio-mmio: status bits out of order ignored"
            );
        }
        self.status = status;
        if activate {
            self.activate();
        }
    }

    fn unacceptable_features(&self) -> Option<String> {
        let unoffered = self.driver_features & !self.offered;
        if unoffered != 0 {
            return Some(format!("driver accepted unoffered features {unoffered:#x}"));
        }
        // A version-2 transport is for drivers of the 1.x interface (§4.2.4).
        if self.driver_features & 1 << VIRTIO_F_VERSION_1 == 0 {
            return Some("driver did not accept VIRTIO_F_VERSION_1".into());
        }
        None
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready {
                return self.activation_failed(VirtioError::QueueNotReady(index));
            }
            match q.build(&self.memory) {
                Ok(queue) => queues.push(queue),
                Err(why) => {
                    tracing::debug!(index, "virtio-mmio: {why}");
                    return self.activation_failed(VirtioError::QueueNotReady(index));
                }
            }
        }
        let memory = self.memory.clone();
        let irq = self.irq.clone();
        let features = self.driver_features;
        let result = self.lock_device().activate(memory, queues, irq, features);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.activation_failed(e),
        }
    }

    fn activation_failed(&mut self, e: VirtioError) {
        tracing::warn!(
            "virtio-mmio: device {} not activated: {e}",
            self.device_type
        );
        self.irq.set_needs_reset();
    }

    fn reset(&mut self) {
        self.lock_device().reset();
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.irq.reset();
    }

    fn config_range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        if !matches!(len, 1 | 2 | 4 | 8) {
            return None;
        }
        let start = usize::try_from(offset - CONFIG_OFFSET).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.lock_device().config_space().len()).then_some(start..end)
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            match self.config_range(offset, data.len()) {
                Some(r) => data.copy_from_slice(&self.lock_device().config_space()[r]),
                None => {
                    tracing::debug!(
                        offset,
                        len = data.len(),
                        "virtio-mmio: config read out of bounds"
                    );
                    data.fill(0);
                }
            }
            return;
        }
        match (u32::try_from(offset), data.len()) {
            (Ok(off), 4) if off % 4 == 0 => data.copy_from_slice(&self.register(off).to_le_bytes()),
            _ => {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: register read not 32-bit aligned"
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            match self.config_range(offset, data.len()) {
                Some(r) => self.lock_device().write_config(r.start as u64, data),
                None => tracing::debug!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: config write out of bounds"
                ),
            }
            return;
        }
        match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(bytes)) if off % 4 == 0 => {
                self.set_register(off, u32::from_le_bytes(bytes))
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "virtio-mmio: register write not 32-bit aligned"
            ),
        }
    }
}
