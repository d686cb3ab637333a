//! One function per command; the library does the work, these parse and print.

pub mod check;
pub mod exec;
pub mod features;
pub mod guest;
pub mod info;
pub mod spec;
pub mod update;
pub mod vmm;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hull_lifecycle::{choose, Asked, Lifecycle};

use crate::cli::{Cli, Command, Global};

/// What the command line asked for: `--isolation`, or the name `hull-vm`.
fn asked(g: &Global) -> Result<Asked> {
    Ok(Asked {
        flag: g.isolation.as_deref().map(choose::parse_flag).transpose()?,
        vm_command: g.program == choose::VM_COMMAND,
    })
}

pub fn dispatch(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    if g.systemd_cgroup {
        check_systemd()?;
    }
    match g.rootless.as_deref() {
        Some("true") => hull_runtime::rootless::force(true),
        Some("false") => hull_runtime::rootless::force(false),
        _ => {}
    }
    let root = match state_root(g) {
        Ok(root) => root,
        // `spec`, `check` and the like keep no state: no reason to refuse them.
        Err(e) if cli.command.keeps_state() => return Err(e),
        Err(_) => "/run/hull".into(),
    };
    let lc = Lifecycle::new(root, asked(g)?);
    match cli.command {
        Command::Create(a) => {
            hull_runtime::selfexe::ensure_sealed()?;
            lc.create(&a)?;
            Ok(0)
        }
        Command::Run {
            create,
            detach,
            keep,
        } => {
            hull_runtime::selfexe::ensure_sealed()?;
            tracing::debug!("sealed");
            let _ = keep;
            Ok(lc.run(&create, detach)?)
        }
        Command::Start { id } => {
            lc.start(&id)?;
            Ok(0)
        }
        Command::State { id } => info::state(&lc, &id),
        Command::Kill { all, id, signal } => {
            let sig = hull_runtime::signal::parse(&signal)?;
            lc.kill(&id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            lc.delete(&id, force)?;
            Ok(0)
        }
        Command::List { format, quiet } => info::list(&lc, &format, quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => info::ps(&lc, &id, &format, &ps_args),
        Command::Exec(a) => {
            hull_runtime::selfexe::ensure_sealed()?;
            exec::exec(&lc, a)
        }
        Command::Pause { id } => {
            lc.pause(&id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            lc.resume(&id)?;
            Ok(0)
        }
        Command::Events {
            stats,
            interval,
            id,
        } => info::events(&lc, &id, stats, &interval),
        Command::Update(a) => update::update(&lc, a),
        Command::Spec { bundle, rootless } => write_spec(&bundle, rootless),
        Command::Check { json } => check::check(json),
        Command::GuestBuild(a) => guest::build(a),
        Command::Vmm { config } => vmm::run(&config),
        Command::GuestQemuArgs {
            kernel,
            initramfs,
            socket,
            console_log,
        } => guest::qemu_args(kernel, initramfs, socket, console_log),
        Command::Features => {
            out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&features::features())?
            ))?;
            Ok(0)
        }
    }
}

/// `--root`, else /run/hull for root and, as runc has it, $XDG_RUNTIME_DIR/hull for a
/// user without root (who cannot write /run); uid 0 of a user namespace (rootless
/// podman) uses it too unless the environment says USER=root.
fn state_root(g: &Global) -> Result<std::path::PathBuf> {
    if let Some(root) = &g.root {
        return Ok(root.clone());
    }
    let euid = nix::unistd::geteuid();
    let honor_xdg = !euid.is_root()
        || (hull_runtime::rootless::in_user_namespace()
            && std::env::var("USER").map_or(true, |u| u != "root"));
    if !honor_xdg {
        return Ok("/run/hull".into());
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Ok(Path::new(&dir).join("hull")),
        None if euid.is_root() => Ok("/run/hull".into()),
        None => bail!(
            "rootless (uid {euid}): XDG_RUNTIME_DIR is not set, so there is no state directory of yours; set it (e.g. /run/user/{euid}) or pass --root DIR, a directory you own"
        ),
    }
}

/// The systemd cgroup driver talks to systemd; without it there is nobody to talk to.
fn check_systemd() -> Result<()> {
    if !Path::new("/run/systemd/system").is_dir() {
        bail!("--systemd-cgroup: systemd is not running as PID 1 on this host; drop the flag to use cgroupfs directly");
    }
    Ok(())
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<i32> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists: remove it first", path.display());
    }
    let text = serde_json::to_string_pretty(&spec::default_spec(rootless))?;
    std::fs::write(&path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}

/// Writes what a command prints to stdout. A reader that went away (`hull state | grep
/// -q`) ends hull as SIGPIPE ends a C tool, quietly: Rust ignores SIGPIPE, so a
/// `println!` would panic there instead. Only here: elsewhere (relays, hooks) a closed
/// pipe is an error to handle, not a reason to die.
pub fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        r => Ok(r?),
    }
}

fn die_of_sigpipe() -> ! {
    // SAFETY: signal and raise with constant arguments; the default action ends us.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}
