//! containerd-shim-hull-v2: containerd's runtime v2 shim for hull (task API v2, the one
//! containerd 1.6 and 1.7 speak). Installed as `containerd-shim-hull-v2` it runs
//! containers in micro-VMs; as `containerd-shim-hull-ns-v2` (a symlink) with namespaces.
//! Everything a container needs is done by exec of `hull`.

mod bootstrap;
mod error;
mod flags;
mod hull;
mod log;
mod metrics;
mod mounts;
mod oom;
mod podcgroup;
mod publisher;
mod reaper;
mod serve;
mod service;
mod spec;
mod state;
mod stdio;
mod task;

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let flags = match flags::parse(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", argv0.to_string_lossy());
            std::process::exit(1);
        }
    };
    let isolation = hull::Isolation::from_program(&argv0);
    let r = match flags.action.as_str() {
        "start" => bootstrap::start(&flags, &argv0),
        "delete" => bootstrap::delete(&flags),
        "serve" => serve::serve(&flags, isolation),
        other => Err(anyhow::anyhow!(
            "unknown action {other:?}: containerd runs `start` and `delete`"
        )),
    };
    if let Err(e) = r {
        eprintln!("{}: {e:#}", argv0.to_string_lossy());
        std::process::exit(1);
    }
}
