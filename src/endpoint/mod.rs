//! The connection layer, sans-IO, after quinn-proto's `Endpoint`: every connection's protocol
//! (HTTP request heads, the upgrade, WebSocket sessions, closing), their buffers and deadlines,
//! broadcasts, and the counters behind `/metrics`. It touches no socket and reads no clock: the
//! loop (`server.rs`) hands it bytes, readiness and `now`, and it asks the loop for nothing but
//! what a [`Transport`] does with bytes it is given.
//!
//! # A loop turn
//! The loop calls, in this order:
//! 1. `handle_accept`, `handle_input`, `handle_eof`, `handle_failure`, `handle_writable` for
//!    what the poll reported, and `handle_signal`-like calls (`begin_shutdown`, `reconfigure`);
//! 2. [`Endpoint::handle_timeout`] for every deadline that passed;
//! 3. [`Endpoint::apply`], the one place where effects happen: see there for their order;
//! 4. [`Endpoint::transmit`]: one write per connection with output.
//!
//! Inputs in step 1 and 2 write protocol answers (HTTP responses, pongs) straight into the
//! connection's output, hand events to the application at once, and queue everything else as
//! effects: the application's actions and the closes the endpoint decides itself. Nothing in
//! steps 1-2 applies an effect, so no call re-enters another.
//!
//! Owns: connections (a slab; a slot and a generation make a `PeerId`), output buffers and
//! `max_outbound_bytes`, every deadline (request head, idle ping, ping timeout, close linger,
//! shutdown) behind one [`Endpoint::poll_timeout`], routing (`routes.rs`), stats.
//! May not touch: sockets, `mio`, the clock, the configuration file.
mod connection;
mod routes;
mod timers;

#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use slab::Slab;
use slog::{debug, Logger};

use self::{
    connection::{output, ConnState, Connection, Spares, NEVER},
    routes::{Next, Refusal, RouteCx},
    timers::Timers,
};
use crate::{
    app::{Action, App, Event, Message, PeerId},
    config::Config,
    http::{self, HttpDate, Site, Status},
    metrics,
    safety::{AddrHash, AddressKey, BanList},
    ws::{self, close_code, close_reason, Close, IdleOutcome, Incoming, OpCode, Session},
};

/// How long a closing connection may take to read our last bytes and close its side.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Addresses remembered as at their cap across a cluster, at most.
pub const MAX_CROWDED: usize = 100_000;

/// Connections a broadcast is copied to per loop turn. Each copy costs a `write` at the end of
/// the turn (about 10 us on loopback), so a broadcast to 10,000 peers done at once stalled
/// every other connection for about 100 ms (issue 6, scenario 2); in slices of this size a
/// turn stays well under a millisecond and the broadcast still completes within a fraction of
/// a second.
pub const BROADCAST_SLICE: usize = 64;

/// The endpoint's own settings: the connection limits and HTTP rules of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Most open connections; one more is answered 503.
    pub max_connections: usize,
    /// Largest WebSocket message (and frame) accepted.
    pub max_message_bytes: usize,
    /// Most output queued for one connection before it is dropped as a slow reader.
    pub max_outbound_bytes: usize,
    /// Time to send a complete request head (and between keep-alive requests).
    pub handshake_timeout: Duration,
    /// Silence after which a WebSocket is pinged.
    pub idle_timeout: Duration,
    /// Time to answer that ping.
    pub ping_timeout: Duration,
    /// Longest graceful stop.
    pub shutdown_timeout: Duration,
    /// Origins allowed to open a WebSocket (empty: any).
    pub allowed_origins: Vec<String>,
    /// Addresses that may read `/metrics`.
    pub metrics_allow: Vec<IpAddr>,
    /// Proxies whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<http::Cidr>,
    /// WebSockets one client address may hold at once (0: any number).
    pub max_connections_per_address: usize,
    /// Clients refused at the upgrade.
    pub bans: BanList,
    /// What client addresses are hashed with.
    pub address_key: AddressKey,
}

impl Settings {
    /// The endpoint's part of a configuration.
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            max_connections: c.max_connections,
            max_message_bytes: c.max_message_bytes,
            max_outbound_bytes: c.max_outbound_bytes,
            handshake_timeout: c.handshake_timeout,
            idle_timeout: c.idle_timeout,
            ping_timeout: c.ping_timeout,
            shutdown_timeout: c.shutdown_timeout,
            allowed_origins: c.allowed_origins.clone(),
            metrics_allow: c.metrics_allow.clone(),
            trusted_proxies: c.trusted_proxies.clone(),
            max_connections_per_address: c.safety.max_connections_per_address,
            bans: c.safety.bans.clone(),
            address_key: c.safety.address_key.clone().unwrap_or_else(process_key),
        }
    }
}

/// This process's random address key, made once (before the workers fork, which share it):
/// used when no `address_key_file` is configured.
pub fn process_key() -> AddressKey {
    static KEY: std::sync::OnceLock<AddressKey> = std::sync::OnceLock::new();
    KEY.get_or_init(AddressKey::random).clone()
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::from_config(&Config::default())
    }
}

