//! The `chatd` binary: arguments -> configuration -> logger -> page -> server loop.
use std::{path::PathBuf, process::ExitCode};

use chatd::{
    config::Config,
    daemon::{self, Account, DaemonError, Readiness},
    http::Site,
    log::{self, LevelSwitch, LogFile},
    notify::Notifier,
    roulette::Roulette,
    server::{Control, Server},
};
use slog::{error, info, warn};

const USAGE: &str = "\
chatd: an anonymous text chat roulette

Usage: chatd [--config FILE] [--check-config] [--daemon | --foreground]

Options:
  -c, --config FILE    read the configuration from FILE (TOML); without it, built-in defaults
  -t, --check-config   check the configuration (and web_root) and exit: 0 if valid
  -d, --daemon         detach and run in the background (as `daemon = true`)
  -f, --foreground     stay in the foreground even if the file says `daemon = true`
  -V, --version        print the version and exit
  -h, --help           print this help and exit

Signals: SIGHUP reloads the configuration and reopens the log file, SIGUSR1 reopens the log
file, SIGTERM, SIGQUIT and SIGINT stop gracefully (a second SIGINT stops at once).
";

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    check: bool,
    daemon: bool,
    foreground: bool,
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
            "-d" | "--daemon" => args.daemon = true,
            "-f" | "--foreground" => args.foreground = true,
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
    // 1. The configuration, with its path made absolute for later reloads.
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let site = Site::for_root(config.web_root.as_deref()).map_err(|e| format!("web_root: {e}"))?;
    if args.check {
        // The file is judged, not who runs the check: `user` and `group` must exist.
        if let Some(user) = &config.user {
            daemon::lookup(user, config.group.as_deref()).map_err(|e| e.to_string())?;
        }
        let what = args
            .config
            .as_ref()
            .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
        println!("chatd: configuration {what} is valid");
        return Ok(());
    }
    let account = account(&config, args.config.is_none()).map_err(|e| e.to_string())?;
    let detach = (config.daemon || args.daemon) && !args.foreground;

    if detach {
        if let Some(p) = &config.pid_file {
            // Before binding, so that a second instance names the real problem, not the port.
            daemon::check_pid_file(p).map_err(|e| e.to_string())?;
        }
    }

    // 2. While still privileged: the listening socket and the log file, so that their errors
    //    reach this terminal and a port below 1024 can be bound.
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let log_file = match &config.log_file {
        Some(path) => {
            Some(LogFile::open(path).map_err(|e| format!("log_file {}: {e}", path.display()))?)
        }
        None => None,
    };
    if let (Some(file), Some(acct)) = (&log_file, &account) {
        // The service account keeps writing to it (and to its successors after rotation).
        std::os::unix::fs::chown(file.path(), Some(acct.uid), Some(acct.gid))
            .map_err(|e| format!("log_file {}: {e}", file.path().display()))?;
    }
    if detach && log_file.is_none() {
        eprintln!("chatd: warning: running as a daemon without `log_file`: logs are discarded");
    }

    // 3. Detach. From here on, failures are reported to the starting command through `ready`.
    let mut ready = if detach {
        let stdio = log_file
            .as_ref()
            .map(LogFile::try_clone_file)
            .transpose()
            .map_err(|e| e.to_string())?;
        daemon::detach(config.pid_file.as_deref(), stdio.as_ref()).map_err(|e| e.to_string())?
    } else {
        Readiness::none()
    };
    let pid_file = if detach { config.pid_file.clone() } else { None };
    if let (Some(p), Some(acct)) = (&pid_file, &account) {
        // So that the daemon, no longer root, can still read and remove it at exit.
        if let Err(e) = std::os::unix::fs::chown(p, Some(acct.uid), Some(acct.gid)) {
            let message = format!("pid file {}: {e}", p.display());
            ready.fail(&message);
            return Err(message);
        }
    }
    let result = serve(config, site, listener, log_file, account.as_ref(), &mut ready, detach);
    if let Err(e) = &result {
        ready.fail(e);
    }
    if let Some(p) = &pid_file {
        daemon::remove_pid_file(p);
    }
    result
}

/// The account to switch to, if any: refuses to keep root, except on built-in defaults (the
/// developer's `cargo run`), where it falls back to `nobody` as nginx does.
fn account(config: &Config, defaults: bool) -> Result<Option<Account>, DaemonError> {
    match (&config.user, daemon::is_root()) {
        (Some(user), true) => daemon::lookup(user, config.group.as_deref()).map(Some),
        (None, true) if defaults => daemon::lookup("nobody", None).map(Some),
        (None, true) => Err(DaemonError::RootWithoutUser),
        (Some(user), false) => {
            // Already unprivileged: fine if it is that user, an error otherwise.
            if daemon::current_user() == *user {
                Ok(None)
            } else {
                Err(DaemonError::NotRoot(user.clone()))
            }
        }
        (None, false) => Ok(None),
    }
}

/// Steps 4 and 5 of start-up (drop privileges, then build the loop) and the loop itself.
fn serve(
    config: Config,
    site: Site,
    listener: std::net::TcpListener,
    log_file: Option<LogFile>,
    account: Option<&Account>,
    ready: &mut Readiness,
    detached: bool,
) -> Result<(), String> {
    if let Some(acct) = account {
        daemon::drop_privileges(acct).map_err(|e| e.to_string())?;
    }
    let level = LevelSwitch::new(config.log_level.to_slog());
    let log = log::build(config.log_format, &level, log_file.as_ref());
    let notifier = Notifier::from_env().map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
    let defaulted_user = config.user.is_none() && account.is_some();
    // In a cluster, this worker's id: the node, the worker's index and its pid, so that a
    // replaced worker is a new member whose predecessor the others forget.
    let worker_id =
        config.cluster.as_ref().map(|c| format!("{}/{}/{}", c.node, 0, std::process::id()));
    let app = match &worker_id {
        Some(id) => Roulette::clustered(config.chat.clone(), id.clone()),
        None => Roulette::new(config.chat.clone()),
    };
    let mut server =
        Server::new(listener, config, site, app, 0, log.clone()).map_err(|e| e.to_string())?;
    if let Some(id) = worker_id {
        server.join_cluster(id);
    }
    let addr = server.local_addr();
    let user = daemon::current_user();
    info!(log, "chatd started"; "version" => env!("CARGO_PKG_VERSION"), "listen" => %addr,
        "user" => &user, "pid" => std::process::id());
    if defaulted_user {
        warn!(
            log,
            "started as root on built-in defaults: running as nobody (set `user` in a config)"
        );
    }
    if !detached {
        // A detached daemon's stdout is its log file, where only log records belong; the start
        // record above carries the address.
        println!("chatd listening on http://{addr}/");
    }
    server
        .handle_signals(Control { level, log_file, notifier })
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    server.notify_ready();
    ready.ready();
    server.run().map_err(|e| {
        error!(log, "event loop failed"; "error" => %e);
        format!("event loop failed: {e}")
    })?;
    info!(log, "exiting");
    Ok(())
}
