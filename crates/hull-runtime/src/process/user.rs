//! Identity of the container process: groups, gid, uid (keeping capabilities across the
//! switch), umask, and HOME from the container's /etc/passwd.

use nix::unistd::{self, Gid, Uid};
use oci_spec::runtime::User;

use crate::error::{Error, Result};

pub fn switch(user: &User, userns: bool, proc: &crate::procfs::ProcFs) -> Result<()> {
    let fail = |what: &str, e: nix::Error| Error::Setup(format!("process.user: {what}: {e}"));
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // With setgroups denied in a user namespace only an empty request can be skipped.
    let denied = userns
        && proc
            .read_self("setgroups")
            .is_ok_and(|s| s.trim() == "deny");
    if !denied {
        unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    } else if !groups.is_empty() {
        return Err(Error::Setup(
            "process.user.additionalGids: setgroups is denied in this user namespace".into(),
        ));
    }
    let gid = Gid::from_raw(user.gid());
    unistd::setresgid(gid, gid, gid).map_err(|e| fail(&format!("setresgid {gid}"), e))?;
    let uid = Uid::from_raw(user.uid());
    unistd::setresuid(uid, uid, uid).map_err(|e| fail(&format!("setresuid {uid}"), e))?;
    // runc's default when the config names none: the caller's umask must not leak in.
    let mask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    Ok(())
}

/// The home directory of `uid` in the container's /etc/passwd, "/" when unknown.
pub fn home_of(uid: u32) -> String {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return "/".into();
    };
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| "/".into())
}
