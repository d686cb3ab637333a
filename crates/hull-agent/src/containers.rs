//! Containers inside the guest, run by hull-runtime exactly as `hull` runs them on a host:
//! the agent is the runtime's caller and the reaper (PID 1) of every process it starts.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hull_proto::{MountFile, MountShare, ProcessIo, Rootfs, POD_SHM};
use hull_runtime::container::{self, create::CreateOptions, create::StartMode};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::io::{self, NearEnds};

/// Where the pod's shares are mounted, once for the VM.
const POD_SHARES: &str = "/run/hull-shares";

/// A process the agent started: a container's init (`exec_id: None`) or an exec.
pub type Key = (String, Option<String>);

pub struct Proc {
    pub pid: i32,
    pub exit: Option<i32>,
    /// The pty master, kept for resizes.
    pub pty: Option<OwnedFd>,
}

pub struct Sandbox {
    /// hull-runtime's state root.
    state_root: PathBuf,
    /// Bundles the agent assembles: config.json plus the mounted rootfs.
    bundles: PathBuf,
    pub procs: HashMap<Key, Proc>,
    next_console: u64,
    /// Images attached after boot, which later containers' rootfs come from.
    pub images: crate::images::Images,
}

impl Sandbox {
    pub fn new() -> Self {
        Self::with_dirs("/run/hull".into(), "/run/hull-agent".into())
    }

    pub fn with_dirs(state_root: PathBuf, bundles: PathBuf) -> Self {
        Sandbox {
            state_root,
            bundles,
            procs: HashMap::new(),
            next_console: 0,
            images: Default::default(),
        }
    }

    pub fn by_pid(&mut self, pid: i32) -> Option<(&Key, &mut Proc)> {
        self.procs
            .iter_mut()
            .find(|(_, p)| p.pid == pid && p.exit.is_none())
    }

