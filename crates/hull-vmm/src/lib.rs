//! hull-vmm: hull's own micro-VM monitor on KVM, built from rust-vmm crates. It knows
//! nothing about containers: it runs a guest from memory, vCPUs and devices.
//!
//! The VM's anatomy is the folder tree, as in Firecracker: `vstate/` holds the VM, its
//! memory and vCPUs; `devices/` the emulated devices and the port I/O bus.

pub mod boot;
pub mod config;
pub mod devices;
pub mod error;
pub mod event_loop;
pub mod jail;
pub mod machine;
pub mod seccomp;
pub mod teardown;
pub mod tiny;
pub mod vstate;

pub use error::{Result, VmmError};
