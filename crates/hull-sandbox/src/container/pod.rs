//! A pod in one VM, the sandbox proxy's side: a member container (member.rs makes it on
//! the host) arrives as `Control::Add` from its stand-in, with its guest config, its
//! rootfs image and its stdio. The proxy attaches the image to the running guest
//! (block.rs: NBD over the agent's channel), points the namespaces the member shares
//! with the sandbox at the sandbox container's init in the guest, has the agent create
//! it, and relays it for the stand-in until it exits (exec.rs's `serve_process`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hull_proto::{Layer, MountFile, MountShare, Reply, Request, Rootfs};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::control::ControlReply;
use super::preserved::Direction;
use super::proxy::{Shared, CALL};
use crate::error::{Result, SandboxError};

/// A namespace path that names the sandbox's own (member.rs puts it there; the proxy
/// replaces it with the sandbox container's in the guest).
pub const SANDBOX_NS: &str = "hull-sandbox";

/// What the member's `create` hands over in a memfd (too large for one packet: the
/// copied files may be 128 KiB each).
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub config: Value,
    pub files: Vec<MountFile>,
    /// Its directories, in the pod's share.
    pub shares: Vec<MountShare>,
}

/// The members of the pod in this VM: id to its images' names, and how many are still
/// being served (their stand-ins get their exit status).
#[derive(Default)]
pub struct Members {
    images: Mutex<HashMap<String, Vec<String>>>,
    served: Mutex<usize>,
    changed: Condvar,
    pub images_attached: crate::block::Images,
}

impl Members {
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.images).contains_key(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts one member served until dropped.
struct Serving<'a>(&'a Members);

impl<'a> Serving<'a> {
    fn new(m: &'a Members) -> Self {
        *lock(&m.served) += 1;
        Serving(m)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        *lock(&self.0.served) -= 1;
        self.0.changed.notify_all();
    }
}

/// `/proc/<pid>/ns/<name>` for a runtime-spec namespace type.
fn proc_ns(pid: i32, kind: &str) -> String {
    let name = match kind {
        "network" => "net",
        "mount" => "mnt",
        k => k,
    };
    format!("/proc/{pid}/ns/{name}")
}

/// The namespaces marked as the sandbox's, pointed at its init in the guest. A member
/// in the sandbox's IPC namespace gets its /dev/shm too (the pod's shared memory, as
/// the CRI's bind of the sandbox's shm directory gives runc's pods): one guest kernel
/// holds them all, so the tmpfs guest_config put there becomes a bind of the
/// sandbox container's own, which the agent keeps in its mount namespace (a mount in
/// another container's namespace cannot be bound: EINVAL).
fn join_sandbox(config: &mut Value, guest_pid: i32, sandbox: &str) {
    let namespaces = config
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut);
    let mut shares_ipc = false;
    for ns in namespaces.into_iter().flatten() {
        if ns["path"] == SANDBOX_NS {
            let kind = ns["type"].as_str().unwrap_or_default();
            shares_ipc |= kind == "ipc";
            ns["path"] = proc_ns(guest_pid, kind).into();
        }
    }
    if !shares_ipc {
        return;
    }
    let mounts = config.get_mut("mounts").and_then(Value::as_array_mut);
    for m in mounts.into_iter().flatten() {
        if m["destination"] == "/dev/shm" && m["type"] == "tmpfs" && m["source"] == "shm" {
            *m = serde_json::json!({
                "destination": "/dev/shm",
                "type": "bind",
                "source": format!("{}{sandbox}", hull_proto::POD_SHM),
                "options": ["rbind", "nosuid", "nodev", "noexec"],
            });
        }
    }
}

fn read_payload(fd: OwnedFd) -> Result<Payload> {
    let mut f = File::from(fd);
    let mut text = String::new();
    f.rewind()
        .and_then(|()| f.read_to_string(&mut text))
        .map_err(|e| SandboxError::Vm(format!("pod member: its config: {e}")))?;
    serde_json::from_str(&text).map_err(|e| SandboxError::Vm(format!("pod member: {e}")))
}

/// A member as its stand-in announced it (`Control::Add`).
pub(super) struct Member {
    pub id: String,
    pub terminal: bool,
    /// How many rootfs images follow the payload among the fds.
    pub layers: usize,
    pub preserved: Vec<Direction>,
}

