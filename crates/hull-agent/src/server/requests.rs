//! The requests that act on the containers alone, with none of the server's streams,
//! waits or shutdown state.

use anyhow::{bail, Result};
use hull_proto::{Reply, Request};

use crate::containers::Sandbox;

/// The requests that act on the containers alone, with none of the server's streams,
/// waits or shutdown state.
pub(super) fn sandbox_request(sandbox: &mut Sandbox, request: Request) -> Result<Reply> {
    match request {
        Request::StartContainer { id } => sandbox.start(&id)?,
        Request::Signal {
            container,
            exec_id,
            signal,
            all,
        } => sandbox.signal(&(container, exec_id), signal, all)?,
        Request::Stats { container } => {
            let sample = sandbox.stats(&container)?;
            return Ok(Reply::Stats {
                json: sample.json,
                oom_kills: sample.oom_kills,
            });
        }
        Request::ResizeTerminal {
            container,
            exec_id,
            rows,
            cols,
        } => sandbox.resize(&(container, exec_id), rows, cols)?,
        Request::Pids { container } => {
            return Ok(Reply::Pids {
                pids: sandbox.pids(&container)?,
            })
        }
        Request::Pause { container } => sandbox.pause(&container)?,
        Request::Resume { container } => sandbox.resume(&container)?,
        Request::Update {
            container,
            resources,
        } => sandbox.update(&container, &resources)?,
        Request::ConfigureNetwork { interfaces, routes } => {
            crate::network::configure(&interfaces, &routes)?
        }
        Request::DetachImage { image } => sandbox.images.detach(&image)?,
        other => bail!("{other:?} is the server's to answer"),
    }
    Ok(Reply::Done)
}
