//! The roulette: the chat product behind the [`App`] seam. Pairs strangers, relays their
//! messages and typing state, tells each side when the other leaves, and enforces the `[chat]`
//! limits. Sans-IO and deterministic (STYLE R1, R10): events and `now` in, actions out.
//!
//! - [`protocol`]: the JSON messages and [`RequestError`], the one error enum of this layer.
//! - [`matchmaker`]: the queue and the pairing rules (interests, timeouts, cooldown).
//! - [`metrics`]: the counters and their Prometheus exposition (`App::write_metrics`).
//! - This file: per-connection state ([`Roulette`] keeps a table of `Peer`s by slot, of about
//!   80 bytes each), rate limits, the chat lifecycle and the online count.
//!
//! # Connection state
//! `Idle -> Searching -> Chatting(partner) -> Idle`, plus `Closing` once the roulette itself has
//! asked the server to close the connection (binary frame, abuse). Every way out of a chat
//! (`leave`, a skip, a disconnect, a close, shutdown) goes through one function that resets
//! both sides' typing state and tells the partner who stays `partner_left` with the reason, so
//! a stale typing indicator cannot survive the chat (the client clears it on `partner_left`).
//!
//! # Limits
//! Three token buckets per connection, each `(tokens, last refill)`:
//! - messages and typing events: `chat.rate_burst`, refilled at `chat.rate_per_second`. Typing
//!   events that do not change the state are dropped for free (clients may send one per key
//!   press) and `typing:false` is free because it can only follow a `typing:true` that paid,
//!   so the stop is never lost to the rate limit.
//! - searches (each skip makes two people's clients work): [`SEARCH_BURST`] refilled at
//!   [`SEARCH_PER_SECOND`].
//! - errors: every `error` reply costs a token from [`ERROR_BURST`] refilled at
//!   [`ERROR_PER_SECOND`]; when none is left the connection is closed with 1008. A person who
//!   trips over an error now and then never gets near it; a script that floods invalid or
//!   over-the-rate messages is cut off after about [`ERROR_BURST`] of them.
//!
//! Owns: the product's state per person and the chat lifecycle. May not touch: sockets, the
//! clock, the daemon's configuration (it gets `ChatConfig`), Redis (it speaks `cluster::Op`).
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use self::{
    matchmaker::{Match, Matchmaker, Parked, Searcher},
    metrics::RouletteCounters,
    protocol::{ClientMessage, Interests, LeaveReason, RequestError, ServerMessage},
};
use crate::{
    app::{Action, App, Event, Message, PeerId},
    cluster::{Event as ClusterEvent, Forwarded, Op},
    safety::{AddrHash, Ban, Ledger, Rules},
    ws::close_code,
};

pub mod matchmaker;
pub mod metrics;
pub mod protocol;
mod safety;

/// The roulette's own settings: the `[chat]` table of the configuration file (which
/// `config.rs` reads and validates; the roulette never sees the rest of the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatConfig {
    /// Longest chat message in Unicode scalar values. Default 2000.
    pub max_message_chars: usize,
    /// Token bucket refill for messages and typing events, per second. Default 5.
    pub rate_per_second: f64,
    /// Token bucket size. Default 20.
    pub rate_burst: u32,
    /// How long a searcher with interests waits for a shared one before taking anyone. Default 5 s.
    pub interest_timeout: std::time::Duration,
    /// Two people who just parted are not paired again within this time. Default 10 s.
    pub rematch_cooldown: std::time::Duration,
    /// Online-count updates are sent at most this often. Default 5 s.
    pub online_interval: std::time::Duration,
    /// How long a dropped connection's chat or search waits for a `resume`. Default 20 s;
    /// zero turns resuming off.
    pub resume_window: std::time::Duration,
    /// Searches one client address (an IPv6 /64) may send in a burst, across its connections
    /// (`[safety] address_search_burst`): a household behind one address, not a script with
    /// many sockets. Default 60; 0 turns the address budget off.
    pub address_search_burst: u32,
    /// Refill of that budget per second (`[safety] address_searches_per_second`). Default 3.
    pub address_searches_per_second: f64,
    /// WebSockets one address may hold across a cluster (`[safety]
    /// max_connections_per_address`; the endpoint enforces it per worker with 429). 0: no limit.
    pub max_connections_per_address: usize,
    /// Reports, blocks, spam and proof of work (the rest of `[safety]`).
    pub safety: Rules,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_message_chars: 2000,
            rate_per_second: 5.0,
            rate_burst: 20,
            interest_timeout: std::time::Duration::from_secs(5),
            rematch_cooldown: std::time::Duration::from_secs(10),
            online_interval: std::time::Duration::from_secs(5),
            resume_window: std::time::Duration::from_secs(20),
            address_search_burst: 60,
            address_searches_per_second: 3.0,
            max_connections_per_address: 8,
            safety: Rules::default(),
        }
    }
}

/// Error replies a connection may get in a burst before it is closed with 1008.
pub const ERROR_BURST: u32 = 20;

/// Refill rate of the error budget: one error per second can go on forever.
pub const ERROR_PER_SECOND: f64 = 1.0;

/// Searches (including skips) a connection may send in a burst.
pub const SEARCH_BURST: u32 = 20;

/// Refill rate of the search budget: a skip per second, sustained.
pub const SEARCH_PER_SECOND: f64 = 1.0;

/// How often what has expired is forgotten: address budgets that are full again (nobody used
/// them lately), and the safety state (reports, bans, lines, blocks, last partners).
const SWEEP: Duration = Duration::from_secs(10);

/// Lines (and the typing state) kept for an away person at most, and their bytes: past either,
/// the oldest go first.
pub const KEPT_LINES: usize = 50;
/// See [`KEPT_LINES`].
pub const KEPT_BYTES: usize = 64 * 1024;

/// Away sessions kept at most: past it, a drop ends the chat at once, so that a flood of
/// connections that drop cannot grow memory without bound.
pub const MAX_AWAY: usize = 50_000;

/// Bytes of kept lines across every away session of this worker: past it, lines for away
/// people are not kept (each session's own cap is [`KEPT_BYTES`]).
pub const MAX_KEPT_TOTAL: usize = 64 << 20;

/// How long a connection waits for another worker to hand a session over.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// How long lines still addressed to a session that moved to another worker are sent on.
const FORWARD_FOR: Duration = Duration::from_secs(5);

/// How long a resumed session's partner lines wait for those its old worker sends on (so that
/// a line cannot overtake an earlier one); past it, they go out anyway.
const HOLD_FOR: Duration = Duration::from_secs(2);

/// The close code and reason of a connection whose session a newer one resumed.
const CLOSE_RESUMED: u16 = 4000;
const REASON_RESUMED: &str = "resumed elsewhere";

const REASON_BINARY: &str = "binary messages are not supported";
const REASON_ABUSE: &str = "too many invalid or rate-limited messages";
const REASON_CROWDED: &str = "too many connections from your address";

/// How long an address at its connection cap across the cluster gets 429 on this worker (what
/// a connection of that address that opens or closes meanwhile does not change).
const CROWDED_FOR: Duration = Duration::from_secs(10);

/// Counters for metrics. `online` includes connections the roulette is closing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouletteStats {
    /// Open connections (after `Open`, until `Closed`).
    pub online: usize,
    /// People in the waiting queue.
    pub searching: usize,
    /// Chats going on (each has two people).
    pub pairs: usize,
}

/// Where a connection is in the chat lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatState {
    /// Connected, neither searching nor chatting.
    Idle,
    /// In the matchmaker's queue.
    Searching,
    /// In a chat with the partner.
    Chatting(PeerId),
    /// The roulette has asked the server to close it; every event but `Closed` is ignored.
    Closing,
}

/// A token bucket: `tokens` up to a burst, refilled continuously from `at` (milliseconds on
/// the roulette's clock). 16 bytes, three per connection. The rate and burst are passed in on
/// each use, so a config reload applies to live connections at once.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f32,
    at: u64,
}

impl TokenBucket {
    fn full(now: u64, burst: u32) -> TokenBucket {
        TokenBucket { tokens: burst as f32, at: now }
    }

    /// Whether the bucket would be full at `now`.
    fn is_full(&self, now: u64, per_second: f64, burst: u32) -> bool {
        let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
        f64::from(self.tokens) + elapsed * per_second >= f64::from(burst.max(1))
    }

    /// Takes one token if there is one.
    fn try_take(&mut self, now: u64, per_second: f64, burst: u32) -> bool {
        let burst = f64::from(burst.max(1));
        let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
        self.tokens = (f64::from(self.tokens) + elapsed * per_second).min(burst) as f32;
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A resume token: 128 random bits, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Token([u8; 16]);

impl Token {
    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The token written by [`hex`](Self::hex); anything else is no token.
    fn parse(s: &str) -> Option<Token> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut t = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
            t[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Token(t))
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, else `/dev/urandom`).
pub fn os_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, which the kernel writes at most.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    if filled < buf.len() {
        use std::io::Read;
        let read =
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf[filled..]));
        if read.is_err() {
            // No kernel source at all: std's per-process random hash keys, mixed per call.
            use std::hash::{BuildHasher, Hasher};
            for chunk in buf[filled..].chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(chunk.as_ptr() as usize);
                chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
            }
        }
    }
}

/// One connection's state.
#[derive(Debug)]
struct Peer {
    state: ChatState,
    /// The token that resumes this person's session after a drop.
    token: Token,
    /// Who the client is (the keyed hash of its address).
    client: AddrHash,
    /// A message was handled (`resume` is only good as the first).
    spoke: bool,
    /// The typing state last relayed to the partner; reset when a chat starts or ends and when
    /// a message is relayed (the receiving client clears the indicator on a message).
    typing: bool,
    messages: TokenBucket,
    searches: TokenBucket,
    errors: TokenBucket,
}

impl Peer {
    fn new(now: u64, config: &ChatConfig, token: Token, client: AddrHash) -> Peer {
        Peer {
            state: ChatState::Idle,
            token,
            client,
            spoke: false,
            typing: false,
            messages: TokenBucket::full(now, config.rate_burst),
            searches: TokenBucket::full(now, SEARCH_BURST),
            errors: TokenBucket::full(now, ERROR_BURST),
        }
    }
}

/// A person whose connection dropped, kept under its old id for `resume_window`: its chat or
/// its place in the queue, and what its partner sent meanwhile.
#[derive(Debug)]
struct Away {
    peer: Peer,
    until: Instant,
    /// Encoded messages for it, oldest first (a typing state replaces the one before it).
    kept: VecDeque<String>,
    kept_bytes: usize,
    /// A searcher's place (one process).
    parked: Option<Parked>,
    /// A searcher's interests (in a cluster, whose queue keeps the place).
    interests: Vec<String>,
}

impl Away {
    fn keep(&mut self, json: String) {
        let is_typing = |j: &str| j.starts_with(r#"{"type":"typing""#);
        if is_typing(&json) && self.kept.back().is_some_and(|j| is_typing(j)) {
            if let Some(old) = self.kept.pop_back() {
                self.kept_bytes -= old.len();
            }
        }
        self.kept_bytes += json.len();
        self.kept.push_back(json);
        while self.kept.len() > KEPT_LINES || self.kept_bytes > KEPT_BYTES {
            let Some(old) = self.kept.pop_front() else { break };
            self.kept_bytes -= old.len();
        }
    }
}

/// The last online count broadcast, for coalescing.
#[derive(Debug, Default)]
struct OnlineCount {
    /// The count last broadcast (0 before the first).
    sent: usize,
    /// When it was broadcast; the first `Open` counts as the first broadcast.
    sent_at: Option<Instant>,
}

/// The peers of one endpoint, indexed by their slot: the endpoint hands out dense slots
/// (a slab), so a vector is both the fastest map (no hash, one bounds check per relayed
/// message) and the smallest (80 bytes a person, none of a hash table's empty buckets, which
/// at 19,000 people cost more than the peers themselves). The whole `PeerId` is kept and
/// compared, so a stale id (an earlier occupant of the slot) finds nobody.
#[derive(Debug, Default)]
struct PeerTable {
    slots: Vec<Option<(PeerId, Peer)>>,
    len: usize,
}

impl PeerTable {
    fn len(&self) -> usize {
        self.len
    }

    fn contains_key(&self, id: &PeerId) -> bool {
        self.get(id).is_some()
    }

    fn get(&self, id: &PeerId) -> Option<&Peer> {
        match self.slots.get(id.slot() as usize) {
            Some(Some((held, peer))) if held == id => Some(peer),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: &PeerId) -> Option<&mut Peer> {
        match self.slots.get_mut(id.slot() as usize) {
            Some(Some((held, peer))) if held == id => Some(peer),
            _ => None,
        }
    }

    /// Adds a peer; an earlier occupant of its slot (whose `Closed` was missed) is replaced.
    fn insert(&mut self, id: PeerId, peer: Peer) {
        let slot = id.slot() as usize;
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].replace((id, peer)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: &PeerId) -> Option<Peer> {
        let entry = self.slots.get_mut(id.slot() as usize)?;
        if entry.as_ref().is_some_and(|(held, _)| held == id) {
            self.len -= 1;
            let removed = entry.take().map(|(_, peer)| peer);
            // Give back the tail that no peer uses any more (after a crowd left).
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
                self.slots.shrink_to(self.slots.len() * 2);
            }
            return removed;
        }
        None
    }

    fn iter(&self) -> impl Iterator<Item = (&PeerId, &Peer)> {
        self.slots.iter().flatten().map(|(id, peer)| (id, peer))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.slots.iter_mut().flatten().map(|(_, peer)| peer)
    }
}

/// The chat roulette application. See the module documentation.
#[derive(Debug)]
pub struct Roulette {
    config: ChatConfig,
    peers: PeerTable,
    /// The roulette's clock starts at the first instant it is given (it never reads one).
    epoch: Option<Instant>,
    matchmaker: Matchmaker,
    pairs: usize,
    online: OnlineCount,
    /// `handle_shutdown` ran: no more matching, no more online broadcasts.
    is_draining: bool,
    counters: RouletteCounters,
    /// The shared crowd, when this roulette is one worker of a cluster.
    cluster: Option<Cluster>,
    /// Every resume token here, live or away, and whose it is.
    tokens: HashMap<Token, PeerId>,
    /// People whose connection dropped, by their old id, and when each one's window ends.
    away: HashMap<PeerId, Away>,
    away_wakes: BTreeSet<(Instant, PeerId)>,
    /// The bytes kept in `away`, against [`MAX_KEPT_TOTAL`].
    kept_total: usize,
    /// Search budgets per client address, and when full ones are next forgotten.
    addresses: HashMap<AddrHash, TokenBucket>,
    next_sweep: Option<Instant>,
    /// Where tokens come from ([`os_random`] unless a test says otherwise).
    random: fn(&mut [u8]),
    /// Reports, shadow bans and repeated lines by address.
    ledger: Ledger,
    /// Each connection's proof-of-work challenge, while the proof of work is on.
    challenges: HashMap<PeerId, protocol::PowChallenge>,
    /// Each person's last partner's address and when that chat ended (report, block after).
    recent: HashMap<PeerId, (AddrHash, Instant)>,
    /// Searches per second, for `pow_bits = "auto"`.
    search_rate: safety::SearchRate,
    /// Connections here per client address (in a cluster, Redis sums them across workers).
    local_clients: HashMap<AddrHash, u32>,
    /// Addresses whose ban a reload lifted, whose waiting searchers go back to everyone.
    pardoned: Vec<AddrHash>,
    /// Connections closed for taking their address past its cap across the cluster: their end
    /// frees no place.
    over_cap: BTreeSet<PeerId>,
}

/// Proxy ids of partners on other workers carry this worker number (local workers are
/// numbered below 64).
const REMOTE_WORKER: u8 = 255;

/// How long a search that Redis failed waits before it is made again (while the link is up).
const SEARCH_RETRY: Duration = Duration::from_secs(1);

/// The roulette's side of a cluster: matching happens in Redis, partners may be elsewhere.
#[derive(Debug)]
struct Cluster {
    /// This worker's id ("node/index/pid"); a peer's key is "WORKER#ID".
    worker: String,
    /// Operations for the cluster node, in order.
    ops: VecDeque<Op>,
    /// Partners on other workers: proxy id -> key, and back.
    remote_keys: HashMap<PeerId, String>,
    remote_ids: HashMap<String, PeerId>,
    next_remote: u32,
    /// The interests of every local searcher, to search again after a wake or a reconnect.
    searching: HashMap<PeerId, Vec<String>>,
    /// Searches to make again: interest timeouts, cooldowns, failed searches.
    wakes: BTreeSet<(Instant, PeerId)>,
    /// The link to Redis is up.
    up: bool,
    /// The crowd across every worker, from the last heartbeat.
    crowd: Option<usize>,
    /// Connections waiting for another worker to hand their session over, until when.
    resuming: HashMap<PeerId, Instant>,
    /// Sessions that moved to another worker: their new key, and until when records still
    /// addressed to the old id are sent on.
    moved: HashMap<PeerId, (String, Instant)>,
    /// Sessions that moved here whose partner's lines wait for the old worker's last forwarded
    /// one (its `End`), until when, and the lines.
    held: HashMap<PeerId, (Instant, Vec<String>)>,
    /// The addresses of partners on other workers, by proxy id (for report and block).
    clients: HashMap<PeerId, AddrHash>,
    /// Reports, blocks and pardons made while the link was down, sent when it is up again (at
    /// most [`MAX_OFFLINE_OPS`]), and the connection counts that changed meanwhile.
    offline: Vec<Op>,
    offline_counts: HashMap<String, u32>,
}

/// Safety operations kept while the link to Redis is down.
const MAX_OFFLINE_OPS: usize = 10_000;

impl Cluster {
    fn key(&self, peer: PeerId) -> String {
        match self.remote_keys.get(&peer) {
            Some(key) => key.clone(),
            None => format!("{}#{}", self.worker, peer.as_u64()),
        }
    }

