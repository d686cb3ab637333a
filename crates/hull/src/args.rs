//! Parsing the command line into `cli::Cli`, the way runc (urfave/cli) reads it: global
//! flags, then the command, its flags, then its positional arguments. `--flag value`
//! and `--flag=value` both work; after exec's and ps's container id the rest is passed
//! on untouched.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::{Arg, Parser};

use crate::cli::{Cli, Command, CreateRequest, ExecArgs, Global, UpdateArgs};

/// What parsing ends in when it does not produce a command.
pub enum Stop {
    /// --help or `help`: print this on stdout, exit 0.
    Help(String),
    /// --version: print this on stdout, exit 0.
    Version(String),
    /// A usage error: print on stderr, exit 1 (as runc).
    Usage(String),
}

impl From<lexopt::Error> for Stop {
    fn from(e: lexopt::Error) -> Stop {
        Stop::Usage(e.to_string())
    }
}

type R<T> = Result<T, Stop>;

/// An argument detached from the parser's borrow: a flag as written ("--bundle", "-b")
/// or a value.
enum Tok {
    Flag(String),
    Value(OsString),
}

fn next(p: &mut Parser) -> R<Option<Tok>> {
    Ok(p.next()?.map(|a| match a {
        Arg::Long(l) => Tok::Flag(format!("--{l}")),
        Arg::Short(c) => Tok::Flag(format!("-{c}")),
        Arg::Value(v) => Tok::Value(v),
    }))
}

fn unexpected(cmd: &str, flag: &str) -> Stop {
    Stop::Usage(format!(
        "hull {cmd}: unknown flag {flag} (see `hull {cmd} --help`)"
    ))
}

const COMMANDS: &str = "\
Commands:
  create    create a container (its init waits for `start`)
  start     start a created container
  run       create and start a container; wait for it unless --detach
  state     print a container's state as JSON
  kill      send a signal to a container's init (--all: every process)
  delete    delete a container (--force: kill it first)
  list      list containers (-q ids only, --format json)
  ps        list a container's processes (extra arguments go to ps)
  exec      run a new process in a container
  pause     freeze a container
  resume    thaw a paused container
  events    resource usage (--stats once, else every --interval)
  update    change a container's resource limits (-r FILE or flags)
  spec      write an example config.json (--rootless)
  features  print what hull supports (runtime-spec features JSON)
  check     report what this host offers for VM isolation (--format json)
  guest build  build the VM guest: kernel, initramfs and agent disk (cached)
  vmm       run a micro-VM on KVM with hull's own monitor (--config FILE)
";

fn usage() -> String {
    format!(
        "hull: a secure container runtime (OCI runtime-spec, runc-compatible)\n\n\
         Usage: hull [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--systemd-cgroup] [--isolation namespace|vm] COMMAND [ARGS]\n\n{COMMANDS}\n\
         Invoked as hull-vm, new containers get VM isolation unless --isolation says otherwise.\n\
         Run `hull COMMAND --help` for a command's flags.\n"
    )
}

fn version() -> String {
    format!(
        "hull version {}\nspec: 1.2.0\nlibseccomp: {}\n",
        env!("CARGO_PKG_VERSION"),
        hull_runtime::seccomp::libseccomp_version().unwrap_or_else(|| "unknown".into())
    )
}

