//! A whole VM from a `VmConfig`: memory, the in-kernel interrupt controllers, the legacy
//! devices, the kernel, and one thread per vCPU, each under its seccomp allowlist. The
//! calling thread waits for the first vCPU to stop, or for SIGTERM/SIGINT/SIGHUP, and
//! then stops the others.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, layout, mptable, BootSource, Loaded};
use crate::config::{SerialOut, VmConfig};
use crate::devices::bus::{Buses, MmioBus, PioBus};
use crate::devices::i8042::{self, Keyboard, I8042};
use crate::devices::serial::{self, Irq, SerialDevice};
use crate::devices::virtio::mmio::QUEUE_NOTIFY_OFFSET;
use crate::devices::virtio::{
    cmdline_entry, net, Balloon, Block, Console, MmioTransport, Net, Rng, VirtioDevice, Vsock,
    MMIO_WINDOW,
};
use crate::error::{kvm, Result, VmmError};
use crate::event_loop::{self, End, HostSource, QueueNotifier, StopSignals};
use crate::seccomp;
use crate::vstate::vcpu::{Stopped, Vcpu};
use crate::vstate::{memory, setup, vm::Vm};

/// How a VM that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest pulled the i8042 reset line: a micro-VM's reboot and power-off.
    Reset,
    /// A vCPU halted with interrupts off (only guests without the in-kernel APIC).
    Halted,
    /// A stop signal reached hull-vmm.
    Signal(i32),
}

impl Outcome {
    /// The exit status `hull vmm` reports, in the shell's convention for signals.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Reset | Outcome::Halted => 0,
            Outcome::Signal(sig) => 128 + sig,
        }
    }
}

pub struct Machine {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    buses: Arc<Buses>,
    queues: Vec<QueueNotifier>,
    hosts: Vec<HostSource>,
    keyboard: Keyboard,
    shutdown_grace: Duration,
    seccomp: bool,
    defer_teardown: bool,
    confine_caller: bool,
    pub loaded: Loaded,
    pub cmdline: String,
}

