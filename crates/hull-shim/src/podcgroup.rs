//! A VM pod's shim joins its pod's host cgroup (the sandbox's, which holds the proxy
//! and the VMM and is sized for them): what the pod costs the host is accounted and
//! limited in one place, as Kata's `sandbox_cgroup_only`. Before the sandbox is
//! deleted the shim goes back where containerd started it, so the cgroup can go.

use std::path::PathBuf;

/// Where the shim was, per hierarchy: the cgroup directory to go back to.
#[derive(Debug, Default)]
pub struct Joined {
    origin: Vec<PathBuf>,
}

/// Every cgroup mount: (its super options for cgroup v1, None for cgroup2, mount point).
fn mounts() -> Vec<(Option<Vec<String>>, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let (fstype, opts) = (*f.get(sep + 1)?, *f.get(sep + 3)?);
            let opts = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(opts.split(',').map(str::to_string).collect()),
                _ => return None,
            };
            Some((opts, PathBuf::from(f[4])))
        })
        .collect()
}

/// The (mount point, own cgroup path) of each hierarchy this process is in: a v1 line
/// (`4:cpu,cpuacct:/x`, `1:name=systemd:/x`) matches the mount whose options hold all
/// its controllers; `0::/x` the cgroup2 mount.
fn own_cgroups() -> Vec<(PathBuf, String)> {
    let mounts = mounts();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, controllers, path) = (p.next()?, p.next()?, p.next()?);
            let mount = mounts.iter().find(|(opts, _)| match opts {
                None => controllers.is_empty(),
                Some(o) => {
                    !controllers.is_empty()
                        && controllers.split(',').all(|c| o.iter().any(|x| x == c))
                }
            })?;
            Some((mount.1.clone(), path.to_string()))
        })
        .collect()
}

fn move_self(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Joins `cgroups_path` (absolute, cgroupfs) in every hierarchy where it exists; a
/// hierarchy where the move fails keeps the shim where it was (logged).
pub fn join(cgroups_path: &str) -> Joined {
    let rel = cgroups_path.trim_start_matches('/');
    let mut joined = Joined::default();
    for (mount, own) in own_cgroups() {
        let target = mount.join(rel);
        if !target.is_dir() {
            continue;
        }
        match move_self(&target) {
            Ok(()) => joined.origin.push(mount.join(own.trim_start_matches('/'))),
            Err(e) => crate::log::warn(&format!(
                "cannot join the pod's cgroup {}: {e}",
                target.display()
            )),
        }
    }
    joined
}

impl Joined {
    /// Back where the shim came from (before the pod's cgroup is removed).
    pub fn leave(&mut self) {
        for dir in self.origin.drain(..) {
            if let Err(e) = move_self(&dir) {
                crate::log::warn(&format!("cannot go back to {}: {e}", dir.display()));
            }
        }
    }
}
