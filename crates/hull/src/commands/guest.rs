//! `hull guest build`: the VM guest's kernel, initramfs and agent disk, built once and cached.

use std::path::{Path, PathBuf};

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
        "vmlinux    {}\nbzImage    {}\ninitramfs  {}\nagent disk {}\n",
        a.vmlinux.display(),
        a.bzimage.display(),
        a.initramfs.display(),
        a.agent_disk.as_deref().unwrap_or(Path::new("-")).display()
    ))?;
    Ok(0)
}

/// What `Qemu::args` gives for a one-vCPU, 128 MiB guest on this host's accelerator,
/// with the agent's channel on `socket`: bench/guest-boot boots every kernel with it.
/// `root` is a cpio initramfs or an erofs disk (the agent's), told apart by content.
pub fn qemu_args(kernel: String, root: String, socket: String, log: String) -> Result<i32> {
    use hull_sandbox::hypervisor::{Accel, GuestRoot, Transport, VmConfig};
    let root = if is_erofs(Path::new(&root)) {
        GuestRoot::Disk(root.into())
    } else {
        GuestRoot::Initramfs(root.into())
    };
    let config = VmConfig {
        kernel: kernel.into(),
        root,
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

/// erofs's superblock magic, at byte 1024 of the image.
fn is_erofs(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1024))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && u32::from_le_bytes(magic) == 0xe0f5_e1e2
}