impl Machine {
    pub fn build(config: &VmConfig) -> Result<Machine> {
        let vm = Vm::new(memory::create(
            config.memory_bytes(),
            config.memory_backend,
            config.hugepages,
        )?)?;
        vm.add_irqchip()?;
        let reset = Arc::new(AtomicBool::new(false));

        let mut pio = PioBus::new();
        let out: Box<dyn Write + Send> =
            match &config.serial {
                SerialOut::Stdout => Box::new(std::io::stdout()),
                SerialOut::None => Box::new(std::io::sink()),
                SerialOut::File(path) => Box::new(File::create(path).map_err(|e| {
                    VmmError::Device(format!("serial output {}: {e}", path.display()))
                })?),
            };
        let irq = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| VmmError::Device(format!("serial interrupt eventfd: {e}")))?;
        vm.fd
            .register_irqfd(&irq, layout::IRQ_COM1)
            .map_err(kvm("register the serial IRQ"))?;
        pio.insert(
            serial::COM1,
            serial::PORTS,
            Box::new(SerialDevice::with_irq(out, Irq::Event(irq))),
        );
        let kbd_irq = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| VmmError::Device(format!("keyboard interrupt eventfd: {e}")))?;
        vm.fd
            .register_irqfd(&kbd_irq, layout::IRQ_KEYBOARD)
            .map_err(kvm("register the keyboard IRQ"))?;
        let (controller, keyboard) = I8042::new(reset.clone(), Some(kbd_irq));
        pio.insert(i8042::BASE, i8042::PORTS, Box::new(controller));
        let mut mmio = MmioBus::new();
        let mut cmdline = config.cmdline.trim().to_string();
        let mut devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
        let mut queues = Vec::new();
        for disk in &config.block {
            let block = Block::new(&disk.path, disk.read_only, &disk.serial)
                .map_err(|e| VmmError::Device(format!("disk {}: {e}", disk.path.display())))?;
            devices.push(Arc::new(Mutex::new(block)));
        }
        if config.rng {
            devices.push(Arc::new(Mutex::new(Rng::new())));
        }
        let mut hosts = Vec::new();
        if let Some(v) = &config.vsock {
            let vsock = Vsock::new(v.guest_cid, &v.uds_path)
                .map_err(|e| VmmError::Device(format!("vsock: {e}")))?;
            let vsock = Arc::new(Mutex::new(vsock));
            let fd = lock(&vsock).host_event_fd();
            hosts.push(host_source(&vsock, fd, "vsock", Vsock::process_host_events));
            devices.push(vsock);
        }
        if let Some(c) = &config.console {
            let console =
                Console::new(&c.socket).map_err(|e| VmmError::Device(format!("console: {e}")))?;
            let console = Arc::new(Mutex::new(console));
            let fd = lock(&console).host_event_fd();
            hosts.push(host_source(
                &console,
                fd,
                "virtio-console",
                Console::process_host_events,
            ));
            devices.push(console);
        }
        for n in &config.net {
            let tap = match (&n.tap, n.tap_fd) {
                (Some(name), _) => net::tap::open(name),
                // SAFETY: the config gives each fd once (validated), and nothing in
                // hull-vmm opened it: it was open at exec.
                (None, Some(fd)) => unsafe { net::tap::adopt(fd) }.map(|(fd, _)| fd),
                (None, None) => return Err(VmmError::Device(n.label())),
            }
            .map_err(|e| VmmError::Device(e.to_string()))?;
            let device = Net::new(tap, n.guest_mac.map(|m| m.0))
                .map_err(|e| VmmError::Device(format!("{}: {e}", n.label())))?;
            let device = Arc::new(Mutex::new(device));
            let fd = lock(&device).host_event_fd();
            hosts.push(host_source(
                &device,
                fd,
                "virtio-net",
                Net::process_host_events,
            ));
            devices.push(device);
        }
        if config.free_page_reporting {
            devices.push(Arc::new(Mutex::new(Balloon::new())));
        }
        for (i, device) in devices.into_iter().enumerate() {
            let base = layout::MMIO_BASE + i as u64 * layout::MMIO_SIZE;
            let irq = layout::IRQ_VIRTIO_FIRST + i as u32;
            let transport = MmioTransport::new(vm.memory.clone(), device)
                .map_err(|e| VmmError::Device(format!("virtio-mmio at {base:#x}: {e}")))?;
            vm.fd
                .register_irqfd(transport.interrupt().eventfd(), irq)
                .map_err(kvm("register a virtio IRQ"))?;
            let device = transport.device();
            let count = lock(&device).queue_max_sizes().len();
            for queue in 0..count {
                let fd = EventFd::new(EFD_NONBLOCK)
                    .map_err(|e| VmmError::Device(format!("queue eventfd: {e}")))?;
                let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
                vm.fd
                    .register_ioevent(&fd, &notify, queue as u32)
                    .map_err(kvm("register a queue notification"))?;
                queues.push(QueueNotifier {
                    fd,
                    device: device.clone(),
                    queue,
                });
            }
            mmio.insert(base, MMIO_WINDOW, Box::new(transport));
            // Linux finds virtio-mmio devices without ACPI or a device tree only here.
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&cmdline_entry(base, irq));
        }

        let loaded = boot::load(
            &vm.memory,
            &BootSource {
                kernel: &config.kernel,
                initramfs: config.initramfs.as_deref(),
                cmdline: &cmdline,
                // Huge pages are for fewer nested page faults; a file mapping splits them.
                share_file_pages: config.memory_backend == memory::Backend::Anonymous
                    && config.hugepages == memory::HugePages::None,
            },
        )?;
        mptable::write(&vm.memory, config.vcpus)?;

        let mut vcpus = Vec::with_capacity(config.vcpus.into());
        for id in 0..config.vcpus {
            let vcpu = Vcpu::with_reset_line(&vm, id.into(), reset.clone())?;
            setup::configure(&vm.kvm, &vcpu.fd, id, config.vcpus)?;
            if id == 0 {
                setup::set_entry(&vcpu.fd, &vm.memory, loaded.entry)?;
            }
            vcpus.push(vcpu);
        }
        tracing::debug!(entry = ?loaded.entry, initramfs = ?loaded.initramfs, "VM built");
        Ok(Machine {
            vm,
            vcpus,
            buses: Arc::new(Buses::new(pio, mmio)),
            queues,
            hosts,
            keyboard,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            seccomp: config.seccomp,
            defer_teardown: false,
            confine_caller: false,
            loaded,
            cmdline,
        })
    }

    /// Leaves the kernel's VM teardown to a helper process (see `teardown`), so that
    /// this process can exit without waiting for it. Only for a process that exits
    /// right after `run`: the guest memory stays mapped until then.
    pub fn defer_teardown(&mut self) {
        self.defer_teardown = true;
    }

    /// Puts the calling thread under its own allowlist (`seccomp::MAIN`) once `run` has
    /// started the others, so that no thread of the process is unfiltered. Only for a
    /// process that exits right after `run`: the caller can then do little more than
    /// drop what `run` returns and exit.
    pub fn confine_caller(&mut self) {
        self.confine_caller = true;
    }

    /// Runs the VM to its end. Returns an error if a vCPU stopped with one (the first
    /// one, which is the cause; the others only saw the stop).
    ///
    /// Threads: one per vCPU, and a VMM thread that waits for the end and stops the
    /// rest, each under its own allowlist. The calling thread only waits for the VMM
    /// thread and drops what the others may not close.
    pub fn run(self) -> Result<Outcome> {
        let signals = StopSignals::block()?;
        let done = EventFd::new(EFD_NONBLOCK)
            .map_err(|e| VmmError::Device(format!("vCPU exit eventfd: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let kickers: Vec<_> = self.vcpus.iter().map(|v| v.kicker()).collect();
        let seccomp = self.seccomp;
        tracing::debug!(
            cpu_ms = process_cpu_ms(),
            "CPU time of the process before the first KVM_RUN"
        );
        // No guest code runs before every thread is under its allowlist: each installs
        // its filter, then all wait here (the calling thread too, once filtered).
        let filtered = Arc::new(Barrier::new(self.vcpus.len() + 2));
        let vcpus = VcpuThreads {
            buses: self.buses.clone(),
            memory: self.vm.memory.clone(),
            tx,
            seccomp,
            filtered: filtered.clone(),
        };
        let threads = vcpus.spawn(self.vcpus, &done)?;
        let vmm = VmmThread {
            signal_fd: signals.fd.as_raw_fd(),
            done_fd: done.as_raw_fd(),
            queues: self.queues,
            hosts: self.hosts,
            shutdown: (self.keyboard, self.shutdown_grace),
            kickers,
            threads,
            seccomp,
            filtered: filtered.clone(),
        }
        .spawn()?;
        // No thread without an allowlist: this one's, now that it starts no more
        // threads. Unconfined it may not go on.
        if seccomp && self.confine_caller {
            if let Err(e) = seccomp::install_main() {
                tracing::error!("the main thread's seccomp filter: {e}");
                // SAFETY: ends the process at once; the VM goes with it.
                unsafe { libc::_exit(1) };
            }
        }
        filtered.wait();
        let (end, _queues, _hosts) = vmm
            .join()
            .map_err(|_| VmmError::Device("the VMM thread panicked".into()))?;
        let signal = match end? {
            End::Signal(sig) => Some(sig),
            End::VcpuStopped => None,
        };
        tracing::debug!(
            resident_kib = resident_kib(&self.vm.memory),
            "guest memory touched"
        );
        drop(signals);
        // Every vCPU thread has sent its result and handed back its fds.
        let stopped: Vec<_> = rx.iter().collect();
        if self.defer_teardown {
            defer_teardown(&self.vm, &stopped);
        }
        if let Some(sig) = signal {
            return Ok(Outcome::Signal(sig));
        }
        outcome_of(stopped)
    }
}

/// What a vCPU thread hands back: its result, and the fds it may not close.
type VcpuEnd = (Result<Stopped>, Vcpu, EventFd);

/// What every vCPU thread shares.
struct VcpuThreads {
    buses: Arc<Buses>,
    memory: GuestMemoryMmap,
    tx: mpsc::Sender<VcpuEnd>,
    seccomp: bool,
    filtered: Arc<Barrier>,
}

impl VcpuThreads {
    /// One thread per vCPU: filtered, then past the barrier, then running the guest;
    /// each writes `done` when its vCPU stops.
    fn spawn(self, vcpus: Vec<Vcpu>, done: &EventFd) -> Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::new();
        for (id, mut vcpu) in vcpus.into_iter().enumerate() {
            let filtered = self.filtered.clone();
            let (buses, memory, tx) = (self.buses.clone(), self.memory.clone(), self.tx.clone());
            let seccomp = self.seccomp;
            let done = done
                .try_clone()
                .map_err(|e| VmmError::Device(format!("vCPU exit eventfd: {e}")))?;
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let r = if seccomp {
                        seccomp::install_vcpu()
                    } else {
                        Ok(())
                    };
                    filtered.wait();
                    let r = r.and_then(|()| vcpu.run(&buses, &memory));
                    let _ = done.write(1);
                    // Closing fds is not on the vCPU allowlist: the vCPU and the eventfd
                    // go back to the calling thread, which drops them.
                    let _ = tx.send((r, vcpu, done));
                })
                .map_err(|e| VmmError::Device(format!("cannot start a vCPU thread: {e}")))?;
            threads.push(thread);
        }
        Ok(threads)
    }
}

