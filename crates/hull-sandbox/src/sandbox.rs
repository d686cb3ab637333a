//! A sandbox: one VM booted with the hull guest, and the agent connection to it. It owns
//! a private directory (agent socket, console log, disk images the caller put there);
//! dropping the sandbox kills the VM and removes the directory, so a failed test or
//! create leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_proto::Request;

use crate::client::AgentClient;
use crate::error::{io_err, Result, SandboxError};
use crate::guest::GuestAssets;
use crate::hypervisor::{Accel, Disk, Hypervisor, Vm, VmConfig};

pub struct SandboxConfig {
    pub assets: GuestAssets,
    /// The sandbox's own directory; created here, removed with the sandbox.
    pub dir: PathBuf,
    pub disks: Vec<Disk>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub accel: Accel,
    /// virtio-net devices on taps the caller opened.
    pub nets: Vec<crate::hypervisor::NetDevice>,
    /// Host directories exported over virtio-9p.
    pub shares: Vec<crate::hypervisor::SharedDir>,
    pub extra_cmdline: String,
    pub boot_timeout: Duration,
}

pub struct Sandbox {
    vm: Box<dyn Vm>,
    /// Shared with the threads that relay stdio and signals.
    pub agent: Arc<AgentClient>,
    dir: PathBuf,
    pub console_log: PathBuf,
    /// From starting the VMM to the agent's hello.
    pub boot_time: Duration,
}

impl Sandbox {
    pub fn start(hv: &dyn Hypervisor, cfg: SandboxConfig) -> Result<Sandbox> {
        std::fs::create_dir_all(&cfg.dir).map_err(io_err("cannot create", &cfg.dir))?;
        let console_log = cfg.dir.join("console.log");
        let vm_config = VmConfig {
            kernel: cfg.assets.vmlinux.clone(),
            root: cfg.assets.root(),
            extra_cmdline: cfg.extra_cmdline.clone(),
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            disks: cfg.disks.clone(),
            transport: hv.transport(&cfg.dir),
            console_log: console_log.clone(),
            accel: cfg.accel,
            nets: cfg.nets.clone(),
            shares: cfg.shares.clone(),
        };
        let t = Instant::now();
        let mut vm = match hv.start(&vm_config) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&cfg.dir);
                return Err(e);
            }
        };
        // Who runs the VM: `hull delete --force` waits for it to be gone (it dies with
        // its hull, by PDEATHSIG, but not at once), even after a SIGKILL of hull here.
        if let Some(start) = hull_runtime::state::process_start_time(vm.pid() as i32) {
            let _ = std::fs::write(cfg.dir.join(VMM_FILE), format!("{} {start}\n", vm.pid()));
        }
        let mut exit = None;
        let alive = || match vm.wait_timeout(Duration::ZERO) {
            Ok(None) => true,
            Ok(Some(code)) => {
                exit = Some(code);
                false
            }
            Err(_) => false,
        };
        match AgentClient::connect_while(&vm_config.transport, cfg.boot_timeout, alive) {
            Ok(agent) => Ok(Sandbox {
                vm,
                agent: Arc::new(agent),
                dir: cfg.dir,
                console_log,
                boot_time: t.elapsed(),
            }),
            Err(e) => {
                let exited = exit.or_else(|| vm.wait_timeout(Duration::ZERO).ok().flatten());
                let said = vm
                    .exit_message()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                vm.kill();
                let console = console_tail(&console_log, 15);
                let _ = std::fs::remove_dir_all(&cfg.dir);
                let e = match e {
                    SandboxError::Vm(m) => m,
                    other => other.to_string(),
                };
                let console = if console.trim().is_empty() {
                    "the guest console is empty".to_string()
                } else {
                    format!("the guest console ended with:\n{console}")
                };
                Err(SandboxError::Vm(format!(
                    "{e}{}; {console}",
                    exited
                        .map(|c| format!(" ({} exited with {c}{said})", hv.name()))
                        .unwrap_or_default()
                )))
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VMM's pid on the host.
    pub fn pid(&self) -> u32 {
        self.vm.pid()
    }

    /// Asks the agent to power the guest off and waits for the VMM to exit; kills it
    /// if it does not within `timeout`.
    ///
    /// The agent powers off once its reply is here (the hang-up says so). An agent that
    /// powers off without waiting (older guests) can lose its reply in the guest's vsock
    /// queue; a VMM that then exits 0 (the guest reset itself) did shut down as asked,
    /// so only a missing reply with any other ending is an error.
    pub fn shutdown(mut self, timeout: Duration) -> Result<()> {
        let asked = self.agent.call(Request::Shutdown, timeout);
        if asked.is_ok() {
            self.agent.hang_up();
        }
        let exited = self.vm.wait_timeout(timeout)?;
        match (asked, exited) {
            (Ok(_), Some(_)) => Ok(()),
            (Err(e), Some(0)) => {
                tracing::debug!("no reply to shutdown ({e}), but the guest powered off");
                Ok(())
            }
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(SandboxError::Vm(format!(
                "the guest did not power off within {} s of the agent's shutdown; killed it",
                timeout.as_secs()
            ))),
        }
    }
}

impl Sandbox {
    /// Ctrl-Alt-Del: the agent stops the containers (SIGTERM, then SIGKILL after its
    /// grace) and powers the guest off. Returns the VMM's exit code; kills the VMM if
    /// it has not exited within `timeout`.
    pub fn ctrl_alt_del(&mut self, timeout: Duration) -> Result<i32> {
        self.vm.request_shutdown()?;
        match self.vm.wait_timeout(timeout)? {
            Some(code) => Ok(code),
            None => Err(SandboxError::Vm(format!(
                "the guest did not shut down within {} s of Ctrl-Alt-Del; killed it",
                timeout.as_secs()
            ))),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `n` lines the guest printed, for error messages.
pub fn console_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// In the sandbox directory: "PID START_TIME" of the VMM process.
pub const VMM_FILE: &str = "vmm";

/// The VMM recorded in sandbox directory `dir`: (pid, start time).
pub fn recorded_vmm(dir: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(dir.join(VMM_FILE)).ok()?;
    let mut words = text.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}
