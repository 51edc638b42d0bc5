//! The event loop, and only that: one mio `Poll`, the listener, the signals, and the
//! [`Endpoint`] that holds every connection. The loop accepts, reads into one shared buffer,
//! hands the bytes to the endpoint, runs its deadlines, lets it apply its effects once and
//! transmit once per turn, and acts on signals (reload, reopen the log, stop).
//!
//! Owns: sockets (through `conn::Socket`), readiness, the read buffer, the clock, signals,
//! reloading the configuration file. May not touch: protocol state (that is the endpoint's).
use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mio::{net::TcpListener, Events, Interest, Poll, Token};
use slog::{debug, error, info, warn, Logger};

use crate::{
    app::App,
    board::Board,
    config::{Config, FromConfig},
    conn::{ReadOutcome, Socket},
    endpoint::{Endpoint, Settings},
    http::Site,
    log::{LevelSwitch, LogFile},
    notify::Notifier,
    signals::{Signal, SignalSource},
};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const REDIS_COMMANDS: Token = Token(2);
const REDIS_SUBSCRIBER: Token = Token(3);

mod cluster;

use self::cluster::ClusterIo;
const FIRST_CONN: usize = 4;

/// The accept queue asked of the kernel (capped there by `net.core.somaxconn`).
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Bytes read per `read` call. One buffer for the whole loop: connections own none while idle.
const READ_CHUNK: usize = 64 * 1024;
/// Reads given to one connection per readiness event before others get a turn.
const READS_PER_EVENT: usize = 8;
/// How often a worker shares its metrics on the board and reads the others'.
const BOARD_INTERVAL: Duration = Duration::from_millis(250);
/// How long accepting pauses when the process has no file descriptor left.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What a service needs from the loop besides serving: the log level and log file that a reload
/// or SIGUSR1 acts on, and systemd's notify socket.
#[derive(Debug)]
pub struct Control {
    /// The level `log_level` sets.
    pub level: LevelSwitch,
    /// The log file reopened on SIGUSR1 and SIGHUP, if logging to a file.
    pub log_file: Option<LogFile>,
    /// Readiness, reload and stop notifications for systemd.
    pub notifier: Notifier,
}

/// The server: listener, signals and the endpoint, driven by one thread.
pub struct Server<A: App> {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<SignalSource>,
    control: Option<Control>,
    endpoint: Endpoint<A, Socket>,
    config: Config,
    log: Logger,
    scratch: Vec<u8>,
    /// Connections that still had input after their share of reads: (slot, generation).
    backlog: VecDeque<(usize, u32)>,
    accept_paused_until: Option<Instant>,
    fd_warned_at: Option<Instant>,
    /// The cluster's links and this worker's node, with `[cluster]`.
    cluster: Option<ClusterIo>,
    /// With workers: the shared metrics board, this worker's slot, and the next update.
    board: Option<(Board, usize, Instant)>,
    /// The last good copy of each worker's slot.
    board_seen: Vec<Option<String>>,
}

