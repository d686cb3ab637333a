//! The guest's first steps as PID 1, and its last.

use std::ffi::CString;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// Set across the exec that moves the agent off the initramfs.
const MOVED_ENV: &str = "HULL_AGENT_MOVED";

/// The kernel unpacks the initramfs into `rootfs`, which pivot_root cannot leave, and
/// containers pivot_root. So, as switch_root does: move a fresh tmpfs onto `/` and
/// chroot into it. The agent itself goes into a sealed memfd and is executed from there:
/// one exec both leaves the initramfs and makes the binary write-proof for
/// CVE-2019-5736 (hull-runtime's `ensure_sealed` then finds nothing to do), and the
/// initramfs copy is dropped (it is RAM).
///
/// Booted from the agent's read-only disk instead, there is nothing to leave: the root
/// is a real filesystem, and a binary on erofs cannot be written.
pub fn leave_initramfs() -> Result<()> {
    if std::env::var_os(MOVED_ENV).is_some() || !root_is_initramfs()? {
        return Ok(());
    }
    let sealed = sealed_copy(Path::new("/init"))?;
    let _ = std::fs::remove_file("/init");
    let new = Path::new("/sysroot");
    std::fs::create_dir_all(new).context("mkdir /sysroot")?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
    .context("mount tmpfs on /sysroot")?;
    std::env::set_current_dir(new).context("chdir /sysroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move /sysroot onto /")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/").context("chdir /")?;
    let init = CString::new("/init")?;
    let mut env: Vec<CString> = std::env::vars()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    env.push(CString::new(format!("{MOVED_ENV}=1"))?);
    let err = nix::unistd::fexecve(&sealed, std::slice::from_ref(&init), &env).unwrap_err();
    Err(err).context("exec the agent from its sealed copy")
}

/// Booted from the agent's disk, the guest's page cache holds what the kernel read of
/// the agent's binary: the VM's own RAM, for as long as nothing presses the cache.
/// A fault reads 128 KiB around the page it needs, and the agent's code is spread over
/// all of its 2.6 MiB, so the first few hundred faults would read it whole. From here
/// on its mappings fault page by page (MADV_RANDOM, which the containers' inits it forks
/// inherit). Needs /proc. From an initramfs the binary is in RAM whole anyway.
pub fn read_own_binary_by_page() {
    advise_own_binary(libc::MADV_RANDOM, "MADV_RANDOM");
}

/// Once the agent serves: its binary leaves the page cache but for what it faults back
/// in. Fault-around maps every cached page within 64 KiB of a fault, so the start's
/// faults alone kept ~1.9 MiB mapped; MADV_PAGEOUT unmaps and drops those (clean file
/// pages; data the agent wrote is anonymous and stays, without swap), fadvise the rest.
pub fn drop_own_unmapped_pages() {
    if !advise_own_binary(libc::MADV_PAGEOUT, "MADV_PAGEOUT") {
        return;
    }
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let dropped = std::fs::File::open("/proc/self/exe")
        .map_err(|e| e.to_string())
        .and_then(|f| {
            posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = dropped {
        tracing::warn!("fadvise(DONTNEED) of the agent's binary: {e}");
    }
}

/// madvise(2) of every mapping of the agent's own binary when it runs from its disk;
/// false (nothing done) when it runs from an initramfs. MADV_RANDOM and MADV_PAGEOUT change no memory's content: the first
/// only readahead, the second reclaims clean file pages (read again on the next touch)
/// and, without swap, no anonymous page.
fn advise_own_binary(advice: libc::c_int, name: &str) -> bool {
    if root_is_initramfs().unwrap_or(true) {
        return false;
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return true;
    };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for (start, end) in file_mappings(&maps, &exe.to_string_lossy()) {
        // SAFETY: the range is one this process maps, and the advice keeps its content
        // (above).
        let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("madvise({name}) of the agent's binary: {e}");
        }
    }
    true
}

/// The address ranges /proc/self/maps shows mapped from `path`.
fn file_mappings(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some(path))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// The kernel's `rootfs`: tmpfs, or ramfs when the cmdline names a root.
fn root_is_initramfs() -> Result<bool> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let fs = statfs("/").context("statfs /")?;
    Ok([RAMFS_MAGIC, TMPFS_MAGIC].contains(&fs.filesystem_type()))
}

