//! hull-sandbox: VM isolation, host side. The Hypervisor trait and its QEMU backend,
//! the guest's kernel and initramfs, container root filesystems as disk images, and the
//! agent client that speaks hull-proto to the guest.

pub mod check;
pub mod client;
pub mod clock;
pub mod container;
pub mod cpio;
pub mod error;
pub mod guest;
pub mod hullvmm;
pub mod hypervisor;
pub mod image;
pub mod initramfs;
pub mod qemu;
pub mod sandbox;
pub mod vmm_process;

pub use error::{Result, SandboxError};
