//! The master of `workers = N > 1`, as nginx's: it binds one `SO_REUSEPORT` listener per worker
//! while it may still bind a low port, forks the workers once privileges are dropped, replaces a
//! worker that dies (on the same listener, with the same index), passes signals on, and speaks
//! for all of them to systemd and to the command that started a daemon. It serves no one itself.
//!
//! Owns: the listeners (kept for replacements), the workers' pids and the word each new worker
//! sends when it serves, SIGCHLD and the signals it forwards, the notify socket. May not touch:
//! connections; each worker is the ordinary single-process loop with its own descriptors.
//!
//! `fork` returns twice: in a new worker, [`Master::run`] returns [`Exit::Worker`] with what the
//! worker needs, after dropping every master resource the child inherited (the poll, the signal
//! pipe, the other listeners, the readiness pipes); the caller runs the loop with it and exits.
//!
//! Signals reach a new worker only once its own handlers are in place: the master blocks the
//! forwarded signals around `fork`, and the worker releases them ([`HeldSignals`]) after
//! registering its loop's signal source. A SIGHUP or SIGTERM sent to a starting worker is
//! therefore held, not lost, and no worker ever runs the master's handlers.
use std::{
    fs::File,
    io::{self, Read},
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::UnixStream as StdUnixStream,
    },
    path::Path,
    time::{Duration, Instant},
};

use mio::{net::UnixStream, Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;
use slog::{error, info, warn, Logger};

use crate::{
    board::Board, config::Config, daemon::Readiness, http::Site, log::LogFile, server::Control,
};

const SIGNALS: Token = Token(0);
/// Worker `i`'s readiness stream is registered as `Token(FIRST_WORKER + i)`.
const FIRST_WORKER: usize = 1;

/// The signals a worker acts on: held back from a new worker until its handlers exist.
const WORKER_SIGNALS: [libc::c_int; 5] = [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1];
/// The accept queue of each listener; the worker's loop asks again (it is the same number).
const LISTEN_BACKLOG: libc::c_int = 4096;
/// At most one start per worker index per this long, whatever happens.
const RESTART_SPACING: Duration = Duration::from_secs(1);
/// Repeated deaths soon after start double the spacing, up to this.
const MAX_RESTART_SPACING: Duration = Duration::from_secs(30);
/// A worker that served this long before dying was not crash-looping: its spacing starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// After `shutdown_timeout`, workers get this much longer to exit before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest word a worker may send (its start-up error); more is cut off.
const MAX_WORD: usize = 4096;

/// Why the master could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Setting up the master's own loop (poll, signal handlers) failed.
    #[error("cannot set up the master: {0}")]
    Setup(io::Error),
    /// `fork` or the readiness channel failed during start-up.
    #[error("cannot start worker {index}: {source}")]
    Spawn {
        /// The worker's index.
        index: usize,
        /// Why.
        source: io::Error,
    },
    /// A worker exited, or said it could not serve, before every worker served.
    #[error("worker {index} failed to start: {message}")]
    WorkerFailed {
        /// The worker's index.
        index: usize,
        /// Its own message, or how it exited.
        message: String,
    },
    /// The master's poll failed.
    #[error("master event loop failed: {0}")]
    Poll(io::Error),
}

/// Result type of this module.
pub type Result<T, E = MasterError> = std::result::Result<T, E>;

/// Binds `count` listening sockets on `addr`, all with `SO_REUSEPORT`, so that the kernel spreads
/// new connections among them (by a hash of the 4-tuple). Port 0 is resolved by the first bind
/// and the others join that port. An IPv6 address is bound with `IPV6_V6ONLY` off: `[::]` takes
/// IPv4 connections too, whatever `net.ipv6.bindv6only` says.
///
/// `SO_REUSEPORT` would also let this process join a group that another process of the same user
/// (a second chatd) already listens in, and silently share its connections; so a fixed port is
/// first bound once without it, which fails with "address in use" as a single chatd would.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        drop(bind_one(addr, false)?);
    }
    let first = bind_one(addr, true)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_one(addr, true)?);
    }
    Ok(listeners)
}