/// The VMM thread's share: the event loop's sources, and the vCPUs to stop at the end.
struct VmmThread {
    signal_fd: std::os::fd::RawFd,
    done_fd: std::os::fd::RawFd,
    queues: Vec<QueueNotifier>,
    hosts: Vec<HostSource>,
    shutdown: (Keyboard, Duration),
    kickers: Vec<crate::vstate::vcpu::Kicker>,
    threads: Vec<JoinHandle<()>>,
    seccomp: bool,
    filtered: Arc<Barrier>,
}

type VmmEnd = (Result<End>, Vec<QueueNotifier>, Vec<HostSource>);

impl VmmThread {
    /// Runs the event loop until the end, then stops and joins the vCPU threads.
    fn spawn(self) -> Result<JoinHandle<VmmEnd>> {
        std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                let VmmThread {
                    signal_fd,
                    done_fd,
                    queues,
                    mut hosts,
                    shutdown,
                    kickers,
                    threads,
                    seccomp,
                    filtered,
                } = self;
                let end = if seccomp {
                    seccomp::install_vmm()
                } else {
                    Ok(())
                };
                filtered.wait();
                let end = end.and_then(|()| {
                    event_loop::run(signal_fd, done_fd, &queues, &mut hosts, &shutdown)
                });
                for k in &kickers {
                    k.kick();
                }
                for t in threads {
                    let _ = t.join();
                }
                // The fds go back to be closed outside the filter, as the vCPUs' do.
                (end, queues, hosts)
            })
            .map_err(|e| VmmError::Device(format!("cannot start the VMM thread: {e}")))
    }
}

