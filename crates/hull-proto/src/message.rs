//! The control channel's messages. JSON, so a frame is readable in a debugger's hexdump
//! and either side can add optional fields without breaking the other.

use serde::{Deserialize, Serialize};

use crate::{ProtoError, StreamId};

/// Bumped on any change an older peer would misread. 2: stdin is flow-controlled by
/// `Consumed` (a host of version 1 would never wait for it, an agent of version 1
/// would never send it). 3: `AttachImage`/`DetachImage` and `Rootfs::image` (a pod's
/// later containers' rootfs images over NBD; an agent of version 2 would refuse them,
/// and a host of version 2 would never answer the block stream). 4: the agent keeps a
/// container's /dev/shm tmpfs in its own mount namespace, and a bind from
/// [`POD_SHM`]`<sandbox>` names the sandbox's (an agent of version 3 would fail on it).
/// 5: `Rootfs::layers` (an image's layers stacked in the guest) replaces `serial` and
/// `image`, images are attached on nbd devices the agent creates on demand, and
/// `MountShare::subdir` names a directory in the pod's share (an agent of version 4
/// would bind the whole share). 6: `WatchOom` (an agent of version 5 cannot decode it
/// and would leave it unanswered, and the host would hear of no OOM kill until an exit).
pub const PROTOCOL_VERSION: u32 = 6;

/// A bind mount's source that names another container's /dev/shm in the same VM (a pod
/// member's, its sandbox's): `hull-pod-shm:<container id>`.
pub const POD_SHM: &str = "hull-pod-shm:";

/// How many bytes of one stdin stream the host may have sent that the agent has not
/// reported `Consumed`. The agent buffers at most this much per stream, so a process
/// that does not read its stdin costs the guest a bounded amount and never stops the
/// agent from serving everything else.
pub const STDIN_WINDOW: u64 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The first message in each direction.
    Hello {
        version: u32,
        /// Who is speaking, e.g. "hull 0.1.0" or "hull-agent 0.1.0".
        software: String,
        /// The host's wall clock (seconds, nanoseconds since the epoch), which the agent
        /// sets as the guest's: a micro-VM without an RTC starts in 1970.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        realtime: Option<(i64, u32)>,
    },
    Request {
        id: u64,
        request: Request,
    },
    Response {
        id: u64,
        reply: Result<Reply, ErrorReply>,
    },
    /// The agent's flow control for a stdin stream: it has taken `bytes` more of it,
    /// written to the process or dropped because the process closed its stdin.
    Consumed {
        stream: StreamId,
        bytes: u64,
    },
}

/// Which streams carry a process's standard I/O. With a terminal, the pty's output
/// arrives on `stdout` and `stderr` is unused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIo {
    #[serde(default)]
    pub stdin: Option<StreamId>,
    #[serde(default)]
    pub stdout: Option<StreamId>,
    #[serde(default)]
    pub stderr: Option<StreamId>,
    #[serde(default)]
    pub terminal: bool,
    /// The process's fds 3, 4, ... (runc's `--preserve-fds`), in order: each a pipe, or
    /// a socket pair when bytes go both ways, whose other end the agent relays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<ExtraFd>,
}

/// The most fds a process in the guest can be handed beyond 0-2: the agent keeps fds
/// 3 to 3 + this free for them.
pub const MAX_EXTRA_FDS: usize = 64;

/// One preserved fd: `input` carries host bytes to the process (which reads the fd),
/// `output` carries what the process writes to it back to the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraFd {
    #[serde(default)]
    pub input: Option<StreamId>,
    #[serde(default)]
    pub output: Option<StreamId>,
}

impl ProcessIo {
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        [self.stdin, self.stdout, self.stderr]
            .into_iter()
            .chain(self.extra.iter().flat_map(|e| [e.input, e.output]))
            .flatten()
    }
}

/// The container's root filesystem: read-only erofs layers stacked with overlayfs under
/// a tmpfs the container writes to (the top layer first, as overlayfs's `lowerdir`
/// lists them), or one writable ext4 disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    pub layers: Vec<Layer>,
    /// "erofs" (the agent puts a tmpfs overlay on top unless the config asks for a
    /// read-only root) or "ext4" (one disk, mounted writable). An attached image is erofs.
    pub fstype: String,
}

impl Rootfs {
    /// One erofs disk of the VM.
    pub fn disk(serial: &str) -> Self {
        Rootfs {
            layers: vec![Layer::Disk {
                serial: serial.into(),
            }],
            fstype: "erofs".into(),
        }
    }
}

/// Where one layer of a rootfs is in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layer {
    /// A block device of the VM, found by the virtio-blk serial the host gave it.
    Disk { serial: String },
    /// An image the host attached after boot (`AttachImage`), by its name.
    Image { name: String },
}

/// The content of a host file that `mounts[mount]` of the config binds: the guest
/// cannot see the host's files, so the agent writes this copy and binds it instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFile {
    pub mount: usize,
    pub content: Vec<u8>,
    /// Permission bits of the host file.
    pub mode: u32,
}

