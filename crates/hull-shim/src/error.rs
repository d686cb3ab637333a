//! What a task call failed with, as the status codes containerd maps to its errdefs
//! (NotFound, AlreadyExists, FailedPrecondition, NotImplemented, ...).

use containerd_shim_protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such container or exec, or the process has already exited (Kill).
    #[error("{0}")]
    NotFound(String),
    /// A container or exec of that id is already there.
    #[error("{0}")]
    AlreadyExists(String),
    /// The process is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Checkpoints are not part of hull.
    #[error("{0}")]
    Unimplemented(String),
    /// hull or the host failed; the message says where.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::error::get_rpc_status(e.code(), e.to_string())
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::Internal(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Internal(e.to_string())
    }
}
