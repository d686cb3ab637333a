//! The command line containerd gives a shim, parsed as Go's `flag` package reads it:
//! `-name value`, `-name=value` or `--name value`, booleans bare, then the action.
//!
//! containerd 1.6 runs `<shim> -namespace NS -address ADDR -publish-binary BIN -id ID
//! [-debug] start` and, for a shim that died, `... -bundle DIR delete`.

use std::ffi::OsString;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    /// containerd's gRPC address (the shim's socket name is derived from it).
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: String,
    pub debug: bool,
    /// `start`, `delete`, or `serve` (the daemon `start` leaves behind).
    pub action: String,
}

/// Flags that take no value.
const BOOLS: &[&str] = &["debug", "v"];

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if f.action.is_empty() {
                f.action = arg;
                continue;
            }
            return Err(format!("unexpected argument {arg:?} after {:?}", f.action));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        if BOOLS.contains(&name.as_str()) {
            let on = inline.as_deref().is_none_or(|v| v == "true" || v == "1");
            if name == "debug" {
                f.debug = on;
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("flag -{name} needs a value"))?,
        };
        match name.as_str() {
            "namespace" => f.namespace = value,
            "address" => f.address = value,
            "publish-binary" => f.publish_binary = value,
            "id" => f.id = value,
            "bundle" => f.bundle = value,
            // Set by containerd 1.x for other shims' use; nothing here needs them.
            "socket" | "containerd-binary" => {}
            _ => return Err(format!("unknown flag -{name}")),
        }
    }
    if f.namespace.is_empty() {
        return Err("-namespace is required".into());
    }
    if f.id.is_empty() {
        return Err("-id is required".into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn what_containerd_1_6_passes() {
        let f = p(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ])
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.id, "abc");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn equals_and_double_dashes() {
        let f = p(&["--namespace=ns", "-id=x", "-bundle", "/b", "delete"]).unwrap();
        assert_eq!((f.namespace.as_str(), f.id.as_str()), ("ns", "x"));
        assert_eq!((f.bundle.as_str(), f.action.as_str()), ("/b", "delete"));
        assert!(!f.debug);
    }

    #[test]
    fn errors() {
        assert!(p(&["-id", "x", "start"]).is_err());
        assert!(p(&["-namespace", "n", "-id"]).is_err());
        assert!(p(&["-namespace", "n", "-id", "x", "-bogus", "1", "start"]).is_err());
    }
}