/// A host directory that `mounts[mount]` of the config binds, exported to the guest as
/// the virtio-9p device with `tag`: the agent mounts it and binds that instead. With
/// `subdir`, the device is the pod's, shared by its members: the agent mounts it once
/// for the VM and binds `subdir` of it (a relative path, no `..`), where the host has
/// bound the member's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountShare {
    pub mount: usize,
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
}

/// A network interface of the guest, found by its MAC (the host gave the virtio-net
/// device the MAC of the engine's interface it mirrors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub mac: String,
    pub mtu: u32,
    /// IPv4 and IPv6 addresses with their prefix length, "10.88.0.5/16", "fd00::5/64".
    pub addresses: Vec<String>,
}

/// A route through the interface with `mac`: "default" or a "net/prefix" for IPv4, a
/// "net/prefix" for IPv6 (the default being "::/0").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    pub destination: String,
    #[serde(default)]
    pub gateway: Option<String>,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Create a container from `config` (config.json's text; `root.path` is ignored).
    CreateContainer {
        id: String,
        config: String,
        rootfs: Rootfs,
        io: ProcessIo,
        /// Host files that bind mounts of `config` name, copied in.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<MountFile>,
        /// Host directories that bind mounts of `config` name, shared over virtio-9p.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shares: Vec<MountShare>,
    },
    StartContainer {
        id: String,
    },
    /// Run `process` (the runtime-spec process object, as JSON) in a container.
    Exec {
        container: String,
        exec_id: String,
        process: String,
        io: ProcessIo,
    },
    /// `exec_id: None` addresses the container's init.
    Signal {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Answered when the process has exited and its output has been sent.
    Wait {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
    },
    Stats {
        container: String,
    },
    /// Answered once the OOM killer's count in the container's cgroup exceeds `seen`,
    /// or once the container's init has exited (with the count then): the host hears
    /// of each kill as it happens, and nothing polls while none does.
    WatchOom {
        container: String,
        seen: u64,
    },
    ResizeTerminal {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    CloseStdin {
        container: String,
        #[serde(default)]
        exec_id: Option<String>,
    },
    DeleteContainer {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// The container's processes, as the guest numbers them.
    Pids {
        container: String,
    },
    /// Freeze every process of the container (its cgroup in the guest).
    Pause {
        container: String,
    },
    Resume {
        container: String,
    },
    /// New limits for the container's cgroup: a runtime-spec LinuxResources as JSON.
    Update {
        container: String,
        resources: String,
    },
    /// Configure the guest's interfaces and routes (its root network namespace, which
    /// containers whose engine gave them a network share).
    ConfigureNetwork {
        interfaces: Vec<NetInterface>,
        routes: Vec<NetRoute>,
    },
    /// Attach a read-only erofs image of `size` bytes and mount it, as `image` names
    /// it. Its blocks travel on `stream` as the NBD protocol (the kernel's nbd client
    /// on a socket the agent relays): the agent sends the kernel's requests as data,
    /// the host answers with NBD replies; an empty frame either way ends it. A pod's
    /// later containers get their rootfs so: the VM booted with one disk, and a
    /// microvm has no disk hotplug.
    AttachImage {
        image: String,
        stream: StreamId,
        size: u64,
    },
    /// Unmount the image and disconnect its device (its containers are deleted).
    DetachImage {
        image: String,
    },
    /// Sync the disks and power the VM off.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Pong,
    /// The process exists; `pid` is in the guest's pid namespace.
    Process {
        pid: i32,
    },
    /// Exit code, or 128 + the signal number that ended the process (the shell's way).
    Exited {
        status: i32,
    },
    /// The cgroup statistics, in the shape `hull events --stats` prints, and how many
    /// tasks the OOM killer has killed in the container's cgroup.
    Stats {
        json: String,
        #[serde(default)]
        oom_kills: u64,
    },
    Pids {
        pids: Vec<i32>,
    },
    /// For WatchOom: the count, and whether the init has exited (the last answer).
    OomKills {
        count: u64,
        exited: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Refuses a peer of another major version.
pub fn check_version(theirs: u32) -> Result<(), ProtoError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtoError::Version {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_is_stable() {
        let m = Message::Request {
            id: 7,
            request: Request::Signal {
                container: "c".into(),
                exec_id: None,
                signal: 15,
                all: false,
            },
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"type":"request","id":7,"request":{"op":"signal","container":"c","exec_id":null,"signal":15,"all":false}}"#
        );
        let r = Message::Response {
            id: 7,
            reply: Err(ErrorReply {
                message: "no such container".into(),
            }),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"type":"response","id":7,"reply":{"Err":{"message":"no such container"}}}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&s).unwrap(), r);
    }

    #[test]
    fn version_mismatch_is_refused() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let e = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(e.to_string().contains("version mismatch"), "{e}");
    }
}
