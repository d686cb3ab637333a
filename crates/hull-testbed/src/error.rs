use std::path::PathBuf;
use std::time::Duration;

/// Why the test bed could not prepare, boot or drive its L1 guest. Each variant reads as
/// the message.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A file or directory the test bed needs could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A helper program (apt-get, dpkg-deb, ldd, QEMU) could not run or failed.
    #[error("{program}: {detail}")]
    Tool { program: String, detail: String },
    /// Something the L1 image is made of is not there yet.
    #[error("{what} is missing at {path}: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    /// The hull guest (kernel and initramfs) is not built.
    #[error("the hull guest: {0}")]
    Guest(#[from] hull_sandbox::SandboxError),
    /// L1 did not answer in time.
    #[error("timed out after {:.1} s waiting for {what}; L1's vCPU:\n{cpu}\nthe L1 console ended with:\n{console}", .after.as_secs_f64())]
    Timeout {
        what: String,
        after: Duration,
        cpu: String,
        console: String,
    },
    /// QEMU ended (or closed the command channel) while L1 still had work.
    #[error("L1 (QEMU) went away while {what} ({status}); the L1 console ended with:\n{console}")]
    Gone {
        what: String,
        status: String,
        console: String,
    },
    /// An earlier command timed out or lost L1; the session cannot go on.
    #[error("L1 no longer answers: {0}")]
    Broken(String),
    /// L1 wrote something on the command channel that the protocol does not allow.
    #[error("L1 broke the command protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, TestbedError>;

pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TestbedError {
    let path = path.into();
    move |source| TestbedError::Io { what, path, source }
}
