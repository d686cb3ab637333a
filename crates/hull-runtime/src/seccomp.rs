//! seccomp: config.json's `linux.seccomp` to a libseccomp filter loaded into the calling
//! thread, the notify-fd hand-off to a seccomp agent, and what `hull features` reports.
//!
//! Semantics follow runc (libcontainer/seccomp): unknown syscall names are skipped, a rule
//! whose action equals the default action is skipped, several conditions on the same
//! argument become one rule per condition, `SCMP_ACT_KILL` is kill-thread, ERRNO and TRACE
//! default to EPERM, and no_new_privs is left to the caller.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use libseccomp::{
    check_api, ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use nix::errno::Errno;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};

use crate::fdpass;

type LibError = libseccomp::error::SeccompError;

/// A syscall has six argument registers; `args[].index` counts from 0.
const MAX_ARGS: usize = 6;

/// Above this many rules libseccomp's binary-tree layout pays off (runc's threshold; at 0
/// rules libseccomp <= 2.5.4 miscompiles the tree, so small filters stay linear).
const BINARY_TREE_THRESHOLD: usize = 32;

/// What the init calls between load() and the runtime holding the notify fd: runc's
/// `write`, and the `sendmsg`/`sendto` of hull's sync channel (fdpass, Channel::send).
const HANDOFF_SYSCALLS: &[&str] = &["write", "sendmsg", "sendto"];

