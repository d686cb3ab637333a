//! hull-runtime: namespace isolation. Turns an OCI runtime-spec bundle into a running,
//! confined process and drives its life cycle (create, start, kill, delete, exec, ...).
//!
//! Process model (see DESIGN.md): the runtime is single-threaded up to the fork of the
//! container; parent and children synchronise over a socketpair; the init blocks on an
//! exec fifo in the state directory until `start`.

pub mod cgroups;
pub mod container;
pub mod error;
pub mod fdpass;
pub mod hooks;
pub mod idmap;
pub mod namespaces;
pub mod process;
pub mod procfs;
pub mod rootfs;
pub mod rootless;
pub mod seccomp;
pub mod selfexe;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;

pub use error::{Error, Result};
