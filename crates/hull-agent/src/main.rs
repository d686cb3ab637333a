//! hull-agent: the guest's PID 1.
//!
//! It moves itself off the initramfs (pivot_root cannot leave the initial rootfs), makes
//! its own binary write-proof (CVE-2019-5736), mounts the guest's filesystems, finds the
//! host's byte stream and serves hull-proto on it until told to shut down. PID 1 must not
//! exit: if serving fails, the agent powers the VM off, which the host sees as the VM
//! ending.

use anyhow::Context;

mod boot;
mod containers;
mod images;
mod io;
mod log;
mod nbd;
mod network;
mod network6;
mod oom;
mod rootfs;
mod router;
mod server;
mod stdin;
mod transport;

fn main() {
    // Before anything opens an fd: preserved fds are lent at 3 and up (io.rs).
    let reserved = io::reserve_extra_fds();
    log::init();
    if let Err(e) = &reserved {
        tracing::warn!("{e:#}");
    }
    // PID 1 exiting panics the kernel; a bug should end the VM cleanly and say why.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("agent bug: {info}; powering off");
        boot::power_off();
    }));
    if std::process::id() != 1 {
        eprintln!("hull-agent: this is the init of a hull guest VM; it runs as PID 1 only");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        tracing::error!("{e:#}");
    }
    boot::power_off();
}

fn run() -> anyhow::Result<()> {
    // Ctrl-Alt-Del (the VMM's "please shut down") must not reboot the guest at once:
    // with CAD disabled the kernel sends PID 1 SIGINT, and the server stops the
    // containers first.
    nix::sys::reboot::set_cad_enabled(false).context("disable Ctrl-Alt-Del reboot")?;
    boot::leave_initramfs()?;
    boot::mount_filesystems()?;
    boot::read_own_binary_by_page();
    boot::apply_page_reporting_order();
    // A no-op after leave_initramfs (the binary is a sealed memfd) or from the agent's
    // disk (erofs is read-only); kept so that an agent started any other way is still
    // write-proof. Needs /proc.
    hull_runtime::selfexe::ensure_sealed()?;
    let stream = transport::open()?;
    // bench/guest-boot reads this line: the guest is ready when the agent serves.
    tracing::info!(
        "ready at {} ms of uptime, {} KiB of memory in use; serving the host on {}",
        boot::uptime_ms(),
        boot::memory_in_use_kib(),
        stream.name
    );
    boot::drop_own_unmapped_pages();
    server::Server::new(stream.fd)?
        .queued_writes(stream.queued_writes)
        .serve()
}
