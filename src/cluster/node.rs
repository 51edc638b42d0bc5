//! One worker's side of the shared roulette, sans-IO: turns the roulette's cluster operations
//! into Redis commands (one Lua script, `roulette.lua`, for everything that must be atomic;
//! `PUBLISH` for lines), and Redis replies and channel messages back into events.
//!
//! Lines for partners on other workers are batched: every record for one destination worker
//! in one loop turn goes out in one `PUBLISH` (one round trip per destination per turn).
//! Order per pair holds because everything a worker sends goes down one connection in the
//! order the roulette decided it: a batch is flushed before any script call that follows it.
//!
//! Owns: the worker's identity, key and channel names, the script, record framing, the
//! heartbeat schedule, the link's counters. May not touch: sockets, the clock.
use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use super::resp::Value;
use crate::{app::PeerId, metrics};

/// The script that keeps the queue, the pairs and the workers' liveness.
pub const SCRIPT: &str = include_str!("roulette.lua");
/// How often a worker says it is alive (and learns the crowd's size).
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Commands in flight to Redis at once. A burst of searches waits here, not in Redis' queue
/// behind which the heartbeat would wait (a heartbeat late by 3 s makes the others forget this
/// worker), and not in the link's buffers.
pub(super) const MAX_IN_FLIGHT: usize = 64;
/// Commands waiting here at most; past it a search is failed back (and made again later).
pub(super) const MAX_WAITING: usize = 20_000;
/// Largest record accepted from a channel, and largest channel message.
const MAX_RECORD: usize = 1 << 20;
const MAX_MESSAGE: usize = 8 << 20;

/// What the roulette asks of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Search (or search again, keeping the place) for `peer` with these sorted interests.
    Search {
        /// The local searcher.
        peer: PeerId,
        /// Its interests, normalised and sorted.
        interests: Vec<String>,
        /// Its address hash (hex): the queue keeps shadow-banned people and blocked pairs
        /// apart.
        client: String,
    },
    /// `peer` stopped searching.
    Cancel {
        /// The local peer.
        peer: PeerId,
    },
    /// `peer`'s chat with `partner` (a peer key) ended; `reason` is told to the partner when it
    /// is on another worker (`None`: its side already knows).
    Part {
        /// The local peer.
        peer: PeerId,
        /// The partner's key.
        partner: String,
        /// The `partner_left` reason for the partner.
        reason: Option<&'static str>,
    },
    /// A local connection's resume token, so that a connection on any worker can resume it.
    Token {
        /// The local peer.
        peer: PeerId,
        /// Its token, in hex.
        token: String,
        /// Its address hash (hex).
        client: String,
        /// Connections of that address on this worker now.
        count: u32,
        /// A new connection (its reply says whether the address is over its cap across the
        /// cluster), not one registered again after a reconnect.
        fresh: bool,
    },
    /// The connections of one address on this worker changed (one closed).
    Count {
        /// The address hash (hex).
        client: String,
        /// Connections of that address on this worker now.
        count: u32,
    },
    /// A report of `target` by `reporter` (address hashes): Redis counts distinct reporters
    /// within the window and shadow-bans at the threshold.
    Report {
        /// The reported address.
        target: String,
        /// The reporter's address.
        reporter: String,
        /// Distinct reporters that ban.
        threshold: u32,
        /// Reports older than this do not count.
        window_ms: u64,
        /// How long a ban lasts.
        ban_ms: u64,
    },
    /// Two addresses are not paired for `ms`.
    Block {
        /// One address.
        a: String,
        /// The other.
        b: String,
        /// For how long.
        ms: u64,
    },
    /// Lifts the shadow bans of these short hashes (a reload's `pardon`).
    Pardon {
        /// 8 hex digits each.
        shorts: Vec<String>,
    },
    /// The token is no longer good (closed, expired, used).
    Untoken {
        /// The local peer (or the away one) it belonged to.
        peer: PeerId,
        /// The token, in hex.
        token: String,
    },
    /// A searcher's connection dropped: out of the indexes, so that nobody takes it while it is
    /// away, but its place (sequence number and start) is kept for a resume.
    Park {
        /// The local peer.
        peer: PeerId,
    },
    /// Local `peer` asks to resume the session of `token`, held by another worker.
    Resume {
        /// The new connection.
        peer: PeerId,
        /// The token it sent, in hex.
        token: String,
    },
    /// The session of local `old` now belongs to `new` (a key): the pairs and the queue place
    /// follow it, the partner's worker is told, and `new`'s worker gets `body` (the state and
    /// the kept lines) unless it is this worker.
    Handover {
        /// The session's old local id.
        old: PeerId,
        /// The resumed connection's key.
        new: String,
        /// The partner's key, in a chat.
        partner: Option<String>,
        /// Whether the session was searching (its queue place moves).
        searching: bool,
        /// What the new worker needs, as JSON.
        body: String,
    },
    /// Tells the worker of `to` (a key) that its resume failed.
    Refuse {
        /// The resuming connection's key.
        to: String,
    },
    /// A record that reached this worker for a session that has moved to `to`: sent on.
    Forward {
        /// The session's new key.
        to: String,
        /// The sender's key.
        from: String,
        /// What it said.
        what: Forwarded,
    },
    /// Tells the worker of `to` (a session's old key) that local `from`, its partner, now
    /// writes to the session's new key: the last record it will get from `from`.
    Mark {
        /// The session's old key.
        to: String,
        /// The local partner.
        from: PeerId,
    },
    /// A JSON message for a partner on another worker, delivered as is.
    Relay {
        /// The partner's key.
        to: String,
        /// The sender's key, so that the receiver can check it is still its partner.
        from: PeerId,
        /// The encoded server message.
        json: String,
    },
}