fn command_help(cmd: &str) -> String {
    let flags = match cmd {
        "create" | "run" => {
            "  -b, --bundle DIR         bundle directory (default .)\n      --console-socket PATH  unix socket to receive the pty master\n      --pid-file FILE      write the init's pid here\n      --no-pivot           MS_MOVE + chroot instead of pivot_root\n      --no-new-keyring     keep the caller's session keyring\n      --preserve-fds N     pass fds 3..3+N to the container\n  -d, --detach             (run) return once started\n      --keep               (run) accepted for runc compatibility\n      --isolation vm       (global flag, also accepted here) in a micro-VM (or annotation io.hull.isolation=vm)\n"
        }
        "kill" => "  -a, --all   signal every process of the container\n  ARGS: ID [SIGNAL] (default SIGTERM; names or numbers)\n",
        "delete" => "  -f, --force   kill the container first if it runs\n",
        "list" => "  -f, --format table|json\n  -q, --quiet   ids only\n",
        "ps" => "  -f, --format table|json\n  ARGS: ID [ps options...]\n",
        "exec" => {
            "      --console-socket PATH\n      --cwd DIR\n  -e, --env KEY=VALUE      (repeatable)\n  -t, --tty\n  -u, --user UID[:GID]\n  -g, --additional-gids GID (repeatable)\n  -p, --process FILE       process.json instead of arguments\n  -d, --detach\n      --pid-file FILE\n      --process-label LABEL\n      --apparmor PROFILE\n      --no-new-privs\n  -c, --cap CAP            (repeatable)\n      --preserve-fds N\n  ARGS: ID COMMAND [ARG...]\n"
        }
        "events" => "      --stats           print stats once\n      --interval DUR    e.g. 5s, 500ms (default 5s)\n",
        "update" => {
            "  -r, --resources FILE   LinuxResources JSON (- for stdin)\n      --memory SIZE --memory-reservation SIZE --memory-swap SIZE\n      --cpu-share N --cpu-period N --cpu-quota N --cpu-rt-period N --cpu-rt-runtime N\n      --cpuset-cpus LIST --cpuset-mems LIST --blkio-weight N --pids-limit N\n"
        }
        "check" => "  -f, --format text|json\n",
        "guest" => "  build   build or reuse the guest kernel, initramfs and agent disk\n  qemu-args KERNEL ROOT SOCKET CONSOLE_LOG   the QEMU arguments hull would boot them with (ROOT: an initramfs or the agent's erofs disk)\n      --dir DIR        cache directory (default /var/lib/hull/guest)\n      --agent FILE     the static hull-agent (default: next to hull)\n      --source FILE    kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)\n",
        "vmm" => "  -c, --config FILE   the VM, as JSON: kernel (vmlinux with a PVH note, or bzImage), initramfs,\n                      cmdline, vcpus, memory_mib, memory_backend (anonymous|memfd),\n                      hugepages (none|transparent|2m), serial (\"stdout\", \"none\" or {\"file\": PATH}),\n                      block ([{path, read_only, serial}]), rng (bool), vsock ({guest_cid, uds_path}),\n                      console ({socket}), net ([{tap, guest_mac}]: virtio-net on a host tap),\n                      shutdown_grace_ms (Ctrl-Alt-Del on SIGTERM, then stop; default 3000), seccomp (bool),\n                      deferred_teardown (bool: the kernel's VM teardown after hull exits; default true)\n",
        "spec" => "  -b, --bundle DIR   where to write config.json (default .)\n      --rootless     a spec for running without root\n",
        _ => "",
    };
    format!("Usage: hull {cmd} [FLAGS] ...\n{flags}")
}

fn text(v: OsString, flag: &str) -> R<String> {
    v.into_string()
        .map_err(|_| Stop::Usage(format!("{flag}: not valid UTF-8")))
}

fn number<T: std::str::FromStr>(v: OsString, flag: &str) -> R<T> {
    let s = text(v, flag)?;
    s.parse()
        .map_err(|_| Stop::Usage(format!("{flag}: {s:?} is not a valid number")))
}

/// Global flags, accepted before the command (runc) and, for convenience, after it.
fn global_flag(flag: &str, p: &mut Parser, g: &mut Global) -> R<bool> {
    match flag {
        "--root" => g.root = Some(p.value()?.into()),
        "--log" => g.log = Some(p.value()?.into()),
        "--log-format" => {
            let f = text(p.value()?, "--log-format")?;
            if f != "text" && f != "json" {
                return Err(Stop::Usage(format!("--log-format {f:?}: use text or json")));
            }
            g.log_format = Some(f);
        }
        "--debug" => g.debug = true,
        "--isolation" => {
            let v = text(p.value()?, "--isolation")?;
            if v != "vm" && v != "namespace" {
                return Err(Stop::Usage(format!(
                    "--isolation {v:?}: use namespace or vm"
                )));
            }
            g.isolation = Some(v);
        }
        "--systemd-cgroup" => g.systemd_cgroup = true,
        "--criu" => g.criu = Some(text(p.value()?, "--criu")?),
        _ => return Ok(false),
    }
    Ok(true)
}