/// The containerProcessState's ociVersion when the state itself names none.
const OCI_VERSION: &str = "1.2.0";

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The default action is SCMP_ACT_NOTIFY.
    #[error("seccomp: SCMP_ACT_NOTIFY cannot be the default action: the init's own syscalls after loading (handing over the notify fd, execve) would wait for an agent that does not have the fd yet")]
    NotifyDefaultAction,
    /// A NOTIFY rule names a syscall the init needs to hand the notify fd over.
    #[error("seccomp: SCMP_ACT_NOTIFY cannot be used for the {0} syscall: the init uses it to pass the notify fd to the runtime after loading the filter, and would wait forever for an agent that never gets the fd")]
    NotifyHandoff(String),
    /// NOTIFY is used but libseccomp or the kernel cannot do it.
    #[error("seccomp: SCMP_ACT_NOTIFY needs libseccomp >= 2.5.0 and Linux >= 5.7 (API level 6); this host has libseccomp {version}, API level {api}")]
    NotifyUnsupported { version: String, api: u32 },
    /// errnoRet / defaultErrnoRet does not fit the 16 bits of SECCOMP_RET_DATA.
    #[error("seccomp: errnoRet {value} of {action} is out of range (0..=65535)")]
    ErrnoOutOfRange {
        action: LinuxSeccompAction,
        value: u32,
    },
    /// A syscall rule has an empty string among its names.
    #[error("seccomp: an empty string is not a valid syscall name")]
    EmptySyscallName,
    /// A condition names an argument a syscall does not have.
    #[error("seccomp: syscall {syscall}: argument index {index} is out of range (a syscall has 6 arguments, 0..=5)")]
    ArgIndex { syscall: String, index: usize },
    /// libseccomp refused to create the filter.
    #[error("seccomp: creating the filter with default action {action}: {source}")]
    Create {
        action: LinuxSeccompAction,
        source: LibError,
    },
    /// libseccomp refused a filter attribute.
    #[error("seccomp: setting the filter attribute {attr}: {source}")]
    Attr {
        attr: &'static str,
        source: LibError,
    },
    /// The architecture is unknown to this libseccomp, or of the other byte order.
    #[error("seccomp: architecture {arch} cannot be added to the filter (libseccomp {version} does not know it, or its byte order differs from the native one): {source}")]
    Arch {
        arch: Arch,
        version: String,
        source: LibError,
    },
    /// The flag needs a newer libseccomp or kernel than this host has.
    #[error("seccomp: flag {flag} needs libseccomp >= {need_version} and API level {need_api}; this host has libseccomp {version}, API level {api}")]
    FlagUnsupported {
        flag: LinuxSeccompFilterFlag,
        need_version: String,
        need_api: u32,
        version: String,
        api: u32,
    },
    /// libseccomp refused a supported flag.
    #[error("seccomp: setting flag {flag}: {source}")]
    Flag {
        flag: LinuxSeccompFilterFlag,
        source: LibError,
    },
    /// libseccomp refused a rule (e.g. a conflicting rule for the same syscall).
    #[error("seccomp: adding rule {action} for syscall {syscall}: {source}")]
    AddRule {
        syscall: String,
        action: LinuxSeccompAction,
        source: LibError,
    },
    /// The kernel refused the filter.
    #[error("seccomp: loading the filter into the kernel: {}{hint}", errno.map_or_else(|| source.to_string(), |e| e.desc().to_owned()))]
    Load {
        errno: Option<Errno>,
        hint: &'static str,
        source: LibError,
    },
    /// The filter loaded but libseccomp gave no listener fd.
    #[error("seccomp: getting the notify fd of the loaded filter: {source}")]
    NotifyFd { source: LibError },
    /// The containerProcessState could not be encoded.
    #[error("seccomp: encoding the container process state for the seccomp agent: {0}")]
    Encode(#[from] serde_json::Error),
    /// The seccomp agent's socket could not be reached.
    #[error("seccomp: connecting to the seccomp agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state and fd could not be sent to the agent.
    #[error("seccomp: sending the notify fd to the seccomp agent at {}: {source}", path.display())]
    Send {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the filter from `linux.seccomp` and loads it into the calling thread.
///
/// The filter is loaded without libseccomp's automatic no_new_privs, so the kernel takes
/// it only from a thread that has no_new_privs set or holds CAP_SYS_ADMIN (effective) in
/// its user namespace; otherwise this fails with EACCES. Hence, as runc does:
/// - `process.noNewPrivileges` true: set no_new_privs, setgroups/setuid, drop
///   capabilities, then call this last, just before execve;
/// - false: call this before the setuid and capset that lose CAP_SYS_ADMIN; the filter
///   then also has to allow those calls (a profile that blocks them breaks the start).
///
/// Every syscall made after this call up to execve must pass the filter.
///
/// Returns the listener fd (close-on-exec) when a SCMP_ACT_NOTIFY rule made it into the
/// filter; `None` otherwise, including when every NOTIFY rule named only syscalls this
/// libseccomp does not know.
pub fn load(seccomp: &LinuxSeccomp) -> Result<Option<OwnedFd>, SeccompError> {
    compile(seccomp)?.load()
}

/// A filter built from the config but not loaded yet: building is where a bad profile
/// fails, so it can happen while errors still reach the parent; loading can then wait
/// until the last moment before execve.
pub struct Compiled {
    ctx: ScmpFilterContext,
    notify: bool,
}

pub fn compile(seccomp: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    let (ctx, notify) = build(seccomp)?;
    Ok(Compiled { ctx, notify })
}

impl Compiled {
    /// Whether loading returns a notify fd that must go to the runtime.
    pub fn notifies(&self) -> bool {
        self.notify
    }

    /// Loads the filter into the calling thread; see [`load`].
    pub fn load(self) -> Result<Option<OwnedFd>, SeccompError> {
        let Compiled { ctx, notify } = self;
        ctx.load().map_err(load_error)?;
        if !notify {
            return Ok(None);
        }
        let raw = ctx
            .get_notify_fd()
            .map_err(|source| SeccompError::NotifyFd { source })?;
        // SAFETY: `raw` is the listener the kernel returned to libseccomp's seccomp() call in
        // this process (close-on-exec). libseccomp keeps the number only in its global state
        // and closes it only in seccomp_reset(NULL), which hull never calls, so we take sole
        // ownership as runc and youki do.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

/// Whether any rule uses SCMP_ACT_NOTIFY (then `listenerPath` must be set).
pub fn uses_notify(seccomp: &LinuxSeccomp) -> bool {
    rules(seccomp)
        .iter()
        .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Sends the notify fd to the seccomp agent at `listener_path`: one SOCK_STREAM
/// connection carrying the containerProcessState JSON (`ociVersion`, `fds`
/// `["seccompFd"]`, `pid`, `metadata` when not empty, `state`) with `fd` in SCM_RIGHTS,
/// as runtime-spec's seccomp.md describes.
pub fn send_to_listener(
    listener_path: &Path,
    metadata: &str,
    pid: i32,
    state: &serde_json::Value,
    fd: BorrowedFd,
) -> Result<(), SeccompError> {
    let version = state
        .get("ociVersion")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(OCI_VERSION);
    let mut msg = serde_json::json!({
        "ociVersion": version,
        "fds": ["seccompFd"],
        "pid": pid,
        "state": state,
    });
    if !metadata.is_empty() {
        msg["metadata"] = metadata.into();
    }
    let payload = serde_json::to_vec(&msg)?;
    let path = listener_path.to_path_buf();
    let stream = match UnixStream::connect(listener_path) {
        Ok(s) => s,
        Err(source) => return Err(SeccompError::Connect { path, source }),
    };
    fdpass::send_fd(stream.as_fd(), &payload, fd)
        .map_err(|source| SeccompError::Send { path, source })
}

/// Every action hull accepts (`hull features`).
pub fn supported_actions() -> &'static [&'static str] {
    &[
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_TRAP",
    ]
}

/// Every argument operator hull accepts.
pub fn supported_operators() -> &'static [&'static str] {
    &[
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_LE",
        "SCMP_CMP_LT",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_CMP_NE",
    ]
}

const ARCHS: &[(&str, ScmpArch)] = &[
    ("SCMP_ARCH_AARCH64", ScmpArch::Aarch64),
    ("SCMP_ARCH_ARM", ScmpArch::Arm),
    ("SCMP_ARCH_LOONGARCH64", ScmpArch::Loongarch64),
    ("SCMP_ARCH_M68K", ScmpArch::M68k),
    ("SCMP_ARCH_MIPS", ScmpArch::Mips),
    ("SCMP_ARCH_MIPS64", ScmpArch::Mips64),
    ("SCMP_ARCH_MIPS64N32", ScmpArch::Mips64N32),
    ("SCMP_ARCH_MIPSEL", ScmpArch::Mipsel),
    ("SCMP_ARCH_MIPSEL64", ScmpArch::Mipsel64),
    ("SCMP_ARCH_MIPSEL64N32", ScmpArch::Mipsel64N32),
    ("SCMP_ARCH_PARISC", ScmpArch::Parisc),
    ("SCMP_ARCH_PARISC64", ScmpArch::Parisc64),
    ("SCMP_ARCH_PPC", ScmpArch::Ppc),
    ("SCMP_ARCH_PPC64", ScmpArch::Ppc64),
    ("SCMP_ARCH_PPC64LE", ScmpArch::Ppc64Le),
    ("SCMP_ARCH_RISCV64", ScmpArch::Riscv64),
    ("SCMP_ARCH_S390", ScmpArch::S390),
    ("SCMP_ARCH_S390X", ScmpArch::S390X),
    ("SCMP_ARCH_SH", ScmpArch::Sh),
    ("SCMP_ARCH_SHEB", ScmpArch::Sheb),
    ("SCMP_ARCH_X32", ScmpArch::X32),
    ("SCMP_ARCH_X86", ScmpArch::X86),
    ("SCMP_ARCH_X86_64", ScmpArch::X8664),
];

/// The architectures the installed libseccomp recognises (asked at run time: 2.5 lacks
/// LoongArch, M68K and SuperH, which 2.6 has). A filter can combine only archs of the
/// native byte order; the others are still recognised, as `runc features` reports them.
pub fn supported_archs() -> Vec<&'static str> {
    let recognised = |arch: ScmpArch| {
        let Ok(mut probe) = ScmpFilterContext::new(ScmpAction::Allow) else {
            return false;
        };
        // EDOM is the byte-order mismatch; only EINVAL means "unknown arch".
        match probe.add_arch(arch) {
            Ok(_) => true,
            Err(e) => e.errno() != Some(libseccomp::error::SeccompErrno::EINVAL),
        }
    };
    ARCHS
        .iter()
        .filter(|(_, arch)| recognised(*arch))
        .map(|(name, _)| *name)
        .collect()
}

const FLAGS: &[LinuxSeccompFilterFlag] = &[
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

/// Every flag hull knows.
pub fn known_flags() -> &'static [&'static str] {
    &[
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    ]
}

/// The known flags this libseccomp and kernel can apply (libseccomp's API level already
/// reflects what the kernel offers).
pub fn supported_flags() -> Vec<&'static str> {
    FLAGS
        .iter()
        .zip(known_flags())
        .filter(|(flag, _)| flag_supported(**flag))
        .map(|(_, name)| *name)
        .collect()
}

/// The installed libseccomp's version, e.g. "2.5.4".
pub fn libseccomp_version() -> Option<String> {
    ScmpVersion::current().ok().map(|v| v.to_string())
}

fn version_string() -> String {
    libseccomp_version().unwrap_or_else(|| "unknown".into())
}

fn rules(seccomp: &LinuxSeccomp) -> &[LinuxSyscall] {
    seccomp.syscalls().as_deref().unwrap_or_default()
}

/// The filter context and whether a NOTIFY rule was added to it.
fn build(seccomp: &LinuxSeccomp) -> Result<(ScmpFilterContext, bool), SeccompError> {
    let default = action(seccomp.default_action(), seccomp.default_errno_ret())?;
    if default == ScmpAction::Notify {
        return Err(SeccompError::NotifyDefaultAction);
    }
    let rules = rules(seccomp);
    if uses_notify(seccomp) {
        let notify_rules = rules
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActNotify);
        let mut names = notify_rules.flat_map(|r| r.names());
        if let Some(n) = names.find(|n| HANDOFF_SYSCALLS.contains(&n.as_str())) {
            return Err(SeccompError::NotifyHandoff(n.clone()));
        }
        if !check_api(6, ScmpVersion::from((2, 5, 0))).unwrap_or(false) {
            return Err(SeccompError::NotifyUnsupported {
                version: version_string(),
                api: libseccomp::get_api(),
            });
        }
    }

    let mut ctx = ScmpFilterContext::new(default).map_err(|source| SeccompError::Create {
        action: seccomp.default_action(),
        source,
    })?;
    // libseccomp sets no_new_privs on load by default; runtime-spec ties it to
    // process.noNewPrivileges, which is the caller's business.
    ctx.set_ctl_nnp(false)
        .map_err(|source| SeccompError::Attr {
            attr: "SCMP_FLTATR_CTL_NNP",
            source,
        })?;
    // Without this libseccomp turns every kernel refusal into ECANCELED, and the error
    // could not say whether a capability or a kernel feature was missing.
    if let Err(e) = ctx.set_api_sysrawrc(true) {
        tracing::debug!("seccomp: raw kernel error codes unavailable: {e}");
    }
    for arch in seccomp.architectures().as_deref().unwrap_or_default() {
        ctx.add_arch(scmp_arch(*arch))
            .map_err(|source| SeccompError::Arch {
                arch: *arch,
                version: version_string(),
                source,
            })?;
    }
    for flag in seccomp.flags().as_deref().unwrap_or_default() {
        set_flag(&mut ctx, *flag)?;
    }
    if rules.len() > BINARY_TREE_THRESHOLD {
        if let Err(e) = ctx.set_ctl_optimize(2) {
            tracing::debug!("seccomp: binary tree optimisation unavailable: {e}");
        }
    }

    let mut notify = false;
    for rule in rules {
        notify |= add_rule(&mut ctx, rule, default)?;
    }
    Ok((ctx, notify))
}

