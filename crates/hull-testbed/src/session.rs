//! One L1 boot and the commands run in it.
//!
//! The command channel is L1's second UART (ttyS1), on QEMU's stdin and stdout, while
//! the kernel's console is the first (ttyS0), written to a file. Why a second UART and
//! not the console with markers, a virtio-serial port or a 9p share:
//! - the cloud kernel has the 8250 driver built in (and 4 UARTs), but virtio-pci,
//!   virtio-console and 9p only as modules: each would be more modules to carry and load
//!   before the first check could run, and one more thing to break;
//! - the kernel never prints on ttyS1, so no printk (KVM's, a hung task's) can land in
//!   the middle of a command's output, which on a shared console it would;
//! - QEMU feeds a UART only as fast as the guest drains it, so no command byte is lost,
//!   and QEMU's stdio needs no socket to connect to (no race with QEMU's start).
//!
//! The protocol, one line each way (ttyS1 is in raw mode: no echo, no line limit):
//! host `ID SECS BASE64(command)`; L1 runs it with `sh` under `timeout -s KILL SECS`,
//! stdout and stderr together, then answers `@@hull-testbed begin ID`, the output in
//! base64, `@@hull-testbed end ID STATUS`. Base64 keeps any output (an L2 console's
//! escape codes, a line that looks like a marker) from passing for the protocol.
//!
//! QEMU's human monitor listens on a socket in the session's directory: the doorbell
//! (monitor.rs) rings through it, and a timeout reports where L1's vCPU was.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{io_err, Result, TestbedError};
use crate::monitor::{self, Doorbell};
use crate::{cpio, wire, Options};

const MARK: &str = "@@hull-testbed";
/// Beyond a command's own timeout, for L1 to kill it and send the output back.
const HOST_GRACE: Duration = Duration::from_secs(15);
/// `lapic=notscdeadline`: L1 lost its timer interrupt far less often with the APIC
/// timer in one-shot mode than in TSC-deadline mode (monitor.rs has the numbers).
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet tsc=reliable lapic=notscdeadline";

/// What one command did in L1.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub command: String,
    /// Its exit status (137 when `timeout` killed it).
    pub code: i32,
    /// stdout and stderr, interleaved as written.
    pub output: String,
    /// Host wall time from sending the command to its last output line.
    pub elapsed: Duration,
    /// Killed by L1 at its timeout.
    pub timed_out: bool,
}

/// A booted L1. Dropping it kills QEMU and removes its directory.
pub struct L1 {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    doorbell: Option<Doorbell>,
    dir: TempDir,
    next_id: u64,
    broken: Option<String>,
    /// L1's `uname -r`.
    pub kernel: String,
    /// From starting QEMU to L1's init answering.
    pub boot_time: Duration,
}

impl L1 {
    /// Prepares the image (downloading Debian's kernel the first time) and boots it.
    pub fn boot(opts: &Options, progress: &dyn Fn(&str)) -> Result<L1> {
        let prepared = crate::prepare(opts, progress)?;
        let dir = TempDir::new()?;
        let image = dir.0.join("l1.cpio");
        cpio::write(&image, &prepared.entries)?;
        let t = Instant::now();
        let mut child = spawn_qemu(opts, &prepared.kernel.vmlinuz, &dir.0, &image)?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        let reader = stdout.map(|s| std::thread::spawn(move || read_lines(s, tx)));
        let mut l1 = L1 {
            child,
            stdin,
            lines,
            reader,
            doorbell: None,
            dir,
            next_id: 0,
            broken: None,
            kernel: String::new(),
            boot_time: Duration::ZERO,
        };
        if opts.doorbell {
            l1.doorbell = Some(Doorbell::start(l1.monitor_socket()));
        }
        let ready = l1.next_line(t + opts.boot_timeout, "L1's init to answer")?;
        let Some(rest) = ready.strip_prefix(&format!("{MARK} ready ")) else {
            return Err(TestbedError::Protocol(format!(
                "L1's first line is {ready:?}, not the ready marker"
            )));
        };
        l1.kernel = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        l1.boot_time = t.elapsed();
        Ok(l1)
    }

    /// Runs `command` with `sh` in L1; L1 kills it after `timeout` (whole seconds, at
    /// least 1). A command that L1 does not answer for ends the session: every later
    /// call fails with [`TestbedError::Broken`].
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput> {
        if let Some(why) = &self.broken {
            return Err(TestbedError::Broken(why.clone()));
        }
        let r = self.exchange(command, timeout);
        if let Err(e) = &r {
            self.broken = Some(format!(
                "command {} ({command:?}) failed: {e}",
                self.next_id
            ));
        }
        r
    }

