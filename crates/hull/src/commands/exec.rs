//! `hull exec`: the process to run comes from --process, or from the arguments with the
//! container's own process section as the default for everything not given.

use anyhow::{bail, Context, Result};
use hull_lifecycle::{ExecRequest, Lifecycle};
use hull_runtime::container::Container;
use oci_spec::runtime::{Capabilities, Capability, Process};

use crate::cli::ExecArgs;

pub fn exec(lc: &Lifecycle, a: ExecArgs) -> Result<i32> {
    let c = lc.load(&a.id)?;
    let process = match &a.process {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read --process {}", path.display()))?;
            serde_json::from_slice::<Process>(&text).with_context(|| {
                format!(
                    "--process {}: not a runtime-spec process JSON",
                    path.display()
                )
            })?
        }
        None => from_args(&c, &a)?,
    };
    if process.args().as_ref().is_none_or(|v| v.is_empty()) {
        bail!("exec needs a command: hull exec ID COMMAND [ARG...] or --process FILE");
    }
    Ok(lc.exec(
        &c,
        ExecRequest {
            process,
            console_socket: a.console_socket,
            pid_file: a.pid_file,
            detach: a.detach,
            preserve_fds: a.preserve_fds,
        },
    )?)
}

fn from_args(c: &Container, a: &ExecArgs) -> Result<Process> {
    let mut p = c
        .state
        .config
        .process()
        .clone()
        .context("the container's config has no process section")?;
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (
                u.parse().context("--user uid")?,
                g.parse().context("--user gid")?,
            ),
            None => (u.parse().context("--user takes uid[:gid] numbers")?, 0),
        };
        p.user_mut().set_uid(uid);
        p.user_mut().set_gid(gid);
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(prof) = &a.apparmor {
        p.set_apparmor_profile(Some(prof.clone()));
    }
    if let Some(label) = &a.process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    if !a.cap.is_empty() {
        let had = p.capabilities().clone();
        let mut caps = had.clone().unwrap_or_default();
        if had.is_none() {
            // LinuxCapabilities::default() fills the inheritable and ambient sets too.
            caps.set_inheritable(None);
            caps.set_ambient(None);
        }
        let add: Capabilities = a
            .cap
            .iter()
            .map(|c| {
                serde_json::from_value::<Capability>(serde_json::Value::String(c.clone()))
                    .with_context(|| format!("--cap {c}: unknown capability"))
            })
            .collect::<Result<_>>()?;
        let extend = |set: &Option<Capabilities>| {
            let mut s = set.clone().unwrap_or_default();
            s.extend(add.iter().copied());
            Some(s)
        };
        caps.set_bounding(extend(caps.bounding()));
        caps.set_effective(extend(caps.effective()));
        caps.set_permitted(extend(caps.permitted()));
        // Never the inheritable set (CVE-2022-29162): with it, a non-root process could
        // exec a binary with inheritable file capabilities and gain them.
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}