    pub fn create(
        &mut self,
        id: &str,
        config: &str,
        rootfs: &Rootfs,
        pio: &ProcessIo,
        files: &[MountFile],
        shares: &[MountShare],
    ) -> Result<(i32, NearEnds)> {
        hull_runtime::spec::validate_id(id)?;
        let key = (id.to_string(), None);
        if self.procs.contains_key(&key) {
            bail!("container {id} already exists in this VM");
        }
        let bundle = self.bundles.join(id);
        let made = (|| {
            write_config(&bundle, config, pio.terminal, files, shares)?;
            crate::rootfs::mount_rootfs(&bundle, rootfs, &self.images)?;
            let spec_bundle = hull_runtime::spec::Bundle::load(&bundle)?;
            let opts = CreateOptions {
                id: id.to_string(),
                bundle: bundle.clone(),
                root: self.state_root.clone(),
                preserve_fds: pio.extra.len() as i32,
                ..Default::default()
            };
            let plumbing = io::plumb(pio)?;
            let (console_near, console_far) = if pio.terminal {
                let (a, b) = container::supervise::pty_relay_pair()?;
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            let created = io::with_fds(&plumbing.far, || {
                container::create::create_from(&opts, StartMode::Fifo, spec_bundle, console_far)
            })??;
            let pty = match console_near {
                Some(sock) => Some(container::supervise::receive_pty(&sock)?),
                None => None,
            };
            Ok::<_, anyhow::Error>((created.container.state.pid, plumbing.near, pty))
        })();
        let (pid, near, pty) = match made {
            Ok(v) => v,
            Err(e) => {
                unmount_bundle(&bundle);
                return Err(e);
            }
        };
        self.register(key, pid, pty, pio, near)
    }

    /// Records a started process; with a terminal, its pty master becomes its I/O.
    fn register(
        &mut self,
        key: Key,
        pid: i32,
        pty: Option<OwnedFd>,
        pio: &ProcessIo,
        mut near: NearEnds,
    ) -> Result<(i32, NearEnds)> {
        if let Some(master) = &pty {
            pty_ends(master, pio, &mut near)?;
        }
        self.procs.insert(
            key,
            Proc {
                pid,
                exit: None,
                pty,
            },
        );
        Ok((pid, near))
    }

    pub fn start(&mut self, id: &str) -> Result<()> {
        container::start::start(&self.state_root, id)?;
        Ok(())
    }

    pub fn exec(
        &mut self,
        id: &str,
        exec_id: &str,
        process: &str,
        pio: &ProcessIo,
    ) -> Result<(i32, NearEnds)> {
        let key = (id.to_string(), Some(exec_id.to_string()));
        if self.procs.contains_key(&key) {
            bail!("exec {exec_id} already exists in container {id}");
        }
        let mut process: oci_spec::runtime::Process = serde_json::from_str(process)
            .context("the exec's process is not valid JSON for a runtime-spec process")?;
        // The streams decide: a pty nobody relays, or a relay waiting for a pty that
        // never comes, would hang.
        process.set_terminal(Some(pio.terminal));
        let plumbing = io::plumb(pio)?;
        let pid_file = self.bundles.join(format!("exec-{}.pid", self.next_console));
        let console = if pio.terminal {
            self.next_console += 1;
            let path = self
                .bundles
                .join(format!("console-{}.sock", self.next_console));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).context("bind console socket")?;
            Some((listener, path))
        } else {
            None
        };
        let opts = container::exec::ExecOptions {
            root: self.state_root.clone(),
            id: id.to_string(),
            process,
            console_socket: console.as_ref().map(|(_, p)| p.clone()),
            pid_file: Some(pid_file.clone()),
            detach: true,
            preserve_fds: pio.extra.len() as i32,
        };
        let r = io::with_fds(&plumbing.far, || container::exec::exec(opts))?;
        let pid = r.map_err(anyhow::Error::from).and_then(|_| {
            let text = std::fs::read_to_string(&pid_file).context("read exec pid file")?;
            text.trim().parse::<i32>().context("parse exec pid file")
        });
        let _ = std::fs::remove_file(&pid_file);
        let pty = match &console {
            Some((listener, path)) => {
                let _ = std::fs::remove_file(path);
                match &pid {
                    Ok(_) => {
                        let (conn, _) = listener.accept().context("accept console socket")?;
                        Some(container::supervise::receive_pty(&OwnedFd::from(conn))?)
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        self.register(key, pid?, pty, pio, plumbing.near)
    }

    pub fn signal(&mut self, key: &Key, signal: i32, all: bool) -> Result<()> {
        match &key.1 {
            None => Ok(container::kill::kill(
                &self.state_root,
                &key.0,
                signal,
                all,
            )?),
            Some(_) => {
                let p = self.proc(key)?;
                if p.exit.is_some() {
                    bail!("exec {} has already exited", key.1.as_deref().unwrap_or(""));
                }
                let sig = nix::sys::signal::Signal::try_from(signal)
                    .map_err(|_| anyhow!("signal {signal} is not a signal"))?;
                // Unreaped, so the pid cannot have been reused.
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)?;
                Ok(())
            }
        }
    }

    /// A stopped container's has no stats line, only the OOM kills its cgroup (kept
    /// until the delete) counted: the host asks for them when its init has exited.
    pub fn stats(&self, id: &str) -> Result<container::events::Sample> {
        let c = container::Container::load(&self.state_root, id)?;
        if c.status() == hull_runtime::state::Status::Stopped {
            let oom_kills = c
                .state
                .cgroup
                .oom_kills()
                .map_err(hull_runtime::error::Error::from)?;
            return Ok(container::events::Sample {
                json: String::new(),
                oom_kills,
            });
        }
        Ok(container::events::sample_of(&c)?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(container::ps::pids(&self.state_root, id)?)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        Ok(container::pause::pause(&self.state_root, id)?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        Ok(container::pause::resume(&self.state_root, id)?)
    }

    /// `resources`: a runtime-spec LinuxResources as JSON.
    pub fn update(&self, id: &str, resources: &str) -> Result<()> {
        let r: oci_spec::runtime::LinuxResources =
            serde_json::from_str(resources).context("update: not a runtime-spec LinuxResources")?;
        Ok(container::update::update(&self.state_root, id, &r)?)
    }

    pub fn resize(&self, key: &Key, rows: u16, cols: u16) -> Result<()> {
        let p = self.proc(key)?;
        let pty = p
            .pty
            .as_ref()
            .ok_or_else(|| anyhow!("the process has no terminal to resize"))?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize through a valid pointer.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(pty), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
        }
        Ok(())
    }

    pub fn delete(&mut self, id: &str, force: bool) -> Result<()> {
        container::delete::delete(&self.state_root, id, force)?;
        self.procs.retain(|k, _| k.0 != id);
        unmount_bundle(&self.bundles.join(id));
        Ok(())
    }

    /// The file that counts the OOM kills in container `id`'s cgroup.
    pub fn oom_kills_file(&self, id: &str) -> Result<PathBuf> {
        let c = container::Container::load(&self.state_root, id)?;
        c.state
            .cgroup
            .oom_kills_file()
            .map_err(hull_runtime::error::Error::from)?
            .ok_or_else(|| anyhow!("container {id} has no memory cgroup in this VM"))
    }

    pub fn proc(&self, key: &Key) -> Result<&Proc> {
        self.procs.get(key).ok_or_else(|| match &key.1 {
            None => anyhow!("no container {} in this VM", key.0),
            Some(e) => anyhow!("no exec {e} in container {}", key.0),
        })
    }

    /// Every container, for shutdown.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.procs.keys().map(|k| k.0.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// With a terminal, the pty master is both the process's input and its output.
fn pty_ends(master: &OwnedFd, pio: &ProcessIo, near: &mut NearEnds) -> Result<()> {
    if let Some(s) = pio.stdin {
        near.inputs.push((master.as_fd().try_clone_to_owned()?, s));
    }
    if let Some(s) = pio.stdout {
        let out = master.as_fd().try_clone_to_owned()?;
        io::set_nonblocking(&out)?;
        near.outputs.push((out, s));
    }
    Ok(())
}

/// Writes config.json with the root pointing at the bundle's mount and the host's
/// file copies in place.
fn write_config(
    bundle: &Path,
    config: &str,
    terminal: bool,
    files: &[MountFile],
    shares: &[MountShare],
) -> Result<()> {
    let mut v: serde_json::Value =
        serde_json::from_str(config).context("config.json is not valid JSON")?;
    place_files(bundle, &mut v, files)?;
    mount_shares(bundle, &mut v, shares)?;
    place_shm(bundle, &mut v)?;
    // As for exec: the host's streams decide whether there is a terminal.
    if let Some(p) = v.get_mut("process").and_then(|p| p.as_object_mut()) {
        p.insert("terminal".into(), terminal.into());
    }
    let root = v
        .get_mut("root")
        .and_then(|r| r.as_object_mut())
        .ok_or_else(|| anyhow!("config.json has no root object"))?;
    root.insert("path".into(), "rootfs".into());
    std::fs::create_dir_all(bundle.join("rootfs")).context("mkdir bundle")?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&v)?)
        .context("write config.json")?;
    Ok(())
}

/// The host's copies of bound files go to `<bundle>/files/<mount>`, and the mounts
/// that named them on the host bind the copies.
fn place_files(bundle: &Path, config: &mut serde_json::Value, files: &[MountFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if files.is_empty() {
        return Ok(());
    }
    let dir = bundle.join("files");
    std::fs::create_dir_all(&dir).context("mkdir the bundle's files")?;
    for f in files {
        let mount = config
            .get_mut("mounts")
            .and_then(|m| m.get_mut(f.mount))
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| anyhow!("a file for mount {} that the config does not have", f.mount))?;
        let path = dir.join(f.mount.to_string());
        std::fs::write(&path, &f.content).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o7777))
            .with_context(|| format!("chmod {}", path.display()))?;
        mount.insert("source".into(), path.display().to_string().into());
    }
    Ok(())
}

/// A tmpfs at /dev/shm is mounted at `<bundle>/shm`, in the agent's mount namespace,
/// and bound from there: a pod's later containers bind the same (`POD_SHM`), which a
/// mount inside the container's own namespace would not allow. A member's bind of its
/// sandbox's needs the sandbox's to be here.
fn place_shm(bundle: &Path, config: &mut serde_json::Value) -> Result<()> {
    let Some(mounts) = config.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
        return Ok(());
    };
    let bind = |source: &Path| {
        serde_json::json!({"destination": "/dev/shm", "type": "bind",
            "source": source.display().to_string(),
            "options": ["rbind", "nosuid", "nodev", "noexec"]})
    };
    for m in mounts.iter_mut() {
        if m["destination"] != "/dev/shm" {
            continue;
        }
        if m["type"] == "tmpfs" {
            let dir = bundle.join("shm");
            std::fs::create_dir_all(&dir).context("mkdir the bundle's shm")?;
            let data: Vec<&str> = m["options"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str())
                .filter(|o| o.contains('='))
                .collect();
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(
                Some("shm"),
                &dir,
                Some("tmpfs"),
                flags,
                Some(data.join(",").as_str()),
            )
            .context("mount the container's /dev/shm")?;
            *m = bind(&dir);
        } else if let Some(sid) = m["source"].as_str().and_then(|s| s.strip_prefix(POD_SHM)) {
            hull_runtime::spec::validate_id(sid)?;
            let parent = bundle.parent().unwrap_or(Path::new("/"));
            let dir = parent.join(sid).join("shm");
            if !dir.is_dir() {
                bail!("the /dev/shm of sandbox {sid} is not in this VM");
            }
            *m = bind(&dir);
        }
    }
    Ok(())
}

