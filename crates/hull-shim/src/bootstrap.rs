//! The two actions containerd runs the shim binary for: `start` (bind the socket of the
//! container's group, leave a daemon serving it, print its address) and `delete`
//! (clean up after a shim that died).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::DeleteResponse;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use sha2::{Digest, Sha256};

use crate::flags::Flags;
use crate::{hull, mounts, spec};

/// The daemon finds its listening socket at this fd number.
pub const LISTEN_FD_ENV: &str = "HULL_SHIM_LISTEN_FD";
/// The base of the shim's state (`<base>/<namespace>` is hull's `--root`).
pub const ROOT_ENV: &str = "HULL_SHIM_ROOT";
const DEFAULT_ROOT: &str = "/run/hull-shim";
/// containerd 1.6 dials shims here whatever its own state dir (`socketRoot`).
const SOCKET_DIR: &str = "/run/containerd/s";

pub fn base_root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// `unix:///run/containerd/s/<sha256(address/namespace/group)>`, containerd's own
/// `SocketAddress`, so that a restarted containerd would find the same shim.
pub fn socket_address(containerd: &str, namespace: &str, group: &str) -> String {
    let joined = Path::new(containerd).join(namespace).join(group);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

fn socket_path(address: &str) -> &Path {
    Path::new(address.trim_start_matches("unix://"))
}

/// Where the shim of this bundle's group listens.
fn group_address(flags: &Flags, bundle: &Path) -> String {
    let info = spec::load(bundle).unwrap_or_default();
    let group = spec::grouping(&info, &flags.id);
    socket_address(&flags.address, &flags.namespace, &group)
}

pub fn start(flags: &Flags, argv0: &OsStr) -> Result<()> {
    // containerd writes the runtime options here; Create gets them again.
    let mut options = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut options);
    let bundle = std::env::current_dir().context("the bundle (cwd)")?;
    let address = group_address(flags, &bundle);
    let path = socket_path(&address);
    std::fs::create_dir_all(SOCKET_DIR).with_context(|| format!("mkdir {SOCKET_DIR}"))?;
    let listener = match UnixListener::bind(path) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                // The group's shim runs: it serves this container too.
                None
            } else {
                std::fs::remove_file(path)?;
                Some(UnixListener::bind(path).with_context(|| path.display().to_string())?)
            }
        }
        Err(e) => return Err(e).with_context(|| format!("bind {}", path.display())),
    };
    if let Some(l) = listener {
        if let Err(e) = spawn_daemon(flags, argv0, &bundle, &l, path) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    // containerd reloads shims from this file after a restart.
    std::fs::write(bundle.join("address"), &address).context("write address")?;
    // containerd reads all of stdout and stderr as the address.
    print!("{address}");
    let _ = std::io::stdout().flush();
    Ok(())
}

fn spawn_daemon(
    flags: &Flags,
    argv0: &OsStr,
    bundle: &Path,
    l: &UnixListener,
    path: &Path,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // The daemon inherits the listener at its number; start is single-threaded, so no
    // other spawn can inherit it meanwhile.
    fcntl(l, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg0(argv0)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address])
        .args(["-publish-binary", &flags.publish_binary]);
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .env(LISTEN_FD_ENV, l.as_raw_fd().to_string())
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Out of containerd's process group: its signals are not the shim's.
        .process_group(0);
    cmd.spawn().context("spawn the shim daemon")?;
    Ok(())
}

/// Cleans up after a shim containerd cannot reach (it died, or containerd restarted
/// without it): the container's processes, its rootfs mount, the shim's socket. Prints
/// the DeleteResponse containerd reads.
pub fn delete(flags: &Flags) -> Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir()?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let root = base_root().join(&flags.namespace);
    let hull = hull::find_hull()?;
    let out = Command::new(&hull)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &flags.id])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", hull.display()))?;
    if !out.status.success() {
        // stderr of delete is logged by containerd as a warning.
        eprintln!(
            "hull delete --force {}: {}",
            flags.id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    mounts::unmount_all(&bundle.join("rootfs"));
    let address = group_address(flags, &bundle);
    let path = socket_path(&address);
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    let mut resp = DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at = Some(Timestamp::now()).into();
    let bytes = resp.write_to_bytes()?;
    std::io::stdout().write_all(&bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_as_containerd_computes_it() {
        // sha256("/run/containerd/containerd.sock/default/c1")
        let a = socket_address("/run/containerd/containerd.sock", "default", "c1");
        assert!(a.starts_with("unix:///run/containerd/s/"), "{a}");
        assert_eq!(a.len(), "unix:///run/containerd/s/".len() + 64);
        let want = Sha256::digest(b"/run/containerd/containerd.sock/default/c1");
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert!(a.ends_with(&hex));
    }
}
