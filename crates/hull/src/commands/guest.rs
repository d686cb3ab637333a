//! `hull guest build`: the VM guest's kernel and initramfs, built once and cached.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hull_sandbox::guest::{self, BuildOptions};

use crate::cli::GuestBuildArgs;

pub fn build(a: GuestBuildArgs) -> Result<i32> {
    let agent = match a.agent {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find hull's own path to look for hull-agent beside it")?
            .with_file_name("hull-agent"),
    };
    let opts = BuildOptions {
        dir: a.dir.unwrap_or_else(|| PathBuf::from(guest::DEFAULT_DIR)),
        agent,
        source: a
            .source
            .unwrap_or_else(|| PathBuf::from(guest::DEFAULT_SOURCE)),
    };
    let report = guest::build(&opts, &|line| eprintln!("hull: guest: {line}"))?;
    if let Some(t) = report.kernel_build_time {
        eprintln!("hull: guest: kernel built in {} s", t.as_secs());
    }
    let a = &report.assets;
    super::out(&format!(
        "vmlinux    {}\nbzImage    {}\ninitramfs  {}\n",
        a.vmlinux.display(),
        a.bzimage.display(),
        a.initramfs.display()
    ))?;
    Ok(0)
}

/// What `Qemu::args` gives for a one-vCPU, 128 MiB guest on this host's accelerator,
/// with the agent's channel on `socket`: bench/guest-boot boots every kernel with it.
pub fn qemu_args(kernel: String, initramfs: String, socket: String, log: String) -> Result<i32> {
    use hull_sandbox::hypervisor::{Accel, Transport, VmConfig};
    let config = VmConfig {
        kernel: kernel.into(),
        initramfs: initramfs.into(),
        extra_cmdline: String::new(),
        vcpus: 1,
        memory_mib: 128,
        disks: vec![],
        transport: Transport::Serial {
            socket: socket.into(),
        },
        console_log: log.into(),
        accel: Accel::detect(),
        nets: vec![],
        shares: vec![],
    };
    for arg in hull_sandbox::qemu::Qemu::default().args(&config, &[]) {
        super::out(&format!("{arg}\n"))?;
    }
    Ok(0)
}