fn set_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads an int of the size passed from `value`, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One TCP socket bound to `addr`: with `SO_REUSEPORT` and listening, or (the probe) without and
/// not listening.
fn bind_one(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket takes plain integers; a non-negative result is a new descriptor that
    // `OwnedFd` then owns alone.
    let fd = unsafe {
        let raw = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(raw)
    };
    // As std's bind does: a restart binds despite connections of the last run in TIME_WAIT.
    set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        set_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: bind reads a sockaddr_in of the length passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sin).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            set_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
            // SAFETY: all-zero is a valid sockaddr_in6 (it has private padding on some targets,
            // hence no struct literal); the fields are set below.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: bind reads a sockaddr_in6 of the length passed.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sin6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on a socket we own, with a plain integer argument.
    if reuse_port && unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

/// The signal mask a process had before [`WORKER_SIGNALS`] were blocked.
#[derive(Clone, Copy)]
struct SavedMask(libc::sigset_t);

impl std::fmt::Debug for SavedMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SavedMask")
    }
}

/// The signals a new worker holds back (blocked since before the fork) until its own handlers
/// are in place: a SIGHUP or SIGTERM sent meanwhile waits instead of being lost.
#[derive(Debug)]
pub struct HeldSignals(SavedMask);

impl HeldSignals {
    /// Lets the held signals through; call it once the worker's signal source is registered.
    /// One sent while they were held arrives now.
    pub fn release(self) -> io::Result<()> {
        restore(&self.0)
    }
}

/// Blocks `signals` for this (single-threaded) process; returns the mask to restore.
fn block(signals: &[libc::c_int]) -> io::Result<SavedMask> {
    // SAFETY: sigemptyset/sigaddset initialise `set`; pthread_sigmask reads `set` and writes the
    // previous mask into `old`, reporting failure through its return value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) {
            0 => Ok(SavedMask(old)),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

fn restore(mask: &SavedMask) -> io::Result<()> {
    // SAFETY: pthread_sigmask reads a mask that an earlier call filled in.
    match unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// What a new worker gets from the master: its index and listener, the configuration and page
/// the master holds now (the last good reload's), the log file, and the pipe on which it says
/// that it serves (or why it cannot).
#[derive(Debug)]
pub struct WorkerStart {
    /// The index, 0..workers; a replacement keeps its predecessor's.
    pub index: u8,
    /// This worker's own listener; the others' were closed in this process.
    pub listener: TcpListener,
    /// The configuration.
    pub config: Config,
    /// The page.
    pub site: Site,
    /// The log file, if logging to one (the descriptor is shared with the master).
    pub log_file: Option<LogFile>,
    /// Tells the master "serving" (`ready`) or the start-up error (`fail`).
    pub ready: Readiness,
    /// Release once the worker's signal handlers are in place.
    pub held: HeldSignals,
    /// The shared metrics board; this worker writes slot `index`.
    pub board: Option<Board>,
}

/// How [`Master::run`] returned.
#[derive(Debug)]
pub enum Exit {
    /// In the master: every worker has exited after a stop.
    Stopped,
    /// In a new worker process: run the worker loop with this, then exit.
    Worker(Box<WorkerStart>),
}

/// The master's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not every worker has served yet: a worker that fails now fails the start.
    Starting,
    /// Every worker has served once; a worker that dies is replaced.
    Serving,
    /// Stopping: workers were told, none is replaced; the survivors are killed at `kill_at`.
    Stopping { kill_at: Option<Instant> },
}

/// One worker index.
#[derive(Debug)]
enum WorkerState {
    /// Forked; its word ("ok", or an error) has not been read to the end yet.
    Starting {
        pid: libc::pid_t,
        /// The master's end of the readiness channel; `None` once it reached EOF.
        word: Option<UnixStream>,
        said: Vec<u8>,
    },
    /// Said it serves.
    Serving { pid: libc::pid_t },
    /// Exited. Replaced at `restart_at`; `None`: not replaced (stopping).
    Down { restart_at: Option<Instant> },
}

#[derive(Debug)]
struct Slot {
    state: WorkerState,
    /// When the current (or last) worker of this index was forked.
    started: Instant,
    /// Deaths in a row, each within `STABLE_AFTER` of its start.
    crashes: u32,
}

impl Slot {
    fn pid(&self) -> Option<libc::pid_t> {
        match self.state {
            WorkerState::Starting { pid, .. } | WorkerState::Serving { pid } => Some(pid),
            WorkerState::Down { .. } => None,
        }
    }
}

/// When a worker that was forked at `started` and died at `died` may be replaced, after
/// `crashes` quick deaths in a row (this one included; 0 if it had been stable): never sooner
/// than [`RESTART_SPACING`] after its start, the spacing doubling with each quick death up to
/// [`MAX_RESTART_SPACING`], so that a crash loop costs one fork per 30 s, not a spinning core.
fn restart_at(started: Instant, died: Instant, crashes: u32) -> Instant {
    let spacing = RESTART_SPACING
        .saturating_mul(1 << crashes.saturating_sub(1).min(5))
        .min(MAX_RESTART_SPACING);
    (started + spacing).max(died)
}

/// How a child ended, from its `waitpid` status.
fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = signal_hook::low_level::signal_name(sig).unwrap_or("unknown");
        let core = if libc::WCOREDUMP(status) { ", core dumped" } else { "" };
        format!("killed by signal {sig} ({name}{core})")
    } else {
        format!("wait status {status:#x}")
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    signal_hook::low_level::signal_name(sig).unwrap_or("signal")
}