/// A partner's record sent on to a session's new worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// An encoded server message.
    Text(String),
    /// The partner left, with this reason.
    Left(String),
    /// The partner's worker sends nothing more to the old worker: what it sent there has all
    /// been forwarded.
    End,
    /// The partner itself moved, from the sender key to this one.
    Rekey(String),
}

/// What the cluster tells the roulette.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `peer`'s search found `partner` (a key; it may be on this worker).
    Matched {
        /// The local searcher.
        peer: PeerId,
        /// The partner's key.
        partner: String,
        /// How long `peer` searched.
        waited: Duration,
        /// How long the partner searched.
        partner_waited: Duration,
        /// The partner's address hash (hex), or empty.
        partner_client: String,
        /// Shared interests, sorted.
        common: Vec<String>,
    },
    /// `peer` waits in the queue; search again after `wake` (an interest timeout or a cooldown).
    Waiting {
        /// The local searcher.
        peer: PeerId,
        /// When to search again, if ever.
        wake: Option<Duration>,
    },
    /// The search could not be made (Redis went away); it is made again when the link is up.
    SearchFailed {
        /// The local searcher.
        peer: PeerId,
    },
    /// A searcher on another worker took local `to`.
    RemoteMatched {
        /// The local peer that was waiting.
        to: PeerId,
        /// The partner's key.
        from: String,
        /// How long `to` waited.
        waited: Duration,
        /// The partner's address hash (hex), or empty.
        client: String,
        /// Shared interests, sorted.
        common: Vec<String>,
    },
    /// The partner of local `to` left (or its worker died).
    RemoteLeft {
        /// The local peer.
        to: PeerId,
        /// The partner's key.
        from: String,
        /// The `partner_left` reason.
        reason: String,
    },
    /// A message from the partner of local `to`, to deliver as is.
    RemoteText {
        /// The local peer.
        to: PeerId,
        /// The partner's key.
        from: String,
        /// The encoded server message.
        json: String,
    },
    /// Another worker's connection `new` resumes the session of local `old`.
    ResumeAsked {
        /// The session's local id (away, or still connected).
        old: PeerId,
        /// The resuming connection's key.
        new: String,
    },
    /// The resume of local `to` could not be made (unknown token, the session's worker gone
    /// or its session over).
    ResumeRefused {
        /// The resuming connection.
        to: PeerId,
    },
    /// The session `old` (a key) is handed over to local `to`: `body` has its state.
    HandedOver {
        /// The resuming connection.
        to: PeerId,
        /// The session's old key.
        old: String,
        /// The partner's key as Redis has it (it may have moved since `body` was written), or
        /// empty.
        partner: String,
        /// The state and the kept lines, as JSON.
        body: String,
    },
    /// The partner of local `to` resumed on a new connection: `old` is now `new`.
    Rekeyed {
        /// The local peer.
        to: PeerId,
        /// The partner's old key.
        old: String,
        /// The partner's new key.
        new: String,
    },
    /// A partner's record that reached the session's old worker, sent on from there.
    Forwarded {
        /// The local peer (or, if it moved on again, its old id).
        to: PeerId,
        /// The partner's key.
        from: String,
        /// What it said.
        what: Forwarded,
    },
    /// This worker's report shadow-banned `client`.
    Banned {
        /// The address hash (hex).
        client: String,
        /// Distinct reporters within the window.
        reports: usize,
    },
    /// Local `peer`'s address holds `count` connections across the cluster.
    Crowded {
        /// The new connection.
        peer: PeerId,
        /// Connections of its address on every live worker.
        count: usize,
    },
    /// The whole crowd's size.
    Online(usize),
    /// The link to Redis is up (again): the roulette puts its state back.
    Up,
    /// The link to Redis is down: searches wait.
    Down,
}