    /// The local id of `key` if it is on this worker, else its proxy id (made if needed).
    fn id_of(&mut self, key: &str) -> PeerId {
        if let Some((worker, id)) = key.rsplit_once('#') {
            if worker == self.worker {
                if let Ok(n) = id.parse::<u64>() {
                    return PeerId::new((n >> 56) as u8, (n >> 32) as u32 & 0xff_ffff, n as u32);
                }
            }
        }
        if let Some(&id) = self.remote_ids.get(key) {
            return id;
        }
        self.next_remote = self.next_remote.wrapping_add(1);
        let id = PeerId::new(REMOTE_WORKER, self.next_remote >> 8, self.next_remote);
        self.remote_ids.insert(key.to_owned(), id);
        self.remote_keys.insert(id, key.to_owned());
        id
    }

    /// The id of `key` if this worker knows it (a local peer or a partner's proxy).
    fn known_id(&self, key: &str) -> Option<PeerId> {
        match key.rsplit_once('#') {
            Some((worker, id)) if worker == self.worker => {
                let n = id.parse::<u64>().ok()?;
                Some(PeerId::new((n >> 56) as u8, (n >> 32) as u32 & 0xff_ffff, n as u32))
            }
            _ => self.remote_ids.get(key).copied(),
        }
    }

    fn forget(&mut self, proxy: PeerId) {
        self.clients.remove(&proxy);
        if let Some(key) = self.remote_keys.remove(&proxy) {
            self.remote_ids.remove(&key);
        }
    }

    /// A report, block, pardon or count for Redis: now, or when the link is up again.
    fn safety_op(&mut self, op: Op) {
        match op {
            op if self.up => self.ops.push_back(op),
            Op::Count { client, count } => {
                self.offline_counts.insert(client, count);
            }
            op if self.offline.len() < MAX_OFFLINE_OPS => self.offline.push(op),
            _ => {}
        }
    }

    fn cancel_search(&mut self, peer: PeerId) {
        self.searching.remove(&peer);
        self.wakes.retain(|&(_, p)| p != peer);
        self.ops.push_back(Op::Cancel { peer });
    }
}

fn is_remote(peer: PeerId) -> bool {
    peer.worker() == REMOTE_WORKER
}

impl Roulette {
    /// A roulette with nobody connected yet.
    pub fn new(config: ChatConfig) -> Roulette {
        Roulette {
            matchmaker: Matchmaker::new(config.interest_timeout, config.rematch_cooldown),
            config,
            peers: PeerTable::default(),
            epoch: None,
            pairs: 0,
            online: OnlineCount::default(),
            is_draining: false,
            counters: RouletteCounters::default(),
            cluster: None,
            tokens: HashMap::new(),
            away: HashMap::new(),
            away_wakes: BTreeSet::new(),
            kept_total: 0,
            addresses: HashMap::new(),
            next_sweep: None,
            random: os_random,
            ledger: Ledger::default(),
            challenges: HashMap::new(),
            recent: HashMap::new(),
            search_rate: safety::SearchRate::default(),
            local_clients: HashMap::new(),
            pardoned: Vec::new(),
            over_cap: BTreeSet::new(),
        }
    }

    /// The same roulette drawing its resume tokens from `random` (tests).
    pub fn with_random(mut self, random: fn(&mut [u8])) -> Roulette {
        self.random = random;
        self
    }

    /// A roulette that is worker `worker` ("node/index/pid") of a cluster: it matches through
    /// the shared queue in Redis ([`App::poll_cluster_op`], [`App::handle_cluster_event`]).
    pub fn clustered(config: ChatConfig, worker: String) -> Roulette {
        let mut r = Roulette::new(config);
        r.cluster = Some(Cluster {
            worker,
            ops: VecDeque::new(),
            remote_keys: HashMap::new(),
            remote_ids: HashMap::new(),
            next_remote: 0,
            searching: HashMap::new(),
            wakes: BTreeSet::new(),
            up: false,
            crowd: None,
            resuming: HashMap::new(),
            clients: HashMap::new(),
            offline: Vec::new(),
            offline_counts: HashMap::new(),
            moved: HashMap::new(),
            held: HashMap::new(),
        });
        r
    }

    /// People online as the page shows it: the whole crowd in a cluster, else this process.
    fn online_count(&self) -> usize {
        match &self.cluster {
            Some(Cluster { crowd: Some(n), .. }) => (*n).max(self.peers.len()),
            _ => self.peers.len(),
        }
    }

    /// Sends `msg` to `to`, through the cluster if `to` is on another worker, or keeps it for
    /// `to`'s resume if `to` is away.
    fn deliver(
        &mut self,
        out: &mut Vec<Action>,
        from: PeerId,
        to: PeerId,
        msg: &ServerMessage<'_>,
    ) {
        match &mut self.cluster {
            Some(c) if is_remote(to) => {
                let key = c.key(to);
                c.ops.push_back(Op::Relay { to: key, from, json: msg.encode() });
            }
            _ => self.send_local(out, to, msg.encode()),
        }
    }

    /// Sends an encoded message to local `to`, or keeps it if `to` is away, or holds it while
    /// `to`'s old worker may still forward earlier ones.
    fn send_local(&mut self, out: &mut Vec<Action>, to: PeerId, json: String) {
        // Every relayed line comes here: the maps are nearly always empty, and then not hashed.
        let held = self.cluster.as_mut().filter(|c| !c.held.is_empty());
        if let Some((_, lines)) = held.and_then(|c| c.held.get_mut(&to)) {
            lines.push(json);
            return;
        }
        self.send_now(out, to, json);
    }

    /// Sends an encoded message to local `to` (or keeps it if `to` is away), holding nothing.
    fn send_now(&mut self, out: &mut Vec<Action>, to: PeerId, json: String) {
        if !self.away.is_empty() && self.away.contains_key(&to) {
            self.keep(to, json);
        } else {
            out.push(Action::Send { to, message: Message::Text(json) });
        }
    }

    /// Keeps `json` for away `to`, within the worker's budget for kept lines.
    fn keep(&mut self, to: PeerId, json: String) {
        let Some(a) = self.away.get_mut(&to) else { return };
        if self.kept_total + json.len() > MAX_KEPT_TOTAL {
            return;
        }
        let before = a.kept_bytes;
        a.keep(json);
        self.kept_total = self.kept_total + a.kept_bytes - before;
    }

    /// Takes `id` out of `away`, with its kept lines out of the budget.
    fn take_away(&mut self, id: PeerId) -> Option<Away> {
        let a = self.away.remove(&id)?;
        self.kept_total -= a.kept_bytes;
        self.away_wakes.remove(&(a.until, id));
        Some(a)
    }

    /// Sends what was held for `to`, in order.
    fn release(&mut self, to: PeerId, out: &mut Vec<Action>) {
        let Some((_, lines)) = self.cluster.as_mut().and_then(|c| c.held.remove(&to)) else {
            return;
        };
        for json in lines {
            self.send_now(out, to, json);
        }
    }

    /// The partner `from` (a key) of local `to` left; `now` bypasses any hold (a record its
    /// old worker sent on).
    fn remote_left(
        &mut self,
        at: Instant,
        to: PeerId,
        from: &str,
        reason: &str,
        now: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = &mut self.cluster else { return };
        let Some(proxy) = c.known_id(from) else { return };
        let Some(p) = self.person_mut(to) else { return };
        if p.state != ChatState::Chatting(proxy) {
            return;
        }
        p.state = ChatState::Idle;
        p.typing = false;
        self.pairs = self.pairs.saturating_sub(1);
        self.remember_partners(at, to, proxy);
        if let Some(c) = &mut self.cluster {
            if is_remote(proxy) {
                c.forget(proxy);
            }
        }
        let json = ServerMessage::PartnerLeft { reason: LeaveReason::from_wire(reason) }.encode();
        if now {
            self.send_now(out, to, json);
        } else {
            self.send_local(out, to, json);
        }
    }

    /// A line from `from` (a key) for local `to`, if they are in a chat.
    fn remote_text(
        &mut self,
        to: PeerId,
        from: &str,
        json: String,
        now: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(sender) = self.cluster.as_ref().and_then(|c| c.known_id(from)) else { return };
        if self.person(to).is_some_and(|p| p.state == ChatState::Chatting(sender)) {
            if now {
                self.send_now(out, to, json);
            } else {
                self.send_local(out, to, json);
            }
        }
    }

    /// A local person's state, connected or away.
    fn person_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        match self.peers.get_mut(&id) {
            Some(p) => Some(p),
            None => self.away.get_mut(&id).map(|a| &mut a.peer),
        }
    }

    fn person(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(&id).or_else(|| self.away.get(&id).map(|a| &a.peer))
    }

