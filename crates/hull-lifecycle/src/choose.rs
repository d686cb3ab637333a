//! Which isolation a new container gets. Four knobs, strongest first:
//!
//! 1. `hull --isolation vm|namespace`: the caller's choice for this command (engines
//!    pass it through their runtime arguments);
//! 2. the command name `hull-vm`: the only knob containerd's runc shim (`BinaryName`)
//!    and docker's `--add-runtime` give, so it means VM;
//! 3. the bundle's annotation `io.hull.isolation`;
//! 4. `isolation` in /etc/hull/config.toml; then namespace.
//!
//! The first two are the operator's; the annotation is the workload's. When both speak
//! and disagree, create fails: running the container behind a boundary other than the
//! one asked for, in either direction, would be a silent downgrade or a surprise.

use hull_runtime::state::{Isolation, ISOLATION_ANNOTATION};

use crate::LifecycleError;

/// What the command line said.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    /// `--isolation`.
    pub flag: Option<Isolation>,
    /// Invoked as `hull-vm`.
    pub vm_command: bool,
}

/// The command name that defaults to VM isolation.
pub const VM_COMMAND: &str = "hull-vm";

impl Asked {
    /// The operator's choice, if any: the flag wins over the command name.
    pub fn operator(&self) -> Option<(Isolation, &'static str)> {
        match (self.flag, self.vm_command) {
            (Some(i), _) => Some((i, "--isolation")),
            (None, true) => Some((Isolation::Vm, "the command name hull-vm")),
            (None, false) => None,
        }
    }
}

/// Parses `--isolation`'s value.
pub fn parse_flag(value: &str) -> Result<Isolation, LifecycleError> {
    Isolation::parse(value).ok_or_else(|| LifecycleError::BadIsolation {
        source_name: "--isolation".into(),
        value: value.into(),
    })
}

/// The isolation for a bundle with `annotation` (the value of io.hull.isolation).
pub fn choose(
    asked: Asked,
    annotation: Option<&str>,
    configured: Option<Isolation>,
) -> Result<Isolation, LifecycleError> {
    let annotated = annotation
        .map(|v| {
            Isolation::parse(v).ok_or_else(|| LifecycleError::BadIsolation {
                source_name: format!("annotation {ISOLATION_ANNOTATION}"),
                value: v.into(),
            })
        })
        .transpose()?;
    match (asked.operator(), annotated) {
        (Some((op, by)), Some(a)) if op != a => Err(LifecycleError::IsolationConflict {
            operator: op,
            by,
            annotated: a,
        }),
        (Some((op, _)), _) => Ok(op),
        (None, Some(a)) => Ok(a),
        (None, None) => Ok(configured.unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Isolation::{Namespace, Vm};

    fn asked(flag: Option<Isolation>, vm_command: bool) -> Asked {
        Asked { flag, vm_command }
    }

    #[test]
    fn precedence() {
        assert_eq!(choose(asked(None, false), None, None).unwrap(), Namespace);
        assert_eq!(choose(asked(None, false), None, Some(Vm)).unwrap(), Vm);
        assert_eq!(choose(asked(None, false), Some("vm"), None).unwrap(), Vm);
        // A configured default yields to the workload's annotation.
        assert_eq!(
            choose(asked(None, false), Some("namespace"), Some(Vm)).unwrap(),
            Namespace
        );
        assert_eq!(choose(asked(None, true), None, None).unwrap(), Vm);
        assert_eq!(choose(asked(None, true), Some("vm"), None).unwrap(), Vm);
        assert_eq!(
            choose(asked(Some(Namespace), true), None, None).unwrap(),
            Namespace
        );
        assert_eq!(
            choose(asked(Some(Vm), false), None, Some(Namespace)).unwrap(),
            Vm
        );
    }

    #[test]
    fn operator_and_workload_disagreeing_is_an_error_both_ways() {
        let e = choose(asked(None, true), Some("namespace"), None).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("hull-vm") && m.contains("namespace"), "{m}");
        let e = choose(asked(Some(Namespace), false), Some("vm"), None).unwrap_err();
        assert!(e.to_string().contains("--isolation"), "{e}");
    }

    #[test]
    fn unknown_values_are_named() {
        let e = choose(asked(None, false), Some("gvisor"), None).unwrap_err();
        assert!(e.to_string().contains("gvisor"), "{e}");
        assert!(parse_flag("kvm").is_err());
        assert_eq!(parse_flag("vm").unwrap(), Vm);
    }
}
