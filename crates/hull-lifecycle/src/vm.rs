//! The VM backend: hull-sandbox's proxy per container (see hull_sandbox::container).

use std::path::Path;

use hull_runtime::container::Container;
use hull_runtime::spec::Bundle;
use hull_sandbox::container::{self as vm, VmCreate, VmExec, VmSettings};
use oci_spec::runtime::LinuxResources;

use crate::{Backend, CreateRequest, ExecRequest, Result, Sample, Settings};

pub struct Vms;

fn request<'a>(
    root: &'a Path,
    req: &'a CreateRequest,
    bundle: Bundle,
    s: &'a VmSettings,
) -> VmCreate<'a> {
    VmCreate {
        root,
        id: &req.id,
        bundle,
        console_socket: req.console_socket.as_deref(),
        pid_file: req.pid_file.as_deref(),
        preserve_fds: req.preserve_fds,
        settings: s,
    }
}

impl Backend for Vms {
    fn create(&self, root: &Path, req: &CreateRequest, bundle: Bundle, s: &Settings) -> Result<()> {
        Ok(vm::create(request(root, req, bundle, &s.vm()?))?)
    }

    fn run(
        &self,
        root: &Path,
        req: &CreateRequest,
        bundle: Bundle,
        s: &Settings,
        detach: bool,
    ) -> Result<i32> {
        Ok(vm::run(request(root, req, bundle, &s.vm()?), detach)?)
    }

    fn start(&self, c: Container) -> Result<()> {
        Ok(vm::start(&c)?)
    }

    fn kill(&self, c: &Container, signal: i32, all: bool) -> Result<()> {
        Ok(vm::kill(c, signal, all)?)
    }

    fn delete(&self, c: &Container, force: bool) -> Result<()> {
        Ok(vm::delete(c, force)?)
    }

    fn exec(&self, c: &Container, req: ExecRequest) -> Result<i32> {
        Ok(vm::exec(
            c,
            VmExec {
                process: req.process,
                console_socket: req.console_socket.as_deref(),
                pid_file: req.pid_file.as_deref(),
                detach: req.detach,
                preserve_fds: req.preserve_fds,
            },
        )?)
    }

    fn pids(&self, c: &Container) -> Result<Vec<i32>> {
        Ok(vm::pids(c)?)
    }

    fn pause(&self, c: &Container) -> Result<()> {
        Ok(vm::pause(c)?)
    }

    fn resume(&self, c: &Container) -> Result<()> {
        Ok(vm::resume(c)?)
    }

    fn stats(&self, c: &Container) -> Result<Sample> {
        Ok(vm::stats(c)?)
    }

    fn oom_kills_at_exit(&self, c: &Container) -> Option<u64> {
        vm::oom_kills_at_exit(c)
    }

    fn update(&self, c: Container, resources: &LinuxResources) -> Result<()> {
        Ok(vm::update(c, resources)?)
    }
}