/// What a transport did with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// This many bytes went out (all, or the rest waits for a writable event).
    Bytes(usize),
    /// The connection failed; drop it.
    Failed,
}

/// What the loop does with a connection's bytes: a socket there, a buffer in tests.
pub trait Transport {
    /// Writes as much of `buf` as it can now, turning "would block" into a short count.
    fn send(&mut self, buf: &[u8]) -> Sent;
    /// Whether the last `send` was not cut short (readiness kept in user space).
    fn is_writable(&self) -> bool;
    /// Shuts the write side, so the peer sees our FIN (the server closes the TCP connection
    /// first, RFC 6455 §7.1.1).
    fn shutdown_write(&mut self);
}

/// Counters for `/metrics`, since the endpoint started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections refused with 503 (full or stopping).
    pub refused_full: u64,
    /// WebSocket handshakes completed.
    pub websockets_opened: u64,
    /// WebSockets ended (each opened one ends exactly once).
    pub websockets_closed: u64,
    /// Bytes handed in by the loop.
    pub bytes_in: u64,
    /// Bytes the transports took.
    pub bytes_out: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused (the file was invalid).
    pub reloads_failed: u64,
    /// WebSockets refused with 403: the client is on the ban list.
    pub refused_banned: u64,
    /// WebSockets refused with 429: the client holds `max_connections_per_address` already.
    pub refused_per_address: u64,
}

/// Why a connection was removed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    PeerClosed,
    Failed,
    Timeout,
    SlowReader,
    Closed,
}

/// Something to do at the apply point, in the order it was decided.
#[derive(Debug)]
enum Effect {
    Send(PeerId, Message),
    Broadcast(String),
    Close(PeerId, Close),
    /// The peer's FIN, for the connection in (slot, generation).
    Eof(usize, u32),
    /// A shadow ban to log: who (its hash), how many reports, for how long.
    Banned(crate::safety::AddrHash, usize, Duration),
    /// An address at its cap across the cluster: 429 until then.
    Crowded(AddrHash, Instant),
}

impl From<Action> for Effect {
    fn from(action: Action) -> Effect {
        match action {
            Action::Send { to, message } => Effect::Send(to, message),
            Action::Broadcast { text } => Effect::Broadcast(text),
            Action::Close { peer, code, reason } => Effect::Close(peer, Close::Code(code, reason)),
            Action::Banned { client, reports, duration } => {
                Effect::Banned(client, reports, duration)
            }
            Action::Crowded { client, until } => Effect::Crowded(client, until),
        }
    }
}

/// The endpoint. `S` is the loop's transport (a socket and its readiness); the endpoint holds
/// it for the connection's lifetime and drops it when the connection ends.
pub struct Endpoint<A: App, S> {
    conns: Slab<Connection<S>>,
    app: A,
    settings: Settings,
    site: Site,
    log: Logger,
    stats: Stats,
    timers: Timers,
    /// Deadlines are kept as milliseconds since this instant.
    epoch: Instant,
    date: HttpDate,
    /// Effects to apply, in order.
    effects: VecDeque<Effect>,
    /// The application's output, moved to `effects` after each call.
    actions: Vec<Action>,
    /// Slots with output to transmit this turn.
    dirty: Vec<usize>,
    /// Broadcasts being copied out, in order: the encoded frame and the next slot.
    broadcasts: VecDeque<(Vec<u8>, usize)>,
    spares: Spares,
    next_generation: u32,
    worker: u8,
    /// When a graceful stop must end, once one began.
    shutdown: Option<Instant>,
    /// Why this node should not get new people now (`/healthz` says 503), if it should not.
    unavailable: Option<&'static str>,
    /// Families the loop adds to `/metrics` (the cluster link's).
    extra_metrics: String,
    /// What `/metrics` serves instead of the endpoint's own families, if set.
    metrics_override: Option<String>,
    /// Open WebSockets per client address (entries at zero are removed).
    per_address: HashMap<AddrHash, u32>,
    /// Addresses at their cap across a cluster (the application learnt it from Redis), until
    /// when; at most [`MAX_CROWDED`].
    crowded: HashMap<AddrHash, Instant>,
}