impl<A: App> std::fmt::Debug for Server<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl<A: App> Server<A>
where
    A::Settings: FromConfig,
{
    /// Binds `config.listen` and sets up the loop. Nothing runs until [`Server::run`].
    pub fn bind(config: Config, site: Site, app: A, log: Logger) -> io::Result<Server<A>> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        Server::new(listener, config, site, app, 0, log)
    }

    /// Sets up the loop on a listener bound earlier (before detaching and dropping privileges).
    /// `worker` is this process's index among the host's workers (0 for a single process).
    pub fn new(
        listener: std::net::TcpListener,
        config: Config,
        site: Site,
        app: A,
        worker: u8,
        log: Logger,
    ) -> io::Result<Server<A>> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        // std listens with a backlog of 128; a reconnect storm after a restart needs more (the
        // kernel caps it at net.core.somaxconn). Calling listen again on a listening socket
        // only changes the backlog.
        use std::os::fd::AsRawFd;
        // SAFETY: listen on a socket we own, with a plain integer argument.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let settings = Settings::from_config(&config);
        let mut endpoint = Endpoint::new(settings, site, app, worker, log.clone(), Instant::now());
        endpoint.handle_time(unix_secs());
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            control: None,
            endpoint,
            config,
            log,
            scratch: vec![0; READ_CHUNK],
            backlog: VecDeque::new(),
            accept_paused_until: None,
            fd_warned_at: None,
            cluster: None,
            board: None,
            board_seen: Vec::new(),
        })
    }

    /// Shares this worker's metrics on `board` (slot `slot`) and serves every worker's.
    pub fn share_metrics(&mut self, board: Board, slot: usize) {
        self.board = Some((board, slot, Instant::now()));
    }

    /// Writes this worker's metrics to the board and serves everyone's, four times a second
    /// (a scrape sees another worker's series at most half a second old).
    fn update_board(&mut self, now: Instant) {
        let Some((board, slot, next)) = &mut self.board else { return };
        if now < *next {
            return;
        }
        *next = now + BOARD_INTERVAL;
        board.write(*slot, &self.endpoint.render_metrics());
        // A slot caught mid-write (its worker descheduled there) keeps its last good copy.
        self.board_seen.resize(board.len(), None);
        for (i, seen) in self.board_seen.iter_mut().enumerate() {
            if let Some(text) = board.read(i) {
                *seen = Some(text);
            }
        }
        let parts: Vec<(String, String)> = self
            .board_seen
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i.to_string(), t.clone()?)))
            .collect();
        self.endpoint.set_metrics_override(Some(crate::metrics::merge_workers(&parts)));
    }

    /// Joins the cluster as worker `worker_id` ("node/index/pid"): the loop connects to Redis
    /// (reconnecting with backoff), and the application's cluster operations go there.
    pub fn join_cluster(&mut self, worker_id: String) {
        let Some(c) = &self.config.cluster else { return };
        let chat = &self.config.chat;
        self.cluster = Some(ClusterIo::new(
            c,
            worker_id.clone(),
            chat.interest_timeout,
            chat.rematch_cooldown,
        ));
        self.endpoint.set_unavailable(Some("no link to redis yet"));
        info!(self.log, "joining the cluster"; "worker" => &worker_id, "redis" => %c.redis);
        if let Some(c) = &mut self.cluster {
            c.handle_timeout(Instant::now(), self.poll.registry(), &self.log);
        }
    }

    /// Handles SIGTERM, SIGQUIT, SIGINT (graceful stop), SIGHUP (reload) and SIGUSR1 (reopen
    /// the log file) in the loop, acting on `control`.
    pub fn handle_signals(&mut self, control: Control) -> io::Result<()> {
        self.signals = Some(SignalSource::register(self.poll.registry(), SIGNALS)?);
        self.control = Some(control);
        Ok(())
    }

    /// Tells systemd (if it listens) that the server is ready.
    pub fn notify_ready(&self) {
        if let Some(c) = &self.control {
            c.notifier.ready();
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application.
    pub fn app(&self) -> &A {
        self.endpoint.app()
    }

    /// Runs until a graceful stop completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let cluster_due = self.cluster.as_ref().and_then(ClusterIo::poll_timeout);
            let board_due = self.board.as_ref().map(|b| b.2);
            let timeout = if self.backlog.is_empty() {
                [self.endpoint.poll_timeout(), self.accept_paused_until, cluster_due, board_due]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| t.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.endpoint.handle_time(unix_secs());
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => {
                        if self.handle_pending_signals(now) {
                            return Ok(());
                        }
                    }
                    REDIS_COMMANDS | REDIS_SUBSCRIBER => {
                        if let Some(c) = &mut self.cluster {
                            c.handle_ready(now, event.token(), &mut self.scratch, &self.log);
                        }
                    }
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        // A spurious or stale event (the connection is gone) is ignored.
                        let Some(socket) = self.endpoint.transport_mut(slot) else { continue };
                        if event.is_writable() {
                            socket.writable = true;
                            self.endpoint.handle_writable(slot);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // A FIN or an error must be read to the end; plain data need not.
                            let to_end = event.is_read_closed() || event.is_error();
                            self.read(slot, now, to_end);
                        }
                    }
                }
            }
            // Connections that still had input after their share of reads get another turn.
            for _ in 0..self.backlog.len() {
                let Some((slot, generation)) = self.backlog.pop_front() else { break };
                if self.endpoint.generation(slot) == Some(generation) {
                    self.read(slot, now, true);
                }
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            if let Some(c) = &mut self.cluster {
                c.handle_timeout(now, self.poll.registry(), &self.log);
                c.deliver_events(now, &mut self.endpoint, &self.log);
            }
            self.endpoint.handle_timeout(now);
            self.update_board(now);
            self.endpoint.apply(now);
            if let Some(c) = &mut self.cluster {
                c.take_operations(now, &mut self.endpoint);
                c.transmit(now, &self.log);
            }
            self.endpoint.transmit(now);
            if self.endpoint.is_stopped(now) {
                info!(self.log, "stopped"; "closed_websockets" => self.endpoint.stats().websockets_closed,
                    "cut_off_connections" => self.endpoint.len());
                return Ok(());
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else { return };
            let (stream, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // Out of descriptors or memory: the pending connections stay in the kernel's
                    // queue. Retry after a pause instead of spinning on a listener that stays ready.
                    if self
                        .fd_warned_at
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
                    {
                        warn!(self.log, "cannot accept, pausing"; "error" => %e, "open" => self.endpoint.len());
                        self.fd_warned_at = Some(now);
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends concern one connection only.
                    debug!(self.log, "accept failed"; "error" => %e);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(slot) = self.endpoint.handle_accept(now, peer, Socket::new(stream)) else {
                continue;
            };
            let Some(socket) = self.endpoint.transport_mut(slot) else { continue };
            if let Err(e) = self.poll.registry().register(
                &mut socket.stream,
                Token(slot + FIRST_CONN),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                error!(self.log, "cannot register connection"; "error" => %e);
                self.endpoint.handle_failure(now, slot);
            }
        }
    }

    /// Reads from one connection until `WouldBlock`, EOF, or its share of reads is used up.
    ///
    /// A read that returns less than the buffer's size has emptied the socket's receive queue:
    /// unless `to_end` asks for the end of the stream (the event reported a FIN or an error),
    /// the loop stops there instead of paying one more `read` to be told `WouldBlock`. Any
    /// byte or FIN that arrives later raises a new edge, so nothing is left behind.
    fn read(&mut self, slot: usize, now: Instant, to_end: bool) {
        let Some(generation) = self.endpoint.generation(slot) else { return };
        for _ in 0..READS_PER_EVENT {
            if self.endpoint.generation(slot) != Some(generation) {
                return;
            }
            let Some(socket) = self.endpoint.transport_mut(slot) else { return };
            match socket.fill(&mut self.scratch) {
                Ok(ReadOutcome::Data(n)) => {
                    self.endpoint.handle_input(now, slot, &mut self.scratch[..n]);
                    if n < self.scratch.len() && !to_end {
                        return;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    self.endpoint.handle_eof(now, slot);
                    return;
                }
                Err(e) => {
                    debug!(self.log, "read failed"; "conn" => slot, "error" => %e);
                    self.endpoint.handle_failure(now, slot);
                    return;
                }
            }
        }
        self.backlog.push_back((slot, generation));
    }

    /// Handles the signals that arrived. Returns true when the loop must end at once.
    fn handle_pending_signals(&mut self, now: Instant) -> bool {
        let Some(signals) = &mut self.signals else { return false };
        let pending: Vec<Signal> = signals.pending().collect();
        for signal in pending {
            match signal {
                Signal::Terminate | Signal::Interrupt if !self.endpoint.is_stopping() => {
                    info!(self.log, "stopping"; "signal" => ?signal, "connections" => self.endpoint.len());
                    if let Some(c) = &self.control {
                        c.notifier.stopping();
                    }
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    self.accept_paused_until = None;
                    self.endpoint.begin_shutdown(now);
                }
                Signal::Interrupt => {
                    warn!(self.log, "second interrupt: stopping now"; "connections" => self.endpoint.len());
                    return true;
                }
                Signal::Terminate => {}
                Signal::Reload => {
                    if let Some(c) = &self.control {
                        c.notifier.reloading();
                    }
                    self.reopen_log();
                    self.reload();
                    if let Some(c) = &self.control {
                        c.notifier.ready();
                    }
                }
                Signal::Reopen => self.reopen_log(),
            }
        }
        false
    }

    fn reopen_log(&mut self) {
        let Some(file) = self.control.as_ref().and_then(|c| c.log_file.as_ref()) else { return };
        match file.reopen() {
            Ok(()) => info!(self.log, "log file reopened"; "file" => %file.path().display()),
            Err(e) => error!(self.log, "cannot reopen the log file, still writing to the old one";
                "file" => %file.path().display(), "error" => %e),
        }
    }

    /// Re-reads the configuration file and applies it to new and open connections. An invalid
    /// file changes nothing; settings that need a restart keep their running value.
    fn reload(&mut self) {
        let Some(path) = self.config.path.clone() else {
            info!(self.log, "reload: running on built-in defaults, nothing to re-read");
            return;
        };
        let new = Config::load(&path).map_err(|e| e.to_string()).and_then(|c| {
            let site =
                Site::for_root(c.web_root.as_deref()).map_err(|e| format!("web_root: {e}"))?;
            Ok((c, site))
        });
        let (mut new, site) = match new {
            Ok(pair) => pair,
            Err(e) => {
                self.endpoint.count_failed_reload();
                error!(self.log, "reload failed, still running on the previous configuration"; "error" => %e);
                return;
            }
        };
        for key in new.keep_restart_only(&self.config) {
            warn!(self.log, "setting changed but needs a restart; keeping the running value"; "key" => key);
        }
        let changed = self.config.changed_keys(&new);
        if let Some(c) = &self.control {
            c.level.set(new.log_level.to_slog());
        }
        let files = site.len();
        self.endpoint.reconfigure(
            Settings::from_config(&new),
            site,
            A::Settings::from_config(&new),
        );
        self.config = new;
        info!(self.log, "reloaded"; "file" => %path.display(),
            "changed" => if changed.is_empty() { "nothing".to_owned() } else { changed.join(", ") },
            "files_served" => files);
    }
}

/// Seconds since the Unix epoch, for the `Date` header (0 if the clock is before 1970).
fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
