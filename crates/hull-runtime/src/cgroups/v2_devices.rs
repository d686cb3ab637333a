//! The cgroup v2 device filter: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the
//! device rules, loaded and attached with raw bpf(2) (as runc and crun do; cgroup2 has
//! no devices.allow file).
//!
//! The program checks rules from the last to the first, so the last matching rule wins,
//! and denies what no rule matches.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::LinuxDeviceCgroup;

use super::devices::{self, Kind, Rule, ACC_ALL};
use super::CgroupError;

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used: 32-bit ALU, 64-bit conditional jumps, word loads.
pub(crate) const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(crate) const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub(crate) const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
pub(crate) const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
pub(crate) const MOV32_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
pub(crate) const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub(crate) const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
pub(crate) const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// Build the filter. Registers after the prologue (struct bpf_cgroup_dev_ctx in r1):
/// r2 = device type, r3 = requested access, r4 = major, r5 = minor.
pub(crate) fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    let verdict = |allow: bool| {
        [
            insn(MOV32_K, 0, 0, 0, i32::from(allow)),
            insn(EXIT, 0, 0, 0, 0),
        ]
    };
    for rule in rules.iter().rev() {
        let (allow, kind, major, minor, access) = match *rule {
            // Matches everything: earlier rules can never be reached.
            Rule::All { allow } => {
                p.extend(verdict(allow));
                return p;
            }
            Rule::One {
                allow,
                kind,
                major,
                minor,
                access,
            } => (allow, kind, major, minor, access),
        };
        // Tests jump to the next block on mismatch; `skip` is filled in once the block's
        // length is known.
        let mut block = Vec::with_capacity(8);
        let ty = match kind {
            Kind::Block => DEV_BLOCK,
            Kind::Char => DEV_CHAR,
        };
        block.push(insn(JNE_K, 2, 0, 0, ty));
        if access != ACC_ALL {
            // Requested access must be a subset: (r3 & access) == r3.
            block.push(insn(MOV32_X, 1, 3, 0, 0));
            block.push(insn(AND32_K, 1, 0, 0, i32::from(access)));
            block.push(insn(JNE_X, 1, 3, 0, 0));
        }
        if let Some(m) = major {
            block.push(insn(JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = minor {
            block.push(insn(JNE_K, 5, 0, 0, m as i32));
        }
        block.extend(verdict(allow));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.extend(verdict(false));
    p
}

// ---- bpf(2) --------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// hull's programs carry this name, so a later `apply` detaches only its own.
const PROG_NAME: &[u8] = b"hull_devices";

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of struct bpf_prog_info, up to and including the name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized #[repr(C)] prefix of union bpf_attr for
    // `cmd`; the kernel reads/writes at most size_of::<T>() bytes of it, and every pointer
    // stored inside it points to memory that outlives this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned_fd(raw: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw as RawFd) }
}

fn err(op: &'static str, dir: &Path, source: io::Error) -> CgroupError {
    CgroupError::Bpf {
        op,
        path: dir.to_path_buf(),
        log: String::new(),
        source,
    }
}

/// Load `insns` as a cgroup device program.
pub(crate) fn load(insns: &[Insn], dir: &Path) -> Result<OwnedFd, CgroupError> {
    let license = b"Apache\0";
    let mut name = [0u8; 16];
    name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned_fd(fd)),
        Err(source) => {
            // Load again with the verifier log, which says why.
            let mut log = vec![0u8; 16 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            Err(CgroupError::Bpf {
                op: "PROG_LOAD",
                path: dir.to_path_buf(),
                log: if text.is_empty() {
                    text
                } else {
                    format!(" (verifier: {text})")
                },
                source,
            })
        }
    }
}

/// Ids of the device programs attached directly to the cgroup `cg`.
fn attached(cg: &File, dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|e| err("PROG_QUERY", dir, e))?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// An fd for program `id` if it is one of hull's device filters.
fn hull_prog(id: u32) -> Option<OwnedFd> {
    let mut get = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    let fd = owned_fd(bpf(BPF_PROG_GET_FD_BY_ID, &mut get).ok()?);
    let mut info = ProgInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let name_end = info.name.iter().position(|&b| b == 0).unwrap_or(16);
    (info.prog_type == BPF_PROG_TYPE_CGROUP_DEVICE && &info.name[..name_end] == PROG_NAME)
        .then_some(fd)
}

/// Install the filter for `rules` on the cgroup2 directory `dir`, replacing hull's earlier
/// one. The new program is attached before the old is detached, so there is no moment
/// without a filter (with several attached, a device must pass all of them).
pub(crate) fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let insns = program(&devices::normalize(rules)?);
    let prog = load(&insns, dir)?;
    let cg = File::open(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let old = attached(&cg, dir)?;
    let mut attach = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| err("PROG_ATTACH", dir, e))?;
    tracing::debug!(dir = %dir.display(), insns = insns.len(), "device filter attached");
    for id in old {
        let Some(old_fd) = hull_prog(id) else {
            continue;
        };
        let mut detach = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut detach).map_err(|e| err("PROG_DETACH", dir, e))?;
        tracing::debug!(dir = %dir.display(), id, "old device filter detached");
    }
    Ok(())
}