impl<A: App, S> std::fmt::Debug for Endpoint<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("conns", &self.conns.len())
            .field("effects", &self.effects.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<A: App, S: Transport> Endpoint<A, S> {
    /// An endpoint with no connection. `now` is its epoch; `worker` goes into every `PeerId`.
    pub fn new(
        settings: Settings,
        site: Site,
        app: A,
        worker: u8,
        log: Logger,
        now: Instant,
    ) -> Endpoint<A, S> {
        Endpoint {
            conns: Slab::new(),
            app,
            settings,
            site,
            log,
            stats: Stats::default(),
            timers: Timers::default(),
            epoch: now,
            date: HttpDate::default(),
            effects: VecDeque::new(),
            actions: Vec::new(),
            dirty: Vec::new(),
            broadcasts: VecDeque::new(),
            spares: Spares::default(),
            next_generation: 0,
            worker,
            shutdown: None,
            unavailable: None,
            extra_metrics: String::new(),
            metrics_override: None,
            per_address: HashMap::new(),
            crowded: HashMap::new(),
        }
    }

    /// The application, for calls that produce no actions.
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// Calls the application from outside the connections (the cluster's events); its actions
    /// join the effects.
    pub fn with_app(&mut self, f: impl FnOnce(&mut A, &mut Vec<Action>)) {
        f(&mut self.app, &mut self.actions);
        self.effects.extend(self.actions.drain(..).map(Effect::from));
    }

    /// Marks this node unavailable (`/healthz` answers 503 with `why`) or available again.
    pub fn set_unavailable(&mut self, why: Option<&'static str>) {
        self.unavailable = why;
    }

    /// Families the loop adds to `/metrics`, already in the text format.
    pub fn set_extra_metrics(&mut self, text: String) {
        self.extra_metrics = text;
    }

    /// This endpoint's `/metrics` body, as it would serve it now.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        let stopping = self.shutdown.is_some();
        write_metrics(
            &self.stats,
            self.conns.len(),
            stopping,
            &self.app,
            &self.extra_metrics,
            &mut out,
        );
        out
    }

    /// Serves `text` as `/metrics` instead of this endpoint's own families (with workers: every
    /// worker's, merged), or its own again with `None`.
    pub fn set_metrics_override(&mut self, text: Option<String>) {
        self.metrics_override = text;
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Open connections (of every state).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The transport of the connection in `slot`, for the loop's reads.
    pub fn transport_mut(&mut self, slot: usize) -> Option<&mut S> {
        self.conns.get_mut(slot).map(|c| &mut c.transport)
    }

    /// The transport of the connection in `slot`.
    pub fn transport(&self, slot: usize) -> Option<&S> {
        self.conns.get(slot).map(|c| &c.transport)
    }

    /// The generation of the connection in `slot`, to tell it from a later occupant.
    pub fn generation(&self, slot: usize) -> Option<u32> {
        self.conns.get(slot).map(|c| c.generation)
    }

    /// The wall clock moved to `unix_secs`: the `Date` header is formatted again once a second.
    pub fn handle_time(&mut self, unix_secs: u64) {
        self.date.update(unix_secs);
    }

    /// A new connection from `addr`. Returns its slot, or `None` if it was refused (the
    /// endpoint is full or stopping): then `transport` was given a 503 and is dropped.
    pub fn handle_accept(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        mut transport: S,
    ) -> Option<usize> {
        if self.conns.len() >= self.settings.max_connections || self.shutdown.is_some() {
            let mut out = Vec::new();
            http::write_error(
                &mut out,
                &self.date,
                Status::ServiceUnavailable,
                "Retry-After: 5\r\n",
                false,
                false,
            );
            // Best effort: a fresh socket has room for this small answer.
            let _ = transport.send(&out);
            self.stats.refused_full += 1;
            let client = self.settings.address_key.hash(addr.ip());
            debug!(self.log, "refused: server full"; "client" => client.short());
            return None;
        }
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & 0xff_ffff;
        let deadline = self.deadline(now, self.settings.handshake_timeout);
        // Hashed once: the log names the connection by it until the upgrade names the client
        // (a proxy's, if the peer is one), and the raw address goes with the HTTP state.
        let client = self.settings.address_key.hash(addr.ip());
        let conn = Connection::new(transport, addr.ip(), client, generation, deadline);
        let slot = self.conns.insert(conn);
        self.stats.accepted += 1;
        debug!(self.log, "accepted"; "conn" => slot, "client" => client.short());
        self.arm(slot);
        Some(slot)
    }

    /// Bytes read from the connection in `slot`. The endpoint parses them where they lie
    /// (and may unmask them in place); what an incomplete head or frame leaves is kept.
    pub fn handle_input(&mut self, now: Instant, slot: usize, data: &mut [u8]) {
        self.stats.bytes_in += data.len() as u64;
        let idle = self.deadline(now, self.settings.idle_timeout);
        let Some(conn) = self.conns.get_mut(slot) else { return };
        match &mut conn.state {
            // Input after we decided to close is read and dropped.
            ConnState::Closing { .. } => return,
            ConnState::WebSocket(session) => {
                if session.state() == ws::WsState::Closing {
                    return;
                }
                session.handle_activity();
                conn.deadline = idle;
            }
            ConnState::Http { .. } => {}
        }
        let id = PeerId::new(self.worker, conn.generation, slot as u32);
        let mut cx = Cx {
            app: &mut self.app,
            actions: &mut self.actions,
            effects: &mut self.effects,
            settings: &self.settings,
            site: &self.site,
            date: &self.date,
            stats: &mut self.stats,
            spares: &mut self.spares,
            log: &self.log,
            epoch: self.epoch,
            now,
            open: self.conns.len(),
            stopping: self.shutdown.is_some(),
            unavailable: self.unavailable,
            extra_metrics: &self.extra_metrics,
            metrics_override: self.metrics_override.as_deref(),
            per_address: &mut self.per_address,
            crowded: &self.crowded,
        };
        let conn = &mut self.conns[slot];
        if conn.has_partial_input() {
            let mut input = conn.take_input();
            input.extend_from_slice(data);
            let used = drive(&mut cx, conn, id, slot, &mut input);
            input.drain(..used);
            conn.put_input(input, cx.spares);
        } else {
            // The common case: whole frames or requests arrived; parse them where they landed.
            let used = drive(&mut cx, conn, id, slot, data);
            conn.put_input(data[used..].to_vec(), cx.spares);
        }
        self.after_output(now, slot);
    }

    /// The peer closed its side (a read returned 0). Handled at the apply point, after what
    /// its last bytes asked for: a peer that sent a close frame or a message and then shut its
    /// write side (`shutdown(SHUT_WR)`) still reads, and gets the answers.
    pub fn handle_eof(&mut self, _now: Instant, slot: usize) {
        let Some(conn) = self.conns.get(slot) else { return };
        self.effects.push_back(Effect::Eof(slot, conn.generation));
    }

    /// The end of the peer's stream, in its turn among the effects.
    /// Remembers that `client` is at its cap across the cluster until `until` (forgets it for
    /// an `until` already past); what has expired is forgotten when the map fills.
    fn crowd(&mut self, now: Instant, client: AddrHash, until: Instant) {
        if until <= now {
            self.crowded.remove(&client);
            return;
        }
        if self.crowded.len() >= MAX_CROWDED {
            self.crowded.retain(|_, &mut t| now < t);
        }
        if self.crowded.len() < MAX_CROWDED || self.crowded.contains_key(&client) {
            self.crowded.insert(client, until);
        }
    }

    fn on_eof(&mut self, now: Instant, slot: usize, generation: u32) {
        let linger = self.deadline(now, CLOSE_LINGER);
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.generation == generation) else {
            return;
        };
        if conn.pending_output() == 0 {
            let reason = match conn.state {
                ConnState::Closing { .. } => DropReason::Closed,
                _ => DropReason::PeerClosed,
            };
            self.remove(now, slot, reason);
            return;
        }
        // A half-close (`shutdown(SHUT_WR)`, `nc -N`): the peer still reads. Send what is
        // queued for it, then close.
        let id = PeerId::new(self.worker, conn.generation, slot as u32);
        let was_ws = conn.start_closing(linger, true).is_some();
        mark_dirty(&mut self.dirty, conn, slot);
        let client = conn.client;
        if was_ws {
            // The stream ended without a close frame.
            self.websocket_ended(now, id, true, client);
        }
        self.arm(slot);
    }

    /// Reading or writing the connection failed: it is gone.
    pub fn handle_failure(&mut self, now: Instant, slot: usize) {
        self.remove(now, slot, DropReason::Failed);
    }

    /// The transport can take bytes again.
    pub fn handle_writable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.pending_output() > 0 {
            mark_dirty(&mut self.dirty, conn, slot);
        }
    }

    /// The earliest instant at which `handle_timeout` has work, or now if effects or broadcast
    /// slices wait for the next turn.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.effects.is_empty() || !self.broadcasts.is_empty() {
            return Some(self.epoch);
        }
        let conn = self.timers.next().map(|ms| self.epoch + Duration::from_millis(ms));
        [conn, self.app.poll_timeout(), self.shutdown].into_iter().flatten().min()
    }

    /// Handles every deadline that passed by `now`: connections' and the application's.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = self.millis(now);
        while let Some((at, slot, generation)) = self.timers.pop_due(now_ms) {
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.generation == generation) else {
                continue;
            };
            if conn.armed == at {
                conn.armed = NEVER;
            } else if conn.superseded == at {
                conn.superseded = NEVER;
            }
            if conn.deadline <= now_ms {
                self.on_deadline(now, slot);
            }
            self.arm(slot);
        }
        if self.app.poll_timeout().is_some_and(|t| t <= now) {
            self.app.handle_timeout(now, &mut self.actions);
            self.effects.extend(self.actions.drain(..).map(Effect::from));
        }
    }

    /// The one apply point of a turn. Effects happen in the order they were decided: an
    /// application's answers to a peer's messages before the close frame that followed them
    /// in the same read, `partner_left` before the shutdown's close frames. Applying an effect
    /// may decide more (a slow reader dropped, a close told to the application): they join
    /// the end of the queue and are applied in this same call. Then the next broadcast slice
    /// is copied out.
    pub fn apply(&mut self, now: Instant) {
        self.apply_effects(now);
        // One broadcast slice per turn; what it decides (slow readers dropped) is applied now,
        // and a broadcast that this decides waits for the next turn's slice.
        if self.advance_broadcasts(now) {
            self.apply_effects(now);
        }
    }

    /// Applies the queued effects, and those they decide, in order.
    fn apply_effects(&mut self, now: Instant) {
        {
            while let Some(effect) = self.effects.pop_front() {
                match effect {
                    Effect::Send(to, message) => {
                        let Some(slot) = self.lookup(to) else { continue };
                        let conn = &mut self.conns[slot];
                        let out = conn.output(&mut self.spares);
                        match &message {
                            Message::Text(t) => ws::encode_frame(out, OpCode::Text, t.as_bytes()),
                            Message::Binary(b) => ws::encode_frame(out, OpCode::Binary, b),
                        }
                        self.after_output(now, slot);
                    }
                    Effect::Broadcast(text) => {
                        let mut frame = Vec::new();
                        ws::encode_frame(&mut frame, OpCode::Text, text.as_bytes());
                        self.broadcasts.push_back((frame, 0));
                    }
                    Effect::Close(peer, close) => self.close_websocket(now, peer, close),
                    Effect::Eof(slot, generation) => self.on_eof(now, slot, generation),
                    Effect::Crowded(client, until) => self.crowd(now, client, until),
                    Effect::Banned(client, reports, duration) => {
                        slog::info!(self.log, "shadow ban";
                            "client" => client.short(), "reports" => reports,
                            "for_secs" => duration.as_secs());
                    }
                }
            }
        }
    }

    /// Gives every connection with output one `send`. A connection that ends here (its output
    /// out after the peer closed, or a failed send) is removed; what its application answers
    /// waits for the next turn's apply point.
    pub fn transmit(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            conn.dirty = false;
            if !conn.transport.is_writable() {
                continue; // the writable event brings it back
            }
            let queued = conn.pending_output();
            let sent = match &conn.bufs {
                Some(bufs) if queued > 0 => conn.transport.send(&bufs.wbuf),
                _ => Sent::Bytes(0),
            };
            match sent {
                Sent::Bytes(n) => {
                    self.stats.bytes_out += n as u64;
                    conn.consume_output(n, &mut self.spares);
                    if n < queued {
                        continue;
                    }
                    match &mut conn.state {
                        ConnState::Closing { peer_done: true, .. } => {
                            self.remove(now, slot, DropReason::Closed)
                        }
                        ConnState::Closing { shut, .. } if !*shut => {
                            *shut = true;
                            conn.transport.shutdown_write();
                        }
                        _ => {}
                    }
                }
                Sent::Failed => self.remove(now, slot, DropReason::Failed),
            }
        }
        self.dirty = dirty;
    }

    /// Starts a graceful stop: the application says goodbye, every WebSocket gets close 1001,
    /// idle HTTP connections go at once and busy ones after their response; new connections
    /// are refused. The stop ends when no connection is left or `shutdown_timeout` passed.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(now + self.settings.shutdown_timeout);
        self.app.handle_shutdown(now, &mut self.actions);
        self.effects.extend(self.actions.drain(..).map(Effect::from));
        let linger = self.deadline(now, CLOSE_LINGER);
        let slots: Vec<usize> = self.conns.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            let conn = &mut self.conns[slot];
            let id = PeerId::new(self.worker, conn.generation, slot as u32);
            let idle = conn.pending_output() == 0;
            match &mut conn.state {
                ConnState::WebSocket(session) => {
                    if session.start_closing() {
                        let close = Close::Code(close_code::GOING_AWAY, close_reason::SHUTDOWN);
                        self.effects.push_back(Effect::Close(id, close));
                    }
                }
                ConnState::Http { .. } if idle => self.remove(now, slot, DropReason::Closed),
                ConnState::Http { .. } => {
                    conn.start_closing(linger, false);
                    self.arm(slot);
                }
                ConnState::Closing { .. } => {}
            }
        }
    }

    /// Whether a graceful stop began and is over: nobody left, or its time is up.
    pub fn is_stopped(&self, now: Instant) -> bool {
        self.shutdown.is_some_and(|deadline| self.conns.is_empty() || deadline <= now)
    }

    /// Whether a graceful stop began.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_some()
    }

    /// A reload: new limits for new and open connections, a new page, the application's new
    /// settings.
    pub fn reconfigure(&mut self, settings: Settings, site: Site, app: A::Settings) {
        for (_, conn) in self.conns.iter_mut() {
            if let ConnState::WebSocket(session) = &mut conn.state {
                session.set_max_message(settings.max_message_bytes);
            }
        }
        self.app.reconfigure(app);
        // Another address key changes no open connection: each keeps the hash it was counted
        // under (the application was given that one too) until it ends, for its address is
        // no longer known. Only new connections count under the new key.
        self.settings = settings;
        self.site = site;
        self.stats.reloads_ok += 1;
    }

    /// A reload that was refused (counted for `/metrics`).
    pub fn count_failed_reload(&mut self) {
        self.stats.reloads_failed += 1;
    }

    /// The page being served.
    pub fn site(&self) -> &Site {
        &self.site
    }

    fn millis(&self, t: Instant) -> u64 {
        millis_since(self.epoch, t)
    }

    fn deadline(&self, now: Instant, d: Duration) -> u64 {
        deadline_after(self.epoch, now, d)
    }

    /// Makes sure the connection's deadline has a timer entry (at most one live entry each:
    /// a later deadline reuses the earlier entry, which re-arms when it comes due).
    fn arm(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.deadline == NEVER || (conn.armed != NEVER && conn.deadline >= conn.armed) {
            return; // no deadline, or the live entry comes first and re-arms then
        }
        if conn.armed == NEVER && conn.deadline == conn.superseded {
            // The entry an earlier deadline superseded is still in the heap: it is live again.
            conn.armed = conn.superseded;
            conn.superseded = NEVER;
            return;
        }
        self.timers.push(conn.deadline, slot, conn.generation);
        if conn.armed != NEVER {
            conn.superseded = conn.armed;
        }
        conn.armed = conn.deadline;
    }

    /// The slot of an open WebSocket peer, if it is still there.
    fn lookup(&self, peer: PeerId) -> Option<usize> {
        let slot = peer.slot() as usize;
        let conn = self.conns.get(slot)?;
        (peer.worker() == self.worker
            && conn.generation == peer.generation()
            && conn.is_websocket())
        .then_some(slot)
    }

    /// Output was queued for `slot`: transmit it this turn, or drop a peer that stopped reading.
    fn after_output(&mut self, now: Instant, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let pending = conn.pending_output();
        if pending > self.settings.max_outbound_bytes {
            self.remove(now, slot, DropReason::SlowReader);
            return;
        }
        if pending > 0 {
            mark_dirty(&mut self.dirty, conn, slot);
        } else {
            conn.release_if_empty(&mut self.spares);
        }
        self.arm(slot);
    }

    /// A connection's deadline passed.
    fn on_deadline(&mut self, now: Instant, slot: usize) {
        let ping = self.deadline(now, self.settings.ping_timeout);
        let linger = self.deadline(now, CLOSE_LINGER);
        let conn = &mut self.conns[slot];
        let id = PeerId::new(self.worker, conn.generation, slot as u32);
        let partial = conn.has_partial_input();
        match &mut conn.state {
            ConnState::Http { .. } if !partial => self.remove(now, slot, DropReason::Timeout),
            ConnState::Http { .. } => {
                debug!(self.log, "request timeout"; "conn" => slot, "client" => conn.client.short());
                let out = conn.output(&mut self.spares);
                http::write_error(out, &self.date, Status::RequestTimeout, "", false, false);
                conn.start_closing(linger, false);
                mark_dirty(&mut self.dirty, conn, slot);
            }
            ConnState::WebSocket(session) => {
                match session.handle_idle(output(&mut conn.bufs, &mut self.spares)) {
                    IdleOutcome::Pinged => {
                        conn.deadline = ping;
                        if conn.pending_output() > self.settings.max_outbound_bytes {
                            self.remove(now, slot, DropReason::SlowReader);
                        } else {
                            mark_dirty(&mut self.dirty, conn, slot);
                        }
                    }
                    IdleOutcome::TimedOut => {
                        debug!(self.log, "idle timeout"; "conn" => slot, "client" => conn.client.short());
                        session.start_closing();
                        // The close effect, applied this turn, sets the linger deadline.
                        conn.deadline = NEVER;
                        let close = Close::Code(close_code::GOING_AWAY, close_reason::IDLE_TIMEOUT);
                        self.effects.push_back(Effect::Close(id, close));
                    }
                }
            }
            ConnState::Closing { .. } => self.remove(now, slot, DropReason::Timeout),
        }
    }

    /// Sends the close frame of an open WebSocket and starts closing it.
    fn close_websocket(&mut self, now: Instant, peer: PeerId, close: Close) {
        let Some(slot) = self.lookup(peer) else { return };
        let linger = self.deadline(now, CLOSE_LINGER);
        let conn = &mut self.conns[slot];
        if let Some(session) = conn.start_closing(linger, false) {
            // A close handshake, except the one that ends a silent peer's wait for a pong.
            let dropped = close == Close::Code(close_code::GOING_AWAY, close_reason::IDLE_TIMEOUT);
            session.finish(close, conn.output(&mut self.spares));
            mark_dirty(&mut self.dirty, conn, slot);
            let client = conn.client;
            self.websocket_ended(now, peer, dropped, client);
        }
        self.arm(slot);
    }

    /// A WebSocket ended (closed by either side, failed, timed out): count it and tell the
    /// application, once, whether it was `dropped` (no close handshake). Its answers join the
    /// effects.
    /// `client` is the WebSocket's client address hash (it counted against it from the
    /// upgrade).
    fn websocket_ended(&mut self, now: Instant, id: PeerId, dropped: bool, client: AddrHash) {
        self.stats.websockets_closed += 1;
        if let Some(n) = self.per_address.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&client);
            }
        }
        self.app.handle_event(now, id, Event::Closed { dropped }, &mut self.actions);
        self.effects.extend(self.actions.drain(..).map(Effect::from));
    }

    /// Removes a connection at once; its transport is dropped.
    fn remove(&mut self, now: Instant, slot: usize, reason: DropReason) {
        let Some(mut conn) = self.conns.try_remove(slot) else { return };
        debug!(self.log, "closed"; "conn" => slot, "client" => conn.client.short(), "reason" => ?reason);
        if conn.dirty {
            // A later occupant of the slot must not inherit the entry (the list is this
            // turn's output: short).
            self.dirty.retain(|&s| s != slot);
        }
        conn.release(&mut self.spares);
        if conn.is_websocket() {
            // Still open: whatever ended it (reset, error, end of stream, a slow reader), no
            // close frame did.
            let id = PeerId::new(self.worker, conn.generation, slot as u32);
            self.websocket_ended(now, id, true, conn.client);
        }
    }

    /// Copies the oldest pending broadcast to the next [`BROADCAST_SLICE`] open WebSockets (in
    /// slot order). A peer that connects during a broadcast gets it if its slot is still
    /// ahead. Returns whether effects were decided (slow readers dropped).
    fn advance_broadcasts(&mut self, now: Instant) -> bool {
        let mut budget = BROADCAST_SLICE;
        let mut over = Vec::new();
        while budget > 0 {
            let Some((frame, next)) = self.broadcasts.front_mut() else { break };
            // Slab keys are below its capacity.
            let end = self.conns.capacity();
            while *next < end && budget > 0 {
                let slot = *next;
                *next += 1;
                let Some(conn) = self.conns.get_mut(slot).filter(|c| c.is_websocket()) else {
                    continue;
                };
                budget -= 1;
                conn.output(&mut self.spares).extend_from_slice(frame);
                mark_dirty(&mut self.dirty, conn, slot);
                if conn.pending_output() > self.settings.max_outbound_bytes {
                    over.push(slot);
                }
            }
            if *next >= end {
                self.broadcasts.pop_front();
            }
        }
        for slot in over {
            self.remove(now, slot, DropReason::SlowReader);
        }
        !self.effects.is_empty()
    }
}

