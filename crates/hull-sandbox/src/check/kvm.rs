//! Is KVM usable, and at what speed? A throwaway VM (one vCPU, a few pages of anonymous
//! memory, real mode) runs `l: dec ecx; jnz l; hlt`; KVM_RUN is timed until the HLT
//! exit, and the rate is taken between two runs of different lengths. Hardware KVM
//! runs ~1e9 guest instructions a second; an emulated /dev/kvm (as on the machines hull
//! is developed on) ~3e6 to 5e6, far too slow to boot Linux.
//!
//! The loop count starts small and grows until a run takes `TARGET`, so an emulated KVM
//! is measured in ~15 ms. A watchdog thread kicks the vCPU out of KVM_RUN with a signal
//! if the guest has not halted by `DEADLINE`, so a broken KVM reports, never hangs.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::Serialize;

use super::Accel;

/// The KVM device.
pub const KVM_PATH: &str = "/dev/kvm";
/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// A run this long is measurement enough.
const TARGET: Duration = Duration::from_millis(10);
/// The first run's iterations: ~1.4 ms on an emulated KVM, ~1 µs on hardware.
const FIRST_ITERATIONS: u64 = 1_000;
/// ECX is 32 bits wide.
const MAX_ITERATIONS: u64 = u32::MAX as u64;
/// Times the last two run lengths are measured; the fastest of each counts.
const REPEATS: u32 = 3;
/// The whole measurement is abandoned (KVM "unusable") after this long.
const DEADLINE: Duration = Duration::from_secs(2);

/// Guest memory: a few pages at guest-physical 0, the code on the second.
const GUEST_MEM: usize = 0x4000;
const CODE_ADDR: u64 = 0x1000;
/// Real mode, at CODE_ADDR: `l: dec ecx` (66 49), `jnz l` (75 fc), `hlt` (f4).
const LOOP_CODE: [u8; 5] = [0x66, 0x49, 0x75, 0xfc, 0xf4];

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvmReport {
    pub device: String,
    /// KVM_GET_API_VERSION, when the device could be opened.
    pub api_version: Option<i32>,
    pub accel: Accel,
    /// The run the verdict is based on, when one completed.
    pub measurement: Option<Measurement>,
}

/// The guest loop's measured rate: the instructions of its last run beyond those of the
/// run before, and the time they added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// Guest instructions: 2 per loop iteration (plus the HLT when one run is measured).
    pub instructions: u64,
    /// Wall time of the KVM_RUN calls they took, in nanoseconds.
    pub nanos: u64,
    /// KVM_RUN rounds it took to reach a long enough run, the warm-up included.
    pub rounds: u32,
}

impl Measurement {
    /// Guest instructions per second.
    pub fn ips(&self) -> u64 {
        let ips = u128::from(self.instructions) * 1_000_000_000 / u128::from(self.nanos.max(1));
        u64::try_from(ips).unwrap_or(u64::MAX)
    }
}

/// Why the throwaway VM could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    #[error("cannot open {KVM_PATH}: {0}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0}, hull speaks version {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot map guest memory: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("the test guest stopped with {0} instead of HLT")]
    Exit(String),
    #[error("the test guest did not reach HLT within {0:?}")]
    Timeout(Duration),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmProbeError {
    move |source| KvmProbeError::Ioctl { what, source }
}

/// Probe /dev/kvm: present, openable, API version, and speed.
pub fn probe() -> KvmReport {
    let mut report = KvmReport {
        device: KVM_PATH.to_owned(),
        api_version: None,
        accel: Accel::Absent(format!("{KVM_PATH} does not exist")),
        measurement: None,
    };
    if !Path::new(KVM_PATH).exists() {
        return report;
    }
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            report.accel = Accel::Unusable(KvmProbeError::Open(e).to_string());
            return report;
        }
    };
    let version = kvm.get_api_version();
    report.api_version = Some(version);
    let measured = if version == KVM_API_VERSION {
        measure(&kvm)
    } else {
        Err(KvmProbeError::ApiVersion(version))
    };
    match measured {
        Ok(m) => {
            report.accel = Accel::classify(m.ips());
            report.measurement = Some(m);
        }
        Err(e) => report.accel = Accel::Unusable(e.to_string()),
    }
    report
}