/// What a command's reply is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// `SCRIPT LOAD`.
    Load,
    /// A search for this peer.
    Search(PeerId),
    /// A heartbeat.
    Beat,
    /// A resume asked for this peer.
    Resume(PeerId),
    /// A new connection's token (the reply counts its address's connections).
    Token(PeerId),
    /// A report of this address (the reply says whether it banned).
    Report(String),
    /// Anything whose reply only counts (cancel, part, publish).
    Other,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct NodeStats {
    /// Records sent to other workers through Redis.
    pub relayed_out: u64,
    /// Records received from other workers.
    pub relayed_in: u64,
    /// Matches with a partner on another worker, made by this worker's searches.
    pub cross_matches: u64,
    /// Times the link came up after being down.
    pub reconnects: u64,
    /// Whether the link is up.
    pub up: bool,
    /// Reply round trips, per bucket of [`RTT_BUCKETS`].
    pub rtt: [u64; RTT_BUCKETS.len() + 1],
    /// Sum of round trips.
    pub rtt_sum: Duration,
    /// Commands refused because the link's queue was full.
    pub refused: u64,
}

/// Upper bounds of the round-trip histogram, with their `le` label.
pub const RTT_BUCKETS: [(Duration, &str); 8] = [
    (Duration::from_micros(250), "0.00025"),
    (Duration::from_micros(500), "0.0005"),
    (Duration::from_millis(1), "0.001"),
    (Duration::from_millis(2), "0.002"),
    (Duration::from_millis(5), "0.005"),
    (Duration::from_millis(10), "0.01"),
    (Duration::from_millis(50), "0.05"),
    (Duration::from_millis(250), "0.25"),
];

/// One worker in the cluster.
#[derive(Debug)]
pub struct Node {
    worker: String,
    base: String,
    channel_prefix: String,
    channel: String,
    sha: String,
    interest_timeout: Duration,
    rematch_cooldown: Duration,
    /// Commands to send, in order.
    commands: VecDeque<(Tag, Vec<Vec<u8>>)>,
    /// Commands sent and not answered yet.
    in_flight: usize,
    /// Records for each destination worker this turn.
    batches: BTreeMap<String, Vec<u8>>,
    events: VecDeque<Event>,
    next_beat: Option<Instant>,
    /// The script is loaded on the current connection.
    loaded: bool,
    stats: NodeStats,
}

