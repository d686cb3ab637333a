use std::path::PathBuf;

/// Why a VM, its guest assets or the agent failed. Each variant reads as the message.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file or command the sandbox needs failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A helper program (QEMU, mkfs.erofs, the kernel build) is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// No built guest where one was expected.
    #[error("no guest kernel and initramfs in {0}: run `hull guest build`")]
    NoGuest(PathBuf),
    /// The VM did not come up, or went away.
    #[error("VM: {0}")]
    Vm(String),
    /// The agent's stream broke or it said something out of turn.
    #[error("agent: {0}")]
    Proto(#[from] hull_proto::ProtoError),
    /// The agent refused a request.
    #[error("agent refused {op}: {message}")]
    Refused { op: &'static str, message: String },
    /// What a VM container's proxy said when it could not start the container.
    #[error("{0}")]
    Proxy(String),
    /// The namespace runtime's part (state directory, cgroups, bundle) failed.
    #[error(transparent)]
    Runtime(#[from] hull_runtime::error::Error),
    /// What an unprivileged user cannot have (rootless.rs).
    #[error("{0}")]
    Rootless(String),
    /// No answer in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

pub type Result<T> = std::result::Result<T, SandboxError>;

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.into();
    move |source| SandboxError::Io { what, path, source }
}
