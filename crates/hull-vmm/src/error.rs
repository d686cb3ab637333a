/// Why a VM could not be built or stopped running. Each variant reads as the message.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A KVM ioctl failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// KVM's instruction emulator met an instruction it lacks. Where KVM runs every
    /// guest instruction through that emulator (as on hull's development host), Linux
    /// guests stop this way.
    #[error("the guest stopped at RIP {rip:#x}: KVM cannot emulate the instruction there (bytes {}); this host's KVM emulates guest code and lacks it", hex(.bytes))]
    EmulationFailure { rip: u64, bytes: Vec<u8> },
    /// KVM stopped the vCPU with another internal error.
    #[error("KVM internal error, suberror {suberror}, at RIP {rip:#x}")]
    InternalError { suberror: u32, rip: u64 },
    /// KVM could not enter the guest with the state it was given.
    #[error("KVM refused to enter the guest: hardware entry failure reason {reason:#x}")]
    FailEntry { reason: u64 },
    /// A thread's syscall filter could not be built or installed.
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// The VMM could not confine itself (`jail`).
    #[error("jail: {0}")]
    Jail(String),
    /// The kernel, initramfs or command line could not be put into guest memory.
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    /// A device could not be set up.
    #[error("device setup: {0}")]
    Device(String),
    /// The VM description was refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The vCPU exited for a reason hull-vmm does not handle.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

pub type Result<T> = std::result::Result<T, VmmError>;

pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