impl Node {
    /// A node for worker `worker` ("node/index/pid") under `prefix`.
    pub fn new(
        prefix: &str,
        worker: String,
        interest_timeout: Duration,
        rematch_cooldown: Duration,
    ) -> Node {
        use sha1::{Digest, Sha1};
        let sha = Sha1::digest(SCRIPT.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let channel_prefix = format!("{prefix}:ch:");
        Node {
            channel: format!("{channel_prefix}{worker}"),
            worker,
            base: format!("{prefix}:{{q}}"),
            channel_prefix,
            sha,
            interest_timeout,
            rematch_cooldown,
            commands: VecDeque::new(),
            in_flight: 0,
            batches: BTreeMap::new(),
            events: VecDeque::new(),
            next_beat: None,
            loaded: false,
            stats: NodeStats::default(),
        }
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The channel this worker subscribes to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The key of a local peer.
    pub fn key(&self, peer: PeerId) -> String {
        format!("{}#{}", self.worker, peer.as_u64())
    }

    /// Applies reloaded limits.
    pub fn set_limits(&mut self, interest_timeout: Duration, rematch_cooldown: Duration) {
        self.interest_timeout = interest_timeout;
        self.rematch_cooldown = rematch_cooldown;
    }

    /// The counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The command link is up: load the script, say we are alive, and let the roulette put its
    /// state back.
    pub fn handle_up(&mut self, now: Instant) {
        if !self.stats.up {
            self.stats.up = true;
            self.stats.reconnects += 1;
        }
        self.loaded = false;
        self.commands.clear();
        self.in_flight = 0;
        self.batches.clear();
        self.commands
            .push_back((Tag::Load, vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), SCRIPT.into()]));
        self.next_beat = Some(now);
        self.events.push_back(Event::Up);
    }

    /// The command link is down: what waited is lost; searches are failed back to the roulette.
    pub fn handle_down(&mut self, failed: impl IntoIterator<Item = Tag>) {
        for tag in failed {
            if let Tag::Search(peer) = tag {
                self.events.push_back(Event::SearchFailed { peer });
            }
        }
        self.commands.clear();
        self.in_flight = 0;
        self.batches.clear();
        self.next_beat = None;
        if self.stats.up {
            self.stats.up = false;
            self.events.push_back(Event::Down);
        }
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.stats.up
    }

