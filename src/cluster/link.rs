//! One Redis connection as a state machine, sans-IO: the loop owns the socket and the clock and
//! drives a [`Link`] like any other connection. The link owns the handshake, the pipeline of
//! commands waiting for replies (each with the caller's tag), the caps on what waits, the reply
//! deadline and the reconnect backoff.
//!
//! How the loop drives it, every turn:
//!
//! ```text
//! now = Instant::now()
//! link.handle_timeout(now)                     // deadlines: connect, reply, keepalive PING
//! if link.poll_connect(now) { open a socket }  // when Disconnected and the backoff is over
//! socket connected      -> link.handle_connected(now)   // queues the handshake
//! bytes read            -> link.handle_input(now, &bytes)
//! EOF or socket error   -> link.handle_closed(now, reason)
//! while let Some(e) = link.poll_event() { Up, Reply, Message, Subscribed, Down }
//!                          // on Down: drop the socket (the link may have ended it itself)
//! write link.transmit_buf() -> link.handle_sent(n)
//! sleep until link.poll_timeout() at the latest
//! ```
//!
//! States: [`LinkState::Disconnected`] -> `Connecting` -> `Handshaking` -> `Ready`, and back to
//! `Disconnected` from any of them with a [`LinkEvent::Down`] that hands back every pending tag.
use std::{
    collections::VecDeque,
    fmt,
    time::{Duration, Instant},
};

use super::{
    resp::{self, RespError, Value},
    RedisTarget,
};

/// Default cap on commands waiting for their reply (sent or not yet sent): 10,000.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Default cap on encoded commands not yet handed to the socket: 8 MiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Default cap on the bytes of one reply buffered while incomplete: 32 MiB (twice the largest
/// bulk string [`resp::MAX_BULK_LEN`]).
pub const DEFAULT_MAX_REPLY_BYTES: usize = 32 * 1024 * 1024;
/// Default time the oldest pending command may wait for its reply: 3 s.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time a connection attempt may take: 3 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default idle time after which a `PING` checks that Redis still answers: 1 s.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Default first reconnect delay, doubled after each failure: 100 ms.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default longest reconnect delay: 5 s.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A transmit or receive buffer larger than this is given back to the allocator once empty.
const KEEP_BUFFER: usize = 64 * 1024;

/// The link's limits and timers. "Redis slow: what waits for Redis is capped."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Most commands waiting for a reply; [`Link::send`] refuses more with [`LinkError::Full`].
    /// Default [`DEFAULT_MAX_PENDING`].
    pub max_pending: usize,
    /// Most encoded bytes not yet written to the socket; past it `send` refuses with `Full`.
    /// Default [`DEFAULT_MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
    /// Most bytes of one incomplete reply held; more fails the link. Default
    /// [`DEFAULT_MAX_REPLY_BYTES`].
    pub max_reply_bytes: usize,
    /// The oldest pending command waiting longer than this fails the link: a slow or hung Redis
    /// must not let queues grow. Default [`DEFAULT_REPLY_TIMEOUT`].
    pub reply_timeout: Duration,
    /// A connection not established within this fails the attempt. Default
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// A ready link with nothing pending and nothing received for this long sends `PING`, so a
    /// dead Redis is noticed through the reply timeout even by an idle subscriber. Default
    /// [`DEFAULT_PING_INTERVAL`].
    pub ping_interval: Duration,
    /// The first reconnect delay; doubled after each failure, reset by a good handshake.
    /// Default [`DEFAULT_BACKOFF_MIN`].
    pub backoff_min: Duration,
    /// The longest reconnect delay. Default [`DEFAULT_BACKOFF_MAX`].
    pub backoff_max: Duration,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            max_pending: DEFAULT_MAX_PENDING,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// What a connection is for. Redis puts a connection that subscribes into a mode where it takes
/// only (un)subscriptions and `PING`, so commands and subscriptions need a link each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Commands with replies, through [`Link::send`].
    Commands,
    /// Pub/sub: these channels are subscribed in every handshake, and [`Link::subscribe`] /
    /// [`Link::unsubscribe`] change the set. `send` is refused.
    Subscriber {
        /// The channels to subscribe to (duplicates are ignored).
        channels: Vec<Vec<u8>>,
    },
}

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection. [`Link::poll_connect`] answers `true` from `retry_at` on (at once when
    /// `None`: the link is new).
    Disconnected {
        /// When the next attempt may start.
        retry_at: Option<Instant>,
    },
    /// The loop is opening a socket; it calls [`Link::handle_connected`] once it is open.
    Connecting {
        /// When the attempt fails if the socket is not open by then.
        deadline: Instant,
    },
    /// `AUTH`, `SELECT`, `CLIENT SETNAME` and the subscriptions are sent; their replies are due.
    Handshaking {
        /// Handshake replies still due.
        steps_left: usize,
    },
    /// Up: commands (or subscriptions) flow.
    Ready,
}

