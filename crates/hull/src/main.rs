//! hull: a secure container runtime with runc's command line.

mod args;
mod cli;
mod commands;
mod logging;

fn main() {
    let cli = match args::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(args::Stop::Help(text) | args::Stop::Version(text)) => {
            let _ = commands::out(&text);
            return;
        }
        Err(args::Stop::Usage(text)) => {
            eprintln!("{}", text.trim_end());
            std::process::exit(1);
        }
    };
    // Before hull opens anything of its own: fds it opened would fill the gaps.
    if let Err(e) = check_preserved_fds(&cli.command) {
        eprintln!("hull: {e}");
        std::process::exit(1);
    }
    let log = logging::init(&cli.global);
    // runc's exit code for exec's own failures, so callers can tell them from the
    // process's exit status.
    let failure = if matches!(cli.command, cli::Command::Exec(_)) {
        255
    } else {
        1
    };
    let code = match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = one_line(&e);
            // Engines (conmon, containerd's shim) read the error from --log.
            if log.to_file {
                tracing::error!("{msg}");
            }
            // One line per problem, each its own "hull:" line (rootless names every
            // limit it cannot apply on a line of its own).
            for line in msg.lines() {
                eprintln!("hull: {line}");
            }
            failure
        }
    };
    std::process::exit(code);
}

/// `--preserve-fds N` hands the container fds 3 to 2 + N: each must be open, or the
/// container would get whatever hull opens later at that number.
fn check_preserved_fds(command: &cli::Command) -> Result<(), String> {
    let n = match command {
        cli::Command::Create(c) | cli::Command::Run { create: c, .. } => c.preserve_fds,
        cli::Command::Exec(e) => e.preserve_fds,
        _ => 0,
    };
    for fd in 3..3 + n.max(0) {
        // SAFETY: F_GETFD only reads the flags of fd number `fd`, open or not.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(format!("--preserve-fds {n}: fd {fd} is not open"));
        }
    }
    Ok(())
}

/// The error and its causes on one line, skipping causes the message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !msg.contains(&c) {
            if !msg.is_empty() {
                msg += ": ";
            }
            msg += &c;
        }
    }
    msg
}
