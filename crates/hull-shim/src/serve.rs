//! The daemon `start` leaves behind: subreaper of the containers' processes, serving
//! the Task service on the socket `start` bound, until Shutdown finds no container.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::shim_sync::create_task;
use containerd_shim_protos::ttrpc::Server;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use crate::bootstrap::{base_root, LISTEN_FD_ENV};
use crate::flags::Flags;
use crate::hull::{self, Hull, Isolation};
use crate::log;
use crate::publisher::Publisher;
use crate::reaper::{self, Reaper};
use crate::service::Shared;
use crate::task::Service;

/// How often a namespace container's cgroup is looked at for OOM kills.
const OOM_POLL: Duration = Duration::from_secs(1);

fn listener() -> Result<OwnedFd> {
    let fd: i32 = std::env::var(LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{LISTEN_FD_ENV} names no fd: run by `start`"))?;
    if fd < 3 || fcntl(unsafe_borrow(fd), FcntlArg::F_GETFD).is_err() {
        bail!("{LISTEN_FD_ENV}={fd} is not an open socket");
    }
    // SAFETY: start handed us this fd (checked open above) and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    std::env::remove_var(LISTEN_FD_ENV);
    Ok(owned)
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for one F_GETFD on a number that may be closed; the kernel
    // answers EBADF then, nothing is dereferenced.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

pub fn serve(flags: &Flags, isolation: Isolation) -> Result<()> {
    log::set_debug(flags.debug);
    // One malloc arena: glibc would give each of the daemon's threads (reaper, exits,
    // oom, events, ttrpc's) an arena of its own, per pod; they move little data.
    // SAFETY: mallopt with integer arguments, before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // Before any thread: every thread inherits the mask.
    reaper::block_signals()?;
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let listen = listener()?;
    let socket = socket_path(&listen);
    let (tx, rx) = channel();
    let reaper = Reaper::new(tx);
    let r = reaper.clone();
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reaper::run(r))?;
    let root = base_root().join(&flags.namespace);
    std::fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
    let console_dir = base_root().join(".console");
    std::fs::create_dir_all(&console_dir)?;
    let hull = Hull {
        bin: hull::find_hull()?,
        root,
        isolation,
        reaper,
    };
    let ttrpc = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS is not set")?;
    let events = Publisher::start(ttrpc, flags.namespace.clone());
    let shared = Arc::new(Shared::new(hull, events, console_dir));
    let s = shared.clone();
    std::thread::Builder::new()
        .name("exits".into())
        .spawn(move || {
            for exit in rx {
                s.on_exit(exit);
            }
        })?;
    let s = shared.clone();
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(move || loop {
            std::thread::sleep(OOM_POLL);
            for c in s.all() {
                s.check_oom(&c, &mut c.lock());
            }
        })?;
    let service = create_task(Arc::new(Service {
        shared: shared.clone(),
    }));
    use std::os::fd::IntoRawFd;
    let mut server = Server::new()
        .add_listener(listen.into_raw_fd())?
        .register_service(service)
        // Few idle workers per connection (containerd opens one per task).
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(4);
    server.start()?;
    log::info(&format!(
        "serving {} ({} isolation)",
        socket.display(),
        isolation.as_str()
    ));
    shared.wait_finished();
    shared.events.close(Duration::from_secs(2));
    let _ = std::fs::remove_file(&socket);
    // The Shutdown reply is on its way; containerd takes a closed connection for it too.
    std::thread::sleep(Duration::from_millis(20));
    std::process::exit(0);
}

fn socket_path(fd: &OwnedFd) -> std::path::PathBuf {
    use nix::sys::socket::{getsockname, UnixAddr};
    use std::os::fd::AsRawFd;
    getsockname::<UnixAddr>(fd.as_raw_fd())
        .ok()
        .and_then(|a| a.path().map(|p| p.to_path_buf()))
        .unwrap_or_default()
}
