//! containerd's Task service (`containerd.task.v2.Task`), every method answered: the
//! generated default says NOT_FOUND, which containerd would take for a missing task.

use std::ffi::OsStr;
use std::sync::Arc;

use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::Task;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::publisher::to_any;
use crate::service::Shared;
use crate::{log, metrics};

pub struct Service {
    pub shared: Arc<Shared>,
}

/// Logs a failed call (containerd shows only the message) and converts its error.
fn answer<T>(what: &str, r: Result<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::debug(&format!("{what}: {e}"));
        e.into()
    })
}

impl Service {
    fn kill(&self, req: &KillRequest) -> Result<()> {
        let c = self.shared.get(&req.id)?;
        let procs = c.lock();
        let p = procs.get(&req.exec_id)?;
        if p.stopped() {
            return Err(Error::NotFound("process already finished".into()));
        }
        if !req.exec_id.is_empty() {
            if p.pid == 0 {
                return Err(Error::FailedPrecondition("exec not started".into()));
            }
            let sig = Signal::try_from(req.signal as i32)
                .map_err(|e| Error::InvalidArgument(format!("signal {}: {e}", req.signal)))?;
            return kill(Pid::from_raw(p.pid as i32), sig)
                .map_err(|e| Error::Internal(format!("kill {}: {e}", p.pid)));
        }
        let sig = req.signal.to_string();
        let mut args = vec![OsStr::new("kill")];
        if req.all {
            args.push(OsStr::new("--all"));
        }
        args.extend([OsStr::new(&req.id), OsStr::new(&sig)]);
        self.shared.hull.run(&args).map(|_| ())
    }

    fn pids(&self, id: &str) -> Result<PidsResponse> {
        let c = self.shared.get(id)?;
        let out = self.shared.hull.run(&[
            OsStr::new("ps"),
            OsStr::new("--format"),
            OsStr::new("json"),
            OsStr::new(id),
        ])?;
        let pids: Vec<u32> = serde_json::from_str(out.trim())
            .map_err(|e| Error::Internal(format!("hull ps: {e}: {out:?}")))?;
        let procs = c.lock();
        let mut resp = PidsResponse::new();
        for pid in pids {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            if let Some(e) = procs.execs.values().find(|e| e.pid == pid) {
                let mut d = ProcessDetails::new();
                d.exec_id = e.exec_id.clone();
                info.info = Some(to_any(&d)).into();
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause_resume(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.shared.get(id)?;
        let mut procs = c.lock();
        let verb = if pause { "pause" } else { "resume" };
        self.shared.hull.run(&[OsStr::new(verb), OsStr::new(id)])?;
        if pause {
            procs.init.status = Status::PAUSED;
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.shared.events.publish(ev);
        } else {
            procs.init.status = Status::RUNNING;
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.shared.events.publish(ev);
        }
        Ok(())
    }

    fn stats(&self, id: &str) -> Result<StatsResponse> {
        self.shared.get(id)?;
        let args = [OsStr::new("events"), OsStr::new("--stats"), OsStr::new(id)];
        let out = self.shared.hull.run(&args)?;
        let m = metrics::from_runc(out.trim())
            .map_err(|e| Error::Internal(format!("hull events --stats: {e}")))?;
        let mut resp = StatsResponse::new();
        resp.stats = Some(to_any(&m)).into();
        Ok(resp)
    }

    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.shared.get(&req.id)?;
        let _procs = c.lock();
        let json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| Error::InvalidArgument("update without resources".into()))?;
        let file = c.bundle.join("resources.json");
        std::fs::write(&file, json)?;
        let args = [
            OsStr::new("update"),
            OsStr::new("--resources"),
            file.as_os_str(),
            OsStr::new(&req.id),
        ];
        let r = self.shared.hull.run(&args).map(|_| ());
        let _ = std::fs::remove_file(&file);
        r
    }

    fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let c = self.shared.get(&req.id)?;
        let procs = c.lock();
        Ok(procs.get(&req.exec_id)?.state(&req.id, &c.bundle_str()))
    }
}

impl Task for Service {
    fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let pid = answer("create", self.shared.create(req))?;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = answer("start", self.shared.start(&req.id, &req.exec_id))?;
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        answer("state", Service::state(self, &req))
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        answer("kill", Service::kill(self, &req)).map(|_| Empty::new())
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let (pid, status, at) = answer("delete", self.shared.delete(&req.id, &req.exec_id))?;
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = status;
        resp.exited_at = at.into();
        Ok(resp)
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        answer("exec", self.shared.exec(req)).map(|_| Empty::new())
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        answer("pids", Service::pids(self, &req.id))
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        answer("pause", self.pause_resume(&req.id, true)).map(|_| Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        answer("resume", self.pause_resume(&req.id, false)).map(|_| Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(Error::Unimplemented("hull does not checkpoint containers".into()).into())
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        answer("stats", Service::stats(self, &req.id))
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        answer("update", Service::update(self, &req)).map(|_| Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let c = answer("wait", self.shared.get(&req.id))?;
        let (status, at) = answer("wait", c.wait(&req.exec_id))?;
        let mut resp = WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = at.into();
        Ok(resp)
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let r = self.shared.get(&req.id).and_then(|c| {
            let procs = c.lock();
            procs.get(&req.exec_id)?.live.resize(req.width, req.height)
        });
        answer("resize pty", r).map(|_| Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let r = self.shared.get(&req.id).and_then(|c| {
            let mut procs = c.lock();
            let p = procs.get_mut(&req.exec_id)?;
            if req.stdin {
                p.live.close_stdin();
            }
            Ok(())
        });
        answer("close io", r).map(|_| Empty::new())
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        if let Ok(c) = self.shared.get(&req.id) {
            resp.task_pid = c.lock().init.pid;
        }
        Ok(resp)
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        // The pod's other containers still need this shim.
        if self.shared.all().is_empty() {
            self.shared.finish();
        }
        Ok(Empty::new())
    }
}
