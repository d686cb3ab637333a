//! The VMM thread's loop: one epoll over the stop signals, the vCPUs' "a vCPU stopped"
//! eventfd, every virtio queue's ioeventfd (KVM signals it when the guest writes
//! QueueNotify, without an exit to user space, so device work runs here and never on
//! a vCPU thread), and the host-side fds of devices that have some (vsock's sockets).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::i8042::Keyboard;
use crate::devices::virtio::VirtioDevice;
use crate::error::{Result, VmmError};

/// A queue's notification: the ioeventfd KVM signals, and the device to run.
pub struct QueueNotifier {
    pub fd: EventFd,
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub queue: usize,
}

/// Host-side work of a device: `fd` becomes readable when `work` has something to do.
pub struct HostSource {
    pub fd: RawFd,
    pub work: Box<dyn FnMut() + Send>,
}

/// Why the loop ended.
pub enum End {
    Signal(i32),
    VcpuStopped,
}

const SIGNAL: u64 = 0;
const VCPU_DONE: u64 = 1;
const FIRST_QUEUE: u64 = 2;

/// Runs until a vCPU stops (`vcpu_done`) or a stop signal ends the VM. The first stop
/// signal types Ctrl-Alt-Del on the guest's keyboard and gives it `shutdown.1` to
/// stop by itself (End::VcpuStopped); after that, or at a second signal, End::Signal.
pub fn run(
    signal_fd: RawFd,
    vcpu_done: RawFd,
    queues: &[QueueNotifier],
    hosts: &mut [HostSource],
    shutdown: &(Keyboard, Duration),
) -> Result<End> {
    let err =
        |what: &'static str| move |e: std::io::Error| VmmError::Device(format!("{what}: {e}"));
    let epoll = Epoll::new().map_err(err("epoll"))?;
    let add = |fd: RawFd, tag: u64| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, tag),
            )
            .map_err(err("epoll_ctl"))
    };
    add(signal_fd, SIGNAL)?;
    add(vcpu_done, VCPU_DONE)?;
    for (i, q) in queues.iter().enumerate() {
        add(q.fd.as_raw_fd(), FIRST_QUEUE + i as u64)?;
    }
    let first_host = FIRST_QUEUE + queues.len() as u64;
    for (i, h) in hosts.iter().enumerate() {
        add(h.fd, first_host + i as u64)?;
    }
    let mut events = vec![EpollEvent::default(); 16];
    // The signal that asked the guest to shut down, and until when it may.
    let mut asked: Option<(i32, Instant)> = None;
    loop {
        let timeout = match asked {
            None => -1,
            Some((sig, deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::info!(
                        signal = sig,
                        "the guest did not shut down in time: stopping it"
                    );
                    return Ok(End::Signal(sig));
                }
                left.as_millis().min(i32::MAX as u128) as i32 + 1
            }
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err("epoll_wait")(e)),
        };
        for event in &events[..n] {
            match event.data() {
                SIGNAL => {
                    let Some(sig) = read_signal(signal_fd) else {
                        continue;
                    };
                    let (keyboard, grace) = shutdown;
                    if asked.is_some() || grace.is_zero() {
                        tracing::info!(signal = sig, "stop signal: stopping the VM");
                        return Ok(End::Signal(sig));
                    }
                    tracing::info!(
                        signal = sig,
                        grace_ms = grace.as_millis() as u64,
                        "stop signal: Ctrl-Alt-Del to the guest"
                    );
                    keyboard.ctrl_alt_del();
                    asked = Some((sig, Instant::now() + *grace));
                }
                VCPU_DONE => return Ok(End::VcpuStopped),
                tag if tag < first_host => {
                    let q = &queues[(tag - FIRST_QUEUE) as usize];
                    // The count says how many notifies; one pass serves them all.
                    let _ = q.fd.read();
                    let mut device = q.device.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = device.process_queue(q.queue) {
                        tracing::debug!(queue = q.queue, "virtio queue: {e}");
                    }
                }
                tag => (hosts[(tag - first_host) as usize].work)(),
            }
        }
    }
}

fn read_signal(fd: RawFd) -> Option<i32> {
    // SAFETY: a zeroed signalfd_siginfo is a valid buffer of its own size.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`.
    let r = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (r == size as isize).then_some(info.ssi_signo as i32)
}

/// SIGTERM, SIGINT and SIGHUP, blocked in this thread and so in every vCPU thread it
/// starts, and read from a signalfd instead: a vCPU thread's filter allows no handler.
pub struct StopSignals {
    pub fd: OwnedFd,
    old: libc::sigset_t,
}

impl StopSignals {
    pub fn block() -> Result<StopSignals> {
        // SAFETY: plain sigset manipulation on local values; signalfd returns a new fd
        // that we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(VmmError::Device(format!("signalfd: {e}")));
            }
            Ok(StopSignals {
                fd: OwnedFd::from_raw_fd(fd),
                old,
            })
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}