/// Sends `sig` to `pid`. A worker that already exited (and awaits reaping) makes this fail with
/// ESRCH, which is fine: its SIGCHLD is on the way.
fn send(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects. `pid` is a child not yet reaped, so it cannot have
    // been reused by another process.
    unsafe { libc::kill(pid, sig) };
}

/// Closes, in a new worker, the descriptor of `path` that the daemon start left open to keep its
/// lock (daemonize never hands it back): the pid file's lock belongs to the master alone, so a
/// worker outliving a killed master does not hold it.
fn close_inherited(path: &Path) {
    let Ok(path) = std::fs::canonicalize(path) else { return };
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<libc::c_int> = dir
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == path))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor is not owned by any Rust value in this process (daemonize
        // leaked it as a plain integer), so nothing else closes or uses it.
        unsafe { libc::close(fd) };
    }
}

/// The master: the listeners, one slot per worker index, its own poll and signals.
#[derive(Debug)]
pub struct Master {
    config: Config,
    site: Site,
    listeners: Vec<TcpListener>,
    local_addr: SocketAddr,
    slots: Vec<Slot>,
    phase: Phase,
    poll: Poll,
    signals: SignalSource,
    control: Control,
    log: Logger,
    pid: libc::pid_t,
    /// Every worker's metrics, shared: mapped here, inherited by each worker at fork.
    board: Option<Board>,
}

/// signal-hook-mio's `Signals`, which has no `Debug`.
struct SignalSource(Signals);

impl std::fmt::Debug for SignalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalSource")
    }
}