/// Why the link refused a command or went down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `send` or `subscribe` before the handshake is done (or while down).
    #[error("the Redis link is not ready")]
    NotReady,
    /// `send` past a cap on what waits for Redis ([`LinkConfig::max_pending`],
    /// [`LinkConfig::max_queued_bytes`]): Redis is slow or the caller too fast.
    #[error("too much waits for Redis")]
    Full,
    /// `send` with no arguments: Redis would answer nothing, and the pipeline would shift.
    #[error("empty Redis command")]
    EmptyCommand,
    /// `send` on a subscriber link.
    #[error("a subscriber link sends no commands")]
    Subscriber,
    /// `subscribe` or `unsubscribe` on a commands link.
    #[error("a commands link does not subscribe")]
    NotSubscriber,
    /// Redis answered a command of the link's own (the handshake's `AUTH`, `SELECT`,
    /// `CLIENT SETNAME`, a `SUBSCRIBE`, a keepalive `PING`) with an error, such as `WRONGPASS`.
    #[error("Redis refused {command}: {message}")]
    Refused {
        /// The command, without its arguments (never the password).
        command: &'static str,
        /// Redis's error line.
        message: String,
    },
    /// The socket did not open within [`LinkConfig::connect_timeout`].
    #[error("no connection to Redis within {0:?}")]
    ConnectTimeout(Duration),
    /// The oldest pending command waited this long, past [`LinkConfig::reply_timeout`].
    #[error("no reply from Redis for {0:?}")]
    ReplyTimeout(Duration),
    /// A reply that fits no pending command: the pipeline lost its pairing.
    #[error("unexpected reply from Redis: {0}")]
    UnexpectedReply(&'static str),
    /// One reply larger than [`LinkConfig::max_reply_bytes`].
    #[error("a reply from Redis is larger than the cap")]
    ReplyTooLarge,
    /// Bytes that are not RESP.
    #[error("bad RESP from Redis: {0}")]
    Protocol(#[from] RespError),
    /// The loop reported the connection closed or failed ([`Link::handle_closed`]).
    #[error("connection to Redis lost: {0}")]
    Closed(String),
}

/// What the link tells the loop, in order, through [`Link::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent<T> {
    /// The handshake is done: commands may be sent, the subscriptions are active.
    Up,
    /// The reply to the command sent with `tag` (an error reply is a value here, not a failure).
    Reply {
        /// The caller's tag, as given to [`Link::send`].
        tag: T,
        /// Redis's reply.
        value: Value,
        /// From the `now` given to `send` to the `now` given to `handle_input`: the round trip
        /// as the caller sees it, time in the transmit buffer included.
        rtt: Duration,
    },
    /// A pub/sub message (subscriber links). It may come before `Up`: channels deliver as
    /// soon as each is confirmed.
    Message {
        /// The channel.
        channel: Vec<u8>,
        /// The message.
        payload: Vec<u8>,
    },
    /// A channel added by [`Link::subscribe`] while connected is now active.
    Subscribed {
        /// The channel.
        channel: Vec<u8>,
    },
    /// The connection (or the attempt) ended: drop the socket. Every command still pending is
    /// handed back, oldest first; whether it ran in Redis is unknown.
    Down {
        /// Why.
        reason: LinkError,
        /// The tags of the commands that got no reply.
        failed: Vec<T>,
    },
}

/// Counters for metrics; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Handshakes completed.
    pub ups: u64,
    /// Connections or attempts that ended.
    pub downs: u64,
    /// Of those, by the reply timeout.
    pub timeouts: u64,
    /// Commands accepted by `send`.
    pub commands: u64,
    /// Commands refused with [`LinkError::Full`].
    pub refused: u64,
    /// Replies to `send`'s commands.
    pub replies: u64,
    /// Of those, error replies.
    pub error_replies: u64,
    /// Pub/sub messages received.
    pub messages: u64,
    /// Bytes the loop wrote (`handle_sent`).
    pub bytes_sent: u64,
    /// Bytes the loop read (`handle_input`).
    pub bytes_received: u64,
}

/// What a pending reply belongs to.
#[derive(Debug)]
enum Expect<T> {
    /// A command of the link's own; an error reply fails the link.
    Own(&'static str),
    /// The confirmation of `SUBSCRIBE channel`.
    Subscribe(Vec<u8>),
    /// The confirmation of `UNSUBSCRIBE channel`.
    Unsubscribe(Vec<u8>),
    /// The caller's command.
    Caller(T),
}

#[derive(Debug)]
struct Pending<T> {
    expect: Expect<T>,
    sent_at: Instant,
    /// Part of the handshake: `Up` waits for it.
    handshake: bool,
}

/// One Redis connection's protocol state, generic over the caller's reply tag `T`. See the
/// module doc for how a loop drives it. No socket, no clock: every input carries `now`.
pub struct Link<T> {
    target: RedisTarget,
    client_name: String,
    /// `Some` for a subscriber: the channels every handshake subscribes to.
    channels: Option<Vec<Vec<u8>>>,
    config: LinkConfig,
    state: LinkState,
    /// The delay before the next attempt after a failure.
    backoff: Duration,
    /// Encoded commands; `tx[tx_pos..]` is not yet written.
    tx: Vec<u8>,
    tx_pos: usize,
    /// The start of an incomplete reply.
    rx: Vec<u8>,
    /// Replies due, in the order the commands were sent.
    pending: VecDeque<Pending<T>>,
    events: VecDeque<LinkEvent<T>>,
    /// When bytes last arrived (or the connection opened): the keepalive's reference.
    last_input: Option<Instant>,
    attempts: u64,
    stats: LinkStats,
}

/// Shows the state and the queues, never the buffers (the handshake's `AUTH` carries the
/// password).
impl<T> fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("client_name", &self.client_name)
            .field("subscriber", &self.channels.is_some())
            .field("state", &self.state)
            .field("pending", &self.pending.len())
            .field("queued_bytes", &self.queued_bytes())
            .finish_non_exhaustive()
    }
}

impl<T> Link<T> {
    /// A disconnected link with the default [`LinkConfig`]. `client_name` is shown by
    /// `CLIENT LIST`; bytes Redis refuses there (spaces, controls, non-ASCII) become `-`.
    pub fn new(target: RedisTarget, client_name: String, role: Role) -> Link<T> {
        Link::with_config(target, client_name, role, LinkConfig::default())
    }