    /// Takes one operation of the roulette.
    pub fn handle_op(&mut self, op: Op) {
        if !self.stats.up {
            match op {
                Op::Search { peer, .. } => self.events.push_back(Event::SearchFailed { peer }),
                Op::Resume { peer, .. } => self.events.push_back(Event::ResumeRefused { to: peer }),
                _ => {}
            }
            return;
        }
        match op {
            Op::Forward { to, from, what } => {
                let Some((worker, id)) = to.rsplit_once('#') else { return };
                let record = match what {
                    Forwarded::Text(json) => format!("U {id} {from}\n{json}"),
                    Forwarded::Left(reason) => format!("V {id} {from} {reason}"),
                    Forwarded::End => format!("E {id} {from}"),
                    Forwarded::Rekey(new) => format!("R {id} {from} {new}"),
                };
                frame(self.batches.entry(worker.to_owned()).or_default(), record.as_bytes());
                self.stats.relayed_out += 1;
            }
            Op::Mark { to, from } => {
                let Some((worker, id)) = to.rsplit_once('#') else { return };
                let record = format!("E {id} {}", self.key(from));
                frame(self.batches.entry(worker.to_owned()).or_default(), record.as_bytes());
            }
            Op::Refuse { to } => {
                let Some((worker, id)) = to.rsplit_once('#') else { return };
                let record = format!("F {id} {}#0", self.worker);
                frame(self.batches.entry(worker.to_owned()).or_default(), record.as_bytes());
            }
            Op::Token { peer, token, client, count, fresh } => {
                let tag = if fresh { Tag::Token(peer) } else { Tag::Other };
                let args = vec![token, self.key(peer), client, count.to_string()];
                self.script("token", args, tag)
            }
            Op::Count { client, count } => {
                let args = vec![self.worker.clone(), client, count.to_string()];
                self.script("count", args, Tag::Other)
            }
            Op::Report { target, reporter, threshold, window_ms, ban_ms } => {
                let args = vec![
                    target.clone(),
                    reporter,
                    threshold.to_string(),
                    window_ms.to_string(),
                    ban_ms.to_string(),
                ];
                self.script("report", args, Tag::Report(target))
            }
            Op::Block { a, b, ms } => self.script("block", vec![a, b, ms.to_string()], Tag::Other),
            Op::Pardon { shorts } => self.script("pardon", shorts, Tag::Other),
            Op::Untoken { peer, token } => {
                self.script("untoken", vec![token, self.key(peer)], Tag::Other)
            }
            Op::Park { peer } => self.script("park", vec![self.key(peer)], Tag::Other),
            Op::Resume { peer, token } => {
                self.script("resume", vec![token, self.key(peer)], Tag::Resume(peer))
            }
            Op::Handover { old, new, partner, searching, body } => {
                let args = vec![
                    self.key(old),
                    new,
                    partner.unwrap_or_default(),
                    String::from(if searching { "1" } else { "0" }),
                    body,
                ];
                self.script("handover", args, Tag::Other);
            }
            Op::Relay { to, from, json } => {
                let Some((worker, id)) = to.rsplit_once('#') else { return };
                let record = format!("T {id} {}\n{json}", self.key(from));
                let batch = self.batches.entry(worker.to_owned()).or_default();
                frame(batch, record.as_bytes());
                self.stats.relayed_out += 1;
            }
            Op::Search { peer, interests, client } => {
                self.flush_batches();
                let mut args = self.script_args("search");
                args.push(self.key(peer).into_bytes());
                args.push(self.worker.clone().into_bytes());
                args.push(self.interest_timeout.as_millis().to_string().into_bytes());
                args.push(self.rematch_cooldown.as_millis().to_string().into_bytes());
                args.push(client.into_bytes());
                args.push(interests.len().to_string().into_bytes());
                args.extend(interests.into_iter().map(String::into_bytes));
                self.queue(Tag::Search(peer), args);
            }
            Op::Cancel { peer } => {
                self.flush_batches();
                let mut args = self.script_args("cancel");
                args.push(self.key(peer).into_bytes());
                self.queue(Tag::Other, args);
            }
            Op::Part { peer, partner, reason } => {
                self.flush_batches();
                let mut args = self.script_args("part");
                args.push(self.key(peer).into_bytes());
                args.push(partner.into_bytes());
                args.push(reason.unwrap_or("").as_bytes().to_vec());
                self.queue(Tag::Other, args);
            }
        }
    }

    /// Queues one script call with `args` after the operation's name, after the turn's batches.
    fn script(&mut self, op: &str, args: Vec<String>, tag: Tag) {
        self.flush_batches();
        let mut command = self.script_args(op);
        command.extend(args.into_iter().map(String::into_bytes));
        self.queue(tag, command);
    }

    /// Ends the turn's batches: one `PUBLISH` per destination worker.
    pub fn flush_batches(&mut self) {
        for (worker, batch) in std::mem::take(&mut self.batches) {
            let channel = format!("{}{worker}", self.channel_prefix);
            self.queue(Tag::Other, vec![b"PUBLISH".to_vec(), channel.into_bytes(), batch]);
        }
    }

    /// The next command for the link.
    ///
    /// At most [`MAX_IN_FLIGHT`] commands are out at once; the rest wait here, in order.
    pub fn poll_command(&mut self) -> Option<(Tag, Vec<Vec<u8>>)> {
        if self.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        let command = self.commands.pop_front()?;
        self.in_flight += 1;
        Some(command)
    }

    /// A command the link refused (full): it is not in flight.
    pub fn handle_refused(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.refused += 1;
    }

