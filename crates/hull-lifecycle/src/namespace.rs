//! The namespace backend: hull-runtime, in this process (it forks the container's init,
//! so the caller must still be single-threaded: DESIGN.md).

use std::path::Path;

use hull_runtime::container::{self, create::CreateOptions, create::StartMode, Container};
use hull_runtime::spec::Bundle;
use oci_spec::runtime::LinuxResources;

use crate::{Backend, CreateRequest, ExecRequest, Result, Sample, Settings};

pub struct Namespaces;

fn options(root: &Path, req: &CreateRequest) -> CreateOptions {
    CreateOptions {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        root: root.to_path_buf(),
        console_socket: req.console_socket.clone(),
        pid_file: req.pid_file.clone(),
        no_pivot: req.no_pivot,
        no_new_keyring: req.no_new_keyring,
        preserve_fds: req.preserve_fds,
    }
}

impl Backend for Namespaces {
    fn create(&self, root: &Path, req: &CreateRequest, bundle: Bundle, _: &Settings) -> Result<()> {
        container::create::create_from(&options(root, req), StartMode::Fifo, bundle, None)?;
        Ok(())
    }

    fn run(
        &self,
        root: &Path,
        req: &CreateRequest,
        bundle: Bundle,
        _: &Settings,
        detach: bool,
    ) -> Result<i32> {
        Ok(container::run::run_bundle(
            &options(root, req),
            bundle,
            detach,
        )?)
    }

    fn start(&self, c: Container) -> Result<()> {
        Ok(container::start::start_container(c)?)
    }

    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()> {
        Ok(container::kill::kill_container(c, signal, all)?)
    }

    fn delete(&self, c: &Container, force: bool) -> Result<()> {
        Ok(container::delete::delete_container(c, force)?)
    }

    fn exec(&self, c: &Container, req: ExecRequest) -> Result<i32> {
        let opts = container::exec::ExecOptions {
            root: c.dir.path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            id: c.id().to_string(),
            process: req.process,
            console_socket: req.console_socket,
            pid_file: req.pid_file,
            detach: req.detach,
            preserve_fds: req.preserve_fds,
        };
        Ok(container::exec::exec_in(c, opts)?)
    }

    fn pids(&self, c: &Container) -> Result<Vec<i32>> {
        Ok(container::ps::pids_of(c)?)
    }

    fn pause(&self, c: &Container) -> Result<()> {
        Ok(container::pause::pause_container(c)?)
    }

    fn resume(&self, c: &Container) -> Result<()> {
        Ok(container::pause::resume_container(c)?)
    }

    fn stats(&self, c: &Container) -> Result<Sample> {
        Ok(container::events::sample_of(c)?)
    }

    fn oom_kills_at_exit(&self, c: &Container) -> Option<u64> {
        // The host cgroup stays until the delete.
        c.state.cgroup.oom_kills().ok()
    }

    fn update(&self, c: Container, resources: &LinuxResources) -> Result<()> {
        Ok(container::update::update_container(c, resources)?)
    }
}