fn defer_teardown(vm: &Vm, stopped: &[VcpuEnd]) {
    let mut keep = vec![vm.fd.as_raw_fd()];
    keep.extend(stopped.iter().map(|(_, vcpu, _)| vcpu.fd.as_raw_fd()));
    match crate::teardown::defer(&keep) {
        // The mapping is shared with the helper: unmapping it here would do the work
        // here. The process is about to exit.
        Ok(()) => std::mem::forget(vm.memory.clone()),
        Err(e) => tracing::debug!("VM teardown not deferred: {e}"),
    }
}

/// The first error a vCPU stopped with (the cause: the others only saw the stop), else
/// how the guest ended.
fn outcome_of(stopped: Vec<VcpuEnd>) -> Result<Outcome> {
    let mut outcome = None;
    for (r, _vcpu, _done) in stopped {
        match r {
            Err(e) => return Err(e),
            Ok(Stopped::Reset) => outcome = Some(Outcome::Reset),
            Ok(Stopped::Halted) => outcome = outcome.or(Some(Outcome::Halted)),
            Ok(Stopped::Kicked) => {}
        }
    }
    outcome.ok_or_else(|| VmmError::UnexpectedExit("every vCPU was stopped from outside".into()))
}

/// CPU time this process has used so far, in milliseconds.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// How much of guest memory the host has backed with pages: what the guest touched
/// plus what hull-vmm wrote into it (kernel, initramfs, boot structures).
fn resident_kib(memory: &vm_memory::GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
    let page = 4096usize;
    let mut pages = 0u64;
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is the region's own mapping, alive while `memory` is;
        // `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if r == 0 {
            pages += vec.iter().filter(|b| **b & 1 != 0).count() as u64;
        }
    }
    pages * page as u64 / 1024
}

/// The event loop's handle on a device's host side: when `fd` is readable, `work`.
fn host_source<D: Send + 'static, E: std::fmt::Display + 'static>(
    device: &Arc<Mutex<D>>,
    fd: std::os::fd::RawFd,
    name: &'static str,
    work: fn(&mut D) -> std::result::Result<(), E>,
) -> HostSource {
    let device = device.clone();
    HostSource {
        fd,
        work: Box::new(move || {
            if let Err(e) = work(&mut lock(&device)) {
                tracing::warn!("{name}: {e}");
            }
        }),
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