/// Run the guest loop with more iterations each round until one run takes `TARGET`;
/// the rate is the last two runs' difference, instructions over time.
///
/// Every KVM_RUN has a fixed cost, and a VM's first runs pay more (its page tables,
/// and nested under QEMU/TCG the first VMRUN): measured in such an L1, 1000 iterations
/// took 25 ms in a fresh VM's first run and 1.2 ms in its second, which read as
/// "emulated, 0.08 M/s" on a KVM that runs 950 M/s. So a warm-up run comes first, and
/// the difference of two runs cancels the per-run cost.
fn measure(kvm: &Kvm) -> Result<Measurement, KvmProbeError> {
    let mut vm = TestVm::new(kvm, &LOOP_CODE)?;
    // Dropped in reverse: the watchdog is joined before the signal handler goes.
    let _kick = KickSignal::install()?;
    let watchdog = Watchdog::start(DEADLINE);
    vm.run(FIRST_ITERATIONS, &watchdog)?;
    let mut iterations = FIRST_ITERATIONS;
    let mut rounds = 1;
    let mut prev: Option<(u64, Duration)> = None;
    loop {
        let took = vm.run(iterations, &watchdog)?;
        rounds += 1;
        tracing::debug!(iterations, ?took, "kvm probe round");
        if took >= TARGET || iterations >= MAX_ITERATIONS {
            // Noise only slows a run down (a nested L1's QEMU preempted on a busy host
            // read 46 M/s where other runs read 330 to 950): the fastest run of each
            // length counts. Not the fastest pair: a slowed shorter run inflates it.
            let (mut prev, mut last) = (prev, took);
            for _ in 1..REPEATS {
                if let Some((pi, pt)) = prev {
                    prev = Some((pi, pt.min(vm.run(pi, &watchdog)?)));
                    rounds += 1;
                }
                last = last.min(vm.run(iterations, &watchdog)?);
                rounds += 1;
            }
            return Ok(marginal(prev, (iterations, last), rounds));
        }
        prev = Some((iterations, took));
        // Aim at 1.5 × TARGET for the next run, growing at most 16-fold.
        let grow = (TARGET.as_nanos() * 3 / 2)
            .checked_div(took.as_nanos())
            .unwrap_or(16)
            .clamp(2, 16) as u64;
        iterations = (iterations * grow).min(MAX_ITERATIONS);
    }
}

/// The rate between two runs (iterations, time); from the last run alone when there is
/// no earlier one or the earlier one did not take less time (noise).
pub(crate) fn marginal(
    prev: Option<(u64, Duration)>,
    last: (u64, Duration),
    rounds: u32,
) -> Measurement {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match prev {
        Some((pi, pt)) if pt < last.1 && pi < last.0 => Measurement {
            instructions: 2 * (last.0 - pi),
            nanos: nanos(last.1 - pt),
            rounds,
        },
        _ => Measurement {
            instructions: 2 * last.0 + 1,
            nanos: nanos(last.1),
            rounds,
        },
    }
}

/// A one-vCPU real-mode VM with `code` at CODE_ADDR. Fields drop in order: the vCPU,
/// the VM, and only then the memory the VM maps.
struct TestVm {
    vcpu: VcpuFd,
    _vm: VmFd,
    _mem: GuestMem,
}

