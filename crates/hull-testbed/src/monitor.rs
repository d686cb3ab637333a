//! QEMU's human monitor on L1: where L1's vCPU is when L1 stops answering, and the
//! doorbell that keeps L1's timers from stalling.
//!
//! Why a doorbell: measured here, L1 now and then loses a timer interrupt while it runs
//! a nested guest on QEMU/TCG's emulated SVM. It then sits in its idle loop's HLT with
//! a timer long expired; nothing runs, and a `hull vmm` boot that takes 15 s never ends
//! (in about 2 of 3 runs with L1's default TSC-deadline timer, 1 in 12 with
//! `lapic=notscdeadline`, 1 in 10 with the HPET as its clock event device). Any
//! interrupt wakes it and the expired timers run: one byte sent to its UART ended a
//! stall, and the command finished. So the host presses Shift on L1's PS/2 keyboard
//! twice a second, an interrupt that no program in L1 reads: with it, 0 stalls in 12
//! runs (one-shot timer) and 0 in 8 (TSC-deadline timer).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the doorbell rings: a lost timer costs at most this.
pub const DOORBELL_PERIOD: Duration = Duration::from_millis(500);

/// Runs `command` on the monitor at `socket` and returns what it printed.
pub fn hmp(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let until_prompt = |s: &mut UnixStream| -> std::io::Result<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"(qemu) ") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&seen).into_owned())
    };
    until_prompt(&mut s)?;
    s.write_all(format!("{command}\n").as_bytes())?;
    until_prompt(&mut s)
}

/// The registers that say where a vCPU is and whether it halted, from `info registers`.
pub fn cpu_state(socket: &Path) -> String {
    let keep = ["RIP=", "CS =", "EFER="];
    match hmp(socket, "info registers") {
        Ok(regs) => regs
            .lines()
            .filter(|l| keep.iter().any(|k| l.contains(k)))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("QEMU's monitor did not answer: {e}"),
    }
}

/// Rings L1's keyboard every [`DOORBELL_PERIOD`] until dropped.
pub struct Doorbell {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Doorbell {
    pub fn start(socket: PathBuf) -> Doorbell {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    // Before QEMU listens, or after it is gone, there is nothing to wake.
                    let _ = hmp(&socket, "sendkey shift");
                    next = Instant::now() + DOORBELL_PERIOD;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Doorbell {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