/// How many hull device filters are attached to `dir`.
#[cfg(test)]
pub(crate) fn count_attached(dir: &Path) -> Result<usize, CgroupError> {
    let cg = File::open(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(attached(&cg, dir)?
        .into_iter()
        .filter(|id| hull_prog(*id).is_some())
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::devices::tests::rule;
    use crate::cgroups::devices::{ACC_MKNOD, ACC_READ, ACC_WRITE};
    use oci_spec::runtime::LinuxDeviceType::{self, *};

    /// A tiny interpreter for the instructions `program` emits.
    fn run(p: &[Insn], ty: i32, access: u8, major: u32, minor: u32) -> u64 {
        let mut r = [0u64; 11];
        let ctx = [((access as u32) << 16) | ty as u32, major, minor];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                AND32_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                MOV32_X => r[dst] = u64::from(r[src] as u32),
                MOV32_K => r[dst] = u64::from(i.imm as u32),
                JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// What the rules mean: the last matching one decides; nothing matching denies.
    fn reference(rules: &[Rule], ty: i32, access: u8, major: u32, minor: u32) -> u64 {
        for rule in rules.iter().rev() {
            match *rule {
                Rule::All { allow } => return allow as u64,
                Rule::One {
                    allow,
                    kind,
                    major: mj,
                    minor: mn,
                    access: acc,
                } => {
                    let k = if kind == Kind::Block {
                        DEV_BLOCK
                    } else {
                        DEV_CHAR
                    };
                    if k == ty
                        && access & acc == access
                        && mj.is_none_or(|m| m == major)
                        && mn.is_none_or(|m| m == minor)
                    {
                        return allow as u64;
                    }
                }
            }
        }
        0
    }

    /// (allow, type, major, minor, access)
    type Spec<'a> = (
        bool,
        Option<LinuxDeviceType>,
        Option<i64>,
        Option<i64>,
        &'a str,
    );

    fn spec(list: &[Spec]) -> Vec<Rule> {
        let oci: Vec<_> = list
            .iter()
            .map(|(a, t, mj, mn, acc)| rule(*a, *t, *mj, *mn, Some(acc)))
            .collect();
        devices::normalize(&oci).unwrap()
    }

    #[test]
    fn exact_instructions_for_one_rule() {
        let p = program(&spec(&[(true, Some(C), Some(1), Some(3), "rw")]));
        let tail = &p[6..];
        assert_eq!(
            tail,
            &[
                insn(JNE_K, 2, 0, 7, DEV_CHAR),
                insn(MOV32_X, 1, 3, 0, 0),
                insn(AND32_K, 1, 0, 0, (ACC_READ | ACC_WRITE) as i32),
                insn(JNE_X, 1, 3, 4, 0),
                insn(JNE_K, 4, 0, 3, 1),
                insn(JNE_K, 5, 0, 2, 3),
                insn(MOV32_K, 0, 0, 0, 1),
                insn(EXIT, 0, 0, 0, 0),
                insn(MOV32_K, 0, 0, 0, 0),
                insn(EXIT, 0, 0, 0, 0),
            ]
        );
    }

    #[test]
    fn generated_program_agrees_with_the_rules() {
        let sets = [
            spec(&[
                (false, None, None, None, "rwm"),
                (true, Some(C), Some(1), Some(3), "rwm"),
                (true, Some(C), Some(1), Some(5), "rwm"),
                (true, Some(C), Some(136), None, "rw"),
                (true, Some(B), None, None, "m"),
                (false, Some(C), Some(1), Some(5), "w"),
            ]),
            spec(&[
                (true, None, None, None, "rwm"),
                (false, Some(C), Some(10), Some(200), "rwm"),
            ]),
            spec(&[(true, Some(C), Some(1), None, "r")]),
            spec(&[
                (true, Some(A), Some(4), None, "rw"),
                (false, Some(B), Some(4), Some(1), "w"),
            ]),
        ];
        let accesses = [
            ACC_READ,
            ACC_WRITE,
            ACC_MKNOD,
            ACC_READ | ACC_WRITE,
            ACC_ALL,
        ];
        for rules in &sets {
            let p = program(rules);
            for ty in [DEV_BLOCK, DEV_CHAR] {
                for &acc in &accesses {
                    for major in [1, 4, 10, 136, 200] {
                        for minor in [0, 1, 3, 5, 200] {
                            assert_eq!(
                                run(&p, ty, acc, major, minor),
                                reference(rules, ty, acc, major, minor),
                                "rules {rules:?} type {ty} access {acc} {major}:{minor}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn allow_all_last_short_circuits() {
        let p = program(&spec(&[
            (false, Some(C), Some(1), Some(5), "rwm"),
            (true, None, None, None, "rwm"),
        ]));
        assert_eq!(p.len(), 8);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
    }

    #[test]
    fn kernel_accepts_the_program() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root for bpf(BPF_PROG_LOAD)");
            return;
        }
        let rules = spec(&[
            (false, None, None, None, "rwm"),
            (true, Some(C), Some(1), Some(3), "rwm"),
            (true, Some(C), Some(136), None, "rw"),
        ]);
        let fd = load(&program(&rules), Path::new("(test)")).unwrap();
        assert!(fd.as_raw_fd() >= 0);
    }
}
