//! What L1's initramfs holds: busybox and the init script, the modules, hull (static),
//! hull-agent, the host programs hull runs (mkfs.erofs, iproute2's ip and tc) with the
//! libraries they load, and the hull guest. The guest's
//! kernel is the one `hull guest build` made; its initramfs and agent disk are rebuilt
//! here from the given hull-agent, so a change to the agent is tested without a new
//! `hull guest build`.

use std::path::{Path, PathBuf};
use std::process::Command;

use hull_sandbox::guest::{GuestAssets, DEFAULT_DIR};

use crate::cpio::{Entry, Source};
use crate::debian::DebianKernel;
use crate::error::{io_err, Result, TestbedError};

const INIT: &str = include_str!("init.sh");
/// Where hull and hull-agent go inside L1 (first on init's PATH).
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where extra files given with [`crate::Options::files`] go when named relatively.
pub const FILES_DIR: &str = "/testbed/files";

pub struct Inputs<'a> {
    pub kernel: &'a DebianKernel,
    pub busybox: &'a Path,
    pub hull: &'a Path,
    pub agent: &'a Path,
    pub guest: &'a GuestAssets,
    /// Host programs copied to the same path, each with the libraries it loads.
    pub tools: &'a [PathBuf],
    /// (host file, path inside L1).
    pub files: &'a [(PathBuf, String)],
}

pub fn entries(i: &Inputs) -> Result<Vec<Entry>> {
    let file = |path: &str, from: &Path, mode| Entry::File {
        path: path.into(),
        source: Source::Host(from.to_path_buf()),
        mode,
    };
    let bytes = |path: &str, data: Vec<u8>, mode| Entry::File {
        path: path.into(),
        source: Source::Bytes(data),
        mode,
    };
    let mut e = vec![
        // The kernel opens it for init's stdio before init mounts devtmpfs.
        Entry::CharDev {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
        bytes("init", INIT.as_bytes().to_vec(), 0o755),
        file("bin/busybox", i.busybox, 0o755),
        // For /init's #! line; init installs the other applets.
        Entry::Symlink {
            path: "bin/sh".into(),
            target: "busybox".into(),
        },
        file(&format!("{BIN_DIR}/hull"), i.hull, 0o755),
        file(&format!("{BIN_DIR}/hull-agent"), i.agent, 0o755),
    ];
    for d in ["proc", "sys", "tmp", "run", "root", "etc"] {
        e.push(Entry::Dir { path: d.into() });
    }
    let mut order = String::new();
    for m in &i.kernel.modules {
        let name = m.file_name().unwrap_or_default().to_string_lossy();
        e.push(file(&format!("testbed/modules/{name}"), m, 0o644));
        order.push_str(&format!("{name}\n"));
    }
    e.push(bytes("testbed/modules/order", order.into_bytes(), 0o644));
    let mut libs = Vec::new();
    for tool in i.tools {
        e.push(file(&path_str(tool), tool, 0o755));
        for lib in shared_libraries(tool)? {
            if !libs.contains(&lib) {
                e.push(file(&path_str(&lib), &lib, 0o755));
                libs.push(lib);
            }
        }
    }
    e.extend(guest_entries(i.guest, i.agent)?);
    for (from, to) in i.files {
        let to = if to.starts_with('/') {
            to.clone()
        } else {
            format!("{FILES_DIR}/{to}")
        };
        e.push(file(&to, from, 0o755));
    }
    Ok(e)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The guest where hull looks for it (`/var/lib/hull/guest/current.json`): the built
/// kernel, and an initramfs and an agent disk made from `agent`.
fn guest_entries(guest: &GuestAssets, agent: &Path) -> Result<Vec<Entry>> {
    let agent_bytes = std::fs::read(agent).map_err(io_err("cannot read", agent))?;
    let dir = Path::new(DEFAULT_DIR);
    let l1 = GuestAssets {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
        initramfs: dir.join("initramfs.cpio"),
        agent_disk: Some(dir.join("agent.erofs")),
        kernel_build_seconds: None,
        kernel_build_incremental: None,
    };
    let manifest = serde_json::to_vec_pretty(&l1)
        .map_err(|e| TestbedError::Protocol(format!("cannot write the guest manifest: {e}")))?;
    let host = |p: &Path| Source::Host(p.to_path_buf());
    let rows = [
        (&l1.vmlinux, host(&guest.vmlinux)),
        (&l1.bzimage, host(&guest.bzimage)),
        (
            &l1.initramfs,
            Source::Bytes(hull_sandbox::initramfs::build(&agent_bytes)),
        ),
        (&dir.join("agent.erofs"), Source::Bytes(agent_disk(agent)?)),
        (&dir.join("current.json"), Source::Bytes(manifest)),
    ];
    Ok(rows
        .into_iter()
        .map(|(path, source)| Entry::File {
            path: path_str(path),
            source,
            mode: 0o644,
        })
        .collect())
}

/// The agent's disk as `hull guest build` makes it, built in a scratch directory.
fn agent_disk(agent: &Path) -> Result<Vec<u8>> {
    let scratch = std::env::temp_dir().join(format!("hull-testbed-disk-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(io_err("cannot create", &scratch))?;
    let image = scratch.join("agent.erofs");
    let read = hull_sandbox::guest::write_agent_disk(agent, &image)
        .map_err(TestbedError::from)
        .and_then(|()| std::fs::read(&image).map_err(io_err("cannot read", &image)));
    let _ = std::fs::remove_dir_all(&scratch);
    read
}

/// The shared objects `binary` loads, the dynamic loader included, as `ldd` lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = crate::debian::tool(Command::new("ldd").arg(binary))?;
    Ok(parse_ldd(&out))
}

fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=> ") {
                Some((_, rest)) => rest,
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `program` as found on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether `bin` runs without a dynamic loader (it must: L1 has no libc but for the
/// few libraries copied for mkfs.erofs).
pub fn require_static(what: &'static str, bin: &Path, hint: &'static str) -> Result<()> {
    let data = std::fs::read(bin).map_err(|_| TestbedError::Missing {
        what,
        path: bin.to_path_buf(),
        hint,
    })?;
    if has_interpreter(&data) {
        return Err(TestbedError::Tool {
            program: bin.display().to_string(),
            detail: format!("{what} is dynamically linked; L1 needs a static binary"),
        });
    }
    Ok(())
}

/// An ELF64 program header of type PT_INTERP names a dynamic loader.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if !elf.starts_with(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count as usize).any(|i| {
        let at = phoff as usize + i * size as usize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_libraries_and_the_loader_not_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tliblz4.so.1 => /lib/x86_64-linux-gnu/liblz4.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/liblz4.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn a_dynamic_binary_has_an_interpreter_and_a_static_one_not() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(has_interpreter(&sh), "/bin/sh is dynamic on Debian");
        let bb = std::fs::read("/bin/busybox").expect("busybox-static installs /bin/busybox");
        assert!(!has_interpreter(&bb));
    }
}
