//! hull: a secure container runtime with runc's command line.

mod args;
mod cli;
mod commands;
mod logging;

fn main() {
    let cli = match args::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(args::Stop::Help(text) | args::Stop::Version(text)) => {
            print!("{text}");
            return;
        }
        Err(args::Stop::Usage(text)) => {
            eprintln!("{}", text.trim_end());
            std::process::exit(1);
        }
    };
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
            eprintln!("hull: {msg}");
            failure
        }
    };
    std::process::exit(code);
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