impl Master {
    /// Sets up the master over `listeners` (one per worker, from [`bind_listeners`]). Call it
    /// after dropping privileges: the workers it forks inherit its user. `control.notifier` must
    /// have been taken from the environment already, so that no worker inherits
    /// `NOTIFY_SOCKET`.
    pub fn new(
        config: Config,
        site: Site,
        listeners: Vec<TcpListener>,
        control: Control,
        log: Logger,
    ) -> Result<Master> {
        let local_addr = listeners
            .first()
            .ok_or_else(|| MasterError::Setup(io::Error::other("no listener")))?
            .local_addr()
            .map_err(MasterError::Setup)?;
        let poll = Poll::new().map_err(MasterError::Setup)?;
        // SIGCHLD with the others: a worker's death wakes the same poll as an operator's signal,
        // and is handled outside the handler like them.
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGCHLD])
            .map_err(MasterError::Setup)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(MasterError::Setup)?;
        let now = Instant::now();
        let listeners_len = listeners.len();
        let slots = listeners
            .iter()
            .map(|_| Slot {
                state: WorkerState::Down { restart_at: None },
                started: now,
                crashes: 0,
            })
            .collect();
        Ok(Master {
            config,
            site,
            listeners,
            local_addr,
            slots,
            phase: Phase::Starting,
            poll,
            signals: SignalSource(signals),
            control,
            log,
            // SAFETY: getpid has no preconditions and cannot fail.
            pid: unsafe { libc::getpid() },
            board: Board::new(listeners_len).map_err(MasterError::Setup).map(Some)?,
        })
    }

    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Forks every worker, waits until all serve, then reports readiness (the address line on
    /// stdout if `announce`, `READY=1`, and "ok" on `ready`), and supervises until a stop has
    /// ended with every worker gone.
    ///
    /// Returns [`Exit::Worker`] in each worker process. In the master, an error before every
    /// worker served is also said on `ready`, after every worker was killed and reaped.
    pub fn run(mut self, mut ready: Readiness, announce: bool) -> Result<Exit> {
        let result = self.run_inner(&mut ready, announce);
        if let Err(e) = &result {
            ready.fail(&e.to_string());
        }
        result
    }

    fn run_inner(&mut self, ready: &mut Readiness, announce: bool) -> Result<Exit> {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            match self.spawn(index, now) {
                Ok(Some(start)) => return Ok(Exit::Worker(Box::new(start))),
                Ok(None) => {}
                Err(source) => {
                    self.abort();
                    return Err(MasterError::Spawn { index, source });
                }
            }
        }
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self.next_deadline().map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.abort();
                return Err(MasterError::Poll(e));
            }
            let mut failed = None;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        if let Err(e) = self.handle_signals() {
                            failed = Some(e);
                        }
                    }
                    Token(t) => {
                        if let Err(e) = self.read_word(t - FIRST_WORKER) {
                            failed = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failed {
                self.abort();
                return Err(e);
            }
            let now = Instant::now();
            match self.phase {
                Phase::Starting if self.all_serving() => {
                    self.phase = Phase::Serving;
                    if announce {
                        // The one line on stdout in the foreground, as without workers: tests
                        // and the first command of README wait for it.
                        println!("chatd listening on http://{}/", self.local_addr);
                    }
                    self.control.notifier.ready();
                    ready.ready();
                    let pids: Vec<String> =
                        self.slots.iter().filter_map(Slot::pid).map(|p| p.to_string()).collect();
                    info!(self.log, "all workers serving"; "workers" => self.slots.len(),
                        "pids" => pids.join(" "));
                }
                Phase::Starting => {}
                Phase::Serving => {
                    if let Some(start) = self.restart_due(now) {
                        return Ok(Exit::Worker(Box::new(start)));
                    }
                }
                Phase::Stopping { kill_at } => {
                    if self.slots.iter().all(|s| s.pid().is_none()) {
                        info!(self.log, "all workers exited");
                        return Ok(Exit::Stopped);
                    }
                    if kill_at.is_some_and(|t| t <= now) {
                        warn!(self.log, "workers still running after shutdown_timeout: killing them";
                            "grace" => ?STOP_GRACE);
                        self.signal_workers(SIGKILL);
                        self.phase = Phase::Stopping { kill_at: None };
                    }
                }
            }
        }
    }

    fn all_serving(&self) -> bool {
        self.slots.iter().all(|s| matches!(s.state, WorkerState::Serving { .. }))
    }

    /// The earliest replacement due, or the stop's kill deadline.
    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Stopping { kill_at } => kill_at,
            Phase::Starting | Phase::Serving => self
                .slots
                .iter()
                .filter_map(|s| match s.state {
                    WorkerState::Down { restart_at } => restart_at,
                    _ => None,
                })
                .min(),
        }
    }

    /// Replaces the workers whose restart time has come. `Some` in a new worker.
    fn restart_due(&mut self, now: Instant) -> Option<WorkerStart> {
        for index in 0..self.slots.len() {
            let WorkerState::Down { restart_at: Some(at) } = self.slots[index].state else {
                continue;
            };
            if at > now {
                continue;
            }
            match self.spawn(index, now) {
                Ok(Some(start)) => return Some(start),
                Ok(None) => {}
                Err(e) => {
                    error!(self.log, "cannot start a replacement worker, retrying"; "worker" => index,
                        "error" => %e);
                    self.slots[index].state =
                        WorkerState::Down { restart_at: Some(now + RESTART_SPACING) };
                }
            }
        }
        None
    }

    /// Forks worker `index` on its listener. `Ok(Some)` in the child, `Ok(None)` in the master.
    fn spawn(&mut self, index: usize, now: Instant) -> io::Result<Option<WorkerStart>> {
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mask = block(&WORKER_SIGNALS)?;
        // SAFETY: the master is single-threaded (no thread was started: logging is synchronous
        // and signal-hook-mio needs none), so the child may run any code after fork, not only
        // async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            drop(ours);
            return Ok(Some(self.become_worker(index, theirs, mask)));
        }
        let forked = if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        // Fails only for an invalid `how`, which SIG_SETMASK is not.
        let _ = restore(&mask);
        forked?;
        drop(theirs);
        let mut word = UnixStream::from_std(ours);
        let token = Token(FIRST_WORKER + index);
        if let Err(e) = self.poll.registry().register(&mut word, token, Interest::READABLE) {
            // A worker the master cannot hear from is not kept.
            send(pid, SIGKILL);
            // SAFETY: waitpid on our own child, its status not needed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            return Err(e);
        }
        let slot = &mut self.slots[index];
        slot.state = WorkerState::Starting { pid, word: Some(word), said: Vec::new() };
        slot.started = now;
        info!(self.log, "worker started"; "worker" => index, "pid" => pid);
        Ok(None)
    }

    /// In the child: ties its life to the master's, then keeps of the master only what worker
    /// `index` needs. The rest (poll, signal pipe, other listeners and readiness streams, the
    /// pid file's lock) is closed when the caller drops the master.
    fn become_worker(&mut self, index: usize, word: StdUnixStream, mask: SavedMask) -> WorkerStart {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; getppid cannot fail. Both
        // happen after the master's privilege drop, which would otherwise clear the setting.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, SIGTERM as libc::c_ulong);
            // The master may have died between fork and prctl: then no signal will come.
            if libc::getppid() != self.pid {
                libc::_exit(1);
            }
        }
        if let Some(p) = &self.config.pid_file {
            close_inherited(p);
        }
        let listener = std::mem::take(&mut self.listeners).swap_remove(index);
        WorkerStart {
            index: u8::try_from(index).unwrap_or(u8::MAX),
            listener,
            config: self.config.clone(),
            site: self.site.clone(),
            log_file: self.control.log_file.clone(),
            ready: Readiness::new(File::from(OwnedFd::from(word))),
            held: HeldSignals(mask),
            board: self.board.take(),
        }
    }

    /// Reads what worker `index` says on its readiness stream, to the end.
    fn read_word(&mut self, index: usize) -> Result<()> {
        let Some(slot) = self.slots.get_mut(index) else { return Ok(()) };
        let WorkerState::Starting { pid, word: Some(stream), said } = &mut slot.state else {
            return Ok(());
        };
        let pid = *pid;
        let mut buf = [0u8; 512];
        let eof = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    let room = MAX_WORD.saturating_sub(said.len());
                    said.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset stream says no more than EOF would.
                Err(_) => break true,
            }
        };
        if !eof {
            return Ok(());
        }
        let _ = self.poll.registry().deregister(stream);
        if said.trim_ascii() == b"ok" {
            slot.state = WorkerState::Serving { pid };
            info!(self.log, "worker serving"; "worker" => index, "pid" => pid);
            return Ok(());
        }
        // An error, or nothing: the worker is on its way out, and its exit is reaped on SIGCHLD.
        let message = String::from_utf8_lossy(said).trim().to_owned();
        if let WorkerState::Starting { word, .. } = &mut slot.state {
            *word = None;
        }
        if !message.is_empty() && self.phase == Phase::Starting {
            return Err(MasterError::WorkerFailed { index, message });
        }
        Ok(())
    }

    fn handle_signals(&mut self) -> Result<()> {
        let pending: Vec<libc::c_int> = self.signals.0.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap()?,
                SIGHUP => self.reload(),
                SIGUSR1 => {
                    self.reopen_log();
                    self.signal_workers(SIGUSR1);
                }
                SIGINT if matches!(self.phase, Phase::Stopping { .. }) => {
                    warn!(self.log, "second interrupt: killing the workers now");
                    self.signal_workers(SIGKILL);
                }
                // A terminal's Ctrl-C reaches every process of the group, workers included; what
                // the master passes on must not count as their second interrupt.
                SIGINT => self.stop(SIGINT, SIGTERM),
                SIGTERM | SIGQUIT => self.stop(sig, sig),
                _ => {}
            }
        }
        Ok(())
    }

    /// Begins the graceful stop: every worker gets `forward` and none is replaced.
    fn stop(&mut self, received: libc::c_int, forward: libc::c_int) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        info!(self.log, "stopping: telling every worker"; "signal" => signal_name(received),
            "workers" => self.slots.iter().filter(|s| s.pid().is_some()).count());
        self.control.notifier.stopping();
        let kill_at = Instant::now() + self.config.shutdown_timeout + STOP_GRACE;
        self.phase = Phase::Stopping { kill_at: Some(kill_at) };
        for slot in &mut self.slots {
            if let WorkerState::Down { restart_at } = &mut slot.state {
                *restart_at = None;
            }
        }
        self.signal_workers(forward);
    }

    /// Sends `sig` to every running worker; one still starting holds it until it can act on it.
    fn signal_workers(&self, sig: libc::c_int) {
        for pid in self.slots.iter().filter_map(Slot::pid) {
            send(pid, sig);
        }
    }

    /// SIGHUP: the file is checked here first, so that a bad one reaches no worker.
    fn reload(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        self.control.notifier.reloading();
        self.reopen_log();
        match self.config.path.clone() {
            None => info!(self.log, "reload: running on built-in defaults, nothing to re-read"),
            Some(path) => {
                let new = Config::load(&path).map_err(|e| e.to_string()).and_then(|c| {
                    let site = Site::for_root(c.web_root.as_deref())
                        .map_err(|e| format!("web_root: {e}"))?;
                    Ok((c, site))
                });
                match new {
                    Err(e) => {
                        error!(self.log, "reload failed, every worker keeps the previous configuration";
                            "error" => %e);
                    }
                    Ok((mut config, site)) => {
                        // The workers warn about these themselves; the master keeps the running
                        // values for the replacements it forks.
                        config.keep_restart_only(&self.config);
                        self.control.level.set(config.log_level.to_slog());
                        self.config = config;
                        self.site = site;
                        info!(self.log, "configuration valid, reloading every worker";
                            "file" => %path.display());
                        self.signal_workers(SIGHUP);
                    }
                }
            }
        }
        self.control.notifier.ready();
    }

    fn reopen_log(&self) {
        let Some(file) = &self.control.log_file else { return };
        match file.reopen() {
            Ok(()) => info!(self.log, "log file reopened"; "file" => %file.path().display()),
            Err(e) => error!(self.log, "cannot reopen the log file, still writing to the old one";
                "file" => %file.path().display(), "error" => %e),
        }
    }

    /// Collects every exited worker and decides its replacement. An error if the start fails.
    fn reap(&mut self) -> Result<()> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into `status`; WNOHANG makes it return 0 when
            // no child has exited.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                // 0: none (more) exited; -1: ECHILD, no children left, or EINTR, retried on the
                // next SIGCHLD.
                return Ok(());
            }
            let Some(index) = self.slots.iter().position(|s| s.pid() == Some(pid)) else {
                continue;
            };
            // Its last word may still be unread: a start-up error explains the exit.
            let _ = self.read_word(index);
            let now = Instant::now();
            let how = describe(status);
            let slot = &mut self.slots[index];
            let said =
                match std::mem::replace(&mut slot.state, WorkerState::Down { restart_at: None }) {
                    WorkerState::Starting { said, mut word, .. } => {
                        if let Some(w) = &mut word {
                            let _ = self.poll.registry().deregister(w);
                        }
                        Some(String::from_utf8_lossy(&said).trim().to_owned())
                            .filter(|s| !s.is_empty())
                    }
                    _ => None,
                };
            match self.phase {
                Phase::Starting => {
                    let message = said.unwrap_or_else(|| format!("exited before serving: {how}"));
                    return Err(MasterError::WorkerFailed { index, message });
                }
                Phase::Stopping { .. } => {
                    info!(self.log, "worker exited"; "worker" => index, "pid" => pid, "status" => &how);
                }
                Phase::Serving => {
                    let lived = now.saturating_duration_since(slot.started);
                    slot.crashes = if lived < STABLE_AFTER { slot.crashes + 1 } else { 0 };
                    let at = restart_at(slot.started, now, slot.crashes);
                    slot.state = WorkerState::Down { restart_at: Some(at) };
                    let restart_in = at.saturating_duration_since(now);
                    match said {
                        // It never served: its own words say why.
                        Some(error) => error!(self.log, "worker failed to start, replacing it";
                            "worker" => index, "pid" => pid, "status" => &how, "error" => error,
                            "restart_in" => ?restart_in),
                        None => error!(self.log, "worker died, replacing it"; "worker" => index,
                            "pid" => pid, "status" => &how, "restart_in" => ?restart_in),
                    }
                }
            }
        }
    }

    /// Start-up failed: kills every worker and waits for each, so that none outlives the master.
    fn abort(&mut self) {
        self.signal_workers(SIGKILL);
        for slot in &mut self.slots {
            if let Some(pid) = slot.pid() {
                let mut status = 0;
                // SAFETY: waitpid on our own child, writing its status into `status`.
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
                slot.state = WorkerState::Down { restart_at: None };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_spaced_and_back_off_while_crashing() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A worker killed long after its start is replaced at once.
        assert_eq!(restart_at(t0, t0 + s(60), 0), t0 + s(60));
        // Never two starts of one index within a second.
        assert_eq!(restart_at(t0, t0 + Duration::from_millis(10), 1), t0 + s(1));
        assert_eq!(restart_at(t0, t0 + Duration::from_millis(10), 0), t0 + s(1));
        // Quick deaths in a row: 1, 2, 4, 8, 16, then 30 s at most.
        let spacing: Vec<u64> =
            (1..=8).map(|n| restart_at(t0, t0, n).duration_since(t0).as_secs()).collect();
        assert_eq!(spacing, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(restart_at(t0, t0, u32::MAX), t0 + MAX_RESTART_SPACING);
    }

    #[test]
    fn exit_statuses_are_described() {
        // Encoded as the kernel does: exit code in bits 8-15, signal in 0-6, core flag 0x80.
        assert_eq!(describe(3 << 8), "exit status 3");
        assert_eq!(describe(0), "exit status 0");
        assert_eq!(describe(libc::SIGKILL), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe(libc::SIGSEGV | 0x80), "killed by signal 11 (SIGSEGV, core dumped)");
    }

    #[test]
    fn listeners_share_one_port_and_a_taken_port_is_refused() {
        let ls = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = ls[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap() == addr));
        // Each is a listener: a connection is queued on one of them.
        std::net::TcpStream::connect(addr).unwrap();
        // A second master on the same port would share it silently: refused instead.
        let e = bind_listeners(addr, 2).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        // So is a port held by an ordinary listener.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_listeners(plain.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
    }

    #[test]
    fn the_ipv6_wildcard_takes_ipv4_too() {
        let Ok(ls) = bind_listeners("[::]:0".parse().unwrap(), 2) else {
            eprintln!("skipped: no IPv6 here");
            return;
        };
        let port = ls[0].local_addr().unwrap().port();
        assert_eq!(ls[1].local_addr().unwrap().port(), port);
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 to [::]");
        std::net::TcpStream::connect(("::1", port)).expect("IPv6 to [::]");
    }

    #[test]
    fn a_blocked_signal_waits_for_the_restore() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // SIGUSR2 is not used by chatd or the test harness.
        let seen = std::sync::Arc::new(AtomicBool::new(false));
        let id = signal_hook::flag::register(libc::SIGUSR2, seen.clone()).unwrap();
        let mask = block(&[libc::SIGUSR2]).unwrap();
        // SAFETY: raise has no memory effects.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert!(!seen.load(Ordering::SeqCst), "delivered while blocked");
        restore(&mask).unwrap();
        assert!(seen.load(Ordering::SeqCst), "not delivered after the restore");
        signal_hook::low_level::unregister(id);
    }
}
