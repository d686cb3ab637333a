//! The shim's only way into hull: exec of the `hull` binary, with `--root` the shim's
//! state root for this containerd namespace. hull's runtime path stays single-threaded
//! up to its fork; the shim, with its threads, never forks a container itself.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// Overrides where the shim finds `hull`.
pub const HULL_ENV: &str = "HULL_SHIM_HULL";

/// namespace or vm: the isolation the shim's command name chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Namespace,
    Vm,
}

impl Isolation {
    /// `containerd-shim-hull-ns-v2` gives namespaces; any other name (the binary's own,
    /// `containerd-shim-hull-v2`) a VM, as `hull-vm` and `hull` split them.
    pub fn from_program(argv0: &OsStr) -> Isolation {
        let name = Path::new(argv0).file_name().unwrap_or_default();
        if name.to_string_lossy().contains("hull-ns") {
            Isolation::Namespace
        } else {
            Isolation::Vm
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespace => "namespace",
            Isolation::Vm => "vm",
        }
    }
}

/// `hull` beside the shim's own executable (where scripts/install and cargo put both),
/// else on PATH; `HULL_SHIM_HULL` overrides both.
pub fn find_hull() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(HULL_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    if let Some(beside) = exe.parent().map(|d| d.join("hull")) {
        if beside.is_file() {
            return Ok(beside);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("hull"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no hull binary beside {} or on PATH (set {HULL_ENV})",
                exe.display()
            )
        })
}

/// How the shim runs hull for one containerd namespace.
pub struct Hull {
    pub bin: PathBuf,
    /// `--root`: `$HULL_SHIM_ROOT/<namespace>`.
    pub root: PathBuf,
    pub isolation: Isolation,
    pub reaper: Arc<Reaper>,
}

/// The three fds a `hull create`/`exec` hands the container.
pub struct ChildIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Hull {
    fn command(&self, config: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root);
        // The runtime options' ConfigPath: hull's config.toml for this handler.
        if let Some(c) = config {
            cmd.env("HULL_CONFIG", c);
        }
        cmd
    }

    /// Runs `hull ARGS` to its end: its stdout, or its error message as the error.
    pub fn run(&self, args: &[&OsStr]) -> Result<String> {
        let mut cmd = self.command(None);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn(&mut cmd)?;
        let mut out = String::new();
        let mut err = String::new();
        // hull's messages are a few lines: stderr cannot fill while stdout is read.
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = self.reaper.wait(child.id());
        if status != 0 {
            return Err(classify(&format!("hull {}", show(args)), err.trim()));
        }
        Ok(out)
    }

    /// `hull create`/`exec` (whose stdio is the container's): the error comes from
    /// the `--log` file, as engines read runc's.
    pub fn run_logged(
        &self,
        args: &[&OsStr],
        io: ChildIo,
        log: &Path,
        config: Option<&Path>,
    ) -> Result<()> {
        let mut cmd = self.command(config);
        cmd.arg("--log")
            .arg(log)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr);
        let child = self.spawn(&mut cmd)?;
        // The fds are the container's now: our copies must not keep its streams open.
        drop(cmd);
        let status = self.reaper.wait(child.id());
        if status != 0 {
            let msg = last_error(log).unwrap_or_else(|| format!("exit status {status}"));
            return Err(classify(&format!("hull {}", show(args)), &msg));
        }
        Ok(())
    }

    /// `hull --isolation I create ...`: only create chooses the isolation.
    pub fn create_args(&self) -> Vec<OsString> {
        vec![
            "--isolation".into(),
            self.isolation.as_str().into(),
            "create".into(),
        ]
    }

    fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        self.reaper
            .spawn(cmd)
            .map_err(|e| Error::Internal(format!("cannot run {}: {e}", self.bin.display())))
    }
}

fn show(args: &[&OsStr]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// hull's message mapped to the code containerd expects.
fn classify(what: &str, msg: &str) -> Error {
    let msg = msg.strip_prefix("hull: ").unwrap_or(msg);
    let text = format!("{what}: {msg}");
    // hull-runtime's NotFound and WrongState ("cannot kill container \"c\": it is
    // stopped"): a finished process is NotFound to containerd (CRI's Kill tolerates it).
    if msg.contains("does not exist") || msg.contains(": it is stopped") {
        Error::NotFound(text)
    } else if msg.starts_with("cannot ") && msg.contains(": it is ") {
        Error::FailedPrecondition(text)
    } else {
        Error::Internal(text)
    }
}

/// The message of the last error line hull wrote to a `--log-format json` file.
pub fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_name_chooses() {
        let iso = |s: &str| Isolation::from_program(OsStr::new(s));
        assert_eq!(iso("/usr/local/bin/containerd-shim-hull-v2"), Isolation::Vm);
        assert_eq!(iso("containerd-shim-hull-ns-v2"), Isolation::Namespace);
    }

    #[test]
    fn errors_from_the_log() {
        let dir = std::env::temp_dir().join(format!("hull-shim-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"no rootfs\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(last_error(&dir).as_deref(), Some("no rootfs"));
        std::fs::remove_file(&dir).unwrap();
        let e = classify("hull kill", "hull: container \"x\" does not exist");
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        let e = classify(
            "hull kill",
            "hull: cannot kill container \"x\": it is stopped",
        );
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        let e = classify(
            "hull pause",
            "hull: cannot pause container \"x\": it is created",
        );
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    }
}
