//! The containers of one shim and what changes them: create, start, exec, delete, and
//! the exits the reaper reports. Every change to a container happens under its lock,
//! so its events leave in order (TaskStart before the same process's TaskExit).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim_protos::api::{CreateTaskRequest, ExecProcessRequest, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::error::{Error, Result};
use crate::hull::{Hull, Isolation};
use crate::publisher::Publisher;
use crate::reaper::{lock, Exit};
use crate::state::{Container, Pids, Process, Procs};
use crate::stdio::{IoPaths, Live, Prepared};
use crate::{mounts, oom, spec};

pub struct Shared {
    pub hull: Hull,
    pub events: Publisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pids: Mutex<Pids>,
    /// Where `--console-socket`s are made (a bundle path can exceed a socket name's 108 bytes).
    console_dir: PathBuf,
    consoles: AtomicU32,
    done: Mutex<bool>,
    done_cv: Condvar,
    /// A VM pod's cgroup, which the shim has joined (podcgroup.rs).
    pod_cgroup: Mutex<crate::podcgroup::Joined>,
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

fn refs(v: &[OsString]) -> Vec<&OsStr> {
    v.iter().map(OsString::as_os_str).collect()
}

fn read_pid(path: &Path) -> Result<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Internal(format!("hull wrote no pid to {}", path.display())))
}

impl Shared {
    pub fn new(hull: Hull, events: Publisher, console_dir: PathBuf) -> Shared {
        Shared {
            hull,
            events,
            containers: Mutex::new(HashMap::new()),
            pids: Mutex::new(Pids::default()),
            console_dir,
            consoles: AtomicU32::new(0),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            pod_cgroup: Mutex::new(Default::default()),
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} does not exist in this shim")))
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    fn console_path(&self) -> PathBuf {
        let n = self.consoles.fetch_add(1, Ordering::Relaxed);
        self.console_dir
            .join(format!("{}-{n}.sock", std::process::id()))
    }

    pub fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<u32> {
        let id = req.id.as_str();
        if lock(&self.containers).contains_key(id) {
            return Err(Error::AlreadyExists(format!("container {id:?} exists")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let info = spec::load(&bundle)?;
        let config = req.options.as_ref().and_then(spec::config_path);
        let io = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let rootfs = bundle.join("rootfs");
        let mounted = !req.rootfs.is_empty();
        if mounted {
            mounts::mount_all(&req.rootfs, &rootfs)?;
        }
        let mut init = Process::new("", io);
        match self.hull_create(id, &bundle, &init.io, config.as_deref()) {
            Ok((pid, live)) => {
                init.pid = pid;
                init.live = live;
            }
            Err(e) => {
                if mounted {
                    mounts::unmount_all(&rootfs);
                }
                return Err(e);
            }
        }
        let pid = init.pid;
        if let Some(path) = self.pod_cgroup_of(&info) {
            *lock(&self.pod_cgroup) = crate::podcgroup::join(path);
        }
        let c = Arc::new(Container::new(id, bundle, info, config, mounted, init));
        lock(&self.containers).insert(id.to_string(), c.clone());
        let mut procs = c.lock();
        let mut ev = TaskCreate::new();
        ev.container_id = id.to_string();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        ev.io = Some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        })
        .into();
        ev.checkpoint = req.checkpoint.clone();
        ev.pid = pid;
        self.events.publish(ev);
        if let Some(exit) = lock(&self.pids).track(pid, id, "") {
            self.exited(&c, &mut procs, "", &exit);
        }
        Ok(pid)
    }

    /// The host cgroup of a VM pod's sandbox, which its shim joins.
    fn pod_cgroup_of<'a>(&self, info: &'a spec::SpecInfo) -> Option<&'a str> {
        let sandbox = info
            .annotations
            .get("io.kubernetes.cri.container-type")
            .is_some_and(|t| t == "sandbox");
        (self.hull.isolation == Isolation::Vm && sandbox)
            .then_some(info.cgroups_path.as_deref())
            .flatten()
    }