/// The host's shared directories (virtio-9p, by tag) mounted at
/// `<bundle>/shares/<tag>`, and the mounts that named them on the host bind those.
fn mount_shares(
    bundle: &Path,
    config: &mut serde_json::Value,
    shares: &[MountShare],
) -> Result<()> {
    for s in shares {
        if s.tag.is_empty() || !s.tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("share tag {:?}: letters and digits only", s.tag);
        }
        let mount = config
            .get_mut("mounts")
            .and_then(|m| m.get_mut(s.mount))
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| {
                anyhow!(
                    "a share for mount {} that the config does not have",
                    s.mount
                )
            })?;
        let source = match &s.subdir {
            Some(sub) => pod_share(&s.tag)?.join(relative(sub)?),
            None => {
                // A virtio-9p channel mounts once: mounts of one directory bind one mount.
                let dir = bundle.join("shares").join(&s.tag);
                if !dir.exists() {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("mkdir {}", dir.display()))?;
                    mount_9p(&s.tag, &dir)?;
                }
                dir
            }
        };
        mount.insert("source".into(), source.display().to_string().into());
    }
    Ok(())
}

/// The pod's share, mounted once for the VM's life under /run/hull-shares (its members
/// come and go; a virtio-9p channel mounts once).
fn pod_share(tag: &str) -> Result<PathBuf> {
    let dir = Path::new(POD_SHARES).join(tag);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == dir.to_str());
    if !mounted {
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        mount_9p(tag, &dir)?;
    }
    Ok(dir)
}