/// Renders `/metrics`: the endpoint's families, then the application's.
fn write_metrics<A: App>(
    stats: &Stats,
    open: usize,
    stopping: bool,
    app: &A,
    extra: &str,
    out: &mut String,
) {
    let s = stats;
    metrics::gauge(
        out,
        "chatd_connections_open",
        "Open TCP connections (page requests and WebSockets).",
        open,
    );
    metrics::counter(out, "chatd_connections_total", "TCP connections accepted.", s.accepted);
    metrics::counter(
        out,
        "chatd_connections_refused_total",
        "Connections refused with 503 because the server was full.",
        s.refused_full,
    );
    let ws_open = s.websockets_opened.saturating_sub(s.websockets_closed);
    metrics::gauge(out, "chatd_websockets_open", "Open WebSocket connections.", ws_open as usize);
    metrics::counter(
        out,
        "chatd_websockets_total",
        "WebSocket handshakes completed.",
        s.websockets_opened,
    );
    metrics::counter(out, "chatd_received_bytes_total", "Bytes read from clients.", s.bytes_in);
    metrics::counter(out, "chatd_sent_bytes_total", "Bytes written to clients.", s.bytes_out);
    metrics::gauge(out, "chatd_up", "1 while serving, 0 while stopping.", usize::from(!stopping));
    let name = "chatd_websockets_refused_total";
    metrics::header(out, name, "WebSocket upgrades refused for who asked, by reason.", "counter");
    metrics::sample(out, name, &[("reason", "banned")], s.refused_banned);
    metrics::sample(out, name, &[("reason", "per_address")], s.refused_per_address);
    let name = "chatd_reloads_total";
    metrics::header(out, name, "Configuration reloads (SIGHUP), by result.", "counter");
    metrics::sample(out, name, &[("result", "ok")], s.reloads_ok);
    metrics::sample(out, name, &[("result", "failed")], s.reloads_failed);
    app.write_metrics(out);
    out.push_str(extra);
}