    /// Queues a command; past [`MAX_WAITING`] a search is failed back instead.
    fn queue(&mut self, tag: Tag, args: Vec<Vec<u8>>) {
        if self.commands.len() >= MAX_WAITING {
            self.stats.refused += 1;
            if let Tag::Search(peer) = tag {
                self.events.push_back(Event::SearchFailed { peer });
            }
            return;
        }
        self.commands.push_back((tag, args));
    }

    /// The next event for the roulette.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether a heartbeat is due (the caller then gathers what it carries).
    pub fn is_beat_due(&self, now: Instant) -> bool {
        self.stats.up && self.next_beat.is_some_and(|t| t <= now)
    }

    /// When the next heartbeat is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_beat
    }

    /// Sends the heartbeat if it is due, with the people online here and the pairs to restore
    /// (after Redis lost its data, the pairs are what lets others notice this worker's death).
    pub fn handle_timeout(&mut self, now: Instant, online: usize, pairs: &[(PeerId, String)]) {
        if !self.is_beat_due(now) {
            return;
        }
        self.next_beat = Some(now + BEAT_INTERVAL);
        let mut args = self.script_args("beat");
        args.push(self.worker.clone().into_bytes());
        args.push(online.to_string().into_bytes());
        for (peer, partner) in pairs {
            args.push(self.key(*peer).into_bytes());
            args.push(partner.clone().into_bytes());
        }
        // The heartbeat goes first (ordering does not concern it, lateness does), once the
        // script is loaded.
        if self.loaded {
            self.commands.push_front((Tag::Beat, args));
        } else {
            self.commands.push_back((Tag::Beat, args));
        }
    }

    /// A reply to the command tagged `tag`, after `rtt`.
    pub fn handle_reply(&mut self, tag: Tag, value: Value, rtt: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let i = RTT_BUCKETS.iter().position(|&(b, _)| rtt <= b).unwrap_or(RTT_BUCKETS.len());
        self.stats.rtt[i] += 1;
        self.stats.rtt_sum += rtt;
        match (tag, value) {
            (Tag::Load, _) => self.loaded = true,
            (Tag::Beat, Value::Integer(n)) => {
                self.events.push_back(Event::Online(usize::try_from(n).unwrap_or(0)))
            }
            (Tag::Search(peer), Value::Array(Some(items))) => {
                let strings: Vec<String> = items
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Bulk(Some(b)) => String::from_utf8(b).ok(),
                        _ => None,
                    })
                    .collect();
                let event = match strings.first().map(String::as_str) {
                    Some("matched") if strings.len() >= 5 => {
                        let ms = |s: &str| Duration::from_millis(s.parse().unwrap_or(0));
                        let partner = strings[1].clone();
                        if !partner.starts_with(&format!("{}#", self.worker)) {
                            self.stats.cross_matches += 1;
                        }
                        Event::Matched {
                            peer,
                            partner,
                            waited: ms(&strings[2]),
                            partner_waited: ms(&strings[3]),
                            partner_client: strings[4].clone(),
                            common: strings[5..].to_vec(),
                        }
                    }
                    Some("waiting") => {
                        let wake = strings.get(1).and_then(|s| s.parse::<i64>().ok());
                        let wake =
                            wake.filter(|&w| w >= 0).map(|w| Duration::from_millis(w as u64));
                        Event::Waiting { peer, wake }
                    }
                    _ => Event::SearchFailed { peer },
                };
                self.events.push_back(event);
            }
            (Tag::Search(peer), _) => self.events.push_back(Event::SearchFailed { peer }),
            // Asked: the session's worker answers on this worker's channel (H or F).
            (Tag::Resume(_), Value::Bulk(Some(b))) if b == b"sent" => {}
            (Tag::Resume(peer), _) => self.events.push_back(Event::ResumeRefused { to: peer }),
            (Tag::Token(peer), Value::Integer(n)) => {
                let count = usize::try_from(n).unwrap_or(0);
                self.events.push_back(Event::Crowded { peer, count });
            }
            (Tag::Report(client), Value::Integer(n)) if n > 0 => {
                let reports = usize::try_from(n).unwrap_or(0);
                self.events.push_back(Event::Banned { client, reports });
            }
            _ => {}
        }
    }

    /// A message on this worker's channel: one or more framed records.
    pub fn handle_message(&mut self, payload: &[u8]) {
        if payload.len() > MAX_MESSAGE {
            return;
        }
        let mut rest = payload;
        while let Some((record, tail)) = unframe(rest) {
            rest = tail;
            if let Some(event) = parse_record(record) {
                self.stats.relayed_in += 1;
                self.events.push_back(event);
            }
        }
    }

    /// Appends the link's families to a `/metrics` body.
    pub fn write_metrics(&self, out: &mut String) {
        let s = &self.stats;
        metrics::gauge(
            out,
            "chatd_cluster_link_up",
            "1 while this worker's Redis link is up.",
            usize::from(s.up),
        );
        metrics::counter(
            out,
            "chatd_cluster_reconnects_total",
            "Times the Redis link came up.",
            s.reconnects,
        );
        metrics::counter(
            out,
            "chatd_cluster_relayed_out_total",
            "Records (lines, typing, matches, leaves) sent to other workers through Redis.",
            s.relayed_out,
        );
        metrics::counter(
            out,
            "chatd_cluster_relayed_in_total",
            "Records received from other workers through Redis.",
            s.relayed_in,
        );
        metrics::counter(
            out,
            "chatd_cluster_cross_matches_total",
            "Matches this worker's searches made with someone on another worker.",
            s.cross_matches,
        );
        metrics::counter(
            out,
            "chatd_cluster_refused_total",
            "Commands refused because the Redis link's queue was full.",
            s.refused,
        );
        let name = "chatd_cluster_rtt_seconds";
        metrics::header(out, name, "Redis command round trips.", "histogram");
        let mut cumulative = 0;
        for (&(_, le), &n) in RTT_BUCKETS.iter().zip(&s.rtt) {
            cumulative += n;
            metrics::sample(out, &format!("{name}_bucket"), &[("le", le)], cumulative);
        }
        let count: u64 = s.rtt.iter().sum();
        metrics::sample(out, &format!("{name}_bucket"), &[("le", "+Inf")], count);
        metrics::sample(out, &format!("{name}_sum"), &[], metrics::Seconds(s.rtt_sum));
        metrics::sample(out, &format!("{name}_count"), &[], count);
    }

    /// Whether the script was loaded on this connection (commands wait for it).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    fn script_args(&self, op: &str) -> Vec<Vec<u8>> {
        vec![
            b"EVALSHA".to_vec(),
            self.sha.clone().into_bytes(),
            b"0".to_vec(),
            op.as_bytes().to_vec(),
            self.base.clone().into_bytes(),
            self.channel_prefix.clone().into_bytes(),
        ]
    }
}

