//! The `chatd` binary: arguments -> configuration -> logger -> page -> server loop.
use std::{path::PathBuf, process::ExitCode};

use chatd::{
    config::Config,
    http::Site,
    log::{self, LevelSwitch},
    roulette::Roulette,
    server::Server,
};
use slog::{error, info};

const USAGE: &str = "\
chatd: an anonymous text chat roulette

Usage: chatd [--config FILE] [--check-config]

Options:
  -c, --config FILE    read the configuration from FILE (TOML); without it, built-in defaults
  -t, --check-config   check the configuration (and web_root) and exit: 0 if valid
  -V, --version        print the version and exit
  -h, --help           print this help and exit

Signals: SIGHUP reloads the configuration, SIGTERM/SIGINT stop gracefully.
";

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    check: bool,
}

enum Command {
    Run(Args),
    Help,
    Version,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut args = Args::default();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-t" | "--check-config" => args.check = true,
            "-c" | "--config" => {
                let file = it.next().ok_or_else(|| format!("{arg} needs a file name"))?;
                args.config = Some(file.into());
            }
            other => match other.strip_prefix("--config=") {
                Some(file) => args.config = Some(file.into()),
                None => return Err(format!("unknown argument `{other}` (see --help)")),
            },
        }
    }
    Ok(Command::Run(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("chatd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let site = match &config.web_root {
        Some(root) => Site::load(root).map_err(|e| format!("web_root: {e}"))?,
        None => Site::embedded(),
    };
    if args.check {
        let what = args
            .config
            .as_ref()
            .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
        println!("chatd: configuration {what} is valid");
        return Ok(());
    }
    let level = LevelSwitch::new(config.log_level.to_slog());
    let log = log::terminal(&level);
    let app = Roulette::new(config.chat.clone());
    let listen = config.listen;
    let mut server = Server::bind(config, site, app, log.clone())
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    server.handle_signals(level).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let addr = server.local_addr();
    info!(log, "chatd started"; "version" => env!("CARGO_PKG_VERSION"), "listen" => %addr);
    println!("chatd listening on http://{addr}/");
    server.run().map_err(|e| {
        error!(log, "event loop failed"; "error" => %e);
        format!("event loop failed: {e}")
    })
}
