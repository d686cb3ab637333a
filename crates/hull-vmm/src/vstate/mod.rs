//! The VM's state: memory, the VM file descriptor, the vCPUs.

pub mod memory;
pub mod setup;
pub mod vcpu;
pub mod vm;
