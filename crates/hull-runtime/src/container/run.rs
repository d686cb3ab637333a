//! `hull run`: create and start in one process, then (unless detached) wait for the
//! container, relaying signals and the terminal, and delete it when it exits.

use super::create::{create_from, CreateOptions, StartMode};
use super::{delete, start, supervise, Container};
use crate::error::{Error, Result};
use crate::sync::Msg;

/// Returns the container's exit code (0 when detached).
pub fn run(opts: &CreateOptions, detach: bool) -> Result<i32> {
    crate::spec::validate_id(&opts.id)?;
    run_bundle(opts, crate::spec::Bundle::load(&opts.bundle)?, detach)
}

/// `run` of a bundle the caller has loaded (and whose id it has validated).
pub fn run_bundle(opts: &CreateOptions, bundle: crate::spec::Bundle, detach: bool) -> Result<i32> {
    let bundle_terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    // The container must become our child when stage 1 exits, so we can wait for it.
    if !detach {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::Setup(format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
        supervise::block_signals()?;
    }
    let (console, relay) = if bundle_terminal && opts.console_socket.is_none() {
        if detach {
            return Err(Error::Setup(
                "process.terminal is true with --detach: pass --console-socket to receive the pty"
                    .into(),
            ));
        }
        let (a, b) = supervise::pty_relay_pair()?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let created = create_from(opts, StartMode::Channel, bundle, console)?;
    let c = created.container;
    let pty = match relay {
        Some(sock) => Some(supervise::receive_pty(&sock).inspect_err(|_| {
            let _ = delete::destroy_after_kill(&c);
        })?),
        None => None,
    };
    if let Err(e) = created.chan.send(&Msg::Go) {
        let _ = delete::destroy_after_kill(&c);
        return Err(e);
    }
    // The init's end of the channel closes at execve: only then is the user's program
    // running, and poststart may come.
    match created.chan.recv() {
        Err(Error::ChildGone) => {}
        Ok(Msg::Error(e)) => {
            let _ = delete::destroy_after_kill(&c);
            return Err(Error::Child(e));
        }
        Ok(m) => {
            let _ = delete::destroy_after_kill(&c);
            return Err(Error::Sync(std::io::Error::other(format!(
                "unexpected {m:?}"
            ))));
        }
        Err(e) => {
            let _ = delete::destroy_after_kill(&c);
            return Err(e);
        }
    }
    start::poststart(&c);
    if detach {
        return Ok(0);
    }
    tracing::debug!("started");
    let code = supervise::wait(c.state.pid, pty);
    tracing::debug!("exited");
    let cleanup = delete::destroy(&Container {
        dir: c.dir.clone(),
        state: c.state.clone(),
    });
    tracing::debug!("destroyed");
    let code = code?;
    cleanup?;
    Ok(code)
}
