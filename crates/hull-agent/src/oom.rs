//! The host's WatchOom requests: each holds its container's memory.events open, which
//! poll(2) reports with POLLPRI when the kernel changes it, and is answered when the
//! OOM killer's count has grown past what the host has seen, or when the container's
//! init has exited (its last answer). The host hears of a kill as it happens; nothing
//! wakes the guest while none does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use hull_proto::{Message, Reply};
use hull_runtime::cgroups::oom_kill_count;

use crate::containers::{Key, Proc};

struct Watch {
    request: u64,
    container: String,
    seen: u64,
    events: File,
}

#[derive(Default)]
pub struct OomWatches {
    watches: Vec<Watch>,
}

/// An answer due: the request it answers, the count, and whether the init has exited.
pub struct Due {
    pub request: u64,
    pub count: u64,
    pub exited: bool,
}

/// Reads the file from its start: a read through the fd that poll(2) watches is what
/// re-arms its POLLPRI.
fn read_count(f: &mut File) -> Result<u64> {
    let mut text = String::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_string(&mut text)?;
    Ok(oom_kill_count(&text))
}

impl OomWatches {
    pub fn add(&mut self, request: u64, container: String, seen: u64, file: &Path) -> Result<()> {
        let mut events = File::open(file).with_context(|| format!("open {}", file.display()))?;
        read_count(&mut events).with_context(|| format!("read {}", file.display()))?;
        self.watches.push(Watch {
            request,
            container,
            seen,
            events,
        });
        Ok(())
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.watches.iter().map(|w| w.events.as_fd())
    }

    /// The watches to answer now, removed; `init_exited(container)` says whether a
    /// container's init has exited (or the container is gone).
    pub fn due(&mut self, init_exited: impl Fn(&str) -> bool) -> Vec<Due> {
        let mut due = Vec::new();
        self.watches.retain_mut(|w| {
            // An unreadable file is a cgroup that went: the last answer, as it stands.
            let (count, gone) = match read_count(&mut w.events) {
                Ok(c) => (c, false),
                Err(_) => (w.seen, true),
            };
            let exited = gone || init_exited(&w.container);
            if count > w.seen || exited {
                due.push(Due {
                    request: w.request,
                    count,
                    exited,
                });
                return false;
            }
            true
        });
        due
    }

    /// The responses due now, for the containers' processes as they stand.
    pub fn answers(&mut self, procs: &HashMap<Key, Proc>) -> Vec<Message> {
        let init_exited =
            |c: &str| !matches!(procs.get(&(c.to_string(), None)), Some(p) if p.exit.is_none());
        self.due(init_exited)
            .into_iter()
            .map(|d| Message::Response {
                id: d.request,
                reply: Ok(Reply::OomKills {
                    count: d.count,
                    exited: d.exited,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_either_version() {
        let v2 = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        let count = oom_kill_count;
        assert_eq!((count(v2), count(v1), count("")), (2, 5, 0));
    }

    #[test]
    fn answered_when_the_count_grows_or_the_init_exits() {
        let dir = std::env::temp_dir().join(format!("hull-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "oom 0\noom_kill 0\n").unwrap();
        std::fs::write(&b, "oom 1\noom_kill 1\n").unwrap();
        let mut w = OomWatches::default();
        w.add(1, "a".into(), 0, &a).unwrap();
        w.add(2, "b".into(), 1, &b).unwrap();
        assert!(w.add(3, "c".into(), 0, &dir.join("none")).is_err());
        assert!(w.due(|_| false).is_empty());
        std::fs::write(&a, "oom 1\noom_kill 1\n").unwrap();
        let due = w.due(|_| false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].request, due[0].count, due[0].exited), (1, 1, false));
        let due = w.due(|c| c == "b");
        assert_eq!((due[0].request, due[0].count, due[0].exited), (2, 1, true));
        assert_eq!(w.fds().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