/// A path the host named inside a share: plain names only.
fn relative(sub: &str) -> Result<&Path> {
    let p = Path::new(sub);
    let plain = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if sub.is_empty() || !plain {
        bail!("{sub:?} is not a plain relative path in a share");
    }
    Ok(p)
}

fn mount_9p(tag: &str, dir: &Path) -> Result<()> {
    mount(
        Some(tag),
        dir,
        Some("9p"),
        MsFlags::empty(),
        Some("trans=virtio,version=9p2000.L,msize=262144"),
    )
    .with_context(|| format!("mount the host's shared directory {tag} (9p)"))
}

fn unmount_bundle(bundle: &Path) {
    for m in ["rootfs", ".rw", "shm"] {
        let _ = umount2(&bundle.join(m), MntFlags::MNT_DETACH);
    }
    for e in std::fs::read_dir(bundle.join(".lower"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
    }
    // The host's directories are mounted under shares/: removing the bundle while one
    // is still there would delete the host's files. Each must be unmounted and empty.
    let shares = bundle.join("shares");
    for e in std::fs::read_dir(&shares).into_iter().flatten().flatten() {
        let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        if let Err(err) = std::fs::remove_dir(e.path()) {
            tracing::warn!("{} stays: {err}", e.path().display());
            return;
        }
    }
    let _ = std::fs::remove_dir_all(bundle);
}
