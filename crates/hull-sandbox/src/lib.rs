//! hull-sandbox: VM isolation, host side. The Hypervisor trait and its QEMU backend,
//! the guest's kernel and initramfs, container root filesystems as disk images, and the
//! agent client that speaks hull-proto to the guest.

pub mod block;
pub mod check;
pub mod client;
pub mod clock;
pub mod container;
pub mod cpio;
pub mod error;
pub mod files;
pub mod fs_helper;
pub mod guest;
pub mod hullvmm;
pub mod hypervisor;
pub mod image;
pub mod initramfs;
pub mod jail;
pub mod layers;
pub mod qemu;
pub mod rootless;
pub mod sandbox;
pub mod vmm_process;

pub use error::{Result, SandboxError};

/// Returns the heap's free pages to the kernel. A proxy or stand-in is forked from the
/// `create` that set it up and then lives as long as its container: what `create`
/// freed would otherwise stay in its heap, private memory, per container.
pub fn give_back_free_heap() {
    // SAFETY: malloc_trim only releases memory malloc holds free; no pointer changes.
    unsafe { libc::malloc_trim(0) };
}

/// A random number from the kernel, for names that must not collide between
/// sandboxes: their proxies all run as pid 1 of their own pid namespace, so a pid
/// names nothing uniquely there.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Never expected after boot; still distinct between processes and calls.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(buf)
}