    /// Applies a reloaded `[chat]` table. Live connections get the new limits at once: message
    /// length and rate on their next message, the interest timeout and cooldown for people
    /// already waiting (counted from when they started searching or parted), the online
    /// interval from the last broadcast.
    pub fn set_config(&mut self, config: ChatConfig) {
        self.matchmaker.set_limits(config.interest_timeout, config.rematch_cooldown);
        let pardons = config.safety.pardon != self.config.safety.pardon;
        self.config = config;
        if pardons {
            self.apply_pardons();
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> RouletteStats {
        RouletteStats {
            online: self.peers.len(),
            searching: match &self.cluster {
                Some(c) => c.searching.len(),
                None => self.matchmaker.len(),
            },
            pairs: self.pairs,
        }
    }

    /// Counters for metrics, since the roulette was created.
    pub fn counters(&self) -> &RouletteCounters {
        &self.counters
    }

    /// `now` in milliseconds on the roulette's clock.
    fn millis(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    fn handle_open(&mut self, now: Instant, peer: PeerId, client: AddrHash, out: &mut Vec<Action>) {
        if self.peers.contains_key(&peer) {
            return; // A repeated Open is a server bug; the first one counted.
        }
        let now_ms = self.millis(now);
        let mut bytes = [0u8; 16];
        (self.random)(&mut bytes);
        let token = Token(bytes);
        self.tokens.insert(token, peer);
        let here = self.local_clients.entry(client).or_default();
        *here += 1;
        if let Some(c) = &mut self.cluster {
            let (client, count) = (client.to_string(), *here);
            c.ops.push_back(Op::Token { peer, token: token.hex(), client, count, fresh: true });
        }
        self.peers.insert(peer, Peer::new(now_ms, &self.config, token, client));
        if self.online.sent_at.is_none() {
            // The first person is told the count by the welcome, and nobody else is here: that
            // counts as the first broadcast and starts the interval.
            self.online = OnlineCount { sent: self.online_count(), sent_at: Some(now) };
        }
        let welcome = ServerMessage::Welcome {
            online: self.online_count(),
            max_message_chars: self.config.max_message_chars,
            resume_token: &token.hex(),
            pow: self.new_challenge(now, peer),
        };
        send(out, peer, &welcome);
    }

    fn handle_text(&mut self, now: Instant, peer: PeerId, text: &str, out: &mut Vec<Action>) {
        let first = match self.peers.get_mut(&peer) {
            Some(p) if p.state != ChatState::Closing => !std::mem::replace(&mut p.spoke, true),
            // Unknown (before Open, after Closed) or being closed: nothing to say.
            _ => return,
        };
        let result = ClientMessage::parse(text)
            .and_then(|msg| self.handle_message(now, peer, msg, first, out));
        if let Err(e) = result {
            self.reply_error(now, peer, &e, out);
        }
    }

    fn handle_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        msg: ClientMessage<'_>,
        first: bool,
        out: &mut Vec<Action>,
    ) -> protocol::Result<()> {
        if let ClientMessage::Resume { token } = &msg {
            return self.handle_resume(now, peer, token, first, out);
        }
        if let Some(c) = &mut self.cluster {
            // Anything else while a handover is awaited: the connection goes on as itself.
            c.resuming.remove(&peer);
        }
        match msg {
            ClientMessage::Search { interests, pow } => {
                self.handle_search(now, peer, interests, pow.as_deref(), out)
            }
            ClientMessage::Report { reason } => self.handle_report(now, peer, reason, out),
            ClientMessage::Block => self.handle_block(now, peer, out),
            ClientMessage::Message { text } => self.handle_chat_message(now, peer, &text, out),
            ClientMessage::Typing { active } => self.handle_typing(now, peer, active, out),
            ClientMessage::Leave => {
                self.end_activity(now, peer, LeaveReason::Left, out);
                Ok(())
            }
            ClientMessage::Resume { .. } => Ok(()),
        }
    }

    /// `search`: from Idle starts a search; from Searching keeps the place and updates the
    /// interests; from Chatting skips (the partner is told `next`). Always answered with
    /// `searching` before any `matched`, so a client can tell a stale `matched` from a new one.
    fn handle_search(
        &mut self,
        now: Instant,
        peer: PeerId,
        interests: Interests,
        pow: Option<&str>,
        out: &mut Vec<Action>,
    ) -> protocol::Result<()> {
        let now_ms = self.millis(now);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        if !p.searches.try_take(now_ms, SEARCH_PER_SECOND, SEARCH_BURST) {
            return Err(RequestError::RateLimited);
        }
        self.check_pow(now, peer, pow)?;
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        // And the address's budget, shared by all its connections (while matching goes on).
        let (burst, rate) =
            (self.config.address_search_burst, self.config.address_searches_per_second);
        if !self.is_draining && burst > 0 {
            let address =
                self.addresses.entry(p.client).or_insert_with(|| TokenBucket::full(now_ms, burst));
            if !address.try_take(now_ms, rate, burst) {
                return Err(RequestError::RateLimited);
            }
            self.next_sweep.get_or_insert(now + SWEEP);
        }
        let client = p.client;
        self.pow_used(now, peer, client);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        if let ChatState::Chatting(partner) = p.state {
            self.end_chat(now, peer, partner, LeaveReason::Next, out);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.state = ChatState::Searching;
        }
        let pow = self.new_challenge(now, peer);
        send(out, peer, &ServerMessage::Searching { pow });
        if self.is_draining {
            return Ok(()); // The server is closing everyone; do not start chats now.
        }
        if let Some(c) = &mut self.cluster {
            let interests: Vec<String> = interests.iter().map(str::to_owned).collect();
            c.wakes.retain(|&(_, p)| p != peer);
            c.searching.insert(peer, interests.clone());
            if c.up {
                c.ops.push_back(Op::Search { peer, interests, client: client.to_string() });
            } else {
                send(out, peer, &ServerMessage::Matching { available: false });
            }
            return Ok(());
        }
        let who = Searcher { client, shadow: self.ledger.is_banned(now, client) };
        if let Some(m) = self.matchmaker.handle_search_as(now, peer, interests, who) {
            self.start_chat(now, m, out);
        }
        Ok(())
    }

    /// `message`: checked in the order in chat, length, not empty, rate; then relayed to the
    /// partner only (no echo: the sender's client shows its own line).
    fn handle_chat_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        text: &str,
        out: &mut Vec<Action>,
    ) -> protocol::Result<()> {
        let now_ms = self.millis(now);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        let ChatState::Chatting(partner) = p.state else {
            return Err(RequestError::NotInChat);
        };
        let max = self.config.max_message_chars;
        // `nth(max)` exists iff there are more than `max` scalar values; stops early.
        if text.chars().nth(max).is_some() {
            return Err(RequestError::MessageTooLong { max });
        }
        if text.trim().is_empty() {
            return Err(RequestError::EmptyMessage);
        }
        if !p.messages.try_take(now_ms, self.config.rate_per_second, self.config.rate_burst) {
            return Err(RequestError::RateLimited);
        }
        p.typing = false;
        let sender = p.client;
        self.counters.messages_relayed += 1;
        self.counters.messages_relayed_remote += u64::from(is_remote(partner));
        self.deliver(out, peer, partner, &ServerMessage::Message { text });
        self.note_line(now, sender, partner, text, out);
        Ok(())
    }

    /// `typing`: relayed only when it changes the state; `true` costs a token, `false` is free.
    fn handle_typing(
        &mut self,
        now: Instant,
        peer: PeerId,
        active: bool,
        out: &mut Vec<Action>,
    ) -> protocol::Result<()> {
        let now_ms = self.millis(now);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        let ChatState::Chatting(partner) = p.state else {
            return Err(RequestError::NotInChat);
        };
        if p.typing == active {
            return Ok(());
        }
        if active
            && !p.messages.try_take(now_ms, self.config.rate_per_second, self.config.rate_burst)
        {
            return Err(RequestError::RateLimited);
        }
        p.typing = active;
        self.deliver(out, peer, partner, &ServerMessage::Typing { active });
        Ok(())
    }

    /// Leaves whatever `peer` is doing: ends its chat (telling the partner `reason`) or cancels
    /// its search. Idle and Closing stay as they are; otherwise `peer` becomes Idle.
    fn end_activity(
        &mut self,
        now: Instant,
        peer: PeerId,
        reason: LeaveReason,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        match p.state {
            ChatState::Chatting(partner) => self.end_chat(now, peer, partner, reason, out),
            ChatState::Searching => {
                p.state = ChatState::Idle;
                match &mut self.cluster {
                    Some(c) => c.cancel_search(peer),
                    None => {
                        self.matchmaker.cancel(peer);
                    }
                }
            }
            ChatState::Idle | ChatState::Closing => {}
        }
    }

    /// Ends the chat between `peer` (who caused it) and `partner` (who is told `reason`). Both
    /// become Idle with their typing state reset, and the cooldown starts.
    fn end_chat(
        &mut self,
        now: Instant,
        peer: PeerId,
        partner: PeerId,
        reason: LeaveReason,
        out: &mut Vec<Action>,
    ) {
        self.remember_partners(now, peer, partner);
        for (me, other) in [(peer, partner), (partner, peer)] {
            if let Some(p) = self.person_mut(me) {
                if p.state == ChatState::Chatting(other) {
                    p.state = ChatState::Idle;
                }
                p.typing = false;
            }
        }
        self.pairs = self.pairs.saturating_sub(1);
        match &mut self.cluster {
            Some(c) => {
                // Redis keeps the cooldown and the pairs; a remote partner is told there.
                let partner_key = c.key(partner);
                if is_remote(partner) {
                    c.forget(partner);
                    c.ops.push_back(Op::Part {
                        peer,
                        partner: partner_key,
                        reason: Some(reason.as_str()),
                    });
                } else {
                    c.ops.push_back(Op::Part { peer, partner: partner_key, reason: None });
                    self.deliver(out, peer, partner, &ServerMessage::PartnerLeft { reason });
                }
            }
            None => {
                self.deliver(out, peer, partner, &ServerMessage::PartnerLeft { reason });
                self.matchmaker.handle_parting(now, peer, partner);
            }
        }
    }

    /// Starts a chat the shared queue made for local `peer` with `partner` (local or a
    /// proxy). Only local people are told here; a remote partner's worker tells its own.
    fn start_cluster_chat(
        &mut self,
        peer: PeerId,
        partner: PeerId,
        common: &[String],
        waited: Duration,
        out: &mut Vec<Action>,
    ) {
        if let Some(c) = &mut self.cluster {
            c.searching.remove(&peer);
            c.wakes.retain(|&(_, p)| p != peer);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.state = ChatState::Chatting(partner);
            p.typing = false;
        }
        self.counters.match_wait.observe(waited);
        let interests = Interests::parse(common.iter().map(String::as_str)).unwrap_or_default();
        send(out, peer, &ServerMessage::Matched { common_interests: &interests });
    }

    /// What the cluster said.
    fn handle_cluster(&mut self, now: Instant, event: ClusterEvent, out: &mut Vec<Action>) {
        let Some(c) = &mut self.cluster else { return };
        match event {
            ClusterEvent::Matched {
                peer,
                partner,
                waited,
                partner_waited,
                partner_client,
                common,
            } => {
                let partner_id = c.id_of(&partner);
                if let (true, Some(client)) =
                    (is_remote(partner_id), AddrHash::parse(&partner_client))
                {
                    c.clients.insert(partner_id, client);
                }
                let searching = |r: &Roulette, id: PeerId| {
                    r.peers.get(&id).is_some_and(|p| p.state == ChatState::Searching)
                };
                let me_ok = searching(self, peer);
                let partner_local = !is_remote(partner_id);
                let partner_ok = !partner_local || searching(self, partner_id);
                if me_ok && partner_ok {
                    self.start_cluster_chat(peer, partner_id, &common, waited, out);
                    if partner_local {
                        self.start_cluster_chat(partner_id, peer, &common, partner_waited, out);
                    }
                    // Counted once, by the searcher's worker (the waiter's does not).
                    self.counters.matches += 1;
                    self.pairs += 1;
                    return;
                }
                // One side left while the queue paired them: undo, and whoever still searches
                // searches again (keeping nothing: their entry left the queue with the match).
                let Some(c) = &mut self.cluster else { return };
                let reason = Some(LeaveReason::Disconnected.as_str());
                if partner_local {
                    let my_key = c.key(peer);
                    c.ops.push_back(Op::Part { peer: partner_id, partner: my_key, reason: None });
                } else {
                    c.forget(partner_id);
                    c.ops.push_back(Op::Part { peer, partner, reason });
                }
                for id in [peer, partner_id] {
                    if !is_remote(id) && searching(self, id) {
                        self.research(id);
                    }
                }
            }
            ClusterEvent::Waiting { peer, wake } => {
                if let Some(d) = wake {
                    c.wakes.insert((now + d, peer));
                }
            }
            ClusterEvent::SearchFailed { peer } => {
                if c.searching.contains_key(&peer) && c.up {
                    c.wakes.insert((now + SEARCH_RETRY, peer));
                }
            }
            ClusterEvent::RemoteMatched { to, from, waited, client, common } => {
                let proxy = c.id_of(&from);
                if let Some(client) = AddrHash::parse(&client) {
                    c.clients.insert(proxy, client);
                }
                if self.peers.get(&to).is_some_and(|p| p.state == ChatState::Searching) {
                    self.start_cluster_chat(to, proxy, &common, waited, out);
                    self.pairs += 1;
                } else if let Some(c) = &mut self.cluster {
                    c.forget(proxy);
                    let reason = Some(LeaveReason::Disconnected.as_str());
                    c.ops.push_back(Op::Part { peer: to, partner: from, reason });
                }
            }
            ClusterEvent::RemoteLeft { to, from, reason } => {
                if let Some((new, _)) = c.moved.get(&to).filter(|(_, t)| *t > now) {
                    let what = Forwarded::Left(reason);
                    c.ops.push_back(Op::Forward { to: new.clone(), from, what });
                    return;
                }
                self.remote_left(now, to, &from, &reason, false, out);
            }
            ClusterEvent::RemoteText { to, from, json } => {
                if let Some((new, _)) = c.moved.get(&to).filter(|(_, t)| *t > now) {
                    let what = Forwarded::Text(json);
                    c.ops.push_back(Op::Forward { to: new.clone(), from, what });
                    return;
                }
                self.remote_text(to, &from, json, false, out);
            }
            ClusterEvent::Forwarded { to, from, what } => {
                if let Some((new, _)) = c.moved.get(&to).filter(|(_, t)| *t > now) {
                    c.ops.push_back(Op::Forward { to: new.clone(), from, what });
                    return;
                }
                // Sent on by the session's old worker: older than anything held, so not held.
                // The sender may be a local peer whose line went to the old worker.
                match what {
                    Forwarded::Text(json) => self.remote_text(to, &from, json, true, out),
                    Forwarded::Left(reason) => self.remote_left(now, to, &from, &reason, true, out),
                    Forwarded::End => self.release(to, out),
                    Forwarded::Rekey(new) => {
                        let event = ClusterEvent::Rekeyed { to, old: from, new };
                        self.handle_cluster(now, event, out);
                    }
                }
            }
            ClusterEvent::ResumeAsked { old, new } => self.hand_over(now, old, new, out),
            ClusterEvent::ResumeRefused { to } => {
                if c.resuming.remove(&to).is_some() {
                    self.reply_error_now(to, &RequestError::ResumeFailed, out);
                }
            }
            ClusterEvent::HandedOver { to, old, partner, body } => {
                self.handed_over(now, to, &old, &partner, &body, out)
            }
            ClusterEvent::Rekeyed { to, old, new } => {
                if let Some((moved_to, _)) = c.moved.get(&to).filter(|(_, t)| *t > now) {
                    // Both moved at once: the session's new worker learns the partner's move.
                    let what = Forwarded::Rekey(new);
                    c.ops.push_back(Op::Forward { to: moved_to.clone(), from: old, what });
                    return;
                }
                let Some(proxy) = c.remote_ids.remove(&old) else { return };
                c.remote_keys.insert(proxy, new.clone());
                c.remote_ids.insert(new, proxy);
                // From here on `to` writes to the new key: the old worker sends on what it got
                // before, then this mark, which lets the new worker deliver what it held.
                c.ops.push_back(Op::Mark { to: old, from: to });
                if self.person(to).is_some_and(|p| p.state == ChatState::Chatting(proxy)) {
                    self.send_local(out, to, ServerMessage::PartnerBack.encode());
                }
            }
            ClusterEvent::Online(n) => c.crowd = Some(n),
            ClusterEvent::Banned { client, reports } => {
                if let Some(client) = AddrHash::parse(&client) {
                    let duration = self.config.safety.ban_duration;
                    self.banned(now, Ban { client, reports, duration }, out);
                }
            }
            ClusterEvent::Crowded { peer, count } => {
                let cap = self.config.max_connections_per_address;
                let Some(p) = self.peers.get(&peer) else { return };
                if cap == 0 || count < cap {
                    return;
                }
                // At the cap across the cluster: this worker answers the address's next
                // upgrades with 429 for a while; one past it is closed now.
                out.push(Action::Crowded { client: p.client, until: now + CROWDED_FOR });
                if count > cap && p.state != ChatState::Closing {
                    self.over_cap.insert(peer);
                    self.close(now, peer, close_code::POLICY, REASON_CROWDED, out);
                }
            }
            ClusterEvent::Up => {
                c.up = true;
                // What was decided while Redis was away.
                c.ops.extend(c.offline.drain(..));
                let counts = std::mem::take(&mut c.offline_counts);
                c.ops.extend(counts.into_iter().map(|(client, count)| Op::Count { client, count }));
                // Redis may have lost them (a restart), or missed a change while the link was
                // down: every token here is registered again.
                let mut tokens: Vec<(PeerId, Token)> =
                    self.tokens.iter().map(|(&t, &p)| (p, t)).collect();
                tokens.sort_unstable_by_key(|&(p, _)| p);
                for (peer, token) in tokens {
                    let client = self.peers.get(&peer).map(|p| p.client);
                    let count = client.and_then(|a| self.local_clients.get(&a)).copied();
                    c.ops.push_back(Op::Token {
                        peer,
                        token: token.hex(),
                        client: client.map(|a| a.to_string()).unwrap_or_default(),
                        count: count.unwrap_or(0),
                        fresh: false,
                    });
                }
                let searchers: Vec<PeerId> = c.searching.keys().copied().collect();
                for peer in searchers {
                    self.research(peer);
                    send(out, peer, &ServerMessage::Matching { available: true });
                }
            }
            ClusterEvent::Down => {
                c.up = false;
                c.wakes.clear();
                let resuming: Vec<PeerId> = c.resuming.drain().map(|(p, _)| p).collect();
                for peer in resuming {
                    self.reply_error_now(peer, &RequestError::ResumeFailed, out);
                }
                // Chats with people elsewhere cannot go on without the link; chats here do.
                let away = self.away.iter().map(|(&id, a)| (id, &a.peer));
                let remote: Vec<(PeerId, PeerId)> = self
                    .peers
                    .iter()
                    .map(|(&id, p)| (id, p))
                    .chain(away)
                    .filter_map(|(id, p)| match p.state {
                        ChatState::Chatting(partner) if is_remote(partner) => Some((id, partner)),
                        _ => None,
                    })
                    .collect();
                for (id, proxy) in remote {
                    if let Some(c) = &mut self.cluster {
                        c.forget(proxy);
                    }
                    if let Some(p) = self.person_mut(id) {
                        p.state = ChatState::Idle;
                        p.typing = false;
                    }
                    self.pairs = self.pairs.saturating_sub(1);
                    let msg = ServerMessage::PartnerLeft { reason: LeaveReason::Disconnected };
                    self.send_local(out, id, msg.encode());
                }
                let Some(c) = &self.cluster else { return };
                let searchers: Vec<PeerId> = c.searching.keys().copied().collect();
                for peer in searchers {
                    send(out, peer, &ServerMessage::Matching { available: false });
                }
            }
        }
    }

    /// Makes a local searcher's search again (a wake, a reconnect, a failed match).
    fn research(&mut self, peer: PeerId) {
        let client = self.person(peer).map(|p| p.client.to_string()).unwrap_or_default();
        let Some(c) = &mut self.cluster else { return };
        let Some(interests) = c.searching.get(&peer).cloned() else { return };
        c.wakes.retain(|&(_, p)| p != peer);
        if c.up {
            c.ops.push_back(Op::Search { peer, interests, client });
        }
    }

    /// Starts the chat the matchmaker made; both are told what they share.
    fn start_chat(&mut self, now: Instant, m: Match, out: &mut Vec<Action>) {
        for (me, other) in [(m.waiting, m.searcher), (m.searcher, m.waiting)] {
            if let Some(p) = self.peers.get_mut(&me) {
                // The matchmaker only holds Searching peers: every way out of Searching cancels.
                debug_assert_eq!(p.state, ChatState::Searching);
                p.state = ChatState::Chatting(other);
                p.typing = false;
            }
        }
        self.pairs += 1;
        self.counters.matches += 1;
        for since in [m.waiting_since, m.searcher_since] {
            self.counters.match_wait.observe(now.saturating_duration_since(since));
        }
        let text = ServerMessage::Matched { common_interests: &m.common_interests }.encode();
        for to in [m.waiting, m.searcher] {
            out.push(Action::Send { to, message: Message::Text(text.clone()) });
        }
    }

    /// Asks the server to close `peer` and leaves its chat or search at once: its partner must
    /// not wait for the close handshake to learn that it is gone.
    fn close(
        &mut self,
        now: Instant,
        peer: PeerId,
        code: u16,
        reason: &'static str,
        out: &mut Vec<Action>,
    ) {
        self.end_activity(now, peer, LeaveReason::Disconnected, out);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.state = ChatState::Closing;
        }
        out.push(Action::Close { peer, code, reason });
    }

    /// A connection ended. A drop (no close handshake) keeps its chat or search for
    /// `resume_window`; anything else ends them at once.
    fn handle_closed(&mut self, now: Instant, peer: PeerId, dropped: bool, out: &mut Vec<Action>) {
        let held = match &mut self.cluster {
            Some(c) => {
                c.resuming.remove(&peer);
                c.held.remove(&peer).map(|(_, lines)| lines)
            }
            None => None,
        };
        let frees = !self.over_cap.remove(&peer);
        let Some(client) = self.peers.get(&peer).map(|p| p.client) else { return };
        self.count_down(now, client, frees, out);
        let Some(p) = self.peers.get(&peer) else { return };
        let window = self.config.resume_window;
        // Every drop waits (issue 12: an idle person resumes as idle); MAX_AWAY bounds them.
        let has_room = self.away.len() < MAX_AWAY;
        let live = p.state != ChatState::Closing;
        if dropped && has_room && live && !window.is_zero() && !self.is_draining {
            self.go_away(now, peer, out);
            for json in held.into_iter().flatten() {
                self.keep(peer, json);
            }
            return;
        }
        self.end_activity(now, peer, LeaveReason::Disconnected, out);
        if let Some(p) = self.peers.remove(&peer) {
            self.forget_token(peer, p.token);
        }
    }

