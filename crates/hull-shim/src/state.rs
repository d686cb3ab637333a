//! The shim's table of its containers and their processes (the init and the execs),
//! the source of State and Wait; hull is asked only to change things.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api::{StateResponse, Status};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;

use crate::error::{Error, Result};
use crate::reaper::{lock, Exit};
use crate::spec::SpecInfo;
use crate::stdio::{IoPaths, Live};

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

pub struct Process {
    /// "" for the init.
    pub exec_id: String,
    pub pid: u32,
    pub status: Status,
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
    pub io: IoPaths,
    pub live: Live,
    /// An exec's runtime-spec process (JSON), run at its Start.
    pub spec: Vec<u8>,
    /// An exec's number, naming its files in the bundle.
    pub n: u32,
}

impl Process {
    pub fn new(exec_id: &str, io: IoPaths) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::CREATED,
            exit_status: 0,
            exited_at: None,
            io,
            live: Live::default(),
            spec: Vec::new(),
            n: 0,
        }
    }

    pub fn stopped(&self) -> bool {
        self.status == Status::STOPPED
    }

    pub fn set_exited(&mut self, exit: &Exit) {
        self.status = Status::STOPPED;
        self.exit_status = exit.status as u32;
        self.exited_at = Some(timestamp(exit.at));
    }

    pub fn exited_at(&self) -> MessageField<Timestamp> {
        self.exited_at.clone().into()
    }

    pub fn state(&self, id: &str, bundle: &str) -> StateResponse {
        let mut s = StateResponse::new();
        s.id = if self.exec_id.is_empty() {
            id.to_string()
        } else {
            self.exec_id.clone()
        };
        s.exec_id = self.exec_id.clone();
        s.bundle = bundle.to_string();
        s.pid = self.pid;
        s.status = self.status.into();
        s.stdin = self.io.stdin.clone();
        s.stdout = self.io.stdout.clone();
        s.stderr = self.io.stderr.clone();
        s.terminal = self.io.terminal;
        s.exit_status = self.exit_status;
        s.exited_at = self.exited_at();
        s
    }
}

pub struct Procs {
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub next_exec: u32,
    /// OOM kills already reported.
    pub oom_seen: u64,
    /// Deleted: Wait and State find nothing.
    pub deleted: bool,
}

impl Procs {
    pub fn get(&self, exec_id: &str) -> Result<&Process> {
        if self.deleted {
            return Err(Error::NotFound("the container was deleted".into()));
        }
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} does not exist")))
    }

    pub fn get_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if self.deleted {
            return Err(Error::NotFound("the container was deleted".into()));
        }
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} does not exist")))
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub info: SpecInfo,
    /// hull's config.toml from the runtime options.
    pub config: Option<PathBuf>,
    /// The shim mounted the snapshotter's rootfs at `<bundle>/rootfs`.
    pub rootfs_mounted: bool,
    procs: Mutex<Procs>,
    /// A process exited or went away: Wait looks again.
    pub changed: Condvar,
}

impl Container {
    pub fn new(
        id: &str,
        bundle: PathBuf,
        info: SpecInfo,
        config: Option<PathBuf>,
        rootfs_mounted: bool,
        init: Process,
    ) -> Container {
        Container {
            id: id.to_string(),
            bundle,
            info,
            config,
            rootfs_mounted,
            procs: Mutex::new(Procs {
                init,
                execs: HashMap::new(),
                next_exec: 1,
                oom_seen: 0,
                deleted: false,
            }),
            changed: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Procs> {
        lock(&self.procs)
    }

    pub fn bundle_str(&self) -> String {
        self.bundle.display().to_string()
    }

    /// Blocks until the process has exited: (exit status, when).
    pub fn wait(&self, exec_id: &str) -> Result<(u32, Option<Timestamp>)> {
        let mut procs = self.lock();
        loop {
            let p = procs.get(exec_id)?;
            if p.stopped() {
                return Ok((p.exit_status, p.exited_at.clone()));
            }
            procs = self.changed.wait(procs).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Which process a pid is, and exits that came before their pid was known (a short
/// `true` can end before `hull exec` has returned its pid).
#[derive(Default)]
pub struct Pids {
    owners: HashMap<i32, (String, String)>,
    early: HashMap<i32, Exit>,
}

impl Pids {
    /// Records `pid` as (container, exec); its exit if it came already.
    pub fn track(&mut self, pid: u32, id: &str, exec_id: &str) -> Option<Exit> {
        let pid = pid as i32;
        if let Some(exit) = self.early.remove(&pid) {
            return Some(exit);
        }
        self.owners
            .insert(pid, (id.to_string(), exec_id.to_string()));
        None
    }

    /// The owner of an exited pid, or None (then kept, for a `track` to come).
    pub fn claim(&mut self, exit: &Exit) -> Option<(String, String)> {
        if let Some(owner) = self.owners.remove(&exit.pid) {
            return Some(owner);
        }
        // Orphans of hull's own (a VMM whose proxy died first) are never claimed.
        let stale = SystemTime::now() - std::time::Duration::from_secs(60);
        self.early.retain(|_, e| e.at > stale);
        self.early.insert(exit.pid, *exit);
        None
    }

    pub fn forget(&mut self, pid: u32) {
        self.owners.remove(&(pid as i32));
    }
}
