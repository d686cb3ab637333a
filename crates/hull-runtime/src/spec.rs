//! Loading and validating a bundle's config.json before anything is created, so that bad
//! input fails with one clear line and leaves nothing behind.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// The runtime-spec major version hull understands.
pub const SUPPORTED_MAJOR: &str = "1";

/// A parsed bundle: config plus absolute paths, normalised for use after the fork.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Reads `<dir>/config.json`, checks what can be checked without side effects, and
    /// makes relative paths (rootfs, bind sources) absolute against the bundle.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::fs::canonicalize(dir).map_err(|source| Error::Io {
            what: "cannot open bundle directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let config = dir.join("config.json");
        let text = std::fs::read(&config).map_err(|source| Error::Io {
            what: "cannot read config (is this an OCI bundle?)",
            path: config.clone(),
            source,
        })?;
        let mut spec = parse(&text, &config)?;
        let root = spec.root().as_ref().expect("validated").path().clone();
        let rootfs = if root.is_absolute() {
            root
        } else {
            dir.join(root)
        };
        let rootfs = std::fs::canonicalize(&rootfs).map_err(|source| Error::Io {
            what: "root.path: cannot open the container's root filesystem",
            path: rootfs.clone(),
            source,
        })?;
        if !rootfs.is_dir() {
            return Err(Error::InvalidConfig {
                path: config,
                reason: format!("root.path {} is not a directory", rootfs.display()),
            });
        }
        absolutize_bind_sources(&mut spec, &dir);
        Ok(Bundle { dir, rootfs, spec })
    }
}

/// config.json's bytes to a spec checked as far as it can be without side effects (a
/// namespace path's existence is looked up). `config` names the file in errors.
pub fn parse(text: &[u8], config: &Path) -> Result<Spec> {
    let spec: Spec = match serde_json::from_slice(text) {
        Ok(s) => s,
        Err(_) => return Err(explain_parse_error(text, config)),
    };
    validate(&spec, config)?;
    Ok(spec)
}

/// serde_json reports a line and column; name the field found there too (the key whose
/// value did not fit), so "invalid type: integer `-1`, expected u32" says where.
#[cold]
fn explain_parse_error(text: &[u8], config: &Path) -> Error {
    let err = match serde_json::from_slice::<Spec>(text) {
        Err(e) => e,
        Ok(_) => {
            return Error::InvalidConfig {
                path: config.to_path_buf(),
                reason: "cannot be parsed".into(),
            }
        }
    };
    let reason = match key_before(text, err.line(), err.column()) {
        Some(key) if err.is_data() => format!("field {key:?}: {err}"),
        _ => err.to_string(),
    };
    Error::InvalidConfig {
        path: config.to_path_buf(),
        reason,
    }
}

/// The last `"key":` at or before 1-based `line`:`column` of `text`.
fn key_before(text: &[u8], line: usize, column: usize) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            offset += column.min(l.len());
            break;
        }
        offset += l.len();
    }
    // serde_json's column counts bytes, so the error may point inside a multi-byte
    // character (found by fuzzing: slicing there panicked).
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let colon = before.rfind("\":")?;
    let open = before[..colon].rfind('"')?;
    Some(before[open + 1..colon].to_string())
}

fn validate(spec: &Spec, config: &Path) -> Result<()> {
    let bad = |reason: String| Error::InvalidConfig {
        path: config.to_path_buf(),
        reason,
    };
    let major = spec.version().split('.').next().unwrap_or("");
    if major != SUPPORTED_MAJOR {
        return Err(bad(format!(
            "ociVersion {:?} is not supported: hull runs runtime-spec 1.x bundles",
            spec.version()
        )));
    }
    if spec.root().is_none() {
        return Err(bad(
            "root is missing: set root.path to the rootfs directory".into(),
        ));
    }
    let Some(process) = spec.process() else {
        return Err(bad(
            "process is missing: the container needs process.args".into()
        ));
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(bad("process.args is empty: name the program to run".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(bad(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let mut seen = Vec::new();
    for ns in linux.namespaces().iter().flatten() {
        if seen.contains(&ns.typ()) {
            return Err(bad(format!(
                "linux.namespaces: {:?} is listed twice",
                ns.typ()
            )));
        }
        seen.push(ns.typ());
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(bad(format!(
                    "linux.namespaces: {:?} path {} does not exist",
                    ns.typ(),
                    path.display()
                )));
            }
        }
    }
    let has_new_userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == LinuxNamespaceType::User);
    let has_mappings = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_mappings && !has_new_userns {
        return Err(bad(
            "linux.uidMappings needs a user namespace in linux.namespaces".into(),
        ));
    }
    let has_uts = seen.contains(&LinuxNamespaceType::Uts);
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has_uts {
        return Err(bad(
            "hostname is set but there is no uts namespace: add {\"type\":\"uts\"} to linux.namespaces".into(),
        ));
    }
    Ok(())
}

fn absolutize_bind_sources(spec: &mut Spec, bundle: &Path) {
    let Some(mounts) = spec.mounts_mut() else {
        return;
    };
    for m in mounts.iter_mut() {
        let is_bind = m.typ().as_deref() == Some("bind")
            || m.options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        if let Some(src) = m.source() {
            if src.is_relative() {
                let abs = bundle.join(src);
                m.set_source(Some(abs));
            }
        }
    }
}

/// A container id as runc accepts it: letters, digits, `_ + - .`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_field_of_a_type_error() {
        let text =
            br#"{"ociVersion": "1.0.2", "process": {"user": {"uid": -1, "gid": 0}, "cwd": "/"}}"#;
        let e = explain_parse_error(text, Path::new("config.json")).to_string();
        assert!(e.contains("\"uid\""), "{e}");
    }

    /// fuzz/regressions/config/char-boundary: an error inside a multi-byte character.
    #[test]
    fn a_parse_error_inside_a_multibyte_character_is_explained() {
        for text in [&b"\xdd\x8fpata$dh"[..], "{\"a\": \"é\" é}".as_bytes()] {
            let e = explain_parse_error(text, Path::new("config.json")).to_string();
            assert!(e.contains("config.json") && e.len() > 20, "{e}");
        }
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3+x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