    /// One connection of `client` here ended (in a cluster, Redis is told the new count, and
    /// if the connection `frees` a place, this worker no longer counts the address as at its
    /// cap).
    fn count_down(&mut self, now: Instant, client: AddrHash, frees: bool, out: &mut Vec<Action>) {
        let left = match self.local_clients.get_mut(&client) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.local_clients.remove(&client);
        }
        if let Some(c) = &mut self.cluster {
            c.safety_op(Op::Count { client: client.to_string(), count: left });
            if frees {
                out.push(Action::Crowded { client, until: now });
            }
        }
    }

    /// `peer`'s token is no good any more.
    fn forget_token(&mut self, peer: PeerId, token: Token) {
        self.challenges.remove(&peer);
        self.recent.remove(&peer);
        if self.tokens.get(&token) == Some(&peer) {
            self.tokens.remove(&token);
        }
        if let Some(c) = &mut self.cluster {
            c.ops.push_back(Op::Untoken { peer, token: token.hex() });
        }
    }

    /// `peer` dropped: it leaves the table (its slot will be reused) for `away`, where its
    /// chat or its place waits; its partner is told `partner_away`.
    fn go_away(&mut self, now: Instant, peer: PeerId, out: &mut Vec<Action>) {
        let until = now + self.config.resume_window;
        let Some(a) = self.leave_table(peer, until) else { return };
        if let ChatState::Chatting(partner) = a.peer.state {
            self.deliver(out, peer, partner, &ServerMessage::PartnerAway);
        }
        self.counters.resume_drops += 1;
        self.away_wakes.insert((until, peer));
        self.away.insert(peer, a);
    }

    /// Takes `peer` out of the table into an [`Away`] kept until `until`; a searcher's place is
    /// parked (out of the queue's indexes, its order kept).
    fn leave_table(&mut self, peer: PeerId, until: Instant) -> Option<Away> {
        let mut p = self.peers.remove(&peer)?;
        p.typing = false;
        let (mut parked, mut interests) = (None, Vec::new());
        if p.state == ChatState::Searching {
            match &mut self.cluster {
                Some(c) => {
                    interests = c.searching.remove(&peer).unwrap_or_default();
                    c.wakes.retain(|&(_, w)| w != peer);
                    c.ops.push_back(Op::Park { peer });
                }
                None => parked = self.matchmaker.park(peer),
            }
        }
        Some(Away { peer: p, until, kept: VecDeque::new(), kept_bytes: 0, parked, interests })
    }

    /// `peer` will not come back (its window passed, the server stops): its chat ends as a
    /// disconnect would have, its place is given up.
    fn end_away(&mut self, now: Instant, peer: PeerId, out: &mut Vec<Action>) {
        let Some(a) = self.take_away(peer) else { return };
        match a.peer.state {
            ChatState::Chatting(partner) => {
                self.end_chat(now, peer, partner, LeaveReason::Disconnected, out)
            }
            ChatState::Searching => {
                if let Some(c) = &mut self.cluster {
                    c.ops.push_back(Op::Cancel { peer });
                }
            }
            ChatState::Idle | ChatState::Closing => {}
        }
        self.forget_token(peer, a.peer.token);
    }

    /// `resume`: only as a connection's first message, with a token this worker holds (or,
    /// in a cluster, one that Redis knows: the handover then comes from the other worker).
    fn handle_resume(
        &mut self,
        now: Instant,
        peer: PeerId,
        token: &str,
        first: bool,
        out: &mut Vec<Action>,
    ) -> protocol::Result<()> {
        let token = Token::parse(token).filter(|_| first).ok_or(RequestError::ResumeFailed)?;
        match self.tokens.get(&token).copied() {
            Some(old) if old != peer => {
                let a = self.take_session(now, old, out).ok_or(RequestError::ResumeFailed)?;
                self.adopt(now, peer, old, a, out);
                Ok(())
            }
            Some(_) => Err(RequestError::ResumeFailed),
            None => match &mut self.cluster {
                Some(c) if c.up => {
                    c.resuming.insert(peer, now + RESUME_WAIT);
                    c.ops.push_back(Op::Resume { peer, token: token.hex() });
                    Ok(())
                }
                _ => Err(RequestError::ResumeFailed),
            },
        }
    }

    /// Takes local `old`'s session for a resume: from `away`, or from a connection still open
    /// (which is closed with 4000: a newer one took its place). Its token is used up.
    fn take_session(&mut self, now: Instant, old: PeerId, out: &mut Vec<Action>) -> Option<Away> {
        let a = match self.take_away(old) {
            Some(a) => a,
            None => {
                if self.peers.get(&old)?.state == ChatState::Closing {
                    return None;
                }
                out.push(Action::Close { peer: old, code: CLOSE_RESUMED, reason: REASON_RESUMED });
                // Its Closed finds nobody: the session leaves the table now, and its
                // connection stops counting for its address.
                let client = self.peers.get(&old)?.client;
                self.count_down(now, client, true, out);
                let mut a = self.leave_table(old, now)?;
                if let Some(c) = &mut self.cluster {
                    c.resuming.remove(&old);
                    // Lines held for it (it had resumed itself) go with the session.
                    if let Some((_, lines)) = c.held.remove(&old) {
                        lines.into_iter().for_each(|json| a.keep(json));
                    }
                }
                a
            }
        };
        self.forget_token(old, a.peer.token);
        Some(a)
    }

    /// Local connection `new` takes over local session `old`: `resumed`, the kept lines, then
    /// the chat or the search goes on where it was.
    fn adopt(&mut self, now: Instant, new: PeerId, old: PeerId, a: Away, out: &mut Vec<Action>) {
        let Some(p) = self.peers.get_mut(&new) else { return };
        p.state = a.peer.state;
        p.typing = false;
        let token = p.token.hex();
        let state = state_name(a.peer.state);
        send(out, new, &ServerMessage::Resumed { resume_token: &token, state });
        out.extend(
            a.kept.into_iter().map(|json| Action::Send { to: new, message: Message::Text(json) }),
        );
        self.counters.resumes += 1;
        match a.peer.state {
            ChatState::Chatting(partner) => {
                if let Some(c) = &mut self.cluster {
                    // Redis' pairs follow; a partner on another worker is told the new key.
                    let (new_key, partner_key) = (c.key(new), Some(c.key(partner)));
                    if is_remote(partner) {
                        // What it sends to the old id until then is sent on to the new one, and
                        // its newer lines wait for those (as for a resume on another worker).
                        c.moved.insert(old, (new_key.clone(), now + FORWARD_FOR));
                        c.held.insert(new, (now + HOLD_FOR, Vec::new()));
                    }
                    let body = String::new();
                    let op = Op::Handover {
                        old,
                        new: new_key,
                        partner: partner_key,
                        searching: false,
                        body,
                    };
                    c.ops.push_back(op);
                }
                if !is_remote(partner) {
                    if let Some(q) = self.person_mut(partner) {
                        if q.state == ChatState::Chatting(old) {
                            q.state = ChatState::Chatting(new);
                        }
                    }
                    self.deliver(out, new, partner, &ServerMessage::PartnerBack);
                }
            }
            ChatState::Searching => match &mut self.cluster {
                Some(c) => {
                    let new_key = c.key(new);
                    c.ops.push_back(Op::Handover {
                        old,
                        new: new_key,
                        partner: None,
                        searching: true,
                        body: String::new(),
                    });
                    c.searching.insert(new, a.interests);
                    self.research(new);
                }
                None => {
                    let m = match a.parked {
                        Some(parked) => {
                            // Banned or pardoned while away: the pool is the one of now.
                            let who = self.searcher(now, new);
                            self.matchmaker.unpark(now, new, parked, who)
                        }
                        None => {
                            let who = self.searcher(now, new);
                            self.matchmaker.handle_search_as(now, new, Interests::none(), who)
                        }
                    };
                    if let Some(m) = m {
                        self.start_chat(now, m, out);
                    }
                }
            },
            ChatState::Idle | ChatState::Closing => {}
        }
    }

    /// Another worker's connection `new` resumes local session `old`: the session is handed
    /// over through Redis, with its state and kept lines.
    fn hand_over(&mut self, now: Instant, old: PeerId, new: String, out: &mut Vec<Action>) {
        let Some(a) = self.take_session(now, old, out) else {
            if let Some(c) = &mut self.cluster {
                c.ops.push_back(Op::Refuse { to: new });
            }
            return;
        };
        let mut partner_client = None;
        if let ChatState::Chatting(partner) = a.peer.state {
            partner_client = self.client_of(partner).map(|h| h.to_string());
        }
        let Some(c) = &mut self.cluster else { return };
        let mut partner_key = None;
        if let ChatState::Chatting(partner) = a.peer.state {
            partner_key = Some(c.key(partner));
            if is_remote(partner) {
                c.forget(partner);
                self.pairs = self.pairs.saturating_sub(1);
            } else {
                let proxy = c.id_of(&new);
                // Its address as the session had it (the new connection's may differ).
                c.clients.insert(proxy, a.peer.client);
                if let Some(q) = self.person_mut(partner) {
                    if q.state == ChatState::Chatting(old) {
                        q.state = ChatState::Chatting(proxy);
                    }
                }
                self.deliver(out, proxy, partner, &ServerMessage::PartnerBack);
            }
        }
        let searching = a.peer.state == ChatState::Searching;
        let body = serde_json::json!({
            "state": state_name(a.peer.state),
            "partner": partner_key,
            "partner_client": partner_client,
            "interests": a.interests,
            "kept": a.kept,
        })
        .to_string();
        let Some(c) = &mut self.cluster else { return };
        c.moved.retain(|_, (_, until)| *until > now);
        c.moved.insert(old, (new.clone(), now + FORWARD_FOR));
        c.ops.push_back(Op::Handover { old, new, partner: partner_key, searching, body });
    }

    /// Local connection `to` gets the session another worker handed over.
    fn handed_over(
        &mut self,
        now: Instant,
        to: PeerId,
        old: &str,
        current_partner: &str,
        body: &str,
        out: &mut Vec<Action>,
    ) {
        #[derive(serde::Deserialize)]
        struct Body {
            state: String,
            partner: Option<String>,
            #[serde(default)]
            partner_client: Option<String>,
            #[serde(default)]
            interests: Vec<String>,
            #[serde(default)]
            kept: Vec<String>,
        }
        let Some(c) = &mut self.cluster else { return };
        let waited = c.resuming.remove(&to).is_some();
        let Ok(b) = serde_json::from_str::<Body>(body) else {
            if waited {
                self.reply_error_now(to, &RequestError::ResumeFailed, out);
            }
            return;
        };
        let is_idle = self.peers.get(&to).is_some_and(|p| p.state == ChatState::Idle);
        let Some(c) = &mut self.cluster else { return };
        // Redis' word on the partner wins over the old worker's: the partner may have moved too.
        let partner = match current_partner {
            "" => b.partner.as_deref(),
            key => Some(key),
        };
        let partner = partner.filter(|_| b.state == "chatting");
        // A partner of this worker that has just moved on itself is where it moved to.
        let partner_moved = partner
            .and_then(|k| c.known_id(k))
            .filter(|&id| !is_remote(id))
            .and_then(|id| c.moved.get(&id).map(|(key, _)| key.clone()));
        let partner = partner_moved.as_deref().or(partner);
        let partner_id = partner.map(|k| c.id_of(k));
        let partner_client = b.partner_client.as_deref().and_then(AddrHash::parse);
        if let (Some(id), Some(client)) = (partner_id, partner_client) {
            if is_remote(id) {
                c.clients.insert(id, client);
            }
        }
        // A partner here still knows the session by its old key.
        let old_proxy = c.remote_ids.get(old).copied();
        if !(waited && is_idle) {
            // Too late (the connection gave up, left or went on as itself): the session ends.
            let mut local_partner = None;
            if let (Some(key), Some(id)) = (partner, partner_id) {
                let reason = if is_remote(id) {
                    c.forget(id);
                    Some(LeaveReason::Disconnected.as_str())
                } else {
                    local_partner = old_proxy.map(|proxy| (id, proxy));
                    None
                };
                c.ops.push_back(Op::Part { peer: to, partner: key.to_owned(), reason });
            }
            if b.state == "searching" {
                c.ops.push_back(Op::Cancel { peer: to });
            }
            if let Some((id, proxy)) = local_partner {
                c.forget(proxy);
                if let Some(q) =
                    self.person_mut(id).filter(|q| q.state == ChatState::Chatting(proxy))
                {
                    q.state = ChatState::Idle;
                    q.typing = false;
                    self.pairs = self.pairs.saturating_sub(1);
                    let msg = ServerMessage::PartnerLeft { reason: LeaveReason::Disconnected };
                    self.send_local(out, id, msg.encode());
                }
            }
            if waited {
                self.reply_error_now(to, &RequestError::ResumeFailed, out);
            }
            return;
        }
        // A partner here must still be in the chat (with the old key's proxy): it may have left
        // while the session was handed over.
        let partner_here = |r: &Roulette, id: PeerId| {
            old_proxy.is_some_and(|proxy| {
                r.person(id).is_some_and(|q| q.state == ChatState::Chatting(proxy))
            })
        };
        let mut partner_gone = false;
        let state = match (b.state.as_str(), partner_id) {
            ("chatting", Some(id)) if is_remote(id) || partner_here(self, id) => {
                ChatState::Chatting(id)
            }
            ("chatting", _) => {
                partner_gone = true;
                ChatState::Idle
            }
            ("searching", _) => ChatState::Searching,
            _ => ChatState::Idle,
        };
        let Some(p) = self.peers.get_mut(&to) else { return };
        p.state = state;
        let token = p.token.hex();
        send(out, to, &ServerMessage::Resumed { resume_token: &token, state: state_name(state) });
        out.extend(
            b.kept.into_iter().map(|json| Action::Send { to, message: Message::Text(json) }),
        );
        self.counters.resumes += 1;
        if partner_gone {
            let msg = ServerMessage::PartnerLeft { reason: LeaveReason::Disconnected };
            send(out, to, &msg);
            return;
        }
        if let (Some(c), Some(key)) = (&mut self.cluster, partner) {
            // Lines the partner sent to the old worker are sent on from there: until the last
            // one (`End`), the partner's newer lines wait, unless the partner was on the old
            // worker itself (it switched at once and sent nothing there since).
            let worker = |k: &str| k.rsplit_once('#').map(|(w, _)| w.to_owned());
            if worker(key) != worker(old) {
                c.held.insert(to, (now + HOLD_FOR, Vec::new()));
            }
        }
        match state {
            ChatState::Chatting(id) if !is_remote(id) => {
                // The partner is here: it chatted with a proxy of the old key.
                if let (Some(c), Some(proxy)) = (&mut self.cluster, old_proxy) {
                    c.forget(proxy);
                    c.ops.push_back(Op::Mark { to: old.to_owned(), from: id });
                    if let Some(q) = self.person_mut(id) {
                        if q.state == ChatState::Chatting(proxy) {
                            q.state = ChatState::Chatting(to);
                        }
                    }
                }
                self.deliver(out, to, id, &ServerMessage::PartnerBack);
            }
            ChatState::Chatting(_) => self.pairs += 1,
            ChatState::Searching => {
                if let Some(c) = &mut self.cluster {
                    c.searching.insert(to, b.interests);
                }
                self.research(to);
            }
            _ => {}
        }
    }

    /// `error` for a request that is not being handled now (a resume answered late).
    fn reply_error_now(&mut self, peer: PeerId, e: &RequestError, out: &mut Vec<Action>) {
        self.counters.count_error(e.code());
        let message = e.to_string();
        send(out, peer, &ServerMessage::Error { code: e.code(), message: &message, pow: None });
    }

    /// Answers a refused request with `error`, or closes with 1008 if the error budget is spent.
    fn reply_error(&mut self, now: Instant, peer: PeerId, e: &RequestError, out: &mut Vec<Action>) {
        let now_ms = self.millis(now);
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if *e == RequestError::RateLimited {
            self.counters.rate_limited += 1;
        }
        if p.errors.try_take(now_ms, ERROR_PER_SECOND, ERROR_BURST) {
            self.counters.count_error(e.code());
            let message = e.to_string();
            let pow = match e {
                RequestError::PowRequired | RequestError::PowInvalid => self.challenge_of(peer),
                _ => None,
            };
            send(out, peer, &ServerMessage::Error { code: e.code(), message: &message, pow });
        } else {
            self.counters.abuse_closes += 1;
            self.close(now, peer, close_code::POLICY, REASON_ABUSE, out);
        }
    }

    /// When the next `online` broadcast is due: only while the count differs from the last one
    /// sent, and at most once per `online_interval`.
    fn online_due(&self) -> Option<Instant> {
        if self.is_draining || self.online_count() == self.online.sent {
            return None;
        }
        self.online.sent_at?.checked_add(self.config.online_interval)
    }
}

impl App for Roulette {
    type Settings = ChatConfig;

    fn handle_event(
        &mut self,
        now: Instant,
        peer: PeerId,
        event: Event<'_>,
        out: &mut Vec<Action>,
    ) {
        match event {
            Event::Open { client } => self.handle_open(now, peer, client, out),
            Event::Text(text) => self.handle_text(now, peer, text, out),
            Event::Binary(_) => {
                let is_live = self.peers.get(&peer).is_some_and(|p| p.state != ChatState::Closing);
                if is_live {
                    self.counters.binary_closes += 1;
                    self.close(now, peer, close_code::UNSUPPORTED, REASON_BINARY, out);
                }
            }
            Event::Closed { dropped } => self.handle_closed(now, peer, dropped, out),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let wake = self.cluster.as_ref().and_then(|c| c.wakes.first().map(|&(t, _)| t));
        let resume = self.cluster.as_ref().and_then(|c| {
            c.resuming.values().chain(c.held.values().map(|(t, _)| t)).min().copied()
        });
        let away = self.away_wakes.first().map(|&(t, _)| t);
        // Pardons are applied at once: the first instant this roulette saw is in the past.
        let pardons = self.epoch.filter(|_| !self.pardoned.is_empty());
        [self.online_due(), self.matchmaker.poll_timeout(), wake, resume, away, self.next_sweep]
            .into_iter()
            .chain([pardons])
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.release_pardoned(now, out);
        if self.next_sweep.is_some_and(|t| t <= now) {
            // Budgets that have refilled say nothing a fresh one would not: forget them.
            let now_ms = self.millis(now);
            let (burst, rate) =
                (self.config.address_search_burst, self.config.address_searches_per_second);
            self.addresses.retain(|_, b| !b.is_full(now_ms, rate, burst));
            let more = self.sweep_safety(now) || !self.addresses.is_empty();
            self.next_sweep = more.then_some(now + SWEEP);
        }
        while let Some(&(at, peer)) = self.away_wakes.first() {
            if at > now {
                break;
            }
            self.away_wakes.pop_first();
            if self.away.contains_key(&peer) {
                self.counters.resume_expiries += 1;
                self.end_away(now, peer, out);
            }
        }
        if let Some(c) = &mut self.cluster {
            // Handovers that did not come in time, and held lines whose old worker never said
            // it was done (it died, say).
            let failed: Vec<PeerId> =
                c.resuming.iter().filter(|&(_, &t)| t <= now).map(|(&p, _)| p).collect();
            let due: Vec<PeerId> =
                c.held.iter().filter(|&(_, (t, _))| *t <= now).map(|(&p, _)| p).collect();
            for peer in &failed {
                c.resuming.remove(peer);
            }
            c.moved.retain(|_, (_, until)| *until > now);
            for peer in failed {
                self.reply_error_now(peer, &RequestError::ResumeFailed, out);
            }
            for peer in due {
                self.release(peer, out);
            }
        }
        while let Some(&(at, peer)) = self.cluster.as_ref().and_then(|c| c.wakes.first()) {
            if at > now {
                break;
            }
            if let Some(c) = &mut self.cluster {
                c.wakes.remove(&(at, peer));
            }
            self.research(peer);
        }
        if self.online_due().is_some_and(|due| now >= due) {
            let count = self.online_count();
            out.push(Action::Broadcast { text: ServerMessage::Online { count }.encode() });
            self.online = OnlineCount { sent: count, sent_at: Some(now) };
        }
        let mut matches = Vec::new();
        self.matchmaker.handle_timeout(now, &mut matches);
        for m in matches {
            self.start_chat(now, m, out);
        }
    }

    /// Applies the reloaded `[chat]` table (see [`Roulette::set_config`]).
    fn reconfigure(&mut self, settings: ChatConfig) {
        self.set_config(settings);
    }

    fn poll_cluster_op(&mut self) -> Option<Op> {
        self.cluster.as_mut()?.ops.pop_front()
    }

    fn handle_cluster_event(&mut self, now: Instant, event: ClusterEvent, out: &mut Vec<Action>) {
        self.handle_cluster(now, event, out);
    }

    fn cluster_state(&self, pairs: &mut Vec<(PeerId, String)>) -> usize {
        if let Some(c) = &self.cluster {
            let away = self.away.iter().map(|(id, a)| (id, &a.peer));
            for (&id, p) in self.peers.iter().chain(away) {
                if let ChatState::Chatting(partner) = p.state {
                    if is_remote(partner) {
                        pairs.push((id, c.key(partner)));
                    }
                }
            }
        }
        self.peers.len()
    }

    /// Writes the `chatd_` roulette families: see [`metrics`] for the list.
    fn write_metrics(&self, out: &mut String) {
        metrics::write(out, self.stats(), &self.counters);
    }

    /// Tells everyone in a chat `partner_left {reason: "shutdown"}` (in `PeerId` order, for
    /// determinism), empties the queue and stops matching and online broadcasts.
    fn handle_shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.is_draining = true;
        // No more searches: no budgets to keep.
        self.addresses.clear();
        self.recent.clear();
        self.challenges.clear();
        self.next_sweep = None;
        // Nobody can come back to a server that stops: away sessions end now, as a disconnect.
        let mut away: Vec<PeerId> = self.away.keys().copied().collect();
        away.sort_unstable();
        self.away_wakes.clear();
        for peer in away {
            self.end_away(now, peer, out);
        }
        let mut chatting: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(p.state, ChatState::Chatting(_)))
            .map(|(&id, _)| id)
            .collect();
        chatting.sort_unstable();
        let text = ServerMessage::PartnerLeft { reason: LeaveReason::Shutdown }.encode();
        for to in chatting {
            out.push(Action::Send { to, message: Message::Text(text.clone()) });
        }
        if let Some(c) = &mut self.cluster {
            // Partners elsewhere see this server's people leave; searchers leave the queue.
            let mut parts: Vec<(PeerId, PeerId)> = self
                .peers
                .iter()
                .filter_map(|(&id, p)| match p.state {
                    ChatState::Chatting(partner) => Some((id, partner)),
                    _ => None,
                })
                .collect();
            parts.sort_unstable();
            for (peer, partner) in parts {
                let reason = is_remote(partner).then_some(LeaveReason::Disconnected.as_str());
                let key = c.key(partner);
                c.ops.push_back(Op::Part { peer, partner: key, reason });
            }
            let searchers: Vec<PeerId> = c.searching.keys().copied().collect();
            for peer in searchers {
                c.cancel_search(peer);
            }
        }
        for p in self.peers.values_mut() {
            if matches!(p.state, ChatState::Chatting(_) | ChatState::Searching) {
                p.state = ChatState::Idle;
            }
            p.typing = false;
        }
        self.pairs = 0;
        self.matchmaker.clear();
    }
}