/// Appends `<len>:<record>`.
fn frame(out: &mut Vec<u8>, record: &[u8]) {
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(record);
}

/// Splits one framed record off the front.
fn unframe(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = buf.iter().take(8).position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon]).ok()?.parse().ok()?;
    if len > MAX_RECORD {
        return None;
    }
    let body = buf.get(colon + 1..colon + 1 + len)?;
    Some((body, &buf[colon + 1 + len..]))
}

/// Parses `K <to-id> <from-key> ...`.
fn parse_record(record: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(record).ok()?;
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let mut parts = head.splitn(4, ' ');
    let kind = parts.next()?;
    let to = peer_id(parts.next()?.parse().ok()?);
    let from = parts.next()?.to_owned();
    let extra = parts.next().unwrap_or("");
    match kind {
        "T" => Some(Event::RemoteText { to, from, json: body.to_owned() }),
        "X" => Some(Event::ResumeAsked { old: to, new: from }),
        "U" => Some(Event::Forwarded { to, from, what: Forwarded::Text(body.to_owned()) }),
        "V" => Some(Event::Forwarded { to, from, what: Forwarded::Left(extra.to_owned()) }),
        "E" => Some(Event::Forwarded { to, from, what: Forwarded::End }),
        "F" => Some(Event::ResumeRefused { to }),
        "H" => Some(Event::HandedOver {
            to,
            old: from,
            partner: extra.to_owned(),
            body: body.to_owned(),
        }),
        "R" => Some(Event::Rekeyed { to, old: from, new: extra.to_owned() }),
        "L" => Some(Event::RemoteLeft { to, from, reason: extra.to_owned() }),
        "M" => Some(Event::RemoteMatched {
            to,
            from,
            waited: Duration::from_millis(
                extra.split(' ').next().unwrap_or("").parse().unwrap_or(0),
            ),
            client: extra.split(' ').nth(1).unwrap_or("").to_owned(),
            common: body.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        }),
        _ => None,
    }
}