/// What `drive` needs of the endpoint besides the connection.
struct Cx<'a, A> {
    app: &'a mut A,
    actions: &'a mut Vec<Action>,
    effects: &'a mut VecDeque<Effect>,
    settings: &'a Settings,
    site: &'a Site,
    date: &'a HttpDate,
    stats: &'a mut Stats,
    spares: &'a mut Spares,
    log: &'a Logger,
    epoch: Instant,
    now: Instant,
    open: usize,
    stopping: bool,
    unavailable: Option<&'static str>,
    extra_metrics: &'a str,
    metrics_override: Option<&'a str>,
    per_address: &'a mut HashMap<AddrHash, u32>,
    crowded: &'a HashMap<AddrHash, Instant>,
}

impl<A: App> Cx<'_, A> {
    fn tell(&mut self, id: PeerId, event: Event<'_>) {
        self.app.handle_event(self.now, id, event, self.actions);
        self.effects.extend(self.actions.drain(..).map(Effect::from));
    }

    fn deadline(&self, d: Duration) -> u64 {
        deadline_after(self.epoch, self.now, d)
    }
}

/// `t` in milliseconds since `epoch`.
fn millis_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_millis() as u64
}

/// `now + d` as a deadline in milliseconds since `epoch`, rounded up so that it never fires
/// early, and never `NEVER`.
fn deadline_after(epoch: Instant, now: Instant, d: Duration) -> u64 {
    let ms = u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    millis_since(epoch, now).saturating_add(ms).min(NEVER - 1)
}

