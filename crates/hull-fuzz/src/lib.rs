//! The fuzz entry points of hull: each takes arbitrary bytes and drives one input path
//! of hull with them, as hull itself reads such input. They panic only if hull did
//! something wrong (a panic inside hull, or an error that names nothing).
//!
//! Two callers: the libFuzzer targets in `fuzz/` (outside the workspace, built by
//! `bench/fuzz` with coverage instrumentation) and `tests/replay.rs`, which feeds every
//! kept corpus and crash file to the same functions in an ordinary `cargo test`.

pub mod input;
pub mod oci;
pub mod proto;
pub mod virtio;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", oci::config),
    ("state", oci::state),
    ("proto_host", proto::host),
    ("proto_agent", proto::agent),
    ("virtio_mmio", virtio::mmio),
    ("virtio_blk", virtio::blk),
    ("virtio_net", virtio::net),
    ("virtio_vsock", virtio::vsock),
    ("virtio_console", virtio::console),
];

/// The entry point of `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A scratch directory of this process for sockets and disk images, under TMPDIR
/// (bench/fuzz points TMPDIR at a directory it removes afterwards).
pub fn scratch() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("hull-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the fuzz scratch directory");
        d
    })
    .clone()
}
