//! `linux.resources.devices` rules, normalised once for both the v1 devices controller and
//! the v2 BPF filter, so both enforce the same thing.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

/// Access bits as the kernel's BPF device context encodes them (BPF_DEVCG_ACC_*).
pub(crate) const ACC_MKNOD: u8 = 1;
pub(crate) const ACC_READ: u8 = 2;
pub(crate) const ACC_WRITE: u8 = 4;
pub(crate) const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Block,
    Char,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Every device, every access: resets to allow-all or deny-all (v1 "a").
    All { allow: bool },
    One {
        allow: bool,
        kind: Kind,
        /// None = any.
        major: Option<u32>,
        minor: Option<u32>,
        access: u8,
    },
}

fn invalid(reason: String) -> CgroupError {
    CgroupError::InvalidResource {
        field: "devices",
        reason,
    }
}

fn number(n: Option<i64>, what: &str) -> Result<Option<u32>, CgroupError> {
    match n {
        None | Some(-1) => Ok(None),
        // BPF immediates are signed 32-bit; no Linux device number comes close.
        Some(v) if (0..=i64::from(i32::MAX)).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(invalid(format!("{what} number {v} is out of range"))),
    }
}

fn access(a: Option<&str>) -> Result<u8, CgroupError> {
    // An omitted access means all of them: `{"allow": false}` is the usual deny-all.
    let a = a.unwrap_or("");
    if a.is_empty() {
        return Ok(ACC_ALL);
    }
    a.chars().try_fold(0, |acc, c| match c {
        'r' => Ok(acc | ACC_READ),
        'w' => Ok(acc | ACC_WRITE),
        'm' => Ok(acc | ACC_MKNOD),
        _ => Err(invalid(format!("access {a:?} may only contain r, w and m"))),
    })
}

/// Normalise OCI rules, keeping their order (the last matching rule wins).
///
/// A type "a" rule for all devices and all access resets the state, as in the kernel's v1
/// devices controller. A narrower type "a" rule (a major number, or only some access)
/// becomes a block and a char rule: the v1 kernel would read any "a" as a full reset,
/// which would allow far more than the rule says. FIFO rules ("p") are dropped: the
/// device controller never checks FIFOs. "u" (unbuffered char) is a char device.
pub(crate) fn normalize(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let allow = r.allow();
        let major = number(r.major(), "major")?;
        let minor = number(r.minor(), "minor")?;
        let access = access(r.access().as_deref())?;
        let kinds: &[Kind] = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => {
                if major.is_none() && minor.is_none() && access == ACC_ALL {
                    out.push(Rule::All { allow });
                    continue;
                }
                &[Kind::Block, Kind::Char]
            }
            LinuxDeviceType::B => &[Kind::Block],
            LinuxDeviceType::C | LinuxDeviceType::U => &[Kind::Char],
            LinuxDeviceType::P => {
                tracing::debug!(
                    "device rule for a FIFO ignored: the devices cgroup does not check FIFOs"
                );
                continue;
            }
        };
        for &kind in kinds {
            out.push(Rule::One {
                allow,
                kind,
                major,
                minor,
                access,
            });
        }
    }
    Ok(out)
}

/// The v1 file and line for a rule: ("devices.deny", "c 1:3 rw").
pub(crate) fn v1_line(rule: &Rule) -> (&'static str, String) {
    let file = |allow: bool| {
        if allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    };
    match *rule {
        Rule::All { allow } => (file(allow), "a".to_owned()),
        Rule::One {
            allow,
            kind,
            major,
            minor,
            access,
        } => {
            let num = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
            let mut acc = String::with_capacity(3);
            for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
                if access & bit != 0 {
                    acc.push(c);
                }
            }
            let k = match kind {
                Kind::Block => 'b',
                Kind::Char => 'c',
            };
            (
                file(allow),
                format!("{k} {}:{} {acc}", num(major), num(minor)),
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    pub(crate) fn rule(
        allow: bool,
        typ: Option<LinuxDeviceType>,
        major: Option<i64>,
        minor: Option<i64>,
        access: Option<&str>,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        if let Some(a) = access {
            b = b.access(a);
        }
        b.build().unwrap()
    }

    fn lines(rules: &[LinuxDeviceCgroup]) -> Vec<(&'static str, String)> {
        normalize(rules).unwrap().iter().map(v1_line).collect()
    }

    #[test]
    fn v1_strings() {
        use LinuxDeviceType::*;
        let got = lines(&[
            rule(false, None, None, None, Some("rwm")),
            rule(true, Some(C), Some(1), Some(3), Some("rwm")),
            rule(true, Some(C), Some(136), None, Some("wr")),
            rule(false, Some(B), Some(-1), Some(-1), Some("m")),
            rule(true, Some(U), Some(5), Some(0), None),
            rule(true, Some(P), None, None, Some("rwm")),
        ]);
        assert_eq!(
            got,
            vec![
                ("devices.deny", "a".to_owned()),
                ("devices.allow", "c 1:3 rwm".to_owned()),
                ("devices.allow", "c 136:* rw".to_owned()),
                ("devices.deny", "b *:* m".to_owned()),
                ("devices.allow", "c 5:0 rwm".to_owned()),
            ]
        );
    }

    #[test]
    fn narrow_type_a_is_split_and_deny_all_without_access() {
        let got = lines(&[
            rule(false, None, None, None, None),
            rule(true, Some(LinuxDeviceType::A), Some(10), None, Some("r")),
        ]);
        assert_eq!(
            got,
            vec![
                ("devices.deny", "a".to_owned()),
                ("devices.allow", "b 10:* r".to_owned()),
                ("devices.allow", "c 10:* r".to_owned()),
            ]
        );
    }

    #[test]
    fn bad_rules() {
        for r in [
            rule(true, None, None, None, Some("rx")),
            rule(true, Some(LinuxDeviceType::C), Some(-2), None, None),
            rule(true, Some(LinuxDeviceType::C), Some(1 << 40), None, None),
        ] {
            assert!(matches!(
                normalize(&[r]),
                Err(CgroupError::InvalidResource { .. })
            ));
        }
    }
}