/// Serves one member's stand-in connection for the member's whole life.
pub(super) fn serve_member(shared: &Arc<Shared>, conn: OwnedFd, member: Member, fds: Vec<OwnedFd>) {
    let _serving = Serving::new(&shared.pod);
    let Member {
        id,
        terminal,
        layers,
        preserved,
    } = member;
    let mut attached = Vec::new();
    let prepared = prepare(shared, &id, layers, fds, &mut attached);
    let (payload, fds) = match prepared {
        Ok(p) => p,
        Err(e) => {
            release_all(shared, &attached);
            let message = e.to_string();
            let _ = super::control::send(
                std::os::fd::AsFd::as_fd(&conn),
                &ControlReply::Error { message },
                &[],
            );
            return;
        }
    };
    let agent = shared.agent.clone();
    let (pod, cid, names) = (&shared.pod, id.clone(), attached.clone());
    let start = |io| {
        let create = Request::CreateContainer {
            id: cid.clone(),
            config: payload.config.to_string(),
            rootfs: Rootfs {
                layers: names
                    .iter()
                    .map(|name| Layer::Image { name: name.clone() })
                    .collect(),
                fstype: "erofs".into(),
            },
            io,
            files: payload.files,
            shares: payload.shares,
        };
        match agent.call(create, CALL)? {
            Reply::Process { pid } => {
                lock(&pod.images).insert(cid.clone(), names.clone());
                Ok(pid)
            }
            r => Err(SandboxError::Vm(format!("the agent answered {r:?}"))),
        }
    };
    let key = (id.clone(), None);
    let served = super::exec::serve_process(shared, conn, key, terminal, preserved, fds, start);
    if served.is_none() {
        release_all(shared, &attached);
    }
}

/// The member's payload, its images attached (their names pushed on `attached` as they
/// are, for the caller to release on failure), and the fds left for its process.
fn prepare(
    shared: &Shared,
    id: &str,
    layers: usize,
    fds: Vec<OwnedFd>,
    attached: &mut Vec<String>,
) -> Result<(Payload, Vec<OwnedFd>)> {
    hull_runtime::spec::validate_id(id)?;
    if id == shared.id || shared.pod.contains(id) {
        return Err(SandboxError::Vm(format!("{id} is in this VM already")));
    }
    if layers == 0 || layers > crate::layers::MAX_LAYERS || fds.len() < 1 + layers {
        return Err(SandboxError::Vm(format!(
            "pod member: {} fds for a payload and {layers} rootfs images",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut payload = read_payload(fds.next().expect("counted above"))?;
    join_sandbox(
        &mut payload.config,
        shared.guest_pid.load(Ordering::Relaxed),
        &shared.id,
    );
    let t = Instant::now();
    for image in fds.by_ref().take(layers) {
        let name = shared
            .pod
            .images_attached
            .attach(&shared.agent, File::from(image))?;
        attached.push(name);
    }
    tracing::debug!(
        "rootfs images {attached:?} attached in {} us",
        t.elapsed().as_micros()
    );
    Ok((payload, fds.collect()))
}

fn release_all(shared: &Shared, names: &[String]) {
    for name in names {
        shared.pod.images_attached.release(&shared.agent, name);
    }
}

/// Removes a member from the guest (its init stopped, or is killed now) and lets its
/// image go when no other member uses it.
pub(super) fn delete_member(shared: &Shared, id: &str) -> Result<ControlReply> {
    let images = lock(&shared.pod.images).remove(id);
    let deleted = shared.agent.call(
        Request::DeleteContainer {
            id: id.into(),
            force: true,
        },
        CALL,
    );
    release_all(shared, &images.unwrap_or_default());
    deleted.map(|_| ControlReply::Done)
}

/// The sandbox's init has exited: its members are killed, and their stand-ins get
/// their exit status before the VM goes (at most 5 s).
pub(super) fn end_members(shared: &Shared) {
    let ids: Vec<String> = lock(&shared.pod.images).keys().cloned().collect();
    for id in ids {
        let kill = Request::Signal {
            container: id,
            exec_id: None,
            signal: libc::SIGKILL,
            all: true,
        };
        let _ = shared.agent.call(kill, CALL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = lock(&shared.pod.served);
    while *served > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        served = shared
            .pod
            .changed
            .wait_timeout(served, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(ipc_path: &str) -> Value {
        json!({
            "linux": {"namespaces": [
                {"type": "network", "path": SANDBOX_NS},
                {"type": "ipc", "path": ipc_path},
                {"type": "mount"},
            ]},
            "mounts": [
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            ],
        })
    }

    #[test]
    fn a_member_sharing_ipc_gets_the_sandbox_shm() {
        let mut c = member(SANDBOX_NS);
        join_sandbox(&mut c, 42, "pod");
        assert_eq!(c["linux"]["namespaces"][0]["path"], "/proc/42/ns/net");
        assert_eq!(c["linux"]["namespaces"][1]["path"], "/proc/42/ns/ipc");
        assert_eq!(c["linux"]["namespaces"][2].get("path"), None);
        assert_eq!(c["mounts"][0]["type"], "bind");
        assert_eq!(c["mounts"][0]["source"], "hull-pod-shm:pod");
        assert_eq!(c["mounts"][1]["type"], "tmpfs");
    }

    #[test]
    fn a_member_with_its_own_ipc_keeps_its_shm() {
        let mut c = member("");
        c["linux"]["namespaces"][1] = json!({"type": "ipc"});
        join_sandbox(&mut c, 42, "pod");
        assert_eq!(c["mounts"][0]["type"], "tmpfs");
    }
}