fn action(act: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction, SeccompError> {
    let ret = |default: u16| -> Result<u16, SeccompError> {
        match errno_ret {
            None => Ok(default),
            Some(v) => u16::try_from(v).map_err(|_| SeccompError::ErrnoOutOfRange {
                action: act,
                value: v,
            }),
        }
    };
    let eperm = libc::EPERM as u16;
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(ret(eperm)?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret(eperm)?),
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    })
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// The libseccomp (version, API level) a flag needs; the API level encodes kernel support.
fn flag_requirement(flag: LinuxSeccompFilterFlag) -> ((u32, u32, u32), u32) {
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ((2, 2, 0), 2),
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => ((2, 4, 0), 3),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ((2, 5, 0), 4),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ((2, 6, 0), 7),
    }
}

fn flag_supported(flag: LinuxSeccompFilterFlag) -> bool {
    let (version, api) = flag_requirement(flag);
    check_api(api, ScmpVersion::from(version)).unwrap_or(false)
}

fn set_flag(ctx: &mut ScmpFilterContext, flag: LinuxSeccompFilterFlag) -> Result<(), SeccompError> {
    if !flag_supported(flag) {
        let ((major, minor, micro), need_api) = flag_requirement(flag);
        return Err(SeccompError::FlagUnsupported {
            flag,
            need_version: format!("{major}.{minor}.{micro}"),
            need_api,
            version: version_string(),
            api: libseccomp::get_api(),
        });
    }
    let set = match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
    };
    set.map(drop)
        .map_err(|source| SeccompError::Flag { flag, source })
}