impl TestVm {
    fn new(kvm: &Kvm, code: &[u8]) -> Result<TestVm, KvmProbeError> {
        let mut mem = GuestMem::new(GUEST_MEM)?;
        mem.write(CODE_ADDR as usize, code);
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: GUEST_MEM as u64,
            userspace_addr: mem.addr(),
        };
        // SAFETY: the region is a live private mapping of GUEST_MEM bytes owned by `mem`,
        // which TestVm drops after the VM; it overlaps no other slot (there is none).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        // Real mode, code segment at 0 (the reset state has CS at 0xffff0000).
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        Ok(TestVm {
            vcpu,
            _vm: vm,
            _mem: mem,
        })
    }

    /// Run the code from its start with ECX = `ecx`, timed until HLT.
    fn run(&mut self, ecx: u64, watchdog: &Watchdog) -> Result<Duration, KvmProbeError> {
        let regs = kvm_regs {
            rip: CODE_ADDR,
            rcx: ecx,
            rflags: 2,
            ..kvm_regs::default()
        };
        let vcpu = &mut self.vcpu;
        vcpu.set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
        let start = Instant::now();
        loop {
            if watchdog.fired() {
                return Err(KvmProbeError::Timeout(watchdog.deadline));
            }
            let exit = match vcpu.run() {
                Ok(VcpuExit::Hlt) => return Ok(start.elapsed()),
                // A signal: the watchdog's (checked above), or a stray one (run on).
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(ioctl("KVM_RUN")(e)),
                Ok(VcpuExit::InternalError) => None,
                Ok(other) => Some(exit_name(&other)),
            };
            let name = exit.unwrap_or_else(|| {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which the kernel
                // fills the `internal` member of the kvm_run union.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                format!("KVM_EXIT_INTERNAL_ERROR (suberror {sub})")
            });
            return Err(KvmProbeError::Exit(name));
        }
    }
}

/// The KVM_EXIT_* name of an exit that is not the expected HLT.
fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoOut(port, _) => format!("KVM_EXIT_IO (out to port {port:#x})"),
        VcpuExit::IoIn(port, _) => format!("KVM_EXIT_IO (in from port {port:#x})"),
        VcpuExit::MmioRead(addr, _) => format!("KVM_EXIT_MMIO (read at {addr:#x})"),
        VcpuExit::MmioWrite(addr, _) => format!("KVM_EXIT_MMIO (write at {addr:#x})"),
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN (triple fault)".into(),
        VcpuExit::FailEntry(reason, _) => {
            format!("KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x})")
        }
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION".into(),
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN".into(),
        VcpuExit::Intr => "KVM_EXIT_INTR".into(),
        VcpuExit::Unsupported(n) => format!("exit reason {n}"),
        other => format!("{other:?}"),
    }
}

/// Anonymous memory backing the guest.
struct GuestMem {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<GuestMem, KvmProbeError> {
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        match NonNull::new(p) {
            Some(ptr) if p != libc::MAP_FAILED => Ok(GuestMem { ptr, len }),
            _ => Err(KvmProbeError::Mmap(std::io::Error::last_os_error())),
        }
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "write past guest memory");
        // SAFETY: the range lies inside the mapping (checked above), which `self` owns;
        // `bytes` is ordinary host memory and cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().cast::<u8>().add(offset),
                bytes.len(),
            )
        };
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// The signal that kicks the vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_kick(_: libc::c_int) {}

/// A no-op handler for the kick signal while a probe runs (so that the signal
/// interrupts KVM_RUN with EINTR instead of killing the process). Counted across
/// concurrent probes; the last one out restores the previous disposition.
struct KickSignal;

/// Probes holding the handler, and the disposition it replaced.
static KICK: Mutex<(usize, Option<libc::sigaction>)> = Mutex::new((0, None));