fn mark_dirty<S>(dirty: &mut Vec<usize>, conn: &mut Connection<S>, slot: usize) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// Runs the connection's protocol over `input` and returns how many bytes it consumed (the
/// rest is an incomplete request head or frame). Protocol answers go to the connection's
/// output; closes are queued as effects, after the application's answers to what came before.
fn drive<A: App, S>(
    cx: &mut Cx<'_, A>,
    conn: &mut Connection<S>,
    id: PeerId,
    slot: usize,
    input: &mut [u8],
) -> usize {
    let mut pos = 0;
    loop {
        match &mut conn.state {
            ConnState::Closing { .. } => return input.len(),
            ConnState::Http { peer } => match http::parse(&input[pos..]) {
                Ok(None) => return pos,
                Ok(Some((n, req))) => {
                    pos += n;
                    let peer = peer.ip();
                    // The client: behind a trusted proxy, the one its X-Forwarded-For names.
                    let client = http::client_ip(
                        peer,
                        req.header_all("x-forwarded-for").map(str::as_bytes),
                        &cx.settings.trusted_proxies,
                    );
                    let route = RouteCx {
                        settings: cx.settings,
                        site: cx.site,
                        date: cx.date,
                        stats: cx.stats,
                        app: &*cx.app,
                        open: cx.open,
                        stopping: cx.stopping,
                        unavailable: cx.unavailable,
                        extra_metrics: cx.extra_metrics,
                        metrics_override: cx.metrics_override,
                        per_address: cx.per_address,
                        crowded: cx.crowded,
                        now: cx.now,
                    };
                    let who = routes::Client { ip: client, peer, peer_hash: conn.client };
                    let next = routes::respond(&route, &req, who, conn.output(cx.spares));
                    // This request's client, for a refusal's log line.
                    let settings = cx.settings;
                    let hash = || who.hash(&settings.address_key);
                    match next {
                        Next::KeepAlive { why } => {
                            if let Some(why) = why {
                                let client = hash().short();
                                debug!(cx.log, "{}", why; "conn" => slot, "client" => client);
                            }
                            conn.deadline = cx.deadline(cx.settings.handshake_timeout);
                        }
                        Next::Close { why } => {
                            if let Some(why) = why {
                                let client = hash().short();
                                debug!(cx.log, "{}", why; "conn" => slot, "client" => client);
                            }
                            conn.start_closing(cx.deadline(CLOSE_LINGER), false);
                            return input.len();
                        }
                        Next::Refused(why) => {
                            match why {
                                Refusal::Banned => cx.stats.refused_banned += 1,
                                Refusal::TooMany => cx.stats.refused_per_address += 1,
                            }
                            let client = hash().short();
                            debug!(cx.log, "websocket refused"; "conn" => slot, "client" => client, "why" => ?why);
                            conn.start_closing(cx.deadline(CLOSE_LINGER), false);
                            return input.len();
                        }
                        Next::Upgrade { client: hash } => {
                            // Counted under this hash until the WebSocket ends.
                            *cx.per_address.entry(hash).or_insert(0) += 1;
                            let session = Session::new(cx.settings.max_message_bytes);
                            // From here on the connection is known by its client's hash alone.
                            conn.upgrade(session, hash, cx.deadline(cx.settings.idle_timeout));
                            cx.stats.websockets_opened += 1;
                            debug!(cx.log, "websocket open"; "conn" => slot, "client" => hash.short(), "peer_id" => %id);
                            cx.tell(id, Event::Open { client: hash });
                        }
                    }
                }
                Err(e) => {
                    debug!(cx.log, "bad request"; "conn" => slot, "client" => conn.client.short(), "error" => %e);
                    http::write_error(
                        conn.output(cx.spares),
                        cx.date,
                        e.status(),
                        "",
                        false,
                        false,
                    );
                    conn.start_closing(cx.deadline(CLOSE_LINGER), false);
                    return input.len();
                }
            },
            ConnState::WebSocket(session) => {
                let close = match session.decode(&mut input[pos..]) {
                    Ok(None) => return pos,
                    Ok(Some((n, event))) => {
                        pos += n;
                        match event {
                            None | Some(Incoming::Pong) => continue,
                            Some(Incoming::Text(text)) => {
                                cx.tell(id, Event::Text(text));
                                continue;
                            }
                            Some(Incoming::Binary(data)) => {
                                cx.tell(id, Event::Binary(data));
                                continue;
                            }
                            Some(Incoming::Ping(payload)) => {
                                Session::answer_ping(payload, output(&mut conn.bufs, cx.spares));
                                continue;
                            }
                            Some(Incoming::Close(code, _)) => Close::Echo(code),
                        }
                    }
                    Err(e) => {
                        debug!(cx.log, "websocket protocol error"; "conn" => slot, "client" => conn.client.short(), "error" => %e);
                        Close::Code(e.close_code(), e.reason())
                    }
                };
                if let ConnState::WebSocket(session) = &mut conn.state {
                    session.start_closing();
                }
                cx.effects.push_back(Effect::Close(id, close));
                return input.len();
            }
        }
    }
}
