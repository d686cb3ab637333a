//! Where the cgroup hierarchies are (from /proc/self/mountinfo), where hull itself sits in
//! them (from /proc/self/cgroup), and the container's directory in each.

use std::path::{Path, PathBuf};

use super::{Cgroup, CgroupError, CgroupVersion, Hierarchy};

pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const HYBRID_UNIFIED: &str = "/sys/fs/cgroup/unified";

/// v1 controllers hull joins; other named hierarchies than name=systemd are not ours.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
    "name=systemd",
];

/// One cgroup or cgroup2 line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The path inside the hierarchy that is mounted (field 4).
    pub root: String,
    pub point: PathBuf,
    /// True for cgroup2.
    pub v2: bool,
    /// For v1: the controllers in the super options, e.g. ["cpu", "cpuacct"].
    pub controllers: Vec<String>,
}

/// The cgroup mounts in /proc/self/mountinfo, in file order.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent maj:min root point opts [optional...] - fstype source superopts
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|p| p + 6) else {
            continue;
        };
        let (Some(root), Some(point), Some(fstype)) =
            (fields.get(3), fields.get(4), fields.get(sep + 1))
        else {
            continue;
        };
        let v2 = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            let opts = fields.get(sep + 3).copied().unwrap_or("");
            opts.split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_owned)
                .collect()
        };
        out.push(Mount {
            root: unescape(root),
            point: PathBuf::from(unescape(point)),
            v2,
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (controllers, path) per line of /proc/self/cgroup; "" controllers for cgroup2.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// A hierarchy of this host and where hull sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// As /proc/self/cgroup spells the controllers ("" for cgroup2).
    pub name: String,
    pub mount: Mount,
    /// hull's own cgroup in it, if /proc/self/cgroup lists one.
    pub own: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub version: CgroupVersion,
    pub v1: Vec<Placed>,
    pub unified: Option<Placed>,
}

/// Work out the host layout from the text of /proc/self/mountinfo and /proc/self/cgroup.
pub(crate) fn detect(mountinfo: &str, proc_cgroup: &str) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_proc_cgroup(proc_cgroup);
    let own_v2 = || {
        own.iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone())
    };

    let v2_at = |p: &str| mounts.iter().find(|m| m.v2 && m.point == Path::new(p));
    if let Some(m) = v2_at(CGROUP_ROOT) {
        return Ok(Layout {
            version: CgroupVersion::V2,
            v1: Vec::new(),
            unified: Some(Placed {
                name: String::new(),
                mount: m.clone(),
                own: own_v2(),
            }),
        });
    }

    let mut v1: Vec<Placed> = Vec::new();
    for m in mounts.iter().filter(|m| !m.v2 && !m.controllers.is_empty()) {
        // The same hierarchy may be mounted twice (bind mounts); the first one counts.
        if v1
            .iter()
            .any(|p| same_set(&p.mount.controllers, &m.controllers))
        {
            continue;
        }
        let line = own.iter().find(|(c, _)| {
            let listed: Vec<String> = c.split(',').map(str::to_owned).collect();
            !c.is_empty() && same_set(&listed, &m.controllers)
        });
        v1.push(Placed {
            name: line.map_or_else(|| m.controllers.join(","), |(c, _)| c.clone()),
            mount: m.clone(),
            own: line.map(|(_, p)| p.clone()),
        });
    }

    if v1.is_empty() {
        // cgroup2 mounted somewhere else than /sys/fs/cgroup, and nothing else.
        return match mounts.iter().find(|m| m.v2) {
            Some(m) => Ok(Layout {
                version: CgroupVersion::V2,
                v1,
                unified: Some(Placed {
                    name: String::new(),
                    mount: m.clone(),
                    own: own_v2(),
                }),
            }),
            None => Err(CgroupError::NotMounted),
        };
    }
    let unified = v2_at(HYBRID_UNIFIED).map(|m| Placed {
        name: String::new(),
        mount: m.clone(),
        own: own_v2(),
    });
    Ok(Layout {
        version: if unified.is_some() {
            CgroupVersion::Hybrid
        } else {
            CgroupVersion::V1
        },
        v1,
        unified,
    })
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Split a cgroups path into components; `..` is refused so no path leaves its hierarchy.
pub(crate) fn components(path: &str) -> Result<(bool, Vec<&str>), CgroupError> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(invalid("\"..\" is not allowed"));
    }
    if comps.is_empty() {
        return Err(invalid("the root cgroup cannot hold a container"));
    }
    if path.contains('\0') {
        return Err(invalid("NUL byte in path"));
    }
    Ok((path.starts_with('/'), comps))
}