impl KickSignal {
    fn install() -> Result<KickSignal, KvmProbeError> {
        let mut kick = KICK.lock().unwrap_or_else(|e| e.into_inner());
        if kick.0 == 0 {
            // SAFETY: sigaction is a plain C struct; all-zero is a valid value to fill in.
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // No SA_RESTART: KVM_RUN must come back with EINTR.
            new.sa_flags = 0;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to initialised sigaction structs; the handler is an
            // async-signal-safe no-op.
            let rc = unsafe {
                libc::sigemptyset(&mut new.sa_mask);
                libc::sigaction(kick_signal(), &new, &mut old)
            };
            if rc != 0 {
                return Err(KvmProbeError::Signal(std::io::Error::last_os_error()));
            }
            kick.1 = Some(old);
        }
        kick.0 += 1;
        Ok(KickSignal)
    }
}

impl Drop for KickSignal {
    fn drop(&mut self) {
        let mut kick = KICK.lock().unwrap_or_else(|e| e.into_inner());
        kick.0 -= 1;
        if kick.0 == 0 {
            if let Some(old) = kick.1.take() {
                // SAFETY: restores the disposition saved by the first `install`.
                unsafe { libc::sigaction(kick_signal(), &old, std::ptr::null_mut()) };
            }
        }
    }
}

/// A thread that, once `deadline` has passed, signals the probing thread every 10 ms
/// (a signal that lands just before KVM_RUN is entered would be missed) until dropped.
struct Watchdog {
    deadline: Duration,
    fired: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(deadline: Duration) -> Watchdog {
        // SAFETY: pthread_self has no preconditions.
        let target = unsafe { libc::pthread_self() };
        let fired = Arc::new(AtomicBool::new(false));
        let (stop, rx) = mpsc::channel::<()>();
        let flag = fired.clone();
        let thread = std::thread::spawn(move || {
            let mut wait = deadline;
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                flag.store(true, Ordering::SeqCst);
                // SAFETY: `target` is the probing thread, alive until it has joined this
                // thread (Watchdog::drop); the kick signal has a handler until then.
                unsafe { libc::pthread_kill(target, kick_signal()) };
                wait = Duration::from_millis(10);
            }
        });
        Watchdog {
            deadline,
            fired,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `code` in a test VM with a short deadline, when this host has KVM.
    fn run_code(code: &[u8]) -> Option<Result<Duration, KvmProbeError>> {
        let kvm = Kvm::new().ok()?;
        let run = || {
            let mut vm = TestVm::new(&kvm, code)?;
            let _kick = KickSignal::install()?;
            let watchdog = Watchdog::start(Duration::from_millis(200));
            vm.run(0, &watchdog)
        };
        Some(run())
    }

    #[test]
    fn a_guest_that_never_halts_times_out() {
        // l: jmp l
        let Some(r) = run_code(&[0xeb, 0xfe]) else {
            eprintln!("skipped: no usable {KVM_PATH}");
            return;
        };
        assert!(matches!(r, Err(KvmProbeError::Timeout(_))), "{r:?}");
    }

    #[test]
    fn other_exits_are_named() {
        // out 0x80, al
        let Some(r) = run_code(&[0xe6, 0x80, 0xf4]) else {
            eprintln!("skipped: no usable {KVM_PATH}");
            return;
        };
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("KVM_EXIT_IO (out to port 0x80)"), "{msg}");
    }

    #[test]
    fn this_host_is_measured() {
        if !Path::new(KVM_PATH).exists() {
            eprintln!("skipped: no {KVM_PATH}");
            return;
        }
        let r = probe();
        assert_eq!(r.api_version, Some(KVM_API_VERSION), "{r:?}");
        let m = r.measurement.expect("a measurement");
        // The last run took TARGET and had at least twice the iterations of the one
        // before, so their difference is most of a TARGET.
        assert!(
            m.nanos >= TARGET.as_nanos() as u64 / 4 || m.instructions > MAX_ITERATIONS,
            "{m:?}"
        );
        assert!(m.rounds >= 2, "a warm-up run and a measured one: {m:?}");
        assert_eq!(r.accel.ips(), Some(m.ips()));
    }
}