    /// A disconnected link with these limits.
    pub fn with_config(
        target: RedisTarget,
        client_name: String,
        role: Role,
        config: LinkConfig,
    ) -> Link<T> {
        let client_name =
            client_name.chars().map(|c| if c.is_ascii_graphic() { c } else { '-' }).collect();
        let channels = match role {
            Role::Commands => None,
            Role::Subscriber { channels } => {
                let mut set: Vec<Vec<u8>> = Vec::with_capacity(channels.len());
                for c in channels {
                    if !set.contains(&c) {
                        set.push(c);
                    }
                }
                Some(set)
            }
        };
        Link {
            target,
            client_name,
            channels,
            backoff: config.backoff_min,
            config,
            state: LinkState::Disconnected { retry_at: None },
            tx: Vec::new(),
            tx_pos: 0,
            rx: Vec::new(),
            pending: VecDeque::new(),
            events: VecDeque::new(),
            last_input: None,
            attempts: 0,
            stats: LinkStats::default(),
        }
    }

    /// Where the link connects.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether the handshake is done and the connection up.
    pub fn is_ready(&self) -> bool {
        self.state == LinkState::Ready
    }

    /// The counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Replies due (the caller's commands and the link's own).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Encoded bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.tx.len() - self.tx_pos
    }

    /// The subscribed channels (those every handshake subscribes to); empty for a commands link.
    pub fn channels(&self) -> &[Vec<u8>] {
        self.channels.as_deref().unwrap_or_default()
    }

    /// Whether the loop should open a socket now: `Disconnected` and the backoff is over. Then
    /// the link is `Connecting` until [`Link::handle_connected`] or [`Link::handle_closed`].
    pub fn poll_connect(&mut self, now: Instant) -> bool {
        match self.state {
            LinkState::Disconnected { retry_at } if retry_at.is_none_or(|t| now >= t) => {
                if self.attempts > 0 {
                    self.stats.reconnects += 1;
                }
                self.attempts += 1;
                let deadline = now + self.config.connect_timeout;
                self.state = LinkState::Connecting { deadline };
                true
            }
            _ => false,
        }
    }

    /// The socket is open: queues the handshake (`AUTH [user] password` when the target has a
    /// password, `SELECT db` when db is not 0, `CLIENT SETNAME`, and for a subscriber one
    /// `SUBSCRIBE` of every channel). Its replies are consumed here; `Up` follows the last.
    /// Ignored unless `Connecting`.
    pub fn handle_connected(&mut self, now: Instant) {
        if !matches!(self.state, LinkState::Connecting { .. }) {
            return;
        }
        self.last_input = Some(now);
        let target = &self.target;
        let handshake = &mut self.pending;
        let step = |expect| Pending { expect, sent_at: now, handshake: true };
        if let Some(password) = &target.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            resp::encode_command(&mut self.tx, &args);
            handshake.push_back(step(Expect::Own("AUTH")));
        }
        if target.db != 0 {
            let db = target.db.to_string();
            resp::encode_command(&mut self.tx, &[b"SELECT", db.as_bytes()]);
            handshake.push_back(step(Expect::Own("SELECT")));
        }
        resp::encode_command(&mut self.tx, &[b"CLIENT", b"SETNAME", self.client_name.as_bytes()]);
        handshake.push_back(step(Expect::Own("CLIENT SETNAME")));
        if let Some(channels) = &self.channels {
            if !channels.is_empty() {
                let mut args: Vec<&[u8]> = Vec::with_capacity(channels.len() + 1);
                args.push(b"SUBSCRIBE");
                args.extend(channels.iter().map(Vec::as_slice));
                resp::encode_command(&mut self.tx, &args);
                // One confirmation per channel.
                for c in channels {
                    handshake.push_back(step(Expect::Subscribe(c.clone())));
                }
            }
        }
        self.state = LinkState::Handshaking { steps_left: self.pending.len() };
    }

    /// Queues a command (`args[0]` is its name) whose reply comes back as
    /// [`LinkEvent::Reply`] with `tag`, in the order sent. Only when `Ready`; refused with
    /// [`LinkError::Full`] past [`LinkConfig::max_pending`] or
    /// [`LinkConfig::max_queued_bytes`]. The command must have exactly one reply: no
    /// `SUBSCRIBE` or `MONITOR` here.
    pub fn send(&mut self, now: Instant, tag: T, args: &[&[u8]]) -> Result<(), LinkError> {
        if self.channels.is_some() {
            return Err(LinkError::Subscriber);
        }
        if args.is_empty() {
            return Err(LinkError::EmptyCommand);
        }
        if !self.is_ready() {
            return Err(LinkError::NotReady);
        }
        self.check_caps(args)?;
        resp::encode_command(&mut self.tx, args);
        self.expect(Expect::Caller(tag), now, false);
        self.stats.commands += 1;
        Ok(())
    }

    /// Adds a channel (a subscriber link only). While connected it is subscribed at once and
    /// [`LinkEvent::Subscribed`] follows the confirmation; while down, the next handshake
    /// subscribes it. A channel already in the set is left as it is. Refused with
    /// [`LinkError::Full`] past the caps.
    pub fn subscribe(&mut self, now: Instant, channel: &[u8]) -> Result<(), LinkError> {
        let Some(channels) = &self.channels else { return Err(LinkError::NotSubscriber) };
        if channels.iter().any(|c| c == channel) {
            return Ok(());
        }
        if self.is_connected() {
            self.check_caps(&[b"SUBSCRIBE", channel])?;
            resp::encode_command(&mut self.tx, &[b"SUBSCRIBE", channel]);
            self.expect(Expect::Subscribe(channel.to_vec()), now, false);
        }
        self.channels.get_or_insert_with(Vec::new).push(channel.to_vec());
        Ok(())
    }

    /// Removes a channel (a subscriber link only). Messages already on their way may still
    /// arrive for it. Refused with [`LinkError::Full`] past the caps.
    pub fn unsubscribe(&mut self, now: Instant, channel: &[u8]) -> Result<(), LinkError> {
        let Some(channels) = &self.channels else { return Err(LinkError::NotSubscriber) };
        let Some(i) = channels.iter().position(|c| c == channel) else { return Ok(()) };
        if self.is_connected() {
            self.check_caps(&[b"UNSUBSCRIBE", channel])?;
            resp::encode_command(&mut self.tx, &[b"UNSUBSCRIBE", channel]);
            self.expect(Expect::Unsubscribe(channel.to_vec()), now, false);
        }
        self.channels.get_or_insert_with(Vec::new).remove(i);
        Ok(())
    }

    /// The bytes to write to the socket (empty when there are none).
    pub fn transmit_buf(&self) -> &[u8] {
        &self.tx[self.tx_pos..]
    }

    /// The socket took the first `n` bytes of [`Link::transmit_buf`].
    pub fn handle_sent(&mut self, n: usize) {
        let n = n.min(self.queued_bytes());
        self.tx_pos += n;
        self.stats.bytes_sent += n as u64;
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
            self.tx.shrink_to(KEEP_BUFFER);
        } else if self.tx_pos >= KEEP_BUFFER && self.tx_pos >= self.tx.len() / 2 {
            // Mostly written: move the unsent rest to the front. It is no longer than what was
            // written, so the copying stays linear in the bytes sent.
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
    }

    /// Bytes read from the socket: parses the replies, pairs each with its command in order
    /// and queues the events. Bad bytes, a reply that fits nothing, a refused handshake step
    /// or an incomplete reply past [`LinkConfig::max_reply_bytes`] fail the link. Ignored
    /// unless connected (bytes left over from a connection that failed).
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if !self.is_connected() {
            return;
        }
        self.last_input = Some(now);
        self.stats.bytes_received += data.len() as u64;
        let mut rx = std::mem::take(&mut self.rx);
        // Without a held-back tail the replies are parsed straight from `data`, and only an
        // incomplete end is copied.
        let result = if rx.is_empty() {
            self.consume(now, data).map(|n| rx.extend_from_slice(&data[n..]))
        } else {
            rx.extend_from_slice(data);
            self.consume(now, &rx).map(|n| {
                rx.drain(..n);
            })
        };
        match result {
            Err(e) => self.fail(now, e),
            Ok(()) if rx.len() > self.config.max_reply_bytes => {
                self.fail(now, LinkError::ReplyTooLarge)
            }
            Ok(()) => {
                if rx.is_empty() {
                    rx.shrink_to(KEEP_BUFFER);
                }
                self.rx = rx;
            }
        }
    }

    /// The loop's socket closed or failed (`reason` says how, for the `Down` event): the link
    /// goes `Disconnected` with backoff. Ignored when already disconnected.
    pub fn handle_closed(&mut self, now: Instant, reason: impl Into<String>) {
        if !matches!(self.state, LinkState::Disconnected { .. }) {
            self.fail(now, LinkError::Closed(reason.into()));
        }
    }

    /// Checks the deadlines of [`Link::poll_timeout`]: a connection attempt or the oldest
    /// pending reply past its time fails the link; an idle ready link queues a `PING`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            LinkState::Connecting { deadline } if now >= deadline => {
                self.fail(now, LinkError::ConnectTimeout(self.config.connect_timeout))
            }
            LinkState::Handshaking { .. } | LinkState::Ready => {
                if let Some(p) = self.pending.front() {
                    let waited = now.saturating_duration_since(p.sent_at);
                    if waited >= self.config.reply_timeout {
                        self.stats.timeouts += 1;
                        self.fail(now, LinkError::ReplyTimeout(waited));
                    }
                } else if self.ping_at().is_some_and(|t| now >= t) {
                    resp::encode_command(&mut self.tx, &[b"PING"]);
                    self.expect(Expect::Own("PING"), now, false);
                }
            }
            _ => {}
        }
    }

    /// The next deadline: the end of the backoff, of a connection attempt, of the oldest
    /// pending reply's wait, or of the idle time before a `PING`. `None` for a new link (call
    /// [`Link::poll_connect`] now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LinkState::Disconnected { retry_at } => retry_at,
            LinkState::Connecting { deadline } => Some(deadline),
            LinkState::Handshaking { .. } | LinkState::Ready => match self.pending.front() {
                Some(p) => p.sent_at.checked_add(self.config.reply_timeout),
                None => self.ping_at(),
            },
        }
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<LinkEvent<T>> {
        self.events.pop_front()
    }

    fn is_connected(&self) -> bool {
        matches!(self.state, LinkState::Handshaking { .. } | LinkState::Ready)
    }

    fn ping_at(&self) -> Option<Instant> {
        match (self.state, self.last_input) {
            (LinkState::Ready, Some(t)) => t.checked_add(self.config.ping_interval),
            _ => None,
        }
    }

    fn check_caps(&mut self, args: &[&[u8]]) -> Result<(), LinkError> {
        if self.pending.len() >= self.config.max_pending
            || self.queued_bytes() + resp::command_len(args) > self.config.max_queued_bytes
        {
            self.stats.refused += 1;
            return Err(LinkError::Full);
        }
        Ok(())
    }

    fn expect(&mut self, expect: Expect<T>, now: Instant, handshake: bool) {
        self.pending.push_back(Pending { expect, sent_at: now, handshake });
    }

    /// Handles every complete reply at the start of `buf`; returns the bytes consumed.
    fn consume(&mut self, now: Instant, buf: &[u8]) -> Result<usize, LinkError> {
        let mut at = 0;
        while let Some((n, value)) = resp::parse(&buf[at..])? {
            at += n;
            self.handle_value(now, value)?;
        }
        Ok(at)
    }

    fn handle_value(&mut self, now: Instant, value: Value) -> Result<(), LinkError> {
        // On a subscriber link, messages come between the replies at any time.
        let value = match self.channels {
            Some(_) => match into_push(value, b"message") {
                Ok((channel, payload)) => {
                    self.stats.messages += 1;
                    self.events.push_back(LinkEvent::Message { channel, payload });
                    return Ok(());
                }
                Err(value) => value,
            },
            None => value,
        };
        let p = self.pending.pop_front().ok_or(LinkError::UnexpectedReply("nothing pending"))?;
        match (p.expect, value) {
            (Expect::Caller(tag), value) => {
                self.stats.replies += 1;
                self.stats.error_replies += u64::from(value.is_error());
                let rtt = now.saturating_duration_since(p.sent_at);
                self.events.push_back(LinkEvent::Reply { tag, value, rtt });
            }
            (Expect::Own(command), Value::Error(message)) => {
                return Err(LinkError::Refused { command, message })
            }
            (Expect::Own(_), _) => {}
            (Expect::Subscribe(_), Value::Error(message)) => {
                return Err(LinkError::Refused { command: "SUBSCRIBE", message })
            }
            (Expect::Unsubscribe(_), Value::Error(message)) => {
                return Err(LinkError::Refused { command: "UNSUBSCRIBE", message })
            }
            (Expect::Subscribe(channel), value) => match into_push(value, b"subscribe") {
                Ok((c, _)) if c == channel => {
                    if !p.handshake {
                        self.events.push_back(LinkEvent::Subscribed { channel });
                    }
                }
                _ => return Err(LinkError::UnexpectedReply("not the subscribe confirmation due")),
            },
            (Expect::Unsubscribe(channel), value) => match into_push(value, b"unsubscribe") {
                Ok((c, _)) if c == channel => {}
                _ => {
                    return Err(LinkError::UnexpectedReply("not the unsubscribe confirmation due"))
                }
            },
        }
        if p.handshake {
            if let LinkState::Handshaking { steps_left } = self.state {
                if steps_left <= 1 {
                    self.state = LinkState::Ready;
                    self.backoff = self.config.backoff_min;
                    self.stats.ups += 1;
                    self.events.push_back(LinkEvent::Up);
                } else {
                    self.state = LinkState::Handshaking { steps_left: steps_left - 1 };
                }
            }
        }
        Ok(())
    }

    /// Ends the connection: `Disconnected` until the backoff is over, buffers dropped, every
    /// pending tag handed back in `Down`.
    fn fail(&mut self, now: Instant, reason: LinkError) {
        let retry_at = now.checked_add(self.backoff).unwrap_or(now);
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        self.state = LinkState::Disconnected { retry_at: Some(retry_at) };
        self.tx.clear();
        self.tx.shrink_to(KEEP_BUFFER);
        self.tx_pos = 0;
        self.rx = Vec::new();
        self.last_input = None;
        let failed = self
            .pending
            .drain(..)
            .filter_map(|p| match p.expect {
                Expect::Caller(tag) => Some(tag),
                _ => None,
            })
            .collect();
        self.stats.downs += 1;
        self.events.push_back(LinkEvent::Down { reason, failed });
    }
}