fn join(base: &str, comps: &[&str]) -> String {
    let mut s = base.trim_end_matches('/').to_owned();
    for c in comps {
        s.push('/');
        s.push_str(c);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

impl Layout {
    /// The container's cgroup for `linux.cgroupsPath` (None/empty: `id`, relative).
    pub(crate) fn place(
        &self,
        cgroups_path: Option<&str>,
        id: &str,
    ) -> Result<Cgroup, CgroupError> {
        let wanted = cgroups_path.filter(|p| !p.is_empty()).unwrap_or(id);
        let (absolute, comps) = components(wanted)?;
        let one = |p: &Placed| -> Result<Hierarchy, CgroupError> {
            let (rel, path) = if absolute {
                (join("", &comps), join(&p.mount.root, &comps))
            } else {
                let own = p
                    .own
                    .as_deref()
                    .ok_or_else(|| CgroupError::OwnCgroupUnknown {
                        hierarchy: if p.name.is_empty() {
                            "cgroup2".to_owned()
                        } else {
                            p.name.clone()
                        },
                        path: wanted.to_owned(),
                    })?;
                // Inside a cgroup namespace or a bind-mounted subtree the mount shows
                // only part of the hierarchy: hull's cgroup relative to the mount's root.
                let in_mount = match own.strip_prefix(p.mount.root.trim_end_matches('/')) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                    _ => own,
                };
                (join(in_mount, &comps), join(own, &comps))
            };
            Ok(Hierarchy {
                controllers: p.name.clone(),
                mount: p.mount.point.clone(),
                dir: p.mount.point.join(rel.trim_start_matches('/')),
                path,
                created: Vec::new(),
            })
        };
        Ok(Cgroup {
            version: self.version,
            v1: self.v1.iter().map(one).collect::<Result<_, _>>()?,
            unified: self.unified.as_ref().map(one).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
6:freezer:/
5:devices:/
4:memory:/process_api/f9b9
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/user
";

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo(
            "36 35 98:0 /sub /mnt/with\\040space rw,noatime master:1 shared:2 - cgroup cgroup rw,nosuid,cpu,cpuacct,clone_children\n\
             41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n\
             22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             garbage line\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].root, "/sub");
        assert_eq!(m[0].point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].controllers, vec!["cpu", "cpuacct"]);
        assert!(!m[0].v2);
        assert!(m[1].v2 && m[1].controllers.is_empty());
    }

    #[test]
    fn proc_self_cgroup_lines() {
        let l = parse_proc_cgroup("4:memory:/a:b\n1:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(l[0], ("memory".into(), "/a:b".into()));
        assert_eq!(l[1], ("cpu,cpuacct".into(), "/".into()));
        assert_eq!(l[2], ("".into(), "/user.slice".into()));
    }

    #[test]
    fn hybrid_layout_absolute_and_relative() {
        let l = detect(HYBRID_MOUNTINFO, HYBRID_SELF).unwrap();
        assert_eq!(l.version, CgroupVersion::Hybrid);
        assert_eq!(l.v1.len(), 7);
        let c = l.place(Some("/hull-test/c1"), "c1").unwrap();
        assert_eq!(c.path(), "/hull-test/c1");
        let dirs: Vec<_> = c.hierarchies().map(|h| h.dir().to_path_buf()).collect();
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/hull-test/c1")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/unified/hull-test/c1")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/systemd/hull-test/c1")));

        let c = l.place(None, "abc").unwrap();
        let mem = c
            .hierarchies()
            .find(|h| h.controllers() == "memory")
            .unwrap();
        assert_eq!(
            mem.dir(),
            Path::new("/sys/fs/cgroup/memory/process_api/f9b9/abc")
        );
        assert_eq!(mem.path(), "/process_api/f9b9/abc");
        assert_eq!(c.path(), "/user/abc");
        // round trip through state.json
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Cgroup>(&json).unwrap(), c);
    }

    #[test]
    fn comounted_cpu_cpuacct_and_unified() {
        let v1 = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu\n\
                  2 0 0:2 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  3 0 0:3 / /mnt/again rw - cgroup cgroup rw,cpu,cpuacct\n";
        let l = detect(v1, "2:cpu,cpuacct:/x\n1:memory:/y\n").unwrap();
        assert_eq!(l.version, CgroupVersion::V1);
        assert_eq!(l.v1.len(), 2);
        assert_eq!(l.v1[0].name, "cpu,cpuacct");
        let c = l.place(Some("c"), "id").unwrap();
        let h: Vec<_> = c.hierarchies().collect();
        assert!(h[0].has("cpu") && h[0].has("cpuacct"));
        assert_eq!(h[0].dir(), Path::new("/sys/fs/cgroup/cpu,cpuacct/x/c"));

        let v2 = "1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = detect(v2, "0::/user.slice/s.scope\n").unwrap();
        assert_eq!(l.version, CgroupVersion::V2);
        let c = l.place(Some("/machine/c1"), "c1").unwrap();
        assert_eq!(c.path(), "/machine/c1");
        assert_eq!(c.hierarchies().count(), 1);

        assert!(matches!(detect("", ""), Err(CgroupError::NotMounted)));
    }

    #[test]
    fn cgroupns_mount_root() {
        // Mounted from inside a container: the mount shows /docker/abc of the hierarchy.
        let mi = "1 0 0:1 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = detect(mi, "0::/docker/abc/sub\n").unwrap();
        let c = l.place(None, "c1").unwrap();
        let h = c.hierarchies().next().unwrap();
        assert_eq!(h.dir(), Path::new("/sys/fs/cgroup/sub/c1"));
        assert_eq!(h.path(), "/docker/abc/sub/c1");
    }

    #[test]
    fn bad_paths() {
        let l = detect(HYBRID_MOUNTINFO, HYBRID_SELF).unwrap();
        for p in ["/a/../../etc", "..", "/", "//"] {
            assert!(
                matches!(l.place(Some(p), "id"), Err(CgroupError::InvalidPath { .. })),
                "{p}"
            );
        }
        // An empty path means the id, relative.
        assert_eq!(l.place(Some(""), "id").unwrap().path(), "/user/id");
        let no_self = detect(HYBRID_MOUNTINFO, "").unwrap();
        assert!(matches!(
            no_self.place(None, "id"),
            Err(CgroupError::OwnCgroupUnknown { .. })
        ));
    }
}