    fn exchange(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput> {
        self.next_id += 1;
        let id = self.next_id;
        let secs = timeout.as_secs().max(1);
        let line = format!("{id} {secs} {}\n", wire::encode(command.as_bytes()));
        let start = Instant::now();
        let sent = match self.stdin.as_mut() {
            Some(s) => s.write_all(line.as_bytes()).and_then(|()| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = sent {
            return Err(self.gone(&format!("sending command {id}: {e}")));
        }
        let deadline = start + Duration::from_secs(secs) + HOST_GRACE;
        let what = format!("command {id} ({command:?}) to finish");
        let begin = self.next_line(deadline, &what)?;
        if begin != format!("{MARK} begin {id}") {
            return Err(TestbedError::Protocol(format!(
                "expected the begin marker of command {id}, got {begin:?}"
            )));
        }
        let mut encoded = String::new();
        let code = loop {
            let l = self.next_line(deadline, &what)?;
            if let Some(rest) = l.strip_prefix(&format!("{MARK} end {id} ")) {
                break rest.trim().parse::<i32>().map_err(|_| {
                    TestbedError::Protocol(format!("command {id} ended with {l:?}"))
                })?;
            }
            encoded.push_str(&l);
            encoded.push('\n');
        };
        let elapsed = start.elapsed();
        let output = wire::decode(&encoded).ok_or_else(|| {
            TestbedError::Protocol(format!("the output of command {id} is not base64"))
        })?;
        Ok(CommandOutput {
            command: command.to_string(),
            code,
            output: String::from_utf8_lossy(&output).into_owned(),
            elapsed,
            timed_out: code == 137 && elapsed >= Duration::from_secs(secs),
        })
    }

    fn next_line(&mut self, deadline: Instant, what: &str) -> Result<String> {
        let start = Instant::now();
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(start))
        {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(TestbedError::Timeout {
                what: what.to_string(),
                after: start.elapsed(),
                cpu: self.cpu_state(),
                console: self.console_tail(60),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(self.gone(&format!("waiting for {what}"))),
        }
    }

    /// QEMU closed the channel: says how it ended.
    fn gone(&mut self, what: &str) -> TestbedError {
        let mut status = "still running".to_string();
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = s.to_string();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let err = std::fs::read_to_string(self.dir.0.join("qemu.err")).unwrap_or_default();
        if !err.trim().is_empty() {
            status.push_str(&format!("; QEMU said: {}", err.trim()));
        }
        TestbedError::Gone {
            what: what.to_string(),
            status,
            console: self.console_tail(60),
        }
    }

    /// Where L1's vCPU is, from QEMU's monitor: a stalled L1 prints nothing.
    pub fn cpu_state(&self) -> String {
        monitor::cpu_state(&self.monitor_socket())
    }

    /// Runs a command on QEMU's human monitor and returns what it printed.
    pub fn monitor(&self, command: &str) -> std::io::Result<String> {
        monitor::hmp(&self.monitor_socket(), command)
    }

    fn monitor_socket(&self) -> PathBuf {
        self.dir.0.join("monitor.sock")
    }

    /// The last `n` lines of L1's kernel console (ttyS0).
    pub fn console_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.0.join("console.log")
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// L1's private directory on the host (image, console log), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        self.doorbell = None;
        // Nothing in L1 outlives it, so no clean shutdown is worth waiting for.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn spawn_qemu(opts: &Options, vmlinuz: &Path, dir: &Path, image: &Path) -> Result<Child> {
    let err_path = dir.join("qemu.err");
    let err = std::fs::File::create(&err_path).map_err(io_err("cannot create", &err_path))?;
    let mut cmd = Command::new(&opts.qemu);
    cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &opts.cpus.max(1).to_string()])
        .args(["-m", &opts.memory_mib.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args([
            "-chardev",
            "stdio,id=tb,signal=off",
            "-serial",
            "chardev:tb",
        ])
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("monitor.sock").display()
        ))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(image)
        .args(["-append", KERNEL_CMDLINE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err));
    // Never raise our priority: under `nice -n 19 cargo test` QEMU stays at 19.
    // SAFETY: getpriority has no memory effects; errno is only ambiguous for -1, which
    // then reads as "keep the requested niceness".
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let nice = opts.nice.max(current);
    // SAFETY: setpriority and prctl are async-signal-safe, and nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            // QEMU must not outlive the thread that booted it, even a killed one.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| TestbedError::Tool {
        program: opts.qemu.display().to_string(),
        detail: format!("cannot run: {e} (apt-get install qemu-system-x86)"),
    })
}

fn read_lines(stdout: ChildStdout, tx: Sender<String>) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if tx
                    .send(line.trim_end_matches(['\n', '\r']).to_string())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// `/tmp/hull-testbed.<pid>.<n>`, private to root, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let path = tmp.join(format!("hull-testbed.{}.{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err("cannot create", &path))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the directories of test beds whose process is gone: a SIGKILL skips Drop
/// (QEMU itself died with them, by PDEATHSIG).
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("hull-testbed.")) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_processs_directory_goes_and_a_live_ones_stays() {
        let tmp = std::env::temp_dir().join(format!("hull-testbed-stale-{}", std::process::id()));
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = tmp.join("hull-testbed.4194305.0");
        let live = tmp.join(format!("hull-testbed.{}.7", std::process::id()));
        let other = tmp.join("hull-testbed-test.4194305");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_stale(&tmp);
        let left = [dead.exists(), live.exists(), other.exists()];
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(left, [false, true, true]);
    }
}
