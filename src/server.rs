//! The event loop: one mio `Poll`, a slab of connections, one timer heap, and an application.
//!
//! The loop is thin. It turns readiness into calls of the sans-IO layers (`http`, `ws`) and of the
//! [`App`], applies the actions the application returns, and flushes output once per turn, so
//! that everything queued for a peer in one turn leaves in one `write`. Sockets are registered
//! once for reading and writing (edge-triggered) and readiness is kept in the connection.
use std::{
    collections::VecDeque,
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use mio::{net::TcpListener, Events, Interest, Poll, Token};
use slab::Slab;
use slog::{debug, error, info, warn, Logger};

use crate::{
    app::{Action, App, Event, Message, PeerId},
    config::Config,
    conn::{Conn, ConnState, ReadOutcome, WriteOutcome, WsConn},
    http::{self, Method, Request, Site, Status},
    log::{LevelSwitch, LogFile},
    notify::Notifier,
    signals::{Signal, SignalSource},
    timer::Timers,
    ws::{self, close_code, Incoming, OpCode, Session},
};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONN: usize = 2;

/// The accept queue asked of the kernel (capped there by `net.core.somaxconn`).
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Bytes read per `read` call. One buffer for the whole loop: connections own none while idle.
const READ_CHUNK: usize = 64 * 1024;
/// Reads given to one connection per readiness event before others get a turn.
const READS_PER_EVENT: usize = 8;
/// How long a closing connection may take to read our last bytes and close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long accepting pauses when the process has no file descriptor left.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections a broadcast is copied to per loop turn. Each copy costs a `write` at the end of
/// the turn (about 10 us on loopback), so a broadcast to 10,000 peers done at once stalled
/// every other connection for about 100 ms (issue 6, scenario 2); in slices of this size a
/// turn stays well under a millisecond and the broadcast still completes within a fraction of
/// a second.
const BROADCAST_SLICE: usize = 64;

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

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    accepted: u64,
    refused_full: u64,
    websockets_opened: u64,
    websockets_closed: u64,
    bytes_in: u64,
    bytes_out: u64,
    reloads_ok: u64,
    reloads_failed: u64,
}
/// The server: listener, connections, timers and the application, driven by one thread.
pub struct Server<A: App> {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<SignalSource>,
    control: Option<Control>,
    stats: Stats,
    conns: Slab<Conn>,
    app: A,
    config: Config,
    site: Site,
    timers: Timers,
    log: Logger,
    scratch: Vec<u8>,
    actions: Vec<Action>,
    dirty: Vec<usize>,
    backlog: VecDeque<(usize, u32)>,
    /// Broadcasts being copied out, in order: the encoded frame and the next slab slot.
    broadcasts: VecDeque<(Vec<u8>, usize)>,
    accept_paused_until: Option<Instant>,
    fd_warned_at: Option<Instant>,
    next_generation: u32,
    shutdown_deadline: Option<Instant>,
    /// Ready-made answer for connections over `max_connections`.
    full_response: Vec<u8>,
}

impl<A: App> std::fmt::Debug for Server<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("conns", &self.conns.len())
            .finish()
    }
}

/// Why a connection was dropped, for the log.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    PeerClosed,
    Error,
    Timeout,
    SlowReader,
    Closed,
}

/// How a WebSocket ends after the input just read. The close frame is written only after the
/// application's answers to the frames before it, so that they reach the peer first.
#[derive(Debug, Clone, Copy)]
enum End {
    /// A protocol error: close with this code and reason.
    Fail(u16, &'static str),
    /// The peer sent a close frame: answer it, echoing its code (none if it sent none).
    Answer(Option<u16>),
}

impl<A: App> Server<A> {
    /// Binds `config.listen` and sets up the loop. Nothing runs until [`Server::run`].
    pub fn bind(config: Config, site: Site, app: A, log: Logger) -> io::Result<Server<A>> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        Server::new(listener, config, site, app, log)
    }