    fn hull_create(
        &self,
        id: &str,
        bundle: &Path,
        io: &IoPaths,
        config: Option<&Path>,
    ) -> Result<(u32, crate::stdio::Live)> {
        let (child_io, prepared) = Prepared::new(io, io.terminal.then(|| self.console_path()))?;
        let pid_file = bundle.join("init.pid");
        let mut args = self.hull.create_args();
        args.extend([os("--bundle"), os(bundle), os("--pid-file"), os(&pid_file)]);
        if let Some(s) = prepared.console_socket() {
            args.extend([os("--console-socket"), os(s)]);
        }
        args.push(os(id));
        let log = bundle.join("log.json");
        self.hull.run_logged(&refs(&args), child_io, &log, config)?;
        let pid = read_pid(&pid_file)?;
        match prepared.finish(io) {
            Ok(live) => Ok((pid, live)),
            Err(e) => {
                let _ = self.hull.run(&refs(&[os("delete"), os("--force"), os(id)]));
                Err(e)
            }
        }
    }

    pub fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let c = self.get(id)?;
        let mut procs = c.lock();
        if !exec_id.is_empty() {
            return self.start_exec(&c, &mut procs, exec_id);
        }
        if procs.init.status != Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "container {id:?} is {:?}, not created",
                procs.init.status
            )));
        }
        self.hull.run(&[OsStr::new("start"), OsStr::new(id)])?;
        procs.init.status = Status::RUNNING;
        let mut ev = TaskStart::new();
        ev.container_id = id.to_string();
        ev.pid = procs.init.pid;
        self.events.publish(ev);
        Ok(procs.init.pid)
    }

    fn start_exec(&self, c: &Container, procs: &mut Procs, exec_id: &str) -> Result<u32> {
        let p = procs.get_mut(exec_id)?;
        if p.status != Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id:?} was started already"
            )));
        }
        let spec = c.bundle.join(format!("exec-{}.json", p.n));
        let pid_file = c.bundle.join(format!("exec-{}.pid", p.n));
        std::fs::write(&spec, &p.spec)?;
        let (child_io, prepared) =
            Prepared::new(&p.io, p.io.terminal.then(|| self.console_path()))?;
        let mut args = vec![os("exec"), os("--process"), os(&spec), os("--detach")];
        args.extend([os("--pid-file"), os(&pid_file)]);
        if let Some(s) = prepared.console_socket() {
            args.extend([os("--console-socket"), os(s)]);
        }
        args.push(os(&c.id));
        let log = c.bundle.join("log.json");
        let ran = self
            .hull
            .run_logged(&refs(&args), child_io, &log, c.config.as_deref());
        let _ = std::fs::remove_file(&spec);
        ran?;
        p.live = prepared.finish(&p.io)?;
        p.pid = read_pid(&pid_file)?;
        let _ = std::fs::remove_file(&pid_file);
        p.status = Status::RUNNING;
        let pid = p.pid;
        let mut ev = TaskExecStarted::new();
        ev.container_id = c.id.clone();
        ev.exec_id = exec_id.to_string();
        ev.pid = pid;
        self.events.publish(ev);
        if let Some(exit) = lock(&self.pids).track(pid, &c.id, exec_id) {
            self.exited(c, procs, exec_id, &exit);
        }
        Ok(pid)
    }

    pub fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        let mut procs = c.lock();
        if procs.init.stopped() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} has stopped",
                req.id
            )));
        }
        if procs.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {:?} exists",
                req.exec_id
            )));
        }
        let io = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut p = Process::new(&req.exec_id, io);
        p.spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        p.n = procs.next_exec;
        procs.next_exec += 1;
        procs.execs.insert(req.exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.events.publish(ev);
        Ok(())
    }

    /// Delete: (pid, exit status, exited at) of the process removed.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, u32, Option<Timestamp>)> {
        let c = self.get(id)?;
        let mut procs = c.lock();
        if !exec_id.is_empty() {
            let p = procs.get(exec_id)?;
            if p.status == Status::RUNNING {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id:?} is running"
                )));
            }
            let p = procs.execs.remove(exec_id).expect("exec is present");
            lock(&self.pids).forget(p.pid);
            c.changed.notify_all();
            return Ok((p.pid, p.exit_status, p.exited_at));
        }
        if matches!(procs.init.status, Status::RUNNING | Status::PAUSED) {
            return Err(Error::FailedPrecondition(format!(
                "container {id:?} is running: kill it first"
            )));
        }
        if self.pod_cgroup_of(&c.info).is_some() {
            lock(&self.pod_cgroup).leave();
        }
        match self.hull.run(&refs(&[os("delete"), os("--force"), os(id)])) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if c.rootfs_mounted {
            mounts::unmount_all(&c.bundle.join("rootfs"));
        }
        let mut pids = lock(&self.pids);
        pids.forget(procs.init.pid);
        for p in procs.execs.values() {
            pids.forget(p.pid);
        }
        drop(pids);
        procs.execs.clear();
        // Ends the stdin relay and lets go of the terminal.
        procs.init.live = Live::default();
        procs.deleted = true;
        lock(&self.containers).remove(id);
        c.changed.notify_all();
        let init = &procs.init;
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_string();
        ev.pid = init.pid;
        ev.exit_status = init.exit_status;
        ev.exited_at = init.exited_at();
        self.events.publish(ev);
        Ok((init.pid, init.exit_status, init.exited_at.clone()))
    }

    /// The reaper saw a process end that was not a hull command.
    pub fn on_exit(&self, exit: Exit) {
        let Some((id, exec_id)) = lock(&self.pids).claim(&exit) else {
            return;
        };
        let Ok(c) = self.get(&id) else {
            return;
        };
        let mut procs = c.lock();
        self.exited(&c, &mut procs, &exec_id, &exit);
    }

    fn exited(&self, c: &Container, procs: &mut Procs, exec_id: &str, exit: &Exit) {
        if exec_id.is_empty() {
            // Before TaskExit: CRI's OOMKilled reason is set from the OOM event. A VM
            // container's proxy or stand-in wrote the last count before it exited.
            self.check_oom(c, procs);
        }
        let Ok(p) = procs.get_mut(exec_id) else {
            return;
        };
        if p.stopped() {
            return;
        }
        p.live.drain_output(crate::stdio::TERMINAL_DRAIN);
        p.set_exited(exit);
        let mut ev = TaskExit::new();
        ev.container_id = c.id.clone();
        ev.id = if exec_id.is_empty() {
            c.id.clone()
        } else {
            exec_id.to_string()
        };
        ev.pid = p.pid;
        ev.exit_status = p.exit_status;
        ev.exited_at = p.exited_at();
        self.events.publish(ev);
        c.changed.notify_all();
        if exec_id.is_empty() && c.info.shared_pid_ns {
            // No pid namespace ends the others with the init.
            let args = [os("kill"), os("--all"), os(&c.id), os("KILL")];
            let _ = self.hull.run(&refs(&args));
        }
    }

    /// Publishes TaskOOM if a container's OOM kills have grown: a namespace
    /// container's cgroup is on this host; a VM container's count is in its state
    /// directory, kept current by its proxy or stand-in (oom.rs).
    pub fn check_oom(&self, c: &Container, procs: &mut Procs) {
        let kills = match self.hull.isolation {
            Isolation::Namespace => c.info.cgroups_path.as_deref().and_then(oom::kills),
            Isolation::Vm => oom::vm_kills(&self.hull.root.join(&c.id)),
        };
        let Some(kills) = kills else {
            return;
        };
        if kills > procs.oom_seen {
            procs.oom_seen = kills;
            let mut ev = TaskOOM::new();
            ev.container_id = c.id.clone();
            self.events.publish(ev);
        }
    }

    /// Shutdown with no container left: the daemon may end.
    pub fn finish(&self) {
        *lock(&self.done) = true;
        self.done_cv.notify_all();
    }

    pub fn wait_finished(&self) {
        let mut done = lock(&self.done);
        while !*done {
            done = self.done_cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }
}
