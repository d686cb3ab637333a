//! `hull-testbed`: runs commands in an L1 guest with a working /dev/kvm (see the
//! library's docs), for bench scripts and by hand.
//!
//! ```text
//! hull-testbed prepare                      # check the parts, download Debian's kernel
//! hull-testbed run [OPTIONS] -- CMD...      # boot L1 once, run each CMD with sh in it
//! ```
//! Exits 0 when every command exited 0, 1 when one did not, 2 when L1 could not be
//! prepared, booted or driven.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hull_testbed::{Options, L1};

const USAGE: &str = "usage: hull-testbed prepare [OPTIONS]
       hull-testbed run [OPTIONS] [--timeout SECS] [--json] [--file HOST_PATH:L1_PATH]... [--tool PATH]... -- CMD...
options:
  --release-dir DIR   where hull and hull-agent are (default: this binary's directory)
  --guest-dir DIR     the hull guest (default: /var/lib/hull/guest)
  --memory MIB        L1's memory (default: 2048)
  --cpus N            L1's CPUs (default: 1)
  --no-doorbell       do not ring L1's keyboard (see monitor.rs: L1 may then stall)
  --timeout SECS      each command's limit in L1 (default: 120)
  --json              one JSON object a line (boot, then each command), for scripts
  --file HOST:L1      copy a host file into L1 (a relative L1 path goes under /testbed/files)
  --tool PATH         copy a host program into L1 at the same path, with its libraries";

struct Args {
    verb: String,
    opts: Options,
    timeout: Duration,
    /// One JSON object a line: L1's boot, then each command's result.
    json: bool,
    commands: Vec<String>,
}

fn parse() -> Result<Args> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let exe = std::env::current_exe().context("where is this binary")?;
    let mut opts = Options::for_release_dir(exe.parent().unwrap_or(&PathBuf::from(".")));
    let (mut verb, mut timeout, mut commands) = (None, Duration::from_secs(120), Vec::new());
    let mut json = false;
    while let Some(arg) = p.next()? {
        match arg {
            Long("release-dir") => {
                let dir = PathBuf::from(p.value()?);
                (opts.hull, opts.agent) = (dir.join("hull"), dir.join("hull-agent"));
            }
            Long("guest-dir") => opts.guest_dir = p.value()?.into(),
            Long("memory") => opts.memory_mib = p.value()?.parse()?,
            Long("cpus") => opts.cpus = p.value()?.parse()?,
            Long("no-doorbell") => opts.doorbell = false,
            Long("timeout") => timeout = Duration::from_secs(p.value()?.parse()?),
            Long("file") => {
                let v = p.value()?.string()?;
                let Some((host, l1)) = v.split_once(':') else {
                    bail!("--file {v}: say HOST_PATH:L1_PATH");
                };
                opts.files.push((host.into(), l1.into()));
            }
            Long("tool") => opts.tools.push(p.value()?.into()),
            Long("json") => json = true,
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(v) if verb.is_none() => verb = Some(v.string()?),
            Value(v) => commands.push(v.string()?),
            _ => bail!("{}\n{USAGE}", arg.unexpected()),
        }
    }
    let Some(verb) = verb else {
        bail!("{USAGE}");
    };
    Ok(Args {
        verb,
        opts,
        timeout,
        json,
        commands,
    })
}

fn run(args: &Args) -> Result<i32> {
    let progress = |m: &str| eprintln!("hull-testbed: {m}");
    match args.verb.as_str() {
        "prepare" => {
            let p = hull_testbed::prepare(&args.opts, &progress)?;
            println!(
                "L1 ready to boot: kernel {} ({}), {} files in its initramfs",
                p.kernel.version,
                p.kernel.vmlinuz.display(),
                p.entries.len()
            );
            Ok(0)
        }
        "run" => {
            if args.commands.is_empty() {
                bail!("run: no commands\n{USAGE}");
            }
            run_commands(args, &progress)
        }
        other => bail!("unknown verb {other:?}\n{USAGE}"),
    }
}

/// Boots L1 once and runs every command; 1 when one of them did not exit 0.
fn run_commands(args: &Args, progress: &dyn Fn(&str)) -> Result<i32> {
    let mut l1 = L1::boot(&args.opts, progress)?;
    let boot = l1.boot_time.as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"l1_kernel": l1.kernel, "boot_seconds": boot})
        );
    } else {
        println!("hull-testbed: L1 {} up in {boot:.2} s", l1.kernel);
    }
    let mut status = 0;
    let n = args.commands.len();
    for (i, cmd) in args.commands.iter().enumerate() {
        let out = l1.run(cmd, args.timeout)?;
        if out.code != 0 {
            status = 1;
        }
        if args.json {
            let line = serde_json::json!({
                "command": cmd,
                "code": out.code,
                "seconds": out.elapsed.as_secs_f64(),
                "timed_out": out.timed_out,
                "output": out.output,
            });
            println!("{line}");
            continue;
        }
        let killed = match out.timed_out {
            true => " (killed at its timeout)",
            false => "",
        };
        let secs = out.elapsed.as_secs_f64();
        println!(
            "== [{}/{n}] exit {}{killed} in {secs:.2} s: {cmd}",
            i + 1,
            out.code
        );
        print!("{}", out.output);
    }
    Ok(status)
}

fn main() {
    let code = match parse().and_then(|a| run(&a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hull-testbed: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