pub fn parse_from<I: IntoIterator<Item = OsString>>(args: I) -> R<Cli> {
    let mut args = args.into_iter();
    let program = args.next().unwrap_or_default();
    let mut p = Parser::from_iter(std::iter::once(program.clone()).chain(args));
    let mut g = Global {
        program: std::path::Path::new(&program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Global::default()
    };
    let name = loop {
        let flag = match next(&mut p)? {
            None => return Err(Stop::Usage(usage())),
            Some(Tok::Value(v)) => break text(v, "command")?,
            Some(Tok::Flag(f)) => f,
        };
        if global_flag(&flag, &mut p, &mut g)? {
            continue;
        }
        match flag.as_str() {
            "--help" | "-h" => return Err(Stop::Help(usage())),
            "--version" | "-v" => return Err(Stop::Version(version())),
            "--rootless" => {
                let v = text(p.value()?, "--rootless")?;
                if !matches!(v.as_str(), "true" | "false" | "auto") {
                    return Err(Stop::Usage(format!(
                        "--rootless {v:?}: use true, false or auto"
                    )));
                }
                g.rootless = Some(v);
            }
            other => {
                return Err(Stop::Usage(format!(
                    "hull: unknown flag {other}\n\n{}",
                    usage()
                )))
            }
        }
    };
    let command = parse_command(&name, &mut p, &mut g)?;
    Ok(Cli { global: g, command })
}

/// Positional arguments and the flags of one command.
struct Seen {
    positional: Vec<String>,
}

fn one_id(cmd: &str, seen: Seen) -> R<String> {
    match <[String; 1]>::try_from(seen.positional) {
        Ok([id]) => Ok(id),
        Err(v) => Err(Stop::Usage(format!(
            "hull {cmd}: needs exactly one container id, got {}",
            v.len()
        ))),
    }
}

fn parse_command(name: &str, p: &mut Parser, g: &mut Global) -> R<Command> {
    let mut create = CreateRequest {
        bundle: PathBuf::from("."),
        ..CreateRequest::default()
    };
    let (mut detach, mut keep, mut force, mut all, mut quiet, mut stats, mut rootless) =
        (false, false, false, false, false, false, false);
    let mut format = "table".to_string();
    let mut interval = "5s".to_string();
    let mut exec = ExecArgs::default();
    let mut update = UpdateArgs::default();
    let mut guest = crate::cli::GuestBuildArgs::default();
    let mut vm_config = None;
    let mut seen = Seen { positional: vec![] };
    // exec and ps pass everything after the container id on untouched.
    let passes_rest = matches!(name, "exec" | "ps");
    let mut rest: Vec<String> = vec![];
    while let Some(tok) = next(p)? {
        let flag = match tok {
            Tok::Value(v) => {
                seen.positional.push(text(v, "argument")?);
                if passes_rest {
                    for raw in p.raw_args()? {
                        rest.push(text(raw, "argument")?);
                    }
                    if rest.first().map(String::as_str) == Some("--") {
                        rest.remove(0);
                    }
                }
                continue;
            }
            Tok::Flag(f) => f,
        };
        if global_flag(&flag, p, g)? {
            continue;
        }
        match (name, flag.as_str()) {
            (_, "--help" | "-h") => return Err(Stop::Help(command_help(name))),
            ("create" | "run" | "spec", "-b" | "--bundle") => create.bundle = p.value()?.into(),
            ("create" | "run", "--console-socket") => {
                create.console_socket = Some(p.value()?.into())
            }
            ("create" | "run", "--pid-file") => create.pid_file = Some(p.value()?.into()),
            ("create" | "run", "--no-pivot") => create.no_pivot = true,
            ("create" | "run", "--no-new-keyring") => create.no_new_keyring = true,
            ("create" | "run", "--preserve-fds") => {
                create.preserve_fds = number(p.value()?, "--preserve-fds")?
            }
            ("run", "-d" | "--detach") => detach = true,
            ("run", "--keep") => keep = true,
            ("kill", "-a" | "--all") => all = true,
            ("delete", "-f" | "--force") => force = true,
            ("list" | "ps", "-f" | "--format") => {
                format = text(p.value()?, "--format")?;
                if format != "table" && format != "json" {
                    return Err(Stop::Usage(format!(
                        "--format {format:?}: use table or json"
                    )));
                }
            }
            ("check", "-f" | "--format") => {
                format = text(p.value()?, "--format")?;
                if format != "text" && format != "json" {
                    return Err(Stop::Usage(format!(
                        "--format {format:?}: use text or json"
                    )));
                }
            }
            ("list", "-q" | "--quiet") => quiet = true,
            ("guest", "--dir") => guest.dir = Some(p.value()?.into()),
            ("guest", "--agent") => guest.agent = Some(p.value()?.into()),
            ("guest", "--source") => guest.source = Some(p.value()?.into()),
            ("vmm", "-c" | "--config") => vm_config = Some(PathBuf::from(p.value()?)),
            ("events", "--stats") => stats = true,
            ("events", "--interval") => interval = text(p.value()?, "--interval")?,
            ("spec", "--rootless") => rootless = true,
            ("exec", f) => exec_flag(f, p, &mut exec)?,
            ("update", f) => update_flag(f, p, &mut update)?,
            (_, f) => return Err(unexpected(name, f)),
        }
    }
    let cmd = match name {
        "create" => {
            create.id = one_id(name, seen)?;
            Command::Create(create)
        }
        "run" => {
            create.id = one_id(name, seen)?;
            Command::Run {
                create,
                detach,
                keep,
            }
        }
        "start" => Command::Start {
            id: one_id(name, seen)?,
        },
        "state" => Command::State {
            id: one_id(name, seen)?,
        },
        "pause" => Command::Pause {
            id: one_id(name, seen)?,
        },
        "resume" => Command::Resume {
            id: one_id(name, seen)?,
        },
        "delete" => Command::Delete {
            force,
            id: one_id(name, seen)?,
        },
        "events" => Command::Events {
            stats,
            interval,
            id: one_id(name, seen)?,
        },
        "kill" => {
            let mut pos = seen.positional.into_iter();
            let (Some(id), signal, None) = (pos.next(), pos.next(), pos.next()) else {
                return Err(Stop::Usage(
                    "hull kill: usage: hull kill [--all] ID [SIGNAL]".into(),
                ));
            };
            Command::Kill {
                all,
                id,
                signal: signal.unwrap_or_else(|| "SIGTERM".into()),
            }
        }
        "list" => {
            if !seen.positional.is_empty() {
                return Err(Stop::Usage("hull list takes no arguments".into()));
            }
            Command::List { format, quiet }
        }
        "ps" => Command::Ps {
            format,
            id: one_id(name, seen)?,
            ps_args: rest,
        },
        "exec" => {
            exec.id = one_id(name, seen)?;
            exec.command = rest;
            Command::Exec(exec)
        }
        "update" => {
            update.id = one_id(name, seen)?;
            Command::Update(update)
        }
        "spec" => Command::Spec {
            bundle: create.bundle,
            rootless,
        },
        "features" => Command::Features,
        "check" => {
            if !seen.positional.is_empty() {
                return Err(Stop::Usage("hull check takes no arguments".into()));
            }
            Command::Check {
                json: format == "json",
            }
        }
        "guest" => match seen.positional.as_slice() {
            [sub] if sub == "build" => Command::GuestBuild(guest),
            [sub, kernel, initramfs, socket, log] if sub == "qemu-args" => {
                Command::GuestQemuArgs {
                    kernel: kernel.clone(),
                    initramfs: initramfs.clone(),
                    socket: socket.clone(),
                    console_log: log.clone(),
                }
            }
            _ => return Err(Stop::Usage(
                "hull guest: usage: hull guest build [--dir DIR] [--agent FILE] [--source FILE] | hull guest qemu-args KERNEL ROOT SOCKET CONSOLE_LOG"
                    .into(),
            )),
        },
        "vmm" => match (vm_config, seen.positional.is_empty()) {
            (Some(config), true) => Command::Vmm { config },
            _ => {
                return Err(Stop::Usage(
                    "hull vmm: usage: hull vmm --config FILE".into(),
                ))
            }
        },
        "help" => return Err(Stop::Help(usage())),
        other => {
            return Err(Stop::Usage(format!(
                "hull: unknown command {other:?}\n\n{COMMANDS}"
            )))
        }
    };
    Ok(cmd)
}

fn exec_flag(flag: &str, p: &mut Parser, e: &mut ExecArgs) -> R<()> {
    match flag {
        "--console-socket" => e.console_socket = Some(p.value()?.into()),
        "--cwd" => e.cwd = Some(p.value()?.into()),
        "-e" | "--env" => e.env.push(text(p.value()?, "--env")?),
        "-t" | "--tty" => e.tty = true,
        "-u" | "--user" => e.user = Some(text(p.value()?, "--user")?),
        "-g" | "--additional-gids" => e
            .additional_gids
            .push(number(p.value()?, "--additional-gids")?),
        "-p" | "--process" => e.process = Some(p.value()?.into()),
        "-d" | "--detach" => e.detach = true,
        "--pid-file" => e.pid_file = Some(p.value()?.into()),
        "--process-label" => e.process_label = Some(text(p.value()?, "--process-label")?),
        "--apparmor" => e.apparmor = Some(text(p.value()?, "--apparmor")?),
        "--no-new-privs" => e.no_new_privs = true,
        "-c" | "--cap" => e.cap.push(text(p.value()?, "--cap")?),
        "--preserve-fds" => e.preserve_fds = number(p.value()?, "--preserve-fds")?,
        "--ignore-paused" => e.ignore_paused = true,
        other => return Err(unexpected("exec", other)),
    }
    Ok(())
}

fn update_flag(flag: &str, p: &mut Parser, u: &mut UpdateArgs) -> R<()> {
    match flag {
        "-r" | "--resources" => u.resources = Some(p.value()?.into()),
        "--blkio-weight" => u.blkio_weight = Some(number(p.value()?, "--blkio-weight")?),
        "--cpu-period" => u.cpu_period = Some(number(p.value()?, "--cpu-period")?),
        "--cpu-quota" => u.cpu_quota = Some(number(p.value()?, "--cpu-quota")?),
        "--cpu-share" => u.cpu_share = Some(number(p.value()?, "--cpu-share")?),
        "--cpu-rt-period" => u.cpu_rt_period = Some(number(p.value()?, "--cpu-rt-period")?),
        "--cpu-rt-runtime" => u.cpu_rt_runtime = Some(number(p.value()?, "--cpu-rt-runtime")?),
        "--cpuset-cpus" => u.cpuset_cpus = Some(text(p.value()?, "--cpuset-cpus")?),
        "--cpuset-mems" => u.cpuset_mems = Some(text(p.value()?, "--cpuset-mems")?),
        "--memory" => u.memory = Some(text(p.value()?, "--memory")?),
        "--memory-reservation" => {
            u.memory_reservation = Some(text(p.value()?, "--memory-reservation")?)
        }
        "--memory-swap" => u.memory_swap = Some(text(p.value()?, "--memory-swap")?),
        "--pids-limit" => u.pids_limit = Some(number(p.value()?, "--pids-limit")?),
        other => return Err(unexpected("update", other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        match parse_from(args.iter().map(OsString::from)) {
            Ok(c) => c,
            Err(Stop::Usage(u) | Stop::Help(u) | Stop::Version(u)) => panic!("{args:?}: {u}"),
        }
    }

    #[test]
    fn runc_style_command_lines() {
        let c = parse(&[
            "hull",
            "--root",
            "/r",
            "--log-format=json",
            "create",
            "--bundle",
            "/b",
            "--pid-file=/p",
            "c1",
        ]);
        assert_eq!(c.global.root, Some(PathBuf::from("/r")));
        assert_eq!(c.global.log_format.as_deref(), Some("json"));
        let Command::Create(a) = c.command else {
            panic!()
        };
        assert_eq!(
            (a.bundle, a.pid_file, a.id),
            ("/b".into(), Some("/p".into()), "c1".into())
        );

        let c = parse(&[
            "hull",
            "exec",
            "-t",
            "--env",
            "A=1",
            "-e",
            "B=2",
            "c1",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        let Command::Exec(e) = c.command else {
            panic!()
        };
        assert!(e.tty);
        assert_eq!(e.env, ["A=1", "B=2"]);
        assert_eq!(e.command, ["sh", "-c", "echo -n hi"]);

        let c = parse(&["hull", "kill", "--all", "c1", "KILL"]);
        assert!(
            matches!(c.command, Command::Kill { all: true, ref signal, .. } if signal == "KILL")
        );
        let c = parse(&["hull", "ps", "c1", "-o", "pid,comm"]);
        assert!(
            matches!(c.command, Command::Ps { ref ps_args, .. } if ps_args == &["-o", "pid,comm"])
        );
        let c = parse(&[
            "hull",
            "update",
            "--memory",
            "64m",
            "--pids-limit",
            "-1",
            "c1",
        ]);
        let Command::Update(u) = c.command else {
            panic!()
        };
        assert_eq!((u.memory.as_deref(), u.pids_limit), (Some("64m"), Some(-1)));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["hull"][..],
            &["hull", "delete"],
            &["hull", "start", "a", "b"],
            &["hull", "nope"],
            &["hull", "list", "--format", "xml"],
            &["hull", "create", "--bogus", "c"],
        ] {
            assert!(
                matches!(
                    parse_from(bad.iter().map(OsString::from)),
                    Err(Stop::Usage(_))
                ),
                "{bad:?}"
            );
        }
    }
}