/// `[kind, channel, x]` with `kind` a bulk string equal to `kind`: returns `(channel, x)` when
/// `x` is a bulk string (a message's payload) or an integer (a confirmation's count, dropped).
fn into_push(value: Value, kind: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Value> {
    match value {
        Value::Array(Some(items))
            if items.len() == 3
                && items[0].as_bytes() == Some(kind)
                && matches!(items[1], Value::Bulk(Some(_)))
                && matches!(items[2], Value::Bulk(Some(_)) | Value::Integer(_)) =>
        {
            let mut items = items.into_iter();
            let (_, channel, third) = (items.next(), items.next(), items.next());
            let channel = match channel {
                Some(Value::Bulk(Some(c))) => c,
                _ => Vec::new(),
            };
            let third = match third {
                Some(Value::Bulk(Some(p))) => p,
                _ => Vec::new(),
            };
            Ok((channel, third))
        }
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Tag = u32;

    fn link(url: &str, role: Role) -> Link<Tag> {
        Link::new(RedisTarget::parse(url).unwrap(), "chatd-test".into(), role)
    }

    /// What the link wants written, as commands of strings; marks it all sent.
    fn sent(link: &mut Link<Tag>) -> Vec<Vec<String>> {
        let bytes = link.transmit_buf().to_vec();
        link.handle_sent(bytes.len());
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((n, v)) = resp::parse(&bytes[at..]).unwrap() {
            at += n;
            let Value::Array(Some(items)) = v else { panic!("not a command: {v:?}") };
            out.push(
                items
                    .iter()
                    .map(|a| String::from_utf8(a.as_bytes().unwrap().to_vec()).unwrap())
                    .collect(),
            );
        }
        assert_eq!(at, bytes.len());
        out
    }

    fn cmd(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn events(link: &mut Link<Tag>) -> Vec<LinkEvent<Tag>> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    fn msg(channel: &str, payload: &str) -> String {
        format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
            channel.len(),
            payload.len()
        )
    }

    fn confirm(kind: &str, channel: &str, count: i64) -> String {
        format!(
            "*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{count}\r\n",
            kind.len(),
            channel.len()
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A commands link, connected and up at `t`.
    fn ready(t: Instant) -> Link<Tag> {
        let mut l = link("redis://127.0.0.1:6379", Role::Commands);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        sent(&mut l);
        l.handle_input(t, b"+OK\r\n");
        assert_eq!(events(&mut l), [LinkEvent::Up]);
        l
    }

    #[test]
    fn handshake_without_auth() {
        let t = Instant::now();
        let mut l = link("redis://127.0.0.1:6379", Role::Commands);
        assert_eq!(l.state(), LinkState::Disconnected { retry_at: None });
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(l.send(t, 1, &[b"PING"]), Err(LinkError::NotReady));
        assert!(l.poll_connect(t));
        assert!(!l.poll_connect(t), "one attempt at a time");
        assert_eq!(l.state(), LinkState::Connecting { deadline: t + DEFAULT_CONNECT_TIMEOUT });
        l.handle_connected(t);
        assert_eq!(sent(&mut l), [cmd(&["CLIENT", "SETNAME", "chatd-test"])]);
        assert_eq!(l.send(t, 1, &[b"PING"]), Err(LinkError::NotReady), "not during the handshake");
        assert_eq!(l.poll_timeout(), Some(t + DEFAULT_REPLY_TIMEOUT));
        l.handle_input(t + ms(1), b"+OK\r\n");
        assert_eq!(events(&mut l), [LinkEvent::Up]);
        assert!(l.is_ready());
        assert_eq!((l.stats().ups, l.stats().reconnects), (1, 0));
    }

    #[test]
    fn handshake_with_auth_and_db_byte_by_byte() {
        let t = Instant::now();
        let mut l = link("redis://chatd:s3cret@127.0.0.1:6379/3", Role::Commands);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        assert!(!format!("{l:?}").contains("s3cret"), "{l:?}");
        assert_eq!(
            sent(&mut l),
            [
                cmd(&["AUTH", "chatd", "s3cret"]),
                cmd(&["SELECT", "3"]),
                cmd(&["CLIENT", "SETNAME", "chatd-test"])
            ]
        );
        let replies = b"+OK\r\n+OK\r\n+OK\r\n";
        for (i, b) in replies.iter().enumerate() {
            assert!(!l.is_ready(), "up before the last reply ({i} bytes)");
            l.handle_input(t, &[*b]);
        }
        assert_eq!(events(&mut l), [LinkEvent::Up]);

        // A password without a user: the `default` user's AUTH.
        let mut l = link("redis://:pw@127.0.0.1:6379", Role::Commands);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        assert_eq!(sent(&mut l)[0], cmd(&["AUTH", "pw"]));
    }

    #[test]
    fn a_refused_handshake_fails_the_link_with_redis_words() {
        let t = Instant::now();
        let mut l = link("redis://chatd:wrong@127.0.0.1:6379", Role::Commands);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        sent(&mut l);
        let line = "WRONGPASS invalid username-password pair or user is disabled.";
        l.handle_input(t, format!("-{line}\r\n+OK\r\n").as_bytes());
        let reason = LinkError::Refused { command: "AUTH", message: line.into() };
        assert_eq!(events(&mut l), [LinkEvent::Down { reason: reason.clone(), failed: vec![] }]);
        assert_eq!(reason.to_string(), format!("Redis refused AUTH: {line}"));
        assert_eq!(l.state(), LinkState::Disconnected { retry_at: Some(t + ms(100)) });
        // Whatever else arrives from that connection is ignored.
        l.handle_input(t, b"+OK\r\n");
        assert!(events(&mut l).is_empty());
        assert!(l.transmit_buf().is_empty());
    }

    #[test]
    fn replies_pair_with_their_tags_in_order() {
        let t = Instant::now();
        let mut l = ready(t);
        for i in 0..100 {
            l.send(t + ms(i.into()), i, &[b"INCR", b"n"]).unwrap();
        }
        assert_eq!(sent(&mut l).len(), 100);
        assert_eq!(l.pending(), 100);
        let input: String = (1..=100).map(|n| format!(":{n}\r\n")).collect();
        // In two reads that split a reply.
        l.handle_input(t + ms(200), &input.as_bytes()[..103]);
        l.handle_input(t + ms(300), &input.as_bytes()[103..]);
        let got = events(&mut l);
        assert_eq!(got.len(), 100);
        for (i, e) in got.into_iter().enumerate() {
            let LinkEvent::Reply { tag, value, rtt } = e else { panic!("{e:?}") };
            assert_eq!((tag, value), (i as Tag, Value::Integer(i as i64 + 1)));
            // 22 replies fit in the first 103 bytes (9 of 4 bytes, 13 of 5).
            let at = if i < 22 { 200 } else { 300 };
            assert_eq!(rtt, ms(at - i as u64));
        }
        assert_eq!((l.stats().commands, l.stats().replies), (100, 100));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn an_error_reply_is_the_callers_value() {
        let t = Instant::now();
        let mut l = ready(t);
        l.send(t, 7, &[b"NOSUCH"]).unwrap();
        l.send(t, 8, &[b"PING"]).unwrap();
        l.handle_input(t, b"-ERR unknown command 'NOSUCH'\r\n+PONG\r\n");
        assert_eq!(
            events(&mut l),
            [
                LinkEvent::Reply {
                    tag: 7,
                    value: Value::Error("ERR unknown command 'NOSUCH'".into()),
                    rtt: Duration::ZERO
                },
                LinkEvent::Reply {
                    tag: 8,
                    value: Value::Simple("PONG".into()),
                    rtt: Duration::ZERO
                },
            ]
        );
        assert!(l.is_ready());
        assert_eq!(l.stats().error_replies, 1);
        assert_eq!(l.send(t, 9, &[]), Err(LinkError::EmptyCommand));
    }

    #[test]
    fn a_subscriber_gets_messages_between_confirmations() {
        let t = Instant::now();
        let channels = vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()];
        let mut l = link("redis://127.0.0.1:6379", Role::Subscriber { channels });
        assert_eq!(l.send(t, 1, &[b"PING"]), Err(LinkError::Subscriber));
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        assert_eq!(
            sent(&mut l),
            [cmd(&["CLIENT", "SETNAME", "chatd-test"]), cmd(&["SUBSCRIBE", "a", "b"])]
        );
        let input = format!(
            "+OK\r\n{}{}{}{}",
            confirm("subscribe", "a", 1),
            msg("a", "early"),
            confirm("subscribe", "b", 2),
            msg("b", "hello")
        );
        l.handle_input(t, input.as_bytes());
        let message =
            |c: &str, p: &str| LinkEvent::Message { channel: c.into(), payload: p.into() };
        assert_eq!(events(&mut l), [message("a", "early"), LinkEvent::Up, message("b", "hello")]);

        // A channel added while up: messages may come before its confirmation.
        l.subscribe(t, b"c").unwrap();
        l.subscribe(t, b"c").unwrap();
        assert_eq!(sent(&mut l), [cmd(&["SUBSCRIBE", "c"])]);
        l.handle_input(t, format!("{}{}", msg("a", "1"), confirm("subscribe", "c", 3)).as_bytes());
        assert_eq!(
            events(&mut l),
            [message("a", "1"), LinkEvent::Subscribed { channel: b"c".to_vec() }]
        );
        l.unsubscribe(t, b"a").unwrap();
        l.unsubscribe(t, b"nope").unwrap();
        assert_eq!(sent(&mut l), [cmd(&["UNSUBSCRIBE", "a"])]);
        l.handle_input(
            t,
            format!("{}{}", msg("a", "2"), confirm("unsubscribe", "a", 2)).as_bytes(),
        );
        assert_eq!(events(&mut l), [message("a", "2")]);
        assert_eq!(l.stats().messages, 4);
        assert_eq!(l.channels(), [b"b".to_vec(), b"c".to_vec()]);

        // Down and back: the handshake subscribes the current set.
        l.handle_closed(t, "EOF");
        assert!(matches!(&events(&mut l)[..], [LinkEvent::Down { .. }]));
        l.subscribe(t, b"d").unwrap();
        assert!(l.poll_connect(t + ms(100)));
        l.handle_connected(t + ms(100));
        assert_eq!(sent(&mut l)[1], cmd(&["SUBSCRIBE", "b", "c", "d"]));
    }

    #[test]
    fn a_confirmation_out_of_place_fails_the_link() {
        let t = Instant::now();
        let channels = vec![b"a".to_vec()];
        let mut l = link("redis://127.0.0.1:6379", Role::Subscriber { channels });
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        l.handle_input(t, format!("+OK\r\n{}", confirm("subscribe", "x", 1)).as_bytes());
        let reason = LinkError::UnexpectedReply("not the subscribe confirmation due");
        assert_eq!(events(&mut l), [LinkEvent::Down { reason, failed: vec![] }]);
        let mut l = link("redis://127.0.0.1:6379", Role::Commands);
        assert_eq!(l.subscribe(t, b"a"), Err(LinkError::NotSubscriber));
    }

    #[test]
    fn caps_refuse_what_would_wait_too_long() {
        let t = Instant::now();
        let mut l = ready(t);
        for i in 0..DEFAULT_MAX_PENDING as Tag {
            l.send(t, i, &[b"PING"]).unwrap();
        }
        assert_eq!(l.send(t, 0, &[b"PING"]), Err(LinkError::Full));
        // A reply makes room for one more.
        sent(&mut l);
        l.handle_input(t, b"+PONG\r\n");
        l.send(t, 0, &[b"PING"]).unwrap();
        assert_eq!(l.send(t, 0, &[b"PING"]), Err(LinkError::Full));

        // Bytes: what is not yet written counts, what the socket took does not.
        let mut l = ready(t);
        let big = vec![b'x'; DEFAULT_MAX_QUEUED_BYTES / 2];
        l.send(t, 1, &[b"SET", b"k", &big]).unwrap();
        assert_eq!(l.send(t, 2, &[b"SET", b"k", &big]), Err(LinkError::Full));
        l.handle_sent(l.queued_bytes());
        l.send(t, 2, &[b"SET", b"k", &big]).unwrap();
        assert_eq!(l.stats().refused, 1);
        let huge = vec![b'x'; DEFAULT_MAX_QUEUED_BYTES];
        assert_eq!(l.send(t, 3, &[b"SET", b"k", &huge]), Err(LinkError::Full));
    }

    #[test]
    fn a_drop_hands_back_every_pending_tag() {
        let t = Instant::now();
        let mut l = ready(t);
        for i in 1..=3 {
            l.send(t, i, &[b"GET", b"k"]).unwrap();
        }
        l.handle_input(t, b"$1\r\nv\r\n$-1\r\n$3\r\nab");
        l.handle_closed(t + ms(5), "connection reset by peer");
        assert_eq!(
            events(&mut l),
            [
                LinkEvent::Reply { tag: 1, value: Value::Bulk(Some(b"v".to_vec())), rtt: ms(0) },
                LinkEvent::Reply { tag: 2, value: Value::Bulk(None), rtt: ms(0) },
                LinkEvent::Down {
                    reason: LinkError::Closed("connection reset by peer".into()),
                    failed: vec![3]
                },
            ]
        );
        assert!(l.transmit_buf().is_empty());
        assert_eq!((l.pending(), l.stats().downs), (0, 1));
        assert_eq!(l.send(t, 4, &[b"GET", b"k"]), Err(LinkError::NotReady));
        l.handle_closed(t, "again");
        assert!(events(&mut l).is_empty(), "one Down per connection");
    }

    #[test]
    fn reconnects_back_off_and_a_good_handshake_resets_the_delay() {
        let t0 = Instant::now();
        let mut l = link("redis://127.0.0.1:6379", Role::Commands);
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(l.poll_connect(t));
            l.handle_closed(t, "connection refused");
            let Some(retry_at) = l.poll_timeout() else { panic!("no retry time") };
            assert!(!l.poll_connect(retry_at - ms(1)));
            delays.push((retry_at - t).as_millis());
            t = retry_at;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!((l.stats().reconnects, l.stats().downs), (7, 8));
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        l.handle_input(t, b"+OK\r\n");
        l.handle_closed(t, "EOF");
        assert_eq!(l.poll_timeout(), Some(t + ms(100)));
        // A connection attempt that hangs ends at its deadline.
        assert!(l.poll_connect(t + ms(100)));
        l.handle_timeout(t + ms(100) + DEFAULT_CONNECT_TIMEOUT);
        let reason = LinkError::ConnectTimeout(DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(events(&mut l).pop(), Some(LinkEvent::Down { reason, failed: vec![] }));
    }

    #[test]
    fn a_reply_that_does_not_come_fails_the_link() {
        let t = Instant::now();
        let mut l = ready(t);
        l.send(t, 1, &[b"GET", b"a"]).unwrap();
        l.send(t + ms(500), 2, &[b"GET", b"b"]).unwrap();
        assert_eq!(l.poll_timeout(), Some(t + DEFAULT_REPLY_TIMEOUT));
        l.handle_timeout(t + DEFAULT_REPLY_TIMEOUT - ms(1));
        assert!(events(&mut l).is_empty());
        l.handle_timeout(t + DEFAULT_REPLY_TIMEOUT);
        assert_eq!(
            events(&mut l),
            [LinkEvent::Down {
                reason: LinkError::ReplyTimeout(DEFAULT_REPLY_TIMEOUT),
                failed: vec![1, 2]
            }]
        );
        assert_eq!(l.stats().timeouts, 1);
        // A hung handshake too.
        let t = t + DEFAULT_REPLY_TIMEOUT + ms(100);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        l.handle_timeout(t + DEFAULT_REPLY_TIMEOUT);
        assert!(matches!(
            &events(&mut l)[..],
            [LinkEvent::Down { reason: LinkError::ReplyTimeout(_), .. }]
        ));
    }

    #[test]
    fn an_idle_link_pings() {
        let t = Instant::now();
        let mut l = ready(t);
        assert_eq!(l.poll_timeout(), Some(t + DEFAULT_PING_INTERVAL));
        l.handle_timeout(t + DEFAULT_PING_INTERVAL - ms(1));
        assert!(l.transmit_buf().is_empty());
        let t = t + DEFAULT_PING_INTERVAL;
        l.handle_timeout(t);
        assert_eq!(sent(&mut l), [cmd(&["PING"])]);
        assert_eq!(l.poll_timeout(), Some(t + DEFAULT_REPLY_TIMEOUT));
        l.handle_input(t + ms(2), b"+PONG\r\n");
        assert!(events(&mut l).is_empty());
        assert_eq!(l.poll_timeout(), Some(t + ms(2) + DEFAULT_PING_INTERVAL));
        // A subscriber gets its pong as a push.
        let channels = vec![b"a".to_vec()];
        let mut s = link("redis://127.0.0.1:6379", Role::Subscriber { channels });
        assert!(s.poll_connect(t));
        s.handle_connected(t);
        s.handle_input(t, format!("+OK\r\n{}", confirm("subscribe", "a", 1)).as_bytes());
        sent(&mut s);
        s.handle_timeout(t + DEFAULT_PING_INTERVAL);
        assert_eq!(sent(&mut s), [cmd(&["PING"])]);
        s.handle_input(t, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(events(&mut s), [LinkEvent::Up]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn bad_bytes_fail_the_link() {
        let t = Instant::now();
        let mut l = ready(t);
        l.handle_input(t, b"+OK\r\n");
        assert_eq!(
            events(&mut l),
            [LinkEvent::Down {
                reason: LinkError::UnexpectedReply("nothing pending"),
                failed: vec![]
            }]
        );
        let mut l = ready(t);
        l.send(t, 1, &[b"PING"]).unwrap();
        l.handle_input(t, b"?\r\n");
        assert_eq!(
            events(&mut l),
            [LinkEvent::Down {
                reason: LinkError::Protocol(RespError::UnknownType(b'?')),
                failed: vec![1]
            }]
        );
        let config = LinkConfig { max_reply_bytes: 1000, ..LinkConfig::default() };
        let target = RedisTarget::parse("redis://127.0.0.1:6379").unwrap();
        let mut l: Link<Tag> = Link::with_config(target, "x".into(), Role::Commands, config);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        l.handle_input(t, b"+OK\r\n");
        l.send(t, 1, &[b"GET", b"k"]).unwrap();
        l.handle_input(t, b"$5000\r\n");
        l.handle_input(t, &[b'x'; 990]);
        assert_eq!(events(&mut l).len(), 1, "Up only, still under the cap");
        l.handle_input(t, &[b'x'; 10]);
        assert_eq!(
            events(&mut l),
            [LinkEvent::Down { reason: LinkError::ReplyTooLarge, failed: vec![1] }]
        );
    }

    #[test]
    fn partial_writes_and_client_names() {
        let t = Instant::now();
        let mut l = ready(t);
        l.send(t, 1, &[b"PING"]).unwrap();
        let all = l.transmit_buf().to_vec();
        l.handle_sent(3);
        assert_eq!(l.transmit_buf(), &all[3..]);
        l.handle_sent(100);
        assert!(l.transmit_buf().is_empty());
        assert_eq!(
            l.stats().bytes_sent as usize,
            all.len() + "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$10\r\nchatd-test\r\n".len()
        );

        let target = RedisTarget::parse("redis://127.0.0.1:6379").unwrap();
        let mut l: Link<Tag> = Link::new(target, "chatd node é 1".into(), Role::Commands);
        assert!(l.poll_connect(t));
        l.handle_connected(t);
        assert_eq!(sent(&mut l), [cmd(&["CLIENT", "SETNAME", "chatd-node---1"])]);
    }
}
