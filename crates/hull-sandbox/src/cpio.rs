//! A newc cpio archive (the kernel's initramfs format): the hull guest's initramfs,
//! built in memory, and the nested test bed's L1 image, streamed from host files to a
//! file (tens of MiB: two kernels, hull, busybox).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A host file, read (through symlinks) when the archive is written.
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// One member; paths are relative to the archive's root ("bin/busybox").
#[derive(Debug, Clone)]
pub enum Entry {
    File {
        path: String,
        source: Source,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
    Dir {
        path: String,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. }
            | Entry::Dir { path } => path,
        }
    }
}

/// Writes `entries` to `out`, each preceded by the directories above it that no earlier
/// member made (the kernel does not create missing parents), then the trailer, padded
/// to the 512-byte blocks the kernel reads.
pub fn write(out: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    let mut w = Writer {
        out,
        ino: 0,
        written: 0,
    };
    let mut dirs = BTreeSet::new();
    for e in entries {
        let path = e.path().trim_start_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |s| s.1)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if dirs.insert(parent.clone()) {
                w.member(&parent, 0o040755, &[], (0, 0))?;
            }
        }
        match e {
            Entry::Dir { .. } => {
                if dirs.insert(path.to_string()) {
                    w.member(path, 0o040755, &[], (0, 0))?;
                }
            }
            Entry::File { source, mode, .. } => match source {
                Source::Bytes(b) => w.member(path, 0o100000 | mode, b, (0, 0))?,
                Source::Host(p) => w.host_file(path, 0o100000 | mode, p)?,
            },
            Entry::Symlink { target, .. } => w.member(path, 0o120777, target.as_bytes(), (0, 0))?,
            Entry::CharDev { major, minor, .. } => {
                w.member(path, 0o020600, &[], (*major, *minor))?
            }
        }
    }
    w.member("TRAILER!!!", 0, &[], (0, 0))?;
    w.pad(512)?;
    w.out.flush()
}

struct Writer<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
    written: usize,
}

impl<W: Write> Writer<'_, W> {
    fn member(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        self.header(name, mode, data.len(), rdev)?;
        self.put(data)?;
        self.pad(4)
    }

    fn host_file(&mut self, name: &str, mode: u32, from: &Path) -> std::io::Result<()> {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", from.display()));
        let mut f = File::open(from).map_err(named)?;
        let size = f.metadata().map_err(named)?.len() as usize;
        self.header(name, mode, size, (0, 0))?;
        let copied = std::io::copy(&mut f, &mut self.out).map_err(named)? as usize;
        if copied != size {
            return Err(named(std::io::Error::other(
                "the file changed size while archived",
            )));
        }
        self.written += copied;
        self.pad(4)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        size: usize,
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut head = String::from("070701");
        for f in fields {
            head.push_str(&format!("{f:08x}"));
        }
        self.put(head.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad(4)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.written += b.len();
        self.out.write_all(b)
    }

    fn pad(&mut self, to: usize) -> std::io::Result<()> {
        let n = self.written.next_multiple_of(to) - self.written;
        self.put(&vec![0; n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_once_and_the_archive_lists_in_cpio() {
        let dir = std::env::temp_dir().join(format!("hull-sandbox-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.cpio");
        let entries = [
            Entry::File {
                path: "/a/b/f".into(),
                source: Source::Bytes(b"hello".to_vec()),
                mode: 0o644,
            },
            Entry::Symlink {
                path: "a/b/l".into(),
                target: "f".into(),
            },
            Entry::CharDev {
                path: "dev/console".into(),
                major: 5,
                minor: 1,
            },
        ];
        let mut file = std::io::BufWriter::new(File::create(&out).unwrap());
        write(&mut file, &entries).unwrap();
        drop(file);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let listing = std::process::Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&out)
            .output();
        std::fs::remove_dir_all(&dir).unwrap();
        let listing = listing.expect("cpio (apt-get install cpio) lists the archive");
        assert_eq!(
            String::from_utf8_lossy(&listing.stdout),
            "a\na/b\na/b/f\na/b/l\ndev\ndev/console\n"
        );
    }
}