fn sealed_copy(path: &Path) -> Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mut src = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let fd = memfd_create(
        c"hull-agent",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .context("memfd_create")?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst).context("copy the agent into a memfd")?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals)).context("seal the agent's memfd")?;
    Ok(dst.into())
}

struct Fs {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const FILESYSTEMS: &[Fs] = &[
    Fs {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Fs {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Fs {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Fs {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    Fs {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Fs {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Fs {
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Fs {
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
];

pub fn mount_filesystems() -> Result<()> {
    if Path::new("/proc/self").exists() {
        return Ok(());
    }
    for fs in FILESYSTEMS {
        nix::unistd::mkdir(fs.target, Mode::from_bits_truncate(0o755))
            .or_else(|e| {
                if e == nix::Error::EEXIST {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("mkdir {}", fs.target))?;
        match mount(
            Some(fs.fstype),
            fs.target,
            Some(fs.fstype),
            fs.flags,
            fs.data,
        ) {
            // Booted from a disk, the kernel has mounted devtmpfs itself
            // (CONFIG_DEVTMPFS_MOUNT), without nosuid: add it to that mount.
            Err(nix::Error::EBUSY) if fs.fstype == "devtmpfs" => mount(
                None::<&str>,
                fs.target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | fs.flags,
                None::<&str>,
            ),
            other => other,
        }
        .with_context(|| format!("mount {} on {}", fs.fstype, fs.target))?;
    }
    // Containers' cgroups live below the root: hand them every controller.
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("read cgroup.controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if !enable.is_empty() {
        std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
            .context("enable cgroup controllers")?;
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    nix::unistd::sethostname("hull-guest").context("sethostname")?;
    Ok(())
}

/// The order of the free blocks the guest reports to the VMM's balloon (hull-vmm's
/// `free_page_reporting`) is the kernel's own `page_reporting.page_reporting_order`
/// parameter, but Linux 6.1 overwrites it with 9 (2 MiB blocks) when the balloon
/// driver registers, which happens before init runs. Smaller blocks are what a small
/// guest frees: boot's poisoned gaps in the kernel image, the initramfs copy the agent
/// left. So the agent applies the cmdline's value again; the next free page starts a
/// report. Nothing to do without the parameter or without page reporting.
pub fn apply_page_reporting_order() {
    const KNOB: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(order) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("page_reporting.page_reporting_order="))
    else {
        return;
    };
    if !Path::new(KNOB).exists() {
        return;
    }
    if let Err(e) = std::fs::write(KNOB, order) {
        tracing::warn!("page_reporting_order={order}: {e}");
    }
}

pub fn uptime_ms() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    (secs * 1000.0) as u64
}

/// MemTotal - MemAvailable: what the kernel and the agent hold.
pub fn memory_in_use_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// A micro-VM has no RTC worth reading: the host's clock arrives with its Hello.
pub fn set_clock(secs: i64, nanos: u32) {
    let ts = nix::sys::time::TimeSpec::new(secs, nanos.min(999_999_999) as _);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        tracing::warn!("cannot set the guest clock: {e}");
    }
}

/// Ends the VM. Without ACPI a guest cannot power off; the kernel's `reboot=t` triple
/// fault resets it, and the hypervisor (QEMU -no-reboot, hull-vmm) exits on reset.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::file_mappings;

    #[test]
    fn file_mappings_are_the_ranges_of_that_path_only() {
        let maps = "\
00400000-00452000 r--p 00000000 fe:00 12 /init
00452000-0067a000 r-xp 00052000 fe:00 12 /init
0067a000-0067b000 rw-p 00000000 00:00 0 [heap]
7ffd0000-7ffd1000 r--p 00000000 fe:00 13 /init.old
";
        assert_eq!(
            file_mappings(maps, "/init"),
            [(0x400000, 0x452000), (0x452000, 0x67a000)]
        );
    }
}
