//! A VMM as a child process (QEMU, or hull itself as `hull vmm`): started so that it
//! dies with the hull that started it, waited for with a timeout, killed and reaped.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError};
use crate::hypervisor::Vm;

pub struct VmmProcess {
    child: Option<Child>,
    name: &'static str,
    stderr: Option<String>,
}

impl VmmProcess {
    /// Starts `cmd`; `install` says how to get the program when it is missing.
    pub fn spawn(mut cmd: Command, name: &'static str, install: &str) -> Result<Box<dyn Vm>> {
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

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