/// A state as `resumed` names it.
fn state_name(state: ChatState) -> &'static str {
    match state {
        ChatState::Chatting(_) => "chatting",
        ChatState::Searching => "searching",
        ChatState::Idle | ChatState::Closing => "idle",
    }
}

fn send(out: &mut Vec<Action>, to: PeerId, msg: &ServerMessage<'_>) {
    out.push(Action::Send { to, message: Message::Text(msg.encode()) });
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
        time::Duration,
    };

    use serde_json::{json, Value};

    use super::*;

    /// A fake server in the manner of quinn's `Pair`/`drive`: delivers events at a fake clock,
    /// runs timers when due, and routes actions into per-peer inboxes.
    struct Driver {
        app: Roulette,
        base: Instant,
        now: Instant,
        open: BTreeSet<PeerId>,
        inbox: HashMap<PeerId, VecDeque<Value>>,
        closes: Vec<(PeerId, u16)>,
        broadcasts: Vec<Value>,
        /// Addresses shadow-banned, in order.
        bans: Vec<AddrHash>,
    }

    fn id(n: u32) -> PeerId {
        PeerId::new(0, 0, n)
    }

    /// Tokens 1, 2, 3, ... (each test thread counts on its own), so runs repeat exactly.
    fn counting_random(buf: &mut [u8]) {
        thread_local!(static NEXT: std::cell::Cell<u128> = const { std::cell::Cell::new(0) });
        let n = NEXT.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        for (b, n) in buf.iter_mut().zip(n.to_be_bytes().iter().rev().chain(std::iter::repeat(&0)))
        {
            *b = *n;
        }
    }

    /// The defaults, except that online broadcasts are rare so they do not clutter inboxes.
    fn quiet_config() -> ChatConfig {
        ChatConfig { online_interval: Duration::from_secs(3600), ..ChatConfig::default() }
    }

    impl Driver {
        fn new() -> Driver {
            Driver::with(quiet_config())
        }

        fn with(config: ChatConfig) -> Driver {
            let base = Instant::now();
            Driver {
                app: Roulette::new(config).with_random(counting_random),
                base,
                now: base,
                open: BTreeSet::new(),
                inbox: HashMap::new(),
                closes: Vec::new(),
                broadcasts: Vec::new(),
                bans: Vec::new(),
            }
        }

        fn apply(&mut self, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Send { to, message: Message::Text(text) } => {
                        // Actions to a peer that is gone are dropped, as the server does.
                        if self.open.contains(&to) {
                            let v: Value = serde_json::from_str(&text).expect("valid JSON out");
                            self.inbox.entry(to).or_default().push_back(v);
                        }
                    }
                    Action::Send { message: Message::Binary(_), .. } => {
                        panic!("the roulette never sends binary")
                    }
                    Action::Broadcast { text } => {
                        let v: Value = serde_json::from_str(&text).expect("valid JSON out");
                        self.broadcasts.push(v.clone());
                        for &to in &self.open {
                            self.inbox.entry(to).or_default().push_back(v.clone());
                        }
                    }
                    Action::Close { peer, code, reason } => {
                        assert!(reason.len() <= 123);
                        self.closes.push((peer, code));
                    }
                    Action::Banned { client, .. } => self.bans.push(client),
                    Action::Crowded { .. } => {}
                }
            }
            self.check();
        }

        /// Runs `handle_timeout` while a timer is due, like the server loop.
        fn run_timers(&mut self) {
            for _ in 0..1000 {
                match self.app.poll_timeout() {
                    Some(t) if t <= self.now => {
                        let mut out = Vec::new();
                        self.app.handle_timeout(self.now, &mut out);
                        self.apply(out);
                    }
                    _ => return,
                }
            }
            panic!("poll_timeout stays in the past");
        }

        fn event(&mut self, n: u32, event: Event<'_>) {
            let mut out = Vec::new();
            self.app.handle_event(self.now, id(n), event, &mut out);
            self.apply(out);
            self.run_timers();
        }

        fn open(&mut self, n: u32) {
            self.open.insert(id(n));
            // Each test person is its own address unless a test says otherwise.
            let client = AddrHash::from_bytes([n as u8; 16]);
            self.event(n, Event::Open { client });
        }

        /// Opens `n` and drops its welcome.
        fn join(&mut self, n: u32) {
            self.open(n);
            assert_eq!(self.recv(n)[0]["type"], "welcome");
        }

        /// `n` closed with a close handshake.
        fn closed(&mut self, n: u32) {
            self.event(n, Event::Closed { dropped: false });
            self.open.remove(&id(n));
            self.inbox.remove(&id(n));
        }

        /// `n`'s connection dropped (a reset, a ping timeout).
        fn dropped(&mut self, n: u32) {
            self.event(n, Event::Closed { dropped: true });
            self.open.remove(&id(n));
            self.inbox.remove(&id(n));
        }

        /// `n`'s resume token, from its welcome (which is drained).
        fn join_token(&mut self, n: u32) -> String {
            self.open(n);
            let welcome = self.recv(n).remove(0);
            assert_eq!(welcome["type"], "welcome");
            welcome["resume_token"].as_str().expect("a token").to_owned()
        }

        fn text(&mut self, n: u32, text: &str) {
            self.event(n, Event::Text(text));
        }

        fn send(&mut self, n: u32, v: Value) {
            self.text(n, &v.to_string());
        }

        fn search(&mut self, n: u32) {
            self.send(n, json!({"type":"search"}));
        }

        fn search_with(&mut self, n: u32, interests: &[&str]) {
            self.send(n, json!({"type":"search","interests":interests}));
        }

        fn say(&mut self, n: u32, text: &str) {
            self.send(n, json!({"type":"message","text":text}));
        }

        fn typing(&mut self, n: u32, active: bool) {
            self.send(n, json!({"type":"typing","active":active}));
        }

        fn leave(&mut self, n: u32) {
            self.send(n, json!({"type":"leave"}));
        }

        /// Moves the clock to `secs` after the start and runs what is due.
        fn at(&mut self, secs: f64) {
            let t = self.base + Duration::from_secs_f64(secs);
            assert!(t >= self.now, "the clock does not go back");
            self.now = t;
            self.run_timers();
        }

        fn recv(&mut self, n: u32) -> Vec<Value> {
            self.inbox.get_mut(&id(n)).map(|q| q.drain(..).collect()).unwrap_or_default()
        }

        /// The types of everything `n` received, drained.
        fn types(&mut self, n: u32) -> Vec<String> {
            self.recv(n).iter().map(|v| v["type"].as_str().unwrap_or("?").to_owned()).collect()
        }

        /// The codes of the errors `n` received; fails on anything else.
        fn errors(&mut self, n: u32) -> Vec<String> {
            self.recv(n)
                .iter()
                .map(|v| {
                    assert_eq!(v["type"], "error", "{v}");
                    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
                    v["code"].as_str().unwrap_or("?").to_owned()
                })
                .collect()
        }

        /// Searches with `a` then `b`, who must pair, and clears both inboxes.
        fn pair(&mut self, a: u32, b: u32) {
            self.search(a);
            self.search(b);
            assert_eq!(self.types(a), ["searching", "matched"]);
            assert_eq!(self.types(b), ["searching", "matched"]);
        }

        fn partner_of(&self, n: u32) -> Option<PeerId> {
            match self.app.peers.get(&id(n))?.state {
                ChatState::Chatting(p) => Some(p),
                _ => None,
            }
        }

        /// The roulette's own invariants, checked after every step.
        fn check(&self) {
            let app = &self.app;
            let mut chatting = 0;
            let away = app.away.iter().map(|(id, a)| (id, &a.peer));
            for (&me, p) in app.peers.iter().chain(away) {
                let is_away = app.away.contains_key(&me);
                assert_eq!(app.tokens.get(&p.token), Some(&me), "every person's token is known");
                match p.state {
                    ChatState::Chatting(other) => {
                        chatting += 1;
                        assert_ne!(me, other);
                        assert_eq!(
                            app.person(other).expect("partner is a person").state,
                            ChatState::Chatting(me)
                        );
                        assert!(!app.matchmaker.is_waiting(me));
                    }
                    ChatState::Searching if is_away => assert!(!app.matchmaker.is_waiting(me)),
                    ChatState::Searching => {
                        assert!(app.is_draining || app.matchmaker.is_waiting(me))
                    }
                    ChatState::Idle | ChatState::Closing => {
                        assert!(!app.matchmaker.is_waiting(me))
                    }
                }
                if !matches!(p.state, ChatState::Chatting(_)) {
                    assert!(!p.typing);
                }
            }
            assert_eq!(chatting, 2 * app.pairs);
            assert!(app.matchmaker.len() <= app.peers.len());
            assert_eq!(app.tokens.len(), app.peers.len() + app.away.len());
            assert_eq!(app.away_wakes.len(), app.away.len());
        }
    }

    #[test]
    fn per_peer_state_is_small() {
        // Many thousands of peers: the per-connection state stays around 100 bytes.
        assert!(std::mem::size_of::<Peer>() <= 112, "{}", std::mem::size_of::<Peer>());
    }

    /// `write_metrics`, each line's format checked, as `"name{labels}" -> value`.
    fn metrics_of(d: &Driver) -> BTreeMap<String, f64> {
        let mut out = String::from("# a line the server wrote\n");
        d.app.write_metrics(&mut out);
        let out = out.strip_prefix("# a line the server wrote\n").expect("appends");
        metrics::tests::parse(out)
    }

    fn error_count(m: &BTreeMap<String, f64>, code: &str) -> f64 {
        m[&format!("chatd_errors_total{{code=\"{code}\"}}")]
    }

    #[test]
    fn metrics_follow_a_scripted_chat() {
        let mut d = Driver::with(ChatConfig { rate_burst: 2, ..quiet_config() });
        let m = metrics_of(&d);
        assert!(m.values().all(|&v| v == 0.0), "{m:?}");
        d.join(1);
        d.join(2);
        d.search(1);
        assert_eq!(d.types(1), ["searching"]);
        let m = metrics_of(&d);
        assert_eq!(m["chatd_people_online"], 2.0);
        assert_eq!(m["chatd_people_searching"], 1.0);
        assert_eq!(m["chatd_pairs"], 0.0);
        // 2 matches 1 after 1.5 s: 1 waited 1.5 s, 2 not at all.
        d.at(1.5);
        d.search(2);
        assert_eq!(d.types(1), ["matched"]);
        assert_eq!(d.types(2), ["searching", "matched"]);
        d.say(1, "one");
        d.say(2, "two");
        d.say(1, "three");
        assert_eq!(d.types(1), ["message"]);
        assert_eq!(d.types(2), ["message", "message"]);
        d.text(1, "garbage");
        d.send(1, json!({"type":"dance"}));
        d.say(1, "four"); // 1 has spent its burst of 2 and the clock has not moved
        assert_eq!(d.errors(1), ["invalid_json", "unknown_type", "rate_limited"]);
        assert!(d.recv(2).is_empty());

        let m = metrics_of(&d);
        assert_eq!(m["chatd_people_online"], 2.0);
        assert_eq!(m["chatd_people_searching"], 0.0);
        assert_eq!(m["chatd_pairs"], 1.0);
        assert_eq!(m["chatd_messages_relayed_total"], 3.0);
        assert_eq!(m["chatd_matches_total"], 1.0);
        let buckets: Vec<(&str, f64)> = metrics::WAIT_BUCKETS
            .iter()
            .map(|&(_, le)| le)
            .chain(["+Inf"])
            .map(|le| (le, m[&format!("chatd_match_wait_seconds_bucket{{le=\"{le}\"}}")]))
            .collect();
        assert_eq!(
            buckets,
            [
                ("0.005", 1.0),
                ("0.01", 1.0),
                ("0.05", 1.0),
                ("0.1", 1.0),
                ("0.5", 1.0),
                ("1", 1.0),
                ("2.5", 2.0),
                ("5", 2.0),
                ("10", 2.0),
                ("30", 2.0),
                ("60", 2.0),
                ("+Inf", 2.0),
            ]
        );
        assert_eq!(m["chatd_match_wait_seconds_sum"], 1.5);
        assert_eq!(m["chatd_match_wait_seconds_count"], 2.0);
        for code in protocol::ErrorCode::ALL {
            let expected = match code.as_str() {
                "invalid_json" | "unknown_type" | "rate_limited" => 1.0,
                _ => 0.0,
            };
            assert_eq!(error_count(&m, code.as_str()), expected, "{code:?}");
        }
        assert_eq!(m["chatd_rate_limited_total"], 1.0);
        assert_eq!(m["chatd_abuse_closes_total"], 0.0);
        assert_eq!(m["chatd_binary_closes_total"], 0.0);
        // Nothing else: 3 gauges, 3 counters, 12 buckets + sum + count, 10 codes, 6 counters,
        // 4 report reasons and 3 safety counters.
        assert_eq!(m.len(), 3 + 3 + 14 + 10 + 6 + 4 + 3);

        // Ending the chat moves the gauges, not the counters.
        d.leave(2);
        let m = metrics_of(&d);
        assert_eq!((m["chatd_pairs"], m["chatd_matches_total"]), (0.0, 1.0));
        d.closed(1);
        assert_eq!(metrics_of(&d)["chatd_people_online"], 1.0);
    }

    #[test]
    fn metrics_count_closes_and_the_errors_that_cause_them() {
        let mut d = Driver::new(); // 5/s, burst 20
        for n in 1..=4 {
            d.join(n);
        }
        d.pair(1, 2);
        d.search(4);
        for _ in 0..100 {
            d.say(1, "spam");
        }
        // 20 relayed; the next 20 answered rate_limited; the 41st spends the error budget and
        // closes with 1008 (dropped for rate, but not answered); the rest are ignored.
        assert_eq!(d.errors(1).len(), ERROR_BURST as usize);
        d.event(3, Event::Binary(b"x"));
        d.event(4, Event::Binary(b"x"));
        d.event(4, Event::Binary(b"x")); // already closing: not counted twice
        assert_eq!(
            d.closes,
            [(id(1), close_code::POLICY), (id(3), close_code::UNSUPPORTED), (id(4), 1003)]
        );
        let m = metrics_of(&d);
        assert_eq!(m["chatd_messages_relayed_total"], 20.0);
        assert_eq!(error_count(&m, "rate_limited"), 20.0);
        assert_eq!(m["chatd_rate_limited_total"], 21.0);
        assert_eq!(m["chatd_abuse_closes_total"], 1.0);
        assert_eq!(m["chatd_binary_closes_total"], 2.0);
        // Closing peers are still online until the server reports them closed.
        assert_eq!(m["chatd_people_online"], 4.0);
        assert_eq!((m["chatd_people_searching"], m["chatd_pairs"]), (0.0, 0.0));
        for n in [1, 3, 4] {
            d.closed(n);
        }
        assert_eq!(metrics_of(&d)["chatd_people_online"], 1.0);
    }

    #[test]
    fn match_wait_counts_from_the_first_search_and_timers_too() {
        let mut d =
            Driver::with(ChatConfig { interest_timeout: Duration::from_secs(5), ..quiet_config() });
        d.join(1);
        d.join(2);
        d.search_with(1, &["music"]);
        d.at(0.25);
        d.search_with(1, &["music", "chess"]); // keeps its place and its start
        d.at(3.0);
        d.search(2); // 1 is picky until 5 s: 2 waits
        d.at(5.0); // the interest deadline's timer makes the match
        assert_eq!(d.partner_of(1), Some(id(2)));
        let m = metrics_of(&d);
        // 1 waited 5 s (le="5" is inclusive), 2 waited 2 s.
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"1\"}"], 0.0);
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"2.5\"}"], 1.0);
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"5\"}"], 2.0);
        assert_eq!(m["chatd_match_wait_seconds_sum"], 7.0);
        assert_eq!(m["chatd_match_wait_seconds_count"], 2.0);
        // A skip is a new search: the skipper's wait starts at the skip.
        d.join(3);
        d.search(3);
        d.at(6.0);
        d.search(1); // 1 skips 2 and takes 3, who waited 1 s; 1 waited nothing
        assert_eq!(d.partner_of(1), Some(id(3)));
        let m = metrics_of(&d);
        assert_eq!(m["chatd_matches_total"], 2.0);
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"0.005\"}"], 1.0);
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"1\"}"], 2.0);
        assert_eq!(m["chatd_match_wait_seconds_sum"], 8.0);
        assert_eq!(m["chatd_match_wait_seconds_count"], 4.0);
    }

    #[test]
    fn welcome_on_open() {
        let mut d = Driver::new();
        d.open(1);
        let welcome = |online, token| json!({"type":"welcome","online":online,"max_message_chars":2000,"resume_token":token});
        let token = d.app.peers.get(&id(1)).unwrap().token.hex();
        assert_eq!(d.recv(1), [welcome(1, &token)]);
        d.open(2);
        let other = d.app.peers.get(&id(2)).unwrap().token.hex();
        assert_eq!(d.recv(2), [welcome(2, &other)]);
        // 128 bits in lowercase hex, one per connection.
        assert!(
            token.len() == 32
                && token.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(token, other);
        assert_eq!(d.app.stats(), RouletteStats { online: 2, searching: 0, pairs: 0 });
    }

    #[test]
    fn two_searchers_are_paired() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.search(1);
        assert_eq!(d.recv(1), [json!({"type":"searching"})]);
        assert_eq!(d.app.stats().searching, 1);
        d.search(2);
        assert_eq!(
            d.recv(2),
            [json!({"type":"searching"}), json!({"type":"matched","common_interests":[]})]
        );
        assert_eq!(d.recv(1), [json!({"type":"matched","common_interests":[]})]);
        assert_eq!(d.app.stats(), RouletteStats { online: 2, searching: 0, pairs: 1 });
        assert_eq!(d.partner_of(1), Some(id(2)));
    }

    #[test]
    fn messages_go_to_the_partner_only_without_echo() {
        let mut d = Driver::new();
        for n in 1..=3 {
            d.join(n);
        }
        d.pair(1, 2);
        d.say(1, "hello <b>there</b> \"quoted\"\n\u{1F600}");
        assert_eq!(
            d.recv(2),
            [json!({"type":"message","text":"hello <b>there</b> \"quoted\"\n\u{1F600}"})]
        );
        assert!(d.recv(1).is_empty(), "no echo");
        assert!(d.recv(3).is_empty(), "no leak to a bystander");
        d.say(2, "  hi back  ");
        assert_eq!(d.recv(1), [json!({"type":"message","text":"  hi back  "})]);
    }

    #[test]
    fn typing_is_relayed_on_change_only() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.typing(1, true);
        d.typing(1, true);
        d.typing(1, true);
        assert_eq!(d.recv(2), [json!({"type":"typing","active":true})]);
        d.typing(1, false);
        d.typing(1, false);
        assert_eq!(d.recv(2), [json!({"type":"typing","active":false})]);
        assert!(d.recv(1).is_empty());
        // A message clears the typing state, so the next keystroke is relayed again.
        d.typing(1, true);
        d.say(1, "done");
        d.typing(1, true);
        assert_eq!(d.types(2), ["typing", "message", "typing"]);
    }

    #[test]
    fn typing_false_is_never_rate_limited() {
        let mut d = Driver::with(ChatConfig { rate_burst: 1, ..quiet_config() });
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.typing(1, true); // takes the only token
        d.typing(1, false); // free
        assert_eq!(d.types(2), ["typing", "typing"]);
        d.typing(1, true); // no token left
        assert_eq!(d.errors(1), ["rate_limited"]);
        assert!(d.recv(2).is_empty());
        d.typing(1, false); // not a change: dropped silently
        assert!(d.recv(1).is_empty() && d.recv(2).is_empty());
    }

    #[test]
    fn skip_tells_the_partner_next_and_rematches_someone_else() {
        let mut d = Driver::new();
        for n in 1..=4 {
            d.join(n);
        }
        d.pair(1, 2);
        d.search(1); // skip
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"next"})]);
        assert_eq!(d.recv(1), [json!({"type":"searching"})]);
        assert_eq!(d.app.stats(), RouletteStats { online: 4, searching: 1, pairs: 0 });
        // The one left behind searches too: not paired again with the skipper (cooldown).
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
        assert_eq!(d.types(1), Vec::<String>::new());
        // Newcomers are paired with them instead, the longest waiting first.
        d.search(3);
        assert_eq!(d.types(3), ["searching", "matched"]);
        assert_eq!(d.partner_of(3), Some(id(1)));
        d.search(4);
        assert_eq!(d.partner_of(4), Some(id(2)));
    }

    #[test]
    fn leave_tells_the_partner_left() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.leave(1);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"left"})]);
        assert!(d.recv(1).is_empty());
        assert_eq!(d.app.stats().pairs, 0);
        // Leave when idle is a no-op, not an error.
        d.leave(1);
        d.leave(2);
        assert!(d.recv(1).is_empty() && d.recv(2).is_empty());
    }

    #[test]
    fn leave_cancels_a_search() {
        let mut d = Driver::new();
        for n in 1..=3 {
            d.join(n);
        }
        d.search(1);
        d.leave(1);
        assert_eq!(d.app.stats().searching, 0);
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
        d.search(3);
        assert_eq!(d.partner_of(3), Some(id(2)));
        assert_eq!(d.types(1), ["searching"]);
    }

    #[test]
    fn disconnect_tells_the_partner_disconnected() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.closed(1);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 0 });
        // Messages now get not_in_chat.
        d.say(2, "hello?");
        assert_eq!(d.errors(2), ["not_in_chat"]);
    }

    fn resume(d: &mut Driver, n: u32, token: &str) {
        d.send(n, json!({"type":"resume","token":token}));
    }

    #[test]
    fn a_dropped_chat_resumes_with_the_lines_kept_in_order() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.typing(1, true);
        d.recv(2);
        d.dropped(1);
        assert_eq!(d.recv(2), [json!({"type":"partner_away"})]);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 1 });
        d.say(2, "one");
        d.typing(2, true);
        d.typing(2, false);
        d.say(2, "two");
        assert!(d.recv(2).is_empty(), "the partner is not told more, nor refused");
        d.at(19.0);
        let new_token = d.join_token(3);
        resume(&mut d, 3, &token);
        assert_eq!(
            d.recv(3),
            [
                json!({"type":"resumed","resume_token":new_token,"state":"chatting"}),
                json!({"type":"message","text":"one"}),
                json!({"type":"typing","active":false}),
                json!({"type":"message","text":"two"}),
            ]
        );
        assert_eq!(d.recv(2), [json!({"type":"partner_back"})]);
        // The chat goes on both ways, under the new connection.
        d.say(3, "back");
        assert_eq!(d.recv(2), [json!({"type":"message","text":"back"})]);
        d.say(2, "welcome back");
        assert_eq!(d.recv(3), [json!({"type":"message","text":"welcome back"})]);
        let m = metrics_of(&d);
        assert_eq!(m["chatd_resume_drops_total"], 1.0);
        assert_eq!(m["chatd_resumes_total"], 1.0);
        assert_eq!(m["chatd_resume_expiries_total"], 0.0);
        // The old token is used up; the new one works for the next drop.
        d.join(4);
        resume(&mut d, 4, &token);
        assert_eq!(d.errors(4), ["resume_failed"]);
        d.dropped(3);
        assert_eq!(d.types(2), ["partner_away"]);
        d.join(5);
        resume(&mut d, 5, &new_token);
        assert_eq!(d.types(5), ["resumed"]);
        assert_eq!(d.types(2), ["partner_back"]);
    }

    #[test]
    fn kept_lines_are_capped_oldest_first() {
        let mut d = Driver::with(ChatConfig { rate_burst: 1000, ..quiet_config() });
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        d.recv(2);
        for i in 0..KEPT_LINES + 10 {
            d.say(2, &format!("line {i}"));
        }
        d.join(3);
        resume(&mut d, 3, &token);
        let got = d.recv(3);
        assert_eq!(got.len(), 1 + KEPT_LINES);
        assert_eq!(got[1]["text"], "line 10");
        assert_eq!(got[KEPT_LINES]["text"], format!("line {}", KEPT_LINES + 9));
        // And by bytes: a few long lines push out the older ones.
        let token = d.join_token(6);
        d.join(7);
        d.pair(6, 7);
        d.dropped(6);
        let long = "x".repeat(1900);
        for _ in 0..40 {
            d.say(7, &long);
        }
        d.join(8);
        resume(&mut d, 8, &token);
        let kept = d.recv(8).len() - 1;
        assert!(kept < 40 && kept * 1900 <= KEPT_BYTES, "{kept}");
    }

    #[test]
    fn the_window_passes_and_the_partner_is_told_disconnected() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        assert_eq!(d.types(2), ["partner_away"]);
        d.at(19.9);
        assert!(d.recv(2).is_empty());
        d.at(20.0);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 0 });
        assert_eq!(metrics_of(&d)["chatd_resume_expiries_total"], 1.0);
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.errors(3), ["resume_failed"]);
        // The refused connection carries on as a new person.
        d.pair(3, 2);
    }

    #[test]
    fn forged_late_and_own_tokens_fail_and_the_connection_carries_on() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        d.recv(2);
        let own = d.join_token(3);
        for bad in ["", "00", &"0".repeat(32), &token.to_uppercase(), &own] {
            resume(&mut d, 3, bad);
            assert_eq!(d.errors(3), ["resume_failed"], "{bad}");
        }
        // A good token is refused after the first message.
        resume(&mut d, 3, &token);
        assert_eq!(d.errors(3), ["resume_failed"]);
        assert!(d.recv(2).is_empty());
        d.join(4);
        resume(&mut d, 4, &token);
        assert_eq!(d.types(4), ["resumed"]);
        assert_eq!(d.types(2), ["partner_back"]);
    }

    #[test]
    fn a_close_frame_or_a_zero_window_ends_the_chat_at_once() {
        let mut d = Driver::with(ChatConfig { resume_window: Duration::ZERO, ..quiet_config() });
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.errors(3), ["resume_failed"]);
        assert_eq!(metrics_of(&d)["chatd_resume_drops_total"], 0.0);
    }

    #[test]
    fn an_open_old_connection_is_closed_with_4000_when_resumed() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.closes, [(id(1), 4000)]);
        assert_eq!(d.types(3), ["resumed"]);
        assert_eq!(d.types(2), ["partner_back"]);
        // The old connection's end changes nothing for the chat.
        d.dropped(1);
        assert!(d.recv(2).is_empty());
        d.say(2, "still here");
        assert_eq!(d.types(3), ["message"]);
        // And its address counts one connection fewer (its Closed found nobody).
        assert!(!d.app.local_clients.contains_key(&AddrHash::from_bytes([1; 16])));
        assert_eq!(d.app.local_clients.len(), 2);
    }

    #[test]
    fn a_searcher_who_drops_keeps_the_place_and_is_not_matched_meanwhile() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.search_with(1, &["chess"]);
        assert_eq!(d.types(1), ["searching"]);
        d.dropped(1);
        assert_eq!(d.app.stats().searching, 0);
        d.join(2);
        d.search_with(2, &["chess"]);
        assert_eq!(d.types(2), ["searching"], "not matched with someone away");
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(
            d.recv(3),
            [
                json!({"type":"resumed","resume_token":d.app.peers.get(&id(3)).unwrap().token.hex(),"state":"searching"}),
                json!({"type":"matched","common_interests":["chess"]}),
            ]
        );
        assert_eq!(d.types(2), ["matched"]);
        // The place: a picky searcher's deadline still counts from its first search.
        let token = d.join_token(4);
        d.search_with(4, &["go"]);
        d.at(1.0);
        d.dropped(4);
        d.join(5);
        resume(&mut d, 5, &token);
        d.recv(5);
        d.join(6);
        d.search(6);
        d.at(4.9);
        assert_eq!(d.types(6), ["searching"]);
        d.at(5.0);
        assert_eq!(d.types(5), ["matched"]);
        assert_eq!(d.types(6), ["matched"]);
    }

    #[test]
    fn what_happens_while_away_is_told_on_resume() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        d.recv(2);
        // The partner skips: the away person is told when it comes back.
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.recv(3)[1..], [json!({"type":"partner_left","reason":"next"})]);
        assert_eq!(d.recv(3), Vec::<Value>::new());
        d.leave(2);
        // Both away at once, and both back.
        let t4 = d.join_token(4);
        let t5 = d.join_token(5);
        d.pair(4, 5);
        d.dropped(4);
        d.dropped(5);
        d.join(6);
        resume(&mut d, 6, &t4);
        d.join(7);
        resume(&mut d, 7, &t5);
        assert_eq!(d.types(6), ["resumed", "partner_away", "partner_back"]);
        assert_eq!(d.types(7), ["resumed", "partner_back"]);
        d.say(6, "hi");
        assert_eq!(d.types(7), ["message"]);
    }

    #[test]
    fn an_idle_person_who_drops_resumes_idle() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.dropped(1);
        assert_eq!(d.app.away.len(), 1);
        let new_token = d.join_token(2);
        resume(&mut d, 2, &token);
        assert_eq!(d.recv(2), [json!({"type":"resumed","resume_token":new_token,"state":"idle"})]);
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
    }

    #[test]
    fn shutdown_ends_away_sessions() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.join(2);
        d.pair(1, 2);
        d.dropped(1);
        d.recv(2);
        let mut out = Vec::new();
        d.app.handle_shutdown(d.now, &mut out);
        d.apply(out);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        assert!(d.app.away.is_empty() && d.app.poll_timeout().is_none());
        d.join(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.errors(3), ["resume_failed"]);
    }

    /// Worker `worker` of a cluster whose connection `me` has asked to resume a session held
    /// by another worker (the `Resume` operation is checked and drained, as is the output).
    fn resuming_worker(now: Instant, worker: &str, me: PeerId) -> Roulette {
        let mut r = Roulette::clustered(quiet_config(), worker.into()).with_random(counting_random);
        let mut out = Vec::new();
        r.handle_cluster_event(now, ClusterEvent::Up, &mut out);
        r.handle_event(now, me, Event::Open { client: AddrHash::from_bytes([0; 16]) }, &mut out);
        let resume = r#"{"type":"resume","token":"0123456789abcdef0123456789abcdef"}"#;
        r.handle_event(now, me, Event::Text(resume), &mut out);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        assert!(
            ops.iter().any(|op| matches!(op, Op::Resume { peer, .. } if *peer == me)),
            "{ops:?}"
        );
        r
    }

    /// The text frames among `actions`, in order.
    fn texts_sent(actions: Vec<Action>) -> Vec<String> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { message: Message::Text(t), .. } => Some(t),
                _ => None,
            })
            .collect()
    }

    /// The new worker's side of a handover, with the partner on a third worker: its direct
    /// lines wait until the old worker has sent on the ones that reached it first.
    #[test]
    fn a_handed_over_chat_holds_the_partners_newer_lines_until_the_old_worker_is_done() {
        let now = Instant::now();
        let me = PeerId::new(0, 1, 7);
        let mut r = resuming_worker(now, "b/0/1", me);
        let mut out = Vec::new();
        let partner = "c/0/1#5".to_owned();
        let body = json!({"state":"chatting","partner":partner,"interests":[],"kept":[
            json!({"type":"message","text":"kept"}).to_string()]});
        let old = "a/0/1#3".to_owned();
        let events = [
            // Redis names the partner too; here it has not moved (see the next test).
            ClusterEvent::HandedOver {
                to: me,
                old: old.clone(),
                partner: partner.clone(),
                body: body.to_string(),
            },
            // Straight from the partner's worker, which has learnt the new key...
            ClusterEvent::RemoteText { to: me, from: partner.clone(), json: "\"newer\"".into() },
            // ...while the old worker still sends on what reached it before.
            ClusterEvent::Forwarded {
                to: me,
                from: partner.clone(),
                what: Forwarded::Text("\"older\"".into()),
            },
            ClusterEvent::Forwarded { to: me, from: partner.clone(), what: Forwarded::End },
        ];
        let mut got = Vec::new();
        for e in events {
            r.handle_cluster_event(now, e, &mut out);
            got.extend(texts_sent(std::mem::take(&mut out)));
        }
        let types: Vec<String> = got
            .iter()
            .map(|t| match serde_json::from_str::<Value>(t).unwrap() {
                Value::String(s) => s,
                v => v["type"].as_str().unwrap().to_owned(),
            })
            .collect();
        assert_eq!(types, ["resumed", "message", "older", "newer"]);
        // After the End, nothing waits.
        r.handle_cluster_event(
            now,
            ClusterEvent::RemoteText { to: me, from: partner.clone(), json: "\"x\"".into() },
            &mut out,
        );
        assert_eq!(out.len(), 1, "not held any more");
    }

    /// Both people of a chat resumed on other workers at once: the handover body names the
    /// partner's old key, Redis its new one, and Redis wins; the partner's move, forwarded from
    /// the old worker, changes nothing more.
    #[test]
    fn a_handover_follows_a_partner_that_moved_at_the_same_time() {
        let now = Instant::now();
        let me = PeerId::new(0, 1, 4);
        let mut r = resuming_worker(now, "d/0/1", me);
        let mut out = Vec::new();
        let (stale, moved) = ("a/0/1#3".to_owned(), "c/0/1#8".to_owned());
        let body = json!({"state":"chatting","partner":stale,"interests":[],"kept":[]});
        let events = [
            ClusterEvent::HandedOver {
                to: me,
                old: "b/0/1#2".into(),
                partner: moved.clone(),
                body: body.to_string(),
            },
            ClusterEvent::Forwarded {
                to: me,
                from: stale.clone(),
                what: Forwarded::Rekey(moved.clone()),
            },
            ClusterEvent::Forwarded { to: me, from: moved.clone(), what: Forwarded::End },
            ClusterEvent::RemoteText {
                to: me,
                from: moved.clone(),
                json: "\"from the moved partner\"".into(),
            },
            ClusterEvent::RemoteText {
                to: me,
                from: stale.clone(),
                json: "\"from nobody\"".into(),
            },
        ];
        for e in events {
            r.handle_cluster_event(now, e, &mut out);
        }
        let texts = texts_sent(out);
        assert!(texts[0].contains("resumed") && texts[0].contains("chatting"), "{texts:?}");
        assert_eq!(texts[1..], ["\"from the moved partner\""]);
    }

    #[test]
    fn a_searcher_who_disconnects_leaves_the_queue() {
        let mut d = Driver::new();
        for n in 1..=3 {
            d.join(n);
        }
        d.search(1);
        d.closed(1);
        assert_eq!(d.app.stats().searching, 0);
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
        d.search(3);
        assert_eq!(d.partner_of(2), Some(id(3)));
    }

    #[test]
    fn shared_interests_are_preferred_and_reported() {
        let mut d = Driver::new();
        for n in 1..=3 {
            d.join(n);
        }
        d.search(1);
        d.search_with(2, &["Music", "chess"]);
        assert_eq!(d.types(2), ["searching"], "a picky searcher does not take just anyone");
        d.search_with(3, &["books", " MUSIC ", "chess"]);
        assert_eq!(d.recv(3)[1], json!({"type":"matched","common_interests":["chess","music"]}));
        assert_eq!(d.recv(2), [json!({"type":"matched","common_interests":["chess","music"]})]);
        assert_eq!(d.types(1), ["searching"]);
    }

    #[test]
    fn interest_timeout_falls_back_to_anyone() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.search_with(1, &["music"]);
        d.at(1.0);
        d.search(2);
        assert_eq!(d.types(2), ["searching"]);
        assert_eq!(d.app.poll_timeout(), Some(d.base + Duration::from_secs(5)));
        d.at(4.999);
        assert!(d.recv(1).len() == 1 && d.recv(2).is_empty());
        d.at(5.0);
        assert_eq!(d.recv(1), [json!({"type":"matched","common_interests":[]})]);
        assert_eq!(d.recv(2), [json!({"type":"matched","common_interests":[]})]);
    }

    #[test]
    fn both_skip_at_once_and_meet_again_only_after_the_cooldown() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        // Both press "next" at the same moment: the second search is processed after the first
        // ended the chat, so it arrives from Idle, not as a skip.
        d.search(1);
        d.search(2);
        assert_eq!(d.types(1), ["searching"]);
        assert_eq!(d.types(2), ["partner_left", "searching"]);
        assert_eq!(d.app.stats(), RouletteStats { online: 2, searching: 2, pairs: 0 });
        assert_eq!(d.app.poll_timeout(), Some(d.base + Duration::from_secs(10)));
        d.at(9.9);
        assert!(d.recv(1).is_empty() && d.recv(2).is_empty());
        d.at(10.0);
        assert_eq!(d.types(1), ["matched"]);
        assert_eq!(d.types(2), ["matched"]);
    }

    #[test]
    fn three_and_more_peers() {
        let mut d = Driver::new();
        for n in 1..=7 {
            d.join(n);
            d.search(n);
        }
        for (a, b) in [(1, 2), (3, 4), (5, 6)] {
            assert_eq!(d.partner_of(a), Some(id(b)));
        }
        assert_eq!(d.app.stats(), RouletteStats { online: 7, searching: 1, pairs: 3 });
        for n in 1..=7 {
            d.recv(n);
        }
        for n in 1..=6 {
            d.say(n, &format!("from {n}"));
        }
        for (a, b) in [(1, 2), (3, 4), (5, 6)] {
            assert_eq!(d.recv(a), [json!({"type":"message","text":format!("from {b}")})]);
            assert_eq!(d.recv(b), [json!({"type":"message","text":format!("from {a}")})]);
        }
        // 3 skips: 4 is told, 3 takes the waiting 7.
        d.search(3);
        assert_eq!(d.types(4), ["partner_left"]);
        assert_eq!(d.partner_of(3), Some(id(7)));
        // 4 searches: 3's cooldown does not matter, nobody else waits.
        d.search(4);
        assert_eq!(d.types(4), ["searching"]);
        // 1 leaves, 2 searches: paired with 4.
        d.leave(1);
        d.search(2);
        assert_eq!(d.partner_of(2), Some(id(4)));
        assert_eq!(d.app.stats(), RouletteStats { online: 7, searching: 0, pairs: 3 });
    }

    #[test]
    fn leave_while_being_matched() {
        // 1 searches and, before it sees `matched`, sends leave: the chat that was just made
        // ends, 2 is told `left`, and 1 is idle (its client ignores the stale `matched`).
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.search(1);
        d.search(2);
        d.leave(1);
        assert_eq!(d.types(1), ["searching", "matched"]);
        assert_eq!(d.types(2), ["searching", "matched", "partner_left"]);
        assert_eq!(d.app.stats(), RouletteStats { online: 2, searching: 0, pairs: 0 });
        d.say(1, "hi");
        assert_eq!(d.errors(1), ["not_in_chat"]);
    }

    #[test]
    fn disconnect_mid_match() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.search(1);
        d.search(2);
        d.closed(1);
        assert_eq!(d.types(2), ["searching", "matched", "partner_left"]);
        // A message 2 had already sent to the vanished partner gets not_in_chat.
        d.say(2, "hello?");
        assert_eq!(d.errors(2), ["not_in_chat"]);
        // Both disconnect at once: no partner_left to a peer that is gone, nothing stuck.
        d.join(3);
        d.join(4);
        d.pair(3, 4);
        d.closed(3);
        d.closed(4);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 0 });
    }

    #[test]
    fn duplicate_search_keeps_the_place_and_updates_interests() {
        let mut d = Driver::new();
        for n in 1..=4 {
            d.join(n);
        }
        d.search_with(1, &["music"]);
        d.search_with(2, &["chess"]);
        d.search_with(1, &["music", "art"]);
        assert_eq!(d.types(1), ["searching", "searching"]);
        assert_eq!(d.app.stats().searching, 2);
        // 3 shares with both; 1 kept its place ahead of 2.
        d.search_with(3, &["chess", "music"]);
        assert_eq!(d.partner_of(3), Some(id(1)));
        // Updated interests replace the old ones.
        d.search_with(2, &["film"]);
        d.search_with(4, &["chess"]);
        assert_eq!(d.types(4), ["searching"]);
        d.search_with(4, &["film"]);
        assert_eq!(d.partner_of(4), Some(id(2)));
        assert_eq!(d.recv(4).last(), Some(&json!({"type":"matched","common_interests":["film"]})));
    }

    #[test]
    fn typing_after_the_partner_is_gone() {
        let mut d = Driver::new();
        for n in 1..=2 {
            d.join(n);
        }
        d.pair(1, 2);
        d.typing(1, true);
        assert_eq!(d.types(2), ["typing"]);
        d.leave(2);
        assert_eq!(d.types(1), ["partner_left"]);
        // 1's client had not seen partner_left yet: its typing events get not_in_chat.
        d.typing(1, false);
        d.typing(1, true);
        assert_eq!(d.errors(1), ["not_in_chat", "not_in_chat"]);
        let got = d.recv(2);
        assert!(got.is_empty(), "nothing leaks to the one who left: {got:?}");
    }

    #[test]
    fn stale_typing_does_not_leak_into_the_next_chat() {
        // 1 is typing to 2, skips, and is matched at once with 3 who was waiting; the
        // typing:false its client sends on skipping is not a change in the new chat, so
        // neither 2 nor 3 sees a stray indicator.
        let mut d = Driver::new();
        for n in 1..=3 {
            d.join(n);
        }
        d.pair(1, 2);
        d.search(3);
        d.recv(3);
        d.typing(1, true);
        d.search(1);
        d.typing(1, false);
        assert_eq!(d.types(2), ["typing", "partner_left"]);
        assert_eq!(d.types(1), ["searching", "matched"]);
        assert_eq!(d.types(3), ["matched"]);
        assert_eq!(d.partner_of(1), Some(id(3)));
        // In the new chat, typing starts from "not typing".
        d.typing(1, true);
        assert_eq!(d.recv(3), [json!({"type":"typing","active":true})]);
    }

    #[test]
    fn every_error_code() {
        let mut d = Driver::with(ChatConfig { max_message_chars: 5, ..quiet_config() });
        d.join(1);
        d.join(2);
        d.text(1, "not json");
        d.text(1, "[\"message\",\"hi\"]");
        d.text(1, "{\"type\":\"message\"}");
        d.text(1, "{\"text\":\"no type\"}");
        assert_eq!(d.errors(1), ["invalid_json"; 4]);
        d.text(1, "{\"type\":\"dance\"}");
        assert_eq!(d.errors(1), ["unknown_type"]);
        d.say(1, "hi");
        d.typing(1, true);
        assert_eq!(d.errors(1), ["not_in_chat", "not_in_chat"]);
        d.search_with(1, &["a", "b", "c", "d", "e", "f"]);
        d.search_with(1, &[""]);
        d.send(1, json!({"type":"search","interests":"music"}));
        assert_eq!(d.errors(1), ["bad_interests"; 3]);
        assert_eq!(d.app.stats().searching, 0, "a bad search starts nothing");
        d.pair(1, 2);
        d.say(1, "héllo");
        assert_eq!(d.types(2), ["message"], "5 scalar values (6 bytes) fit");
        d.say(1, "héllo!");
        assert_eq!(d.errors(1), ["message_too_long"]);
        d.say(1, "");
        d.say(1, " \t\n\u{3000}");
        assert_eq!(d.errors(1), ["empty_message", "empty_message"]);
        assert!(d.recv(2).is_empty());
        // A bad search during a chat does not end it.
        d.search_with(1, &["x".repeat(33).as_str()]);
        assert_eq!(d.errors(1), ["bad_interests"]);
        assert_eq!(d.partner_of(1), Some(id(2)));
        // rate_limited: see below. Errors never close the connection.
        assert!(d.closes.is_empty());
    }

    #[test]
    fn error_messages_carry_the_limit() {
        let mut d = Driver::with(ChatConfig { max_message_chars: 3, ..quiet_config() });
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.say(1, "four");
        let e = &d.recv(1)[0];
        assert_eq!(e["code"], "message_too_long");
        assert!(e["message"].as_str().unwrap().contains('3'), "{e}");
    }

    #[test]
    fn messages_over_the_rate_are_dropped() {
        let mut d = Driver::new(); // 5/s, burst 20
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        for i in 0..25 {
            d.say(1, &i.to_string());
        }
        assert_eq!(d.recv(2).len(), 20);
        assert_eq!(d.errors(1), ["rate_limited"; 5]);
        d.at(0.25); // 1.25 tokens
        d.say(1, "a");
        d.say(1, "b");
        assert_eq!(d.types(2), ["message"]);
        assert_eq!(d.errors(1), ["rate_limited"]);
        d.at(10.0); // full again, capped at the burst
        for i in 0..21 {
            d.say(1, &i.to_string());
        }
        assert_eq!(d.recv(2).len(), 20);
        assert!(d.closes.is_empty());
    }

    #[test]
    fn a_fast_typist_is_not_limited() {
        // Typing on every key press and a message every 2 s for a minute: never limited.
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        for step in 0..600u32 {
            d.at(f64::from(step) * 0.1);
            d.typing(1, true);
            if step % 20 == 19 {
                d.say(1, "a line");
            }
        }
        assert!(d.recv(1).is_empty());
        assert_eq!(d.types(2).iter().filter(|t| *t == "message").count(), 30);
    }

    #[test]
    fn searches_are_rate_limited_too() {
        let mut d = Driver::new();
        d.join(1);
        for _ in 0..SEARCH_BURST {
            d.search(1);
        }
        assert_eq!(d.types(1), vec!["searching"; SEARCH_BURST as usize]);
        d.search(1);
        assert_eq!(d.errors(1), ["rate_limited"]);
        d.at(1.0);
        d.search(1);
        assert_eq!(d.types(1), ["searching"]);
    }

    #[test]
    fn searches_are_limited_per_address_across_connections() {
        let mut d = Driver::new();
        let client = AddrHash::from_bytes([9; 16]);
        for n in 1..=4 {
            d.open.insert(id(n));
            d.event(n, Event::Open { client });
            d.recv(n);
        }
        // Four connections of one address: 60 searches among them, each within its own 20.
        let mut refused = 0;
        for i in 0..64 {
            let n = 1 + i % 4;
            d.send(n, json!({"type":"search","interests":["nobody else"]}));
            for v in d.recv(n) {
                if v["type"] == "error" {
                    assert_eq!(v["code"], "rate_limited");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 64 - ChatConfig::default().address_search_burst as usize);
        // Another address is not affected.
        d.join(5);
        d.search(5);
        assert_eq!(d.types(5), ["searching"]);
        // The budget refills (3 a second), and a full one is forgotten.
        d.at(1.0);
        d.send(1, json!({"type":"search","interests":["nobody else"]}));
        assert_eq!(d.types(1), ["searching"]);
        d.at(60.0);
        assert!(d.app.addresses.is_empty(), "refilled budgets are swept");
    }

    #[test]
    fn sustained_abuse_closes_with_1008() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        for _ in 0..ERROR_BURST {
            d.text(1, "garbage");
        }
        assert_eq!(d.errors(1).len(), ERROR_BURST as usize);
        assert!(d.closes.is_empty());
        d.text(1, "garbage");
        assert_eq!(d.closes, [(id(1), close_code::POLICY)]);
        assert!(d.recv(1).is_empty(), "closed, not answered");
        // The partner learns at once; it does not wait for the close handshake.
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        // Until Closed arrives, anything else from it is ignored.
        d.say(1, "still here");
        d.search(1);
        d.event(1, Event::Binary(b"x"));
        assert!(d.recv(1).is_empty() && d.recv(2).is_empty());
        assert_eq!(d.closes.len(), 1);
        assert_eq!(d.app.stats().online, 2);
        d.closed(1);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 0 });
    }

    #[test]
    fn flooding_messages_ends_in_1008() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        for _ in 0..100 {
            d.say(1, "spam");
        }
        // rate_burst messages got through, then ERROR_BURST rate_limited errors, then the close.
        assert_eq!(d.recv(2).len(), 20 + 1);
        assert_eq!(d.errors(1), vec!["rate_limited"; ERROR_BURST as usize]);
        assert_eq!(d.closes, [(id(1), close_code::POLICY)]);
    }

    #[test]
    fn an_error_now_and_then_never_closes() {
        let mut d = Driver::new();
        d.join(1);
        for s in 0..300u32 {
            d.at(f64::from(s));
            d.text(1, "oops");
        }
        assert_eq!(d.errors(1).len(), 300);
        assert!(d.closes.is_empty());
    }

    #[test]
    fn binary_closes_with_1003() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.join(3);
        d.pair(1, 2);
        d.search(3);
        d.event(1, Event::Binary(&[1, 2, 3]));
        assert_eq!(d.closes, [(id(1), close_code::UNSUPPORTED)]);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"disconnected"})]);
        d.event(3, Event::Binary(&[]));
        assert_eq!(d.closes[1], (id(3), close_code::UNSUPPORTED));
        assert_eq!(d.app.stats().searching, 0);
        d.closed(1);
        d.closed(3);
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 0, pairs: 0 });
    }

    #[test]
    fn online_count_is_coalesced() {
        let mut d = Driver::with(ChatConfig {
            online_interval: Duration::from_secs(5),
            ..ChatConfig::default()
        });
        d.open(1); // t=0 starts the clock
        assert_eq!(d.app.poll_timeout(), None, "nothing changed since the welcome");
        d.at(1.0);
        d.open(2);
        d.at(2.0);
        d.open(3);
        d.at(3.0);
        d.closed(3);
        assert!(d.broadcasts.is_empty());
        assert_eq!(d.app.poll_timeout(), Some(d.base + Duration::from_secs(5)));
        d.at(5.0);
        assert_eq!(d.broadcasts, [json!({"type":"online","count":2})]);
        assert_eq!(d.recv(1).last(), Some(&json!({"type":"online","count":2})));
        // A change right after waits for the interval ...
        d.at(6.0);
        d.open(4);
        assert_eq!(d.app.poll_timeout(), Some(d.base + Duration::from_secs(10)));
        d.at(9.9);
        assert_eq!(d.broadcasts.len(), 1);
        d.at(10.0);
        assert_eq!(d.broadcasts[1], json!({"type":"online","count":3}));
        // ... and a change that is undone before then sends nothing.
        d.at(11.0);
        d.closed(4);
        d.open(5);
        assert_eq!(d.app.poll_timeout(), None);
        d.at(30.0);
        assert_eq!(d.broadcasts.len(), 2);
        // After a quiet spell a change goes out at once.
        d.closed(5);
        assert_eq!(d.broadcasts[2], json!({"type":"online","count":2}));
    }

    #[test]
    fn a_thousand_joins_cost_one_broadcast_per_interval() {
        let mut d = Driver::with(ChatConfig {
            online_interval: Duration::from_secs(5),
            ..ChatConfig::default()
        });
        for n in 0..1000u32 {
            d.at(f64::from(n) * 0.01);
            d.open(n);
        }
        d.at(20.0);
        // Joins over 10 s: one broadcast at 5 s and one at 10 s, not a thousand.
        assert_eq!(
            d.broadcasts,
            [json!({"type":"online","count":500}), json!({"type":"online","count":1000})]
        );
    }

    #[test]
    fn shutdown_tells_everyone_in_a_chat() {
        let mut d = Driver::new();
        for n in 1..=5 {
            d.join(n);
        }
        d.pair(1, 2);
        d.pair(3, 4);
        d.search(5);
        d.recv(5);
        let mut out = Vec::new();
        d.app.handle_shutdown(d.now, &mut out);
        let to: Vec<PeerId> = out
            .iter()
            .map(|a| match a {
                Action::Send { to, .. } => *to,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(to, [id(1), id(2), id(3), id(4)], "in PeerId order");
        d.apply(out);
        for n in 1..=4 {
            assert_eq!(d.recv(n), [json!({"type":"partner_left","reason":"shutdown"})]);
        }
        assert!(d.recv(5).is_empty());
        assert_eq!(d.app.stats(), RouletteStats { online: 5, searching: 0, pairs: 0 });
        // While draining: searches are answered but match nobody; nothing is scheduled.
        d.search(1);
        d.search(2);
        assert_eq!(d.types(1), ["searching"]);
        assert_eq!(d.types(2), ["searching"]);
        assert_eq!(d.app.poll_timeout(), None);
        d.closed(3);
        assert_eq!(d.app.poll_timeout(), None, "no online broadcast while draining");
    }

    #[test]
    fn reload_applies_to_live_connections() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        d.pair(1, 2);
        d.say(1, "hello");
        assert_eq!(d.types(2), ["message"]);
        d.app.set_config(ChatConfig { max_message_chars: 3, rate_burst: 1, ..quiet_config() });
        d.say(1, "hello");
        assert_eq!(d.errors(1), ["message_too_long"]);
        d.say(1, "hey");
        d.say(1, "hey");
        assert_eq!(d.types(2), ["message"]);
        assert_eq!(d.errors(1), ["rate_limited"]);
        // A waiting searcher's interest timeout follows the reload.
        d.join(3);
        d.join(4);
        d.search_with(3, &["music"]);
        d.search(4);
        d.app.set_config(ChatConfig { interest_timeout: Duration::from_secs(1), ..quiet_config() });
        d.at(1.0);
        assert_eq!(d.partner_of(3), Some(id(4)));
        // New connections are welcomed with the new limit.
        d.app.set_config(ChatConfig { max_message_chars: 42, ..quiet_config() });
        d.open(5);
        assert_eq!(d.recv(5)[0]["max_message_chars"], 42);
    }

    #[test]
    fn spurious_events_are_ignored() {
        let mut d = Driver::new();
        // Text, binary and close for a peer never opened.
        d.open.insert(id(9));
        d.text(9, "{\"type\":\"search\"}");
        d.event(9, Event::Binary(b"x"));
        d.event(9, Event::Closed { dropped: true });
        assert!(d.recv(9).is_empty() && d.closes.is_empty());
        // A repeated Open is not a second welcome and does not reset the state.
        d.join(1);
        d.search(1);
        d.recv(1);
        d.event(1, Event::Open { client: AddrHash::from_bytes([1; 16]) });
        assert!(d.recv(1).is_empty());
        assert_eq!(d.app.stats(), RouletteStats { online: 1, searching: 1, pairs: 0 });
        // Closed twice.
        d.closed(1);
        d.closed(1);
        assert_eq!(d.app.stats(), RouletteStats::default());
    }

    #[test]
    fn matching_is_deterministic() {
        fn run() -> Vec<(u32, Vec<Value>)> {
            let mut d = Driver::new();
            let tags = [&["music"][..], &[], &["chess", "music"], &["art"], &[], &["art"]];
            for n in 0..30u32 {
                d.at(f64::from(n) * 0.7);
                d.join(n);
                d.search_with(n, tags[n as usize % tags.len()]);
                if n % 4 == 3 {
                    d.search(n - 2);
                }
            }
            d.at(100.0);
            (0..30).map(|n| (n, d.recv(n))).collect()
        }
        assert_eq!(run(), run());
    }

    #[test]
    fn random_event_storms_keep_the_invariants() {
        // Several peers doing random things with valid and invalid frames at random times; the
        // Driver checks the invariants after every action batch, and nothing panics.
        let frames = [
            json!({"type":"search"}).to_string(),
            json!({"type":"search","interests":["music"]}).to_string(),
            json!({"type":"search","interests":["chess","music"]}).to_string(),
            json!({"type":"message","text":"hi"}).to_string(),
            json!({"type":"message","text":" "}).to_string(),
            json!({"type":"typing","active":true}).to_string(),
            json!({"type":"typing","active":false}).to_string(),
            json!({"type":"leave"}).to_string(),
            "{\"type\":".to_owned(),
            "{\"type\":\"nope\"}".to_owned(),
        ];
        let mut x: u64 = 0xD1B5_4A32_D192_ED03;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..40 {
            let mut d = Driver::with(ChatConfig {
                interest_timeout: Duration::from_secs(2),
                rematch_cooldown: Duration::from_secs(3),
                online_interval: Duration::from_secs(1),
                rate_burst: 5,
                ..ChatConfig::default()
            });
            let mut t = 0.0;
            for _ in 0..400 {
                t += next(500) as f64 / 1000.0;
                d.at(t);
                let n = next(8) as u32;
                let is_open = d.open.contains(&id(n));
                match next(20) {
                    0 if is_open => d.closed(n),
                    0 | 1 if !is_open => d.open(n),
                    _ if !is_open => {}
                    2 => d.event(n, Event::Binary(b"\x00")),
                    k => {
                        let f = &frames[k as usize % frames.len()];
                        d.text(n, f);
                    }
                }
                // Every message someone receives is one of the documented types.
                for m in 0..8 {
                    for v in d.recv(m) {
                        let ty = v["type"].as_str().unwrap_or("");
                        assert!(
                            [
                                "welcome",
                                "searching",
                                "matched",
                                "message",
                                "typing",
                                "partner_left",
                                "online",
                                "error"
                            ]
                            .contains(&ty),
                            "{v}"
                        );
                    }
                }
                // A peer the roulette asked to close is closed by the server soon after.
                let closing: Vec<PeerId> = d.closes.drain(..).map(|(p, _)| p).collect();
                for p in closing {
                    d.closed(p.slot());
                }
            }
            let mut out = Vec::new();
            d.app.handle_shutdown(d.now, &mut out);
            d.apply(out);
            assert_eq!(d.app.stats().pairs, 0);
        }
    }

    fn report(d: &mut Driver, n: u32, reason: &str) {
        d.send(n, json!({"type":"report","reason":reason}));
    }

    #[test]
    fn a_report_ends_the_chat_as_a_skip_and_three_ban_into_the_shadow_pool() {
        let mut d = Driver::new();
        for n in 1..=9 {
            d.join(n);
        }
        // Three people report 9 (one during the chat, two in the minute after).
        d.pair(9, 1);
        report(&mut d, 1, "spam");
        assert_eq!(d.types(1), ["reported"], "the reporter is idle; its page searches");
        assert_eq!(d.recv(9), [json!({"type":"partner_left","reason":"next"})]);
        d.at(20.0);
        d.pair(9, 2);
        d.leave(2);
        d.recv(9);
        d.at(70.0);
        report(&mut d, 2, "abuse");
        assert_eq!(d.types(2), ["reported"]);
        assert!(d.bans.is_empty());
        d.at(75.0);
        d.pair(9, 3);
        report(&mut d, 3, "underage");
        assert_eq!(d.bans, [AddrHash::from_bytes([9; 16])]);
        assert_eq!(d.app.counters.shadow_bans, 1);
        assert_eq!(d.app.counters.reports, [1, 1, 1, 0]);
        d.recv(9);
        // 9 searches like anyone (and is not told), but meets only another banned address.
        d.search(9);
        d.search(4);
        assert_eq!(d.types(9), ["searching"]);
        assert_eq!(d.types(4), ["searching"]);
        d.app.ledger.ban(d.now, AddrHash::from_bytes([8; 16]), Duration::from_secs(60));
        d.search(8);
        assert_eq!(d.types(8), ["searching", "matched"]);
        assert_eq!(d.partner_of(8), Some(id(9)));
        d.search(5);
        assert_eq!(d.partner_of(5), Some(id(4)));
    }

    #[test]
    fn a_waiting_searcher_banned_moves_to_the_shadow_pool_at_once() {
        let mut d = Driver::with(ChatConfig {
            safety: Rules { report_threshold: 1, ..Rules::default() },
            ..quiet_config()
        });
        for n in 1..=4 {
            d.join(n);
        }
        d.pair(1, 2);
        d.leave(1);
        d.search(1); // waiting again when the report comes
        d.app.ledger.ban(d.now, AddrHash::from_bytes([3; 16]), Duration::from_secs(60));
        d.search(3); // banned: does not take 1
        assert_eq!(d.types(3), ["searching"]);
        report(&mut d, 2, "other");
        assert_eq!(d.types(2), ["partner_left", "reported"]);
        assert_eq!(d.partner_of(1), Some(id(3)), "1 moved over and met the other banned one");
    }

    #[test]
    fn reports_outside_a_chat_and_its_minute_after_are_refused() {
        let mut d = Driver::new();
        d.join(1);
        d.join(2);
        report(&mut d, 1, "spam");
        assert_eq!(d.errors(1), ["not_in_chat"]);
        d.send(1, json!({"type":"block"}));
        assert_eq!(d.errors(1), ["not_in_chat"]);
        d.pair(1, 2);
        d.leave(2);
        d.recv(1);
        d.at(61.0);
        report(&mut d, 1, "spam");
        assert_eq!(d.errors(1), ["not_in_chat"]);
        report(&mut d, 1, "rude");
        assert_eq!(d.errors(1), ["invalid_json"]);
    }

    #[test]
    fn a_block_keeps_two_addresses_apart_until_it_ends() {
        let mut d = Driver::with(ChatConfig {
            rematch_cooldown: Duration::from_millis(10),
            safety: Rules { block_duration: Duration::from_secs(100), ..Rules::default() },
            ..quiet_config()
        });
        for n in 1..=3 {
            d.join(n);
        }
        d.pair(1, 2);
        d.send(1, json!({"type":"block"}));
        assert_eq!(d.types(1), ["blocked"]);
        assert_eq!(d.recv(2), [json!({"type":"partner_left","reason":"next"})]);
        d.at(1.0);
        d.search(1);
        d.search(2);
        assert_eq!(d.types(2), ["searching"], "kept apart, both wait");
        d.search(3);
        assert_eq!(d.partner_of(3), Some(id(1)));
        d.leave(3);
        d.at(101.0);
        d.search(1);
        assert_eq!(d.partner_of(1), Some(id(2)), "the block ended");
        assert_eq!(d.app.counters.blocks, 1);
    }

    #[test]
    fn the_same_line_to_five_strangers_reports_the_sender_from_each_and_bans() {
        let mut d = Driver::with(ChatConfig {
            rematch_cooldown: Duration::from_millis(10),
            ..quiet_config()
        });
        for n in 1..=6 {
            d.join(n);
        }
        let ad = "Buy cheap followers at example.test";
        for n in 2..=6 {
            d.pair(1, n);
            d.say(1, if n % 2 == 0 { ad } else { "  BUY CHEAP followers at EXAMPLE.test " });
            d.leave(n);
            d.recv(1);
            d.at(f64::from(n));
        }
        assert_eq!(d.app.counters.spam_detections, 1);
        assert_eq!(d.app.counters.reports[crate::safety::Reason::Spam as usize], 5);
        assert_eq!(d.bans, [AddrHash::from_bytes([1; 16])]);
    }

    #[test]
    fn proof_of_work_is_asked_checked_and_renewed_per_search() {
        let mut d = Driver::with(ChatConfig {
            safety: Rules { pow: crate::safety::Pow::Bits(8), ..Rules::default() },
            ..quiet_config()
        });
        d.open(1);
        let welcome = d.recv(1).remove(0);
        assert_eq!(welcome["pow"]["bits"], 8);
        let challenge = |v: &Value| -> [u8; 16] {
            let hex = v["pow"]["challenge"].as_str().expect("a challenge");
            let mut out = [0u8; 16];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            out
        };
        let solve = |c: [u8; 16]| {
            (0u64..)
                .map(|n| n.to_string())
                .find(|n| crate::safety::ledger::pow_ok(&c, n, 8))
                .unwrap()
        };
        let mut c = challenge(&welcome);
        d.search(1);
        let e = d.recv(1).remove(0);
        assert_eq!(e["code"], "pow_required");
        assert_eq!(challenge(&e), c, "the same challenge, still to solve");
        let bad = (0u64..)
            .map(|n| n.to_string())
            .find(|n| !crate::safety::ledger::pow_ok(&c, n, 8))
            .unwrap();
        d.send(1, json!({"type":"search","pow":bad}));
        let e = d.recv(1).remove(0);
        assert_eq!(e["code"], "pow_invalid");
        assert_ne!(challenge(&e), c, "a wrong nonce gets a new challenge");
        c = challenge(&e);
        d.send(1, json!({"type":"search","pow":solve(c)}));
        let ok = d.recv(1).remove(0);
        assert_eq!(ok["type"], "searching");
        assert_ne!(challenge(&ok), c, "the next search's challenge comes with searching");
        // A challenge is good once: the same nonce again is refused.
        d.send(1, json!({"type":"search","pow":solve(c)}));
        assert_eq!(d.recv(1)[0]["code"], "pow_invalid");
        assert_eq!(d.app.counters.errors(protocol::ErrorCode::PowRequired), 1);
        assert_eq!(d.app.counters.errors(protocol::ErrorCode::PowInvalid), 2);
    }

    #[test]
    fn automatic_proof_of_work_turns_on_past_the_search_rate() {
        let mut d = Driver::with(ChatConfig {
            address_search_burst: 0,
            safety: Rules { pow: crate::safety::Pow::Auto { rate: 3.0 }, ..Rules::default() },
            ..quiet_config()
        });
        for n in 1..=6 {
            d.join(n);
        }
        for n in 1..=4 {
            d.search(n);
            assert!(d.recv(n).iter().all(|v| v["type"] != "error"), "off below the rate");
        }
        d.search(5);
        let e = d.recv(5).remove(0);
        assert_eq!(
            (e["code"].as_str(), e["pow"]["bits"].as_u64()),
            (Some("pow_required"), Some(18))
        );
        d.at(3.0);
        d.search(6);
        assert!(d.recv(6).iter().all(|v| v["type"] != "error"), "off again after a quiet second");
        // One address alone counts three searches a second at most: it cannot turn it on.
        d.at(5.0);
        for n in 7..=9 {
            d.join(n);
        }
        let one = AddrHash::from_bytes([7; 16]);
        for n in 10..=14 {
            d.open.insert(id(n));
            d.event(n, Event::Open { client: one });
            d.recv(n);
            d.search(n);
        }
        d.search(7);
        assert!(d.recv(7).iter().all(|v| v["type"] != "error"), "still off");
    }

    #[test]
    fn in_a_cluster_reports_blocks_and_counts_go_to_redis_by_address() {
        let now = Instant::now();
        let mut r =
            Roulette::clustered(quiet_config(), "a/0/1".into()).with_random(counting_random);
        let (me, mine, theirs) =
            (id(1), AddrHash::from_bytes([1; 16]), AddrHash::from_bytes([7; 16]));
        let mut out = Vec::new();
        r.handle_cluster_event(now, ClusterEvent::Up, &mut out);
        r.handle_event(now, me, Event::Open { client: mine }, &mut out);
        r.handle_event(now, me, Event::Text(r#"{"type":"search"}"#), &mut out);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        assert!(ops.iter().any(|op| matches!(op, Op::Token { client, count: 1, fresh: true, .. }
            if *client == mine.to_string())));
        assert!(ops
            .iter()
            .any(|op| matches!(op, Op::Search { client, .. } if *client == mine.to_string())));
        let matched = ClusterEvent::Matched {
            peer: me,
            partner: "b/0/2#7".into(),
            waited: Duration::ZERO,
            partner_waited: Duration::ZERO,
            partner_client: theirs.to_string(),
            common: vec![],
        };
        r.handle_cluster_event(now, matched, &mut out);
        out.clear();
        r.handle_event(now, me, Event::Text(r#"{"type":"report","reason":"abuse"}"#), &mut out);
        assert_eq!(texts_sent(std::mem::take(&mut out)), [r#"{"type":"reported"}"#]);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        let rules = Rules::default();
        assert_eq!(
            ops,
            [
                Op::Part { peer: me, partner: "b/0/2#7".into(), reason: Some("next") },
                Op::Report {
                    target: theirs.to_string(),
                    reporter: mine.to_string(),
                    threshold: rules.report_threshold,
                    window_ms: rules.report_window.as_millis() as u64,
                    ban_ms: rules.ban_duration.as_millis() as u64,
                },
            ]
        );
        // A block in the minute after the chat, about the same partner.
        r.handle_event(now, me, Event::Text(r#"{"type":"block"}"#), &mut out);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        let ms = rules.block_duration.as_millis() as u64;
        assert_eq!(ops, [Op::Block { a: mine.to_string(), b: theirs.to_string(), ms }]);
        // Redis says the report banned: counted and logged once, here.
        r.handle_cluster_event(
            now,
            ClusterEvent::Banned { client: theirs.to_string(), reports: 3 },
            &mut out,
        );
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Banned { client, reports: 3, .. } if *client == theirs)));
        assert_eq!(r.counters.shadow_bans, 1);
        // At the cap across the cluster: 429 for the address's next upgrades here, and one
        // connection too many is closed with 1008.
        out.clear();
        r.handle_cluster_event(now, ClusterEvent::Crowded { peer: me, count: 8 }, &mut out);
        assert_eq!(out, [Action::Crowded { client: mine, until: now + CROWDED_FOR }]);
        out.clear();
        r.handle_cluster_event(now, ClusterEvent::Crowded { peer: me, count: 9 }, &mut out);
        assert!(out.iter().any(|a| matches!(a, Action::Crowded { client, .. } if *client == mine)));
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Close { peer, code: 1008, .. } if *peer == me)));
        r.handle_event(now, me, Event::Closed { dropped: false }, &mut out);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        assert!(ops.contains(&Op::Count { client: mine.to_string(), count: 0 }), "{ops:?}");
    }

    #[test]
    fn a_pardon_puts_a_waiting_searcher_back_with_everyone() {
        let mut d = Driver::new();
        for n in 3..=4 {
            d.join(n);
        }
        let banned = AddrHash::from_bytes([3; 16]);
        d.app.ledger.ban(d.now, banned, Duration::from_secs(600));
        d.search(3);
        d.search(4);
        assert_eq!(d.partner_of(4), None, "apart while 3 is banned");
        let mut config = quiet_config();
        config.safety.pardon = vec![banned.short()];
        d.app.reconfigure(config);
        d.run_timers();
        assert_eq!(d.partner_of(3), Some(id(4)));
        assert!(!d.app.ledger.is_banned(d.now, banned));
    }

    #[test]
    fn a_searcher_banned_while_away_resumes_into_the_shadow_pool() {
        let mut d = Driver::new();
        let token = d.join_token(1);
        d.search(1);
        d.recv(1);
        d.dropped(1);
        let address = AddrHash::from_bytes([1; 16]);
        d.app.ledger.ban(d.now, address, Duration::from_secs(600));
        d.open.insert(id(3));
        d.event(3, Event::Open { client: address });
        d.recv(3);
        resume(&mut d, 3, &token);
        assert_eq!(d.types(3), ["resumed"]);
        d.join(4);
        d.search(4);
        assert_eq!(d.partner_of(4), None, "the resumed searcher is in the shadow pool");
        d.app.ledger.ban(d.now, AddrHash::from_bytes([5; 16]), Duration::from_secs(600));
        d.join(5);
        d.search(5);
        assert_eq!(d.partner_of(5), Some(id(3)));
    }

    #[test]
    fn safety_decisions_made_while_redis_is_away_are_sent_when_it_is_back() {
        let now = Instant::now();
        let mut r =
            Roulette::clustered(quiet_config(), "a/0/1".into()).with_random(counting_random);
        let (me, mine) = (id(1), AddrHash::from_bytes([1; 16]));
        let mut out = Vec::new();
        r.handle_cluster_event(now, ClusterEvent::Up, &mut out);
        r.handle_event(now, me, Event::Open { client: mine }, &mut out);
        r.handle_cluster_event(now, ClusterEvent::Down, &mut out);
        std::iter::from_fn(|| r.poll_cluster_op()).for_each(drop);
        r.handle_event(now, me, Event::Closed { dropped: false }, &mut out);
        let mut config = quiet_config();
        config.safety.pardon = vec!["0a0b0c0d".into()];
        r.reconfigure(config);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        assert!(
            ops.iter().all(|op| !matches!(op, Op::Count { .. } | Op::Pardon { .. })),
            "{ops:?}"
        );
        r.handle_cluster_event(now, ClusterEvent::Up, &mut out);
        let ops: Vec<Op> = std::iter::from_fn(|| r.poll_cluster_op()).collect();
        assert!(ops.contains(&Op::Pardon { shorts: vec!["0a0b0c0d".into()] }), "{ops:?}");
        assert!(ops.contains(&Op::Count { client: mine.to_string(), count: 0 }), "{ops:?}");
    }
}