    /// Sets up the loop on a listener bound earlier (before detaching and dropping privileges).
    pub fn new(
        listener: std::net::TcpListener,
        config: Config,
        site: Site,
        app: A,
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
        let mut full_response = Vec::new();
        http::write_error(
            &mut full_response,
            Status::ServiceUnavailable,
            "Retry-After: 5\r\n",
            false,
            false,
        );
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals: None,
            control: None,
            stats: Stats::default(),
            conns: Slab::new(),
            app,
            config,
            site,
            timers: Timers::default(),
            log,
            scratch: vec![0; READ_CHUNK],
            actions: Vec::new(),
            dirty: Vec::new(),
            backlog: VecDeque::new(),
            broadcasts: VecDeque::new(),
            accept_paused_until: None,
            fd_warned_at: None,
            next_generation: 0,
            shutdown_deadline: None,
            full_response,
        })
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
        &self.app
    }

    /// Runs until a graceful stop completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => {
                        if self.handle_pending_signals(now) {
                            return Ok(());
                        }
                    }
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        // A spurious or stale event (the connection is gone) is ignored.
                        let Some(conn) = self.conns.get_mut(idx) else { continue };
                        if event.is_writable() {
                            conn.writable = true;
                            if !conn.wbuf.is_empty() {
                                mark_dirty(&mut self.dirty, conn, idx);
                            }
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let generation = conn.generation;
                            // A FIN or an error must be read to the end; plain data need not.
                            let to_end = event.is_read_closed() || event.is_error();
                            self.read_conn(idx, generation, now, to_end);
                        }
                    }
                }
                self.apply_actions(now);
            }
            // Connections that still had input after their share of reads get another turn.
            for _ in 0..self.backlog.len() {
                let Some((idx, generation)) = self.backlog.pop_front() else { break };
                self.read_conn(idx, generation, now, true);
                self.apply_actions(now);
            }
            self.expire(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            if self.app.poll_timeout().is_some_and(|t| t <= now) {
                self.app.handle_timeout(now, &mut self.actions);
                self.apply_actions(now);
            }
            self.advance_broadcasts(now);
            self.flush_dirty(now);
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() || deadline <= now {
                    info!(self.log, "stopped"; "closed_websockets" => self.stats.websockets_closed,
                        "cut_off_connections" => self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.backlog.is_empty() || !self.broadcasts.is_empty() {
            return Some(Duration::ZERO);
        }
        [
            self.timers.next(),
            self.app.poll_timeout(),
            self.accept_paused_until,
            self.shutdown_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else { return };
            let (mut stream, peer) = match listener.accept() {
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
                        warn!(self.log, "cannot accept, pausing"; "error" => %e, "open" => self.conns.len());
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
            // A dual-stack socket ([::]) reports IPv4 peers as ::ffff:a.b.c.d: keep them IPv4.
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            if self.conns.len() >= self.config.max_connections || self.shutdown_deadline.is_some() {
                // Best effort: a fresh socket has room for this small answer.
                let _ = stream.write(&self.full_response);
                self.stats.refused_full += 1;
                debug!(self.log, "refused: server full"; "peer" => %peer);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let idx = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(idx + FIRST_CONN),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                error!(self.log, "cannot register connection"; "error" => %e);
                continue;
            }
            let generation = self.next_generation;
            self.next_generation = (self.next_generation + 1) & 0xff_ffff;
            entry.insert(Conn::new(stream, peer, generation, now + self.config.handshake_timeout));
            self.stats.accepted += 1;
            debug!(self.log, "accepted"; "conn" => idx, "peer" => %peer);
            self.arm(idx);
        }
    }

    /// Reads from one connection until `WouldBlock`, EOF, or its share of reads is used up.
    ///
    /// A read that returns less than the buffer's size has emptied the socket's receive queue:
    /// unless `to_end` asks for the end of the stream (the event reported a FIN or an error),
    /// the loop stops there instead of paying one more `read` to be told `WouldBlock`. Any
    /// byte or FIN that arrives later raises a new edge, so nothing is left behind.
    fn read_conn(&mut self, idx: usize, generation: u32, now: Instant, to_end: bool) {
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(idx).filter(|c| c.generation == generation) else {
                return;
            };
            match conn.fill(&mut self.scratch) {
                Ok(ReadOutcome::Data(n)) => {
                    self.stats.bytes_in += n as u64;
                    self.ingest(idx, n, now);
                    if n < self.scratch.len() && !to_end {
                        return;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    if conn.wbuf.is_empty() {
                        let reason = match conn.state {
                            ConnState::Closing { .. } => DropReason::Closed,
                            _ => DropReason::PeerClosed,
                        };
                        self.drop_conn(idx, reason, now);
                    } else {
                        // A half-close (`shutdown(SHUT_WR)`, `nc -N`): the peer still reads. Send
                        // what is queued for it, then close.
                        let was_ws = conn.is_websocket();
                        if let ConnState::Closing { peer_done, .. } = &mut conn.state {
                            *peer_done = true;
                        } else {
                            start_closing(conn, now);
                            conn.state = ConnState::Closing { shut: false, peer_done: true };
                        }
                        mark_dirty(&mut self.dirty, conn, idx);
                        if was_ws {
                            let id = PeerId::new(0, generation, idx as u32);
                            self.stats.websockets_closed += 1;
                            self.app.handle_event(now, id, Event::Closed, &mut self.actions);
                        }
                        self.arm(idx);
                    }
                    return;
                }
                Err(e) => {
                    debug!(self.log, "read failed"; "conn" => idx, "peer" => %conn.peer, "error" => %e);
                    self.drop_conn(idx, DropReason::Error, now);
                    return;
                }
            }
        }
        self.backlog.push_back((idx, generation));
    }

    /// Hands `n` freshly read bytes (in `scratch`) to the connection's protocol.
    fn ingest(&mut self, idx: usize, n: usize, now: Instant) {
        let Server {
            conns,
            scratch,
            app,
            actions,
            site,
            config,
            log,
            shutdown_deadline,
            stats,
            ..
        } = self;
        let open = conns.len();
        let conn = &mut conns[idx];
        let id = PeerId::new(0, conn.generation, idx as u32);
        if let ConnState::Closing { .. } = conn.state {
            return; // Input after we decided to close is read and dropped.
        }
        if let ConnState::WebSocket(ws) = &mut conn.state {
            ws.pinged = false;
            conn.deadline = now + config.idle_timeout;
        }
        let stopping = shutdown_deadline.is_some();
        let mut cx = Cx { app, actions, site, config, log, now, stopping, stats, open };
        let end = if conn.rbuf.is_empty() {
            // The common case: whole frames or requests arrived; parse them where they landed.
            let input = &mut scratch[..n];
            let (used, end) = drive(&mut cx, conn, id, idx, input);
            if used < n && end.is_none() && !matches!(conn.state, ConnState::Closing { .. }) {
                conn.rbuf.extend_from_slice(&input[used..]);
            }
            end
        } else {
            let mut rbuf = std::mem::take(&mut conn.rbuf);
            rbuf.extend_from_slice(&scratch[..n]);
            let (used, end) = drive(&mut cx, conn, id, idx, &mut rbuf);
            if used < rbuf.len()
                && end.is_none()
                && !matches!(conn.state, ConnState::Closing { .. })
            {
                rbuf.drain(..used);
                conn.rbuf = rbuf;
            }
            end
        };
        if let Some(end) = end {
            self.apply_actions(now);
            if self.conns.get(idx).is_none_or(|c| c.generation != id.generation()) {
                return;
            }
            match end {
                End::Fail(code, reason) => self.close_ws(idx, Some(code), reason, now),
                End::Answer(code) => self.close_ws(idx, code, "", now),
            }
        }
        let conn = &mut self.conns[idx];
        if !conn.wbuf.is_empty() {
            mark_dirty(&mut self.dirty, conn, idx);
        }
        if conn.wbuf.len() > self.config.max_outbound_bytes {
            self.drop_conn(idx, DropReason::SlowReader, now);
            return;
        }
        self.arm(idx);
    }

    /// Applies the application's actions, including those that result from applying them
    /// (closing a peer tells the application, which may answer).
    fn apply_actions(&mut self, now: Instant) {
        while !self.actions.is_empty() {
            let mut batch = std::mem::take(&mut self.actions);
            for action in batch.drain(..) {
                match action {
                    Action::Send { to, message } => {
                        let Some(idx) = self.lookup(to) else { continue };
                        let conn = &mut self.conns[idx];
                        match &message {
                            Message::Text(t) => {
                                ws::encode_frame(&mut conn.wbuf, OpCode::Text, t.as_bytes())
                            }
                            Message::Binary(b) => {
                                ws::encode_frame(&mut conn.wbuf, OpCode::Binary, b)
                            }
                        }
                        self.queued(idx, now);
                    }
                    Action::Broadcast { text } => {
                        // Copied out a slice per turn (`advance_broadcasts`).
                        let mut frame = Vec::new();
                        ws::encode_frame(&mut frame, OpCode::Text, text.as_bytes());
                        self.broadcasts.push_back((frame, 0));
                    }
                    Action::Close { peer, code, reason } => {
                        let Some(idx) = self.lookup(peer) else { continue };
                        self.close_ws(idx, Some(code), reason, now);
                    }
                }
            }
            if self.actions.is_empty() {
                self.actions = batch; // keep the allocation
            }
        }
    }

    /// Copies the oldest pending broadcast to the next [`BROADCAST_SLICE`] open WebSockets (in
    /// slot order), to be written at the end of this turn. A peer that connects during a
    /// broadcast gets it if its slot is still ahead.
    fn advance_broadcasts(&mut self, now: Instant) {
        let mut budget = BROADCAST_SLICE;
        let mut over = Vec::new();
        while budget > 0 {
            let Some((frame, next)) = self.broadcasts.front_mut() else { break };
            // Slab keys are below its capacity.
            let end = self.conns.capacity();
            while *next < end && budget > 0 {
                let idx = *next;
                *next += 1;
                let Some(conn) = self.conns.get_mut(idx).filter(|c| c.is_websocket()) else {
                    continue;
                };
                budget -= 1;
                conn.wbuf.extend_from_slice(frame);
                mark_dirty(&mut self.dirty, conn, idx);
                if conn.wbuf.len() > self.config.max_outbound_bytes {
                    over.push(idx);
                }
            }
            if *next >= end {
                self.broadcasts.pop_front();
            }
        }
        for idx in over {
            self.drop_conn(idx, DropReason::SlowReader, now);
        }
    }

    /// The slot of an open WebSocket peer, if it is still there.
    fn lookup(&self, peer: PeerId) -> Option<usize> {
        let idx = peer.slot() as usize;
        let conn = self.conns.get(idx)?;
        (conn.generation == peer.generation() && conn.is_websocket()).then_some(idx)
    }

    /// Output was queued for `idx`: flush it this turn, or drop a peer that stopped reading.
    fn queued(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        if conn.wbuf.len() > self.config.max_outbound_bytes {
            self.drop_conn(idx, DropReason::SlowReader, now);
        } else {
            mark_dirty(&mut self.dirty, conn, idx);
        }
    }

    /// Sends a close frame (with no payload if `code` is `None`) on an open WebSocket, starts
    /// closing it and tells the application.
    fn close_ws(&mut self, idx: usize, code: Option<u16>, reason: &str, now: Instant) {
        let conn = &mut self.conns[idx];
        if !conn.is_websocket() {
            return;
        }
        match code {
            Some(code) => ws::encode_close(&mut conn.wbuf, code, reason),
            None => ws::encode_frame(&mut conn.wbuf, OpCode::Close, &[]),
        }
        let id = PeerId::new(0, conn.generation, idx as u32);
        start_closing(conn, now);
        mark_dirty(&mut self.dirty, conn, idx);
        self.stats.websockets_closed += 1;
        self.app.handle_event(now, id, Event::Closed, &mut self.actions);
        self.arm(idx);
    }

    /// Removes a connection at once. An open WebSocket's application is told.
    fn drop_conn(&mut self, idx: usize, reason: DropReason, now: Instant) {
        let Some(mut conn) = self.conns.try_remove(idx) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        debug!(self.log, "closed"; "conn" => idx, "peer" => %conn.peer, "reason" => ?reason);
        if conn.is_websocket() {
            let id = PeerId::new(0, conn.generation, idx as u32);
            self.stats.websockets_closed += 1;
            self.app.handle_event(now, id, Event::Closed, &mut self.actions);
        }
    }

    /// Makes sure the connection's deadline has a timer entry.
    fn arm(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        if conn.armed.is_none_or(|at| conn.deadline < at) {
            self.timers.push(conn.deadline, idx, conn.generation);
            conn.armed = Some(conn.deadline);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, idx, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(idx).filter(|c| c.generation == generation) else {
                continue;
            };
            if conn.armed == Some(at) {
                conn.armed = None;
            }
            if conn.deadline <= now {
                self.on_timeout(idx, now);
                self.apply_actions(now);
            }
            self.arm(idx);
        }
    }

    fn on_timeout(&mut self, idx: usize, now: Instant) {
        let conn = &mut self.conns[idx];
        match &mut conn.state {
            ConnState::Http if conn.rbuf.is_empty() => {
                self.drop_conn(idx, DropReason::Timeout, now)
            }
            ConnState::Http => {
                debug!(self.log, "request timeout"; "conn" => idx, "peer" => %conn.peer);
                http::write_error(&mut conn.wbuf, Status::RequestTimeout, "", false, false);
                start_closing(conn, now);
                mark_dirty(&mut self.dirty, conn, idx);
            }
            ConnState::WebSocket(ws) if !ws.pinged => {
                ws.pinged = true;
                ws::encode_frame(&mut conn.wbuf, OpCode::Ping, b"chatd");
                conn.deadline = now + self.config.ping_timeout;
                mark_dirty(&mut self.dirty, conn, idx);
            }
            ConnState::WebSocket(_) => {
                debug!(self.log, "idle timeout"; "conn" => idx, "peer" => %conn.peer);
                self.close_ws(idx, Some(close_code::GOING_AWAY), "idle timeout", now);
            }
            ConnState::Closing { .. } => self.drop_conn(idx, DropReason::Timeout, now),
        }
    }

    /// Writes every connection that has output queued, once.
    fn flush_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for idx in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(idx) else { continue };
            conn.dirty = false;
            if !conn.writable {
                continue; // the writable event will bring it back
            }
            let queued = conn.wbuf.len();
            let result = conn.flush();
            self.stats.bytes_out += (queued - conn.wbuf.len()) as u64;
            match result {
                Ok(WriteOutcome::Drained) => {
                    if let ConnState::Closing { peer_done: true, .. } = conn.state {
                        self.drop_conn(idx, DropReason::Closed, now);
                    } else {
                        conn.shutdown_write();
                    }
                }
                Ok(WriteOutcome::WouldBlock) => {}
                Err(e) => {
                    debug!(self.log, "write failed"; "conn" => idx, "peer" => %conn.peer, "error" => %e);
                    self.drop_conn(idx, DropReason::Error, now);
                }
            }
        }
        self.dirty = dirty;
        // Dropping peers above may have produced actions (partner left); they go out next turn.
        if !self.actions.is_empty() {
            self.apply_actions(now);
            if !self.dirty.is_empty() {
                self.flush_dirty(now);
            }
        }
    }

    /// Handles the signals that arrived. Returns true when the loop must end at once.
    fn handle_pending_signals(&mut self, now: Instant) -> bool {
        let Some(signals) = &mut self.signals else { return false };
        let pending: Vec<Signal> = signals.pending().collect();
        for signal in pending {
            match signal {
                Signal::Terminate | Signal::Interrupt if self.shutdown_deadline.is_none() => {
                    info!(self.log, "stopping"; "signal" => ?signal, "connections" => self.conns.len());
                    self.begin_shutdown(now);
                }
                Signal::Interrupt => {
                    warn!(self.log, "second interrupt: stopping now"; "connections" => self.conns.len());
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

    fn begin_shutdown(&mut self, now: Instant) {
        if let Some(c) = &self.control {
            c.notifier.stopping();
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_paused_until = None;
        self.shutdown_deadline = Some(now + self.config.shutdown_timeout);
        self.app.handle_shutdown(now, &mut self.actions);
        self.apply_actions(now);
        let open: Vec<usize> = self.conns.iter().map(|(idx, _)| idx).collect();
        for idx in open {
            let conn = &mut self.conns[idx];
            match conn.state {
                ConnState::WebSocket(_) => {
                    self.close_ws(idx, Some(close_code::GOING_AWAY), "server shutting down", now)
                }
                ConnState::Http if conn.wbuf.is_empty() => {
                    self.drop_conn(idx, DropReason::Closed, now)
                }
                ConnState::Http => start_closing(conn, now),
                ConnState::Closing { .. } => {}
            }
        }
        self.apply_actions(now);
    }

    /// Re-reads the configuration file and applies it to new and open connections. An invalid
    /// file changes nothing; settings that need a restart keep their running value.
    fn reload(&mut self) {
        let Some(path) = self.config.path.clone() else {
            info!(self.log, "reload: running on built-in defaults, nothing to re-read");
            return;
        };
        let new = Config::load(&path).map_err(|e| e.to_string()).and_then(|c| {
            let site = match &c.web_root {
                Some(root) => Site::load(root).map_err(|e| format!("web_root: {e}"))?,
                None => Site::embedded(),
            };
            Ok((c, site))
        });
        let (mut new, site) = match new {
            Ok(pair) => pair,
            Err(e) => {
                self.stats.reloads_failed += 1;
                error!(self.log, "reload failed, still running on the previous configuration"; "error" => %e);
                return;
            }
        };
        let restart = new.keep_restart_only(&self.config);
        for key in &restart {
            warn!(self.log, "setting changed but needs a restart; keeping the running value"; "key" => *key);
        }
        let changed = self.config.changed_keys(&new);
        if let Some(c) = &self.control {
            c.level.set(new.log_level.to_slog());
        }
        for (_, conn) in self.conns.iter_mut() {
            if let ConnState::WebSocket(ws) = &mut conn.state {
                ws.session.set_max_message(new.max_message_bytes);
            }
        }
        self.app.reconfigure(&new);
        self.site = site;
        self.config = new;
        self.stats.reloads_ok += 1;
        info!(self.log, "reloaded"; "file" => %path.display(),
            "changed" => if changed.is_empty() { "nothing".to_owned() } else { changed.join(", ") },
            "files_served" => self.site.len());
    }
}

/// Renders `/metrics`: the server's own families, then the application's.
fn write_metrics<A: App>(cx: &Cx<'_, A>, out: &mut String) {
    use std::fmt::Write as _;
    let s = &cx.stats;
    let families: [(&str, &str, &str, u64); 8] = [
        (
            "chatd_connections_open",
            "gauge",
            "Open TCP connections (page requests and WebSockets).",
            cx.open as u64,
        ),
        ("chatd_connections_total", "counter", "TCP connections accepted.", s.accepted),
        (
            "chatd_connections_refused_total",
            "counter",
            "Connections refused with 503 because the server was full.",
            s.refused_full,
        ),
        (
            "chatd_websockets_open",
            "gauge",
            "Open WebSocket connections.",
            s.websockets_opened - s.websockets_closed,
        ),
        (
            "chatd_websockets_total",
            "counter",
            "WebSocket handshakes completed.",
            s.websockets_opened,
        ),
        ("chatd_received_bytes_total", "counter", "Bytes read from clients.", s.bytes_in),
        ("chatd_sent_bytes_total", "counter", "Bytes written to clients.", s.bytes_out),
        ("chatd_up", "gauge", "1 while serving, 0 while stopping.", u64::from(!cx.stopping)),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP chatd_reloads_total Configuration reloads (SIGHUP), by result.\n\
         # TYPE chatd_reloads_total counter\n\
         chatd_reloads_total{{result=\"ok\"}} {}\nchatd_reloads_total{{result=\"failed\"}} {}",
        s.reloads_ok, s.reloads_failed
    );
    cx.app.write_metrics(out);
}

/// What the protocol handlers need besides the connection.
struct Cx<'a, A> {
    app: &'a mut A,
    actions: &'a mut Vec<Action>,
    site: &'a Site,
    config: &'a Config,
    log: &'a Logger,
    now: Instant,
    stopping: bool,
    stats: &'a mut Stats,
    /// Open connections, for `/metrics`.
    open: usize,
}

fn mark_dirty(dirty: &mut Vec<usize>, conn: &mut Conn, idx: usize) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(idx);
    }
}

fn start_closing(conn: &mut Conn, now: Instant) {
    conn.state = ConnState::Closing { shut: false, peer_done: false };
    conn.rbuf = Vec::new();
    conn.deadline = now + CLOSE_LINGER;
}

/// Runs the connection's protocol over `input`. Returns how many bytes were consumed (leftover
/// bytes are an incomplete request head or frame) and whether the WebSocket must now end.
fn drive<A: App>(
    cx: &mut Cx<'_, A>,
    conn: &mut Conn,
    id: PeerId,
    idx: usize,
    input: &mut [u8],
) -> (usize, Option<End>) {
    let mut pos = 0;
    loop {
        match &mut conn.state {
            ConnState::Closing { .. } => return (input.len(), None),
            ConnState::Http => match http::parse(&input[pos..]) {
                Ok(None) => return (pos, None),
                Ok(Some((n, req))) => {
                    pos += n;
                    respond(cx, conn, id, idx, &req);
                }
                Err(e) => {
                    debug!(cx.log, "bad request"; "conn" => idx, "peer" => %conn.peer, "error" => %e);
                    http::write_error(&mut conn.wbuf, e.status(), "", false, false);
                    start_closing(conn, cx.now);
                    return (input.len(), None);
                }
            },
            ConnState::WebSocket(ws) => match ws.session.decode(&mut input[pos..]) {
                Ok(None) => return (pos, None),
                Ok(Some((n, event))) => {
                    pos += n;
                    match event {
                        None | Some(Incoming::Pong) => {}
                        Some(Incoming::Text(text)) => {
                            cx.app.handle_event(cx.now, id, Event::Text(text), cx.actions)
                        }
                        Some(Incoming::Binary(data)) => {
                            cx.app.handle_event(cx.now, id, Event::Binary(data), cx.actions)
                        }
                        Some(Incoming::Ping(payload)) => {
                            ws::encode_frame(&mut conn.wbuf, OpCode::Pong, payload)
                        }
                        Some(Incoming::Close(code, _)) => {
                            return (input.len(), Some(End::Answer(code)))
                        }
                    }
                }
                Err(e) => {
                    debug!(cx.log, "websocket protocol error"; "conn" => idx, "peer" => %conn.peer, "error" => %e);
                    return (input.len(), Some(End::Fail(e.close_code(), protocol_reason(e))));
                }
            },
        }
    }
}

fn protocol_reason(e: ws::ProtocolError) -> &'static str {
    use ws::ProtocolError as P;
    match e {
        P::UnmaskedFrame => "client frames must be masked",
        P::ReservedBits => "reserved bits set",
        P::ReservedOpcode(_) => "reserved opcode",
        P::ControlFrameTooBig => "control frame too long",
        P::FragmentedControl => "fragmented control frame",
        P::UnexpectedContinuation => "unexpected continuation frame",
        P::ExpectedContinuation => "expected a continuation frame",
        P::BadLength => "bad payload length",
        P::CloseTooShort => "bad close payload",
        P::BadCloseCode(_) => "invalid close code",
        P::BadUtf8 => "invalid UTF-8",
        P::MessageTooBig => "message too big",
    }
}

/// Answers one complete request: a file, a health check, or the WebSocket upgrade.
fn respond<A: App>(cx: &mut Cx<'_, A>, conn: &mut Conn, id: PeerId, idx: usize, req: &Request) {
    let head_only = req.method == Method::Head;
    let keep_alive = req.keep_alive();
    let log = cx.log;
    // The client: behind a trusted proxy, the one its X-Forwarded-For names (issue 11).
    let peer = http::client_ip(
        conn.peer.ip(),
        req.header_all("x-forwarded-for").map(str::as_bytes),
        &cx.config.trusted_proxies,
    );
    if req.method == Method::Other {
        debug!(log, "method not allowed"; "conn" => idx, "peer" => %peer);
        http::write_error(
            &mut conn.wbuf,
            Status::MethodNotAllowed,
            "Allow: GET, HEAD\r\n",
            false,
            false,
        );
        start_closing(conn, cx.now);
        return;
    }
    match req.path() {
        "/ws" => match ws::validate_upgrade(req, &cx.config.allowed_origins) {
            Ok(accept) => {
                use std::io::Write;
                let _ = write!(
                    conn.wbuf,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                conn.state = ConnState::WebSocket(WsConn {
                    session: Session::new(cx.config.max_message_bytes),
                    pinged: false,
                });
                conn.deadline = cx.now + cx.config.idle_timeout;
                cx.stats.websockets_opened += 1;
                debug!(log, "websocket open"; "conn" => idx, "peer" => %peer, "peer_id" => %id);
                cx.app.handle_event(cx.now, id, Event::Open, cx.actions);
            }
            Err(e) => {
                debug!(log, "upgrade refused"; "conn" => idx, "peer" => %peer, "error" => %e);
                let (status, extra) = e.response();
                http::write_error(&mut conn.wbuf, status, extra, head_only, false);
                start_closing(conn, cx.now);
            }
        },
        "/metrics" => {
            if cx.config.metrics_allow.contains(&peer) {
                let mut body = String::with_capacity(4096);
                write_metrics(cx, &mut body);
                let extra = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nCache-Control: no-store\r\n";
                http::write_response(
                    &mut conn.wbuf,
                    Status::Ok,
                    extra,
                    body.as_bytes(),
                    head_only,
                    keep_alive,
                );
            } else {
                debug!(log, "metrics refused"; "conn" => idx, "peer" => %peer);
                http::write_error(&mut conn.wbuf, Status::Forbidden, "", head_only, keep_alive);
            }
            after_response(conn, cx, keep_alive);
        }
        "/healthz" => {
            let (status, body) = if cx.stopping {
                (Status::ServiceUnavailable, "stopping\n")
            } else {
                (Status::Ok, "ok\n")
            };
            let extra = "Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n";
            http::write_response(
                &mut conn.wbuf,
                status,
                extra,
                body.as_bytes(),
                head_only,
                keep_alive,
            );
            after_response(conn, cx, keep_alive);
        }
        path => match http::resolve_path(path) {
            Err(e) => {
                debug!(log, "bad path"; "conn" => idx, "peer" => %peer, "error" => %e);
                http::write_error(&mut conn.wbuf, e.status(), "", head_only, false);
                start_closing(conn, cx.now);
            }
            Ok(key) => match cx.site.get(&key) {
                Some(asset) => {
                    let fresh = req.header("if-none-match").is_some_and(|v| {
                        v.split(',').any(|t| {
                            t.trim().trim_start_matches("W/") == asset.etag || t.trim() == "*"
                        })
                    });
                    if fresh {
                        http::write_response(
                            &mut conn.wbuf,
                            Status::NotModified,
                            &asset.headers,
                            &asset.body,
                            true,
                            keep_alive,
                        );
                    } else {
                        http::write_response(
                            &mut conn.wbuf,
                            Status::Ok,
                            &asset.headers,
                            &asset.body,
                            head_only,
                            keep_alive,
                        );
                    }
                    after_response(conn, cx, keep_alive);
                }
                None => {
                    http::write_error(&mut conn.wbuf, Status::NotFound, "", head_only, keep_alive);
                    after_response(conn, cx, keep_alive);
                }
            },
        },
    }
}

fn after_response<A>(conn: &mut Conn, cx: &Cx<'_, A>, keep_alive: bool) {
    if keep_alive {
        conn.deadline = cx.now + cx.config.handshake_timeout;
    } else {
        start_closing(conn, cx.now);
    }
}
