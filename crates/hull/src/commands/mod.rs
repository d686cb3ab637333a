//! One function per command; the library does the work, these parse and print.

pub mod check;
pub mod exec;
pub mod features;
pub mod guest;
pub mod info;
pub mod spec;
pub mod update;
pub mod vm;
pub mod vmm;

use std::path::Path;

use anyhow::{bail, Context, Result};
use hull_runtime::container::{self, create::CreateOptions, create::StartMode};

use crate::cli::{Cli, Command, CreateArgs, Global};

pub fn dispatch(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    if g.systemd_cgroup {
        check_systemd()?;
    }
    let root = g.root.as_path();
    match cli.command {
        Command::Create(a) => {
            hull_runtime::selfexe::ensure_sealed()?;
            container::create::create(&create_options(g, &a), StartMode::Fifo)?;
            Ok(0)
        }
        Command::Run {
            create,
            isolation,
            detach,
            keep,
        } => {
            hull_runtime::selfexe::ensure_sealed()?;
            tracing::debug!("sealed");
            let _ = keep;
            // Loaded once, here: it says which isolation, and the runtime takes it on.
            hull_runtime::spec::validate_id(&create.id)?;
            let bundle = hull_runtime::spec::Bundle::load(&create.bundle)?;
            if vm::wanted(isolation.as_deref(), &bundle) {
                return vm::run(g, &create, detach);
            }
            let opts = create_options(g, &create);
            Ok(container::run::run_bundle(&opts, bundle, detach)?)
        }
        Command::Start { id } => {
            container::start::start(root, &id)?;
            Ok(0)
        }
        Command::State { id } => info::state(root, &id),
        Command::Kill { all, id, signal } => {
            let sig = hull_runtime::signal::parse(&signal)?;
            container::kill::kill(root, &id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            if hull_sandbox::run::delete(root, &id, force)? {
                return Ok(0);
            }
            container::delete::delete(root, &id, force)?;
            Ok(0)
        }
        Command::List { format, quiet } => info::list(root, &format, quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => info::ps(root, &id, &format, &ps_args),
        Command::Exec(a) => {
            hull_runtime::selfexe::ensure_sealed()?;
            exec::exec(g, a)
        }
        Command::Pause { id } => {
            container::pause::pause(root, &id)?;
            Ok(0)
        }
        Command::Resume { id } => {
            container::pause::resume(root, &id)?;
            Ok(0)
        }
        Command::Events {
            stats,
            interval,
            id,
        } => info::events(root, &id, stats, &interval),
        Command::Update(a) => update::update(root, a),
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
            println!("{}", serde_json::to_string_pretty(&features::features())?);
            Ok(0)
        }
    }
}

fn create_options(g: &Global, a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        root: g.root.clone(),
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
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
