//! The `chatd` binary: arguments -> configuration -> logger -> page -> server loop.
//!
//! Owns: arguments and the order of start-up. May not touch: protocol code.
use std::{path::PathBuf, process::ExitCode};

use chatd::{
    board::Board,
    config::Config,
    daemon::{self, Account, DaemonError, Readiness},
    http::Site,
    log::{self, LevelSwitch, LogFile},
    master::{self, Exit, Master, WorkerStart},
    notify::Notifier,
    roulette::Roulette,
    server::{Control, Server},
};
use slog::{error, info, o, warn, Logger};

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
    // The random address key, made before any worker forks so that all of them share it.
    let _ = chatd::endpoint::process_key();
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

    // 2. While still privileged: the listening socket (one per worker, all on `listen`) and the
    //    log file, so that their errors reach this terminal and a port below 1024 can be bound.
    let mut listeners = if config.workers > 1 {
        master::bind_listeners(config.listen, config.workers)
    } else {
        std::net::TcpListener::bind(config.listen).map(|l| vec![l])
    }
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
    let result = if listeners.len() > 1 {
        supervise(config, site, listeners, log_file, account.as_ref(), &mut ready, detach)
    } else {
        let listener = listeners.remove(0);
        serve(config, site, listener, log_file, account.as_ref(), &mut ready, detach)
    };
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

/// Step 4 of start-up: drops privileges, then builds the logger and systemd's notifier.
fn drop_and_log(
    config: &Config,
    log_file: Option<&LogFile>,
    account: Option<&Account>,
) -> Result<(LevelSwitch, Logger, Notifier), String> {
    if let Some(acct) = account {
        daemon::drop_privileges(acct).map_err(|e| e.to_string())?;
    }
    let level = LevelSwitch::new(config.log_level.to_slog());
    let log = log::build(config.log_format, &level, log_file);
    let notifier = Notifier::from_env().map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
    Ok((level, log, notifier))
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
    let (level, log, notifier) = drop_and_log(&config, log_file.as_ref(), account)?;
    if config.user.is_none() && account.is_some() {
        warn!(
            log,
            "started as root on built-in defaults: running as nobody (set `user` in a config)"
        );
    }
    let control = Control { level, log_file, notifier };
    serve_loop(config, site, listener, control, log, ready, 0, None, !detached, || Ok(()))
}

/// `workers = N > 1`: steps 4 and 5 for the master, which then forks the workers and
/// supervises them. Returns in the master only; a worker exits from here.
fn supervise(
    config: Config,
    site: Site,
    listeners: Vec<std::net::TcpListener>,
    log_file: Option<LogFile>,
    account: Option<&Account>,
    ready: &mut Readiness,
    detached: bool,
) -> Result<(), String> {
    // Before any worker exists: no worker ever runs (or accepts a connection) as root, and none
    // changes its user id later, which would clear the parent-death signal it sets.
    // The notifier takes NOTIFY_SOCKET out of the environment: only the master talks to
    // systemd (NotifyAccess=main).
    let (level, log, notifier) = drop_and_log(&config, log_file.as_ref(), account)?;
    let control = Control { level, log_file, notifier };
    let workers = listeners.len();
    let master =
        Master::new(config, site, listeners, control, log.clone()).map_err(|e| e.to_string())?;
    info!(log, "chatd started"; "version" => env!("CARGO_PKG_VERSION"),
        "listen" => %master.local_addr(), "user" => daemon::current_user(),
        "pid" => std::process::id(), "workers" => workers, "role" => "master");
    // The master says "ok" (or why not) on the starting command's pipe once every worker serves.
    let ready = std::mem::replace(ready, Readiness::none());
    match master.run(ready, !detached) {
        Ok(Exit::Stopped) => {
            info!(log, "exiting");
            Ok(())
        }
        Ok(Exit::Worker(start)) => {
            drop(log);
            std::process::exit(worker(*start))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A worker process, just forked by the master: the single-process loop on its own listener.
/// Returns the exit status; a start-up error goes to the master, which reports it.
fn worker(start: WorkerStart) -> i32 {
    let WorkerStart { index, listener, config, site, log_file, mut ready, held, board } = start;
    let level = LevelSwitch::new(config.log_level.to_slog());
    let log = log::build(config.log_format, &level, log_file.as_ref()).new(o!("worker" => index));
    // The master removed NOTIFY_SOCKET before forking: this notifier does nothing.
    let result =
        Notifier::from_env().map_err(|e| format!("NOTIFY_SOCKET: {e}")).and_then(|notifier| {
            let control = Control { level, log_file, notifier };
            // Signals sent since the fork were held: they arrive once the loop can act on them.
            let release = || held.release().map_err(|e| format!("cannot unblock signals: {e}"));
            let shared = board.map(|b| (b, usize::from(index)));
            serve_loop(
                config, site, listener, control, log, &mut ready, index, shared, false, release,
            )
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            ready.fail(&e);
            1
        }
    }
}

/// Builds the loop on `listener`, says so (log, stdout if `announce`, systemd, `ready`) and runs
/// it. `signals_ready` runs once the loop's signal handlers are in place.
#[allow(clippy::too_many_arguments)]
fn serve_loop(
    config: Config,
    site: Site,
    listener: std::net::TcpListener,
    control: Control,
    log: Logger,
    ready: &mut Readiness,
    index: u8,
    board: Option<(Board, usize)>,
    announce: bool,
    signals_ready: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    // In a cluster, this worker's id: the node, the worker's index and its pid, so that a
    // replaced worker is a new member whose predecessor the others forget.
    let worker_id =
        config.cluster.as_ref().map(|c| format!("{}/{}/{}", c.node, index, std::process::id()));
    let app = match &worker_id {
        Some(id) => Roulette::clustered(config.chat.clone(), id.clone()),
        None => Roulette::new(config.chat.clone()),
    };
    let mut server =
        Server::new(listener, config, site, app, index, log.clone()).map_err(|e| e.to_string())?;
    if let Some(id) = worker_id {
        server.join_cluster(id);
    }
    if let Some((board, slot)) = board {
        // Any worker answering /metrics serves every worker's series.
        server.share_metrics(board, slot);
    }
    let addr = server.local_addr();
    let user = daemon::current_user();
    info!(log, "chatd started"; "version" => env!("CARGO_PKG_VERSION"), "listen" => %addr,
        "user" => &user, "pid" => std::process::id());
    if announce {
        // A detached daemon's stdout is its log file, where only log records belong; the start
        // record above carries the address.
        println!("chatd listening on http://{addr}/");
    }
    server.handle_signals(control).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    signals_ready()?;
    server.notify_ready();
    ready.ready();
    server.run().map_err(|e| {
        error!(log, "event loop failed"; "error" => %e);
        format!("event loop failed: {e}")
    })?;
    info!(log, "exiting");
    Ok(())
}
