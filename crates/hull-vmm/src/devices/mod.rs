//! Emulated devices and the port I/O bus that routes guest `in`/`out` to them.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
