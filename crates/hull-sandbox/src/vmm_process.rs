//! A VMM as a child process (QEMU, or hull itself as `hull vmm`): started so that it
//! dies with the hull that started it, waited for with a timeout, killed and reaped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError};
use crate::hypervisor::Vm;

pub struct VmmProcess {
    child: Option<Child>,
    name: &'static str,
    stderr: Option<String>,
    shutdown: ShutdownRequest,
    /// The uid and gid the VMM runs as, held while it may still run.
    _jail: Option<crate::jail::JailId>,
    /// Processes that serve the VMM (QEMU's 9p helpers): they end with it.
    helpers: Vec<Child>,
}

impl VmmProcess {
    /// `helpers` end when the VMM ends.
    pub fn adopt_helpers(&mut self, helpers: Vec<Child>) {
        self.helpers.extend(helpers);
    }

    fn end_helpers(&mut self) {
        for mut h in self.helpers.drain(..) {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// How the VMM is asked to give the guest Ctrl-Alt-Del.
pub enum ShutdownRequest {
    /// SIGTERM, which hull-vmm answers with Ctrl-Alt-Del (and stops the VM itself
    /// after its grace period).
    Sigterm,
    /// `sendkey ctrl-alt-delete` on QEMU's human monitor at this Unix socket.
    QemuMonitor(PathBuf),
}

impl VmmProcess {
    /// Starts `cmd`; `install` says how to get the program when it is missing; `jail` is
    /// the uid the VMM confines itself to, kept claimed as long as this lives.
    pub fn spawn(
        mut cmd: Command,
        name: &'static str,
        install: &str,
        shutdown: ShutdownRequest,
        jail: Option<crate::jail::JailId>,
    ) -> Result<Box<VmmProcess>> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The VM must not outlive the hull that started it, even a SIGKILLed one.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                SandboxError::Tool(format!(
                    "cannot run {}: {e} ({install})",
                    cmd.get_program().to_string_lossy()
                ))
            })?;
        Ok(Box::new(VmmProcess {
            child: Some(child),
            name,
            stderr: None,
            shutdown,
            _jail: jail,
            helpers: Vec::new(),
        }))
    }
}

impl Vm for VmmProcess {
    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| SandboxError::Vm(format!("wait for {}: {e}", self.name)))?
            {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                if !err.trim().is_empty() {
                    tracing::debug!("{}: {}", self.name, err.trim());
                    self.stderr = Some(err.trim().to_string());
                }
                self.child = None;
                self.end_helpers();
                return Ok(Some(status.code().unwrap_or(-1)));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exit_message(&self) -> Option<String> {
        self.stderr.clone()
    }

    fn request_shutdown(&mut self) -> Result<()> {
        let Some(child) = self.child.as_ref() else {
            return Err(SandboxError::Vm(format!(
                "{} has already exited",
                self.name
            )));
        };
        match &self.shutdown {
            ShutdownRequest::Sigterm => {
                // The child is unreaped, so its pid cannot name another process.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .map_err(|e| SandboxError::Vm(format!("SIGTERM to {}: {e}", self.name)))
            }
            ShutdownRequest::QemuMonitor(socket) => qemu_sendkey(socket, "ctrl-alt-delete"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.end_helpers();
    }
}

/// Types `keys` through QEMU's human monitor and waits for its next prompt, which
/// comes once the command has run.
fn qemu_sendkey(socket: &Path, keys: &str) -> Result<()> {
    let err = |what: &str, e: std::io::Error| {
        SandboxError::Vm(format!("QEMU monitor {}: {what}: {e}", socket.display()))
    };
    let mut s = UnixStream::connect(socket).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| err("set a timeout", e))?;
    let prompt = |s: &mut UnixStream| -> std::io::Result<()> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !seen.ends_with(b"(qemu) ") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    prompt(&mut s).map_err(|e| err("read the banner", e))?;
    s.write_all(format!("sendkey {keys}\n").as_bytes())
        .map_err(|e| err("write", e))?;
    prompt(&mut s).map_err(|e| err("read the answer", e))
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