fn condition(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // runtime-spec: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let cmp = ScmpCompareOp::MaskedEqual(arg.value());
            return ScmpArgCompare::new(arg.index() as u32, cmp, arg.value_two().unwrap_or(0));
        }
    };
    ScmpArgCompare::new(arg.index() as u32, op, arg.value())
}

/// Adds one config rule (every name in it); returns whether a NOTIFY rule went in.
fn add_rule(
    ctx: &mut ScmpFilterContext,
    rule: &LinuxSyscall,
    default: ScmpAction,
) -> Result<bool, SeccompError> {
    let act = action(rule.action(), rule.errno_ret())?;
    let args = rule.args().as_deref().unwrap_or_default();
    let first = || rule.names().first().cloned().unwrap_or_default();
    if let Some(bad) = args.iter().find(|a| a.index() >= MAX_ARGS) {
        return Err(SeccompError::ArgIndex {
            syscall: first(),
            index: bad.index(),
        });
    }
    if act == default {
        // libseccomp refuses a rule that repeats the default action; it changes nothing.
        tracing::debug!(
            "seccomp: rule {} for {:?} equals the default action, skipped",
            rule.action(),
            rule.names()
        );
        return Ok(false);
    }
    let conditions: Vec<ScmpArgCompare> = args.iter().map(condition).collect();
    // libseccomp ANDs a rule's conditions and rejects two on the same argument; runc then
    // falls back to one rule per condition, which ORs them. Profiles (Docker's among
    // them) rely on that for e.g. several allowed personality() values.
    let mut per_index = [0usize; MAX_ARGS];
    args.iter().for_each(|a| per_index[a.index()] += 1);
    let split = per_index.iter().any(|&n| n > 1);

    let mut added = false;
    for name in rule.names() {
        if name.is_empty() {
            return Err(SeccompError::EmptySyscallName);
        }
        // A name this libseccomp does not know is a syscall this kernel generation does
        // not have either; profiles list newer syscalls ahead of time, so skip (as runc).
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!("seccomp: unknown syscall {name:?} ignored");
            continue;
        };
        let result = if split {
            conditions
                .iter()
                .try_for_each(|c| ctx.add_rule_conditional(act, syscall, &[*c]).map(drop))
        } else {
            ctx.add_rule_conditional(act, syscall, &conditions)
                .map(drop)
        };
        result.map_err(|source| SeccompError::AddRule {
            syscall: name.clone(),
            action: rule.action(),
            source,
        })?;
        added = true;
    }
    Ok(added && act == ScmpAction::Notify)
}

fn load_error(source: LibError) -> SeccompError {
    let errno = source
        .sysrawrc()
        .filter(|rc| *rc < 0)
        .map(|rc| Errno::from_raw(-rc));
    let hint = match errno {
        Some(Errno::EACCES) => ": the thread has neither no_new_privs set nor CAP_SYS_ADMIN in its user namespace (load the filter before dropping CAP_SYS_ADMIN, or set no_new_privs)",
        Some(Errno::EINVAL) => ": the kernel does not support a flag or action the filter uses",
        Some(Errno::ESRCH) => ": SECCOMP_FILTER_FLAG_TSYNC could not synchronise another thread of the process",
        Some(Errno::EBUSY) => ": a seccomp notify listener already exists in this thread's filter tree",
        _ => "",
    };
    SeccompError::Load {
        errno,
        hint,
        source,
    }
}

#[cfg(test)]
mod tests;