fn peer_id(n: u64) -> PeerId {
    PeerId::new((n >> 56) as u8, (n >> 32) as u32 & 0xff_ffff, n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let mut n =
            Node::new("chatd", "a/0/1".into(), Duration::from_secs(5), Duration::from_secs(10));
        n.handle_up(Instant::now());
        while n.poll_command().is_some() {}
        while n.poll_event().is_some() {}
        n
    }

    #[test]
    fn lines_for_one_worker_go_in_one_publish_and_order_holds() {
        let mut n = node();
        let from = PeerId::new(0, 1, 2);
        for text in ["one", "two"] {
            n.handle_op(Op::Relay { to: "b/0/9#7".into(), from, json: text.into() });
        }
        n.handle_op(Op::Part { peer: from, partner: "b/0/9#7".into(), reason: Some("next") });
        let (_, publish) = n.poll_command().unwrap();
        assert_eq!(publish[0], b"PUBLISH");
        assert_eq!(publish[1], b"chatd:ch:b/0/9");
        let key = n.key(from);
        let mut receiver = Node::new("chatd", "b/0/9".into(), Duration::ZERO, Duration::ZERO);
        receiver.handle_message(&publish[2]);
        let got: Vec<Event> = std::iter::from_fn(|| receiver.poll_event()).collect();
        assert_eq!(
            got,
            ["one", "two"].map(|t| Event::RemoteText {
                to: peer_id(7),
                from: key.clone(),
                json: t.into()
            })
        );
        let (_, part) = n.poll_command().unwrap();
        assert_eq!(part[3], b"part");
        assert!(n.poll_command().is_none());
    }

    #[test]
    fn records_round_trip_and_garbage_is_ignored() {
        let mut n = node();
        let mut payload = Vec::new();
        frame(&mut payload, b"M 5 b/0/9#1 1500 00ff\nmusic\nchess");
        frame(&mut payload, b"L 5 b/0/9#1 next");
        payload.extend_from_slice(b"99999999999:junk");
        n.handle_message(&payload);
        assert_eq!(
            n.poll_event(),
            Some(Event::RemoteMatched {
                to: peer_id(5),
                from: "b/0/9#1".into(),
                waited: Duration::from_millis(1500),
                client: "00ff".into(),
                common: vec!["music".into(), "chess".into()],
            })
        );
        assert_eq!(
            n.poll_event(),
            Some(Event::RemoteLeft {
                to: peer_id(5),
                from: "b/0/9#1".into(),
                reason: "next".into()
            })
        );
        assert_eq!(n.poll_event(), None);
    }

    #[test]
    fn searches_fail_back_while_down() {
        let mut n = node();
        let peer = PeerId::new(0, 0, 3);
        n.handle_down([Tag::Search(peer)]);
        assert_eq!(n.poll_event(), Some(Event::SearchFailed { peer }));
        assert_eq!(n.poll_event(), Some(Event::Down));
        n.handle_op(Op::Search { peer, interests: vec![], client: String::new() });
        assert_eq!(n.poll_event(), Some(Event::SearchFailed { peer }));
        assert!(n.poll_command().is_none());
    }
}
