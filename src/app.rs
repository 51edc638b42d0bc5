//! The seam between the transport and the product.
//!
//! The endpoint owns connections, HTTP and WebSocket framing. It tells the application what
//! happened to a peer (`Event`) and the application answers with `Action`s pushed to an output
//! vector, which the endpoint applies once per loop turn. The application never sees a socket,
//! a clock call, another peer's buffer or the daemon's configuration (it gets its own
//! `Settings`), so it runs unchanged under tests, under the echo example and in every worker.
//!
//! May not touch: sockets, the clock, `config`.
use std::{fmt, time::Instant};

use crate::safety::AddrHash;

/// Identifies one WebSocket peer for as long as its connection lives.
///
/// The id packs the worker that owns the connection, a generation and a slot, so that a worker can
/// route an action in O(1) and a stale id (for a connection that is gone and whose slot was reused)
/// never reaches the new occupant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

impl PeerId {
    /// Builds an id from its parts: `worker` (8 bits), `generation` (24 bits) and `slot` (32 bits).
    pub fn new(worker: u8, generation: u32, slot: u32) -> PeerId {
        PeerId(u64::from(worker) << 56 | u64::from(generation & 0xff_ffff) << 32 | u64::from(slot))
    }

    /// The worker (event loop) that owns this peer.
    pub fn worker(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The generation of the slot when this peer took it.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32 & 0xff_ffff
    }

    /// The slot of the peer's connection in its worker's table.
    pub fn slot(self) -> u32 {
        self.0 as u32
    }

    /// The whole id as a number, for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({}:{}:{})", self.worker(), self.slot(), self.generation())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What happened to a peer, as the application sees it.
#[derive(Debug)]
pub enum Event<'a> {
    /// The WebSocket handshake completed; the peer can now be sent messages.
    Open {
        /// Who the client is: the keyed hash of its address (never the address).
        client: AddrHash,
    },
    /// A complete, UTF-8 validated text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// The connection is gone (closed by either side, failed or timed out). No more events follow
    /// and actions addressed to this peer are dropped.
    Closed {
        /// It ended without a close handshake: a reset, an end of stream without a close frame,
        /// silence past the ping timeout, a reader too slow to keep up. The person may come
        /// back on a new connection (a network blip, not a goodbye).
        dropped: bool,
    },
}

/// A message the application sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// What the application asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send one message to one peer. Dropped silently if the peer is gone.
    Send {
        /// The receiver.
        to: PeerId,
        /// The message.
        message: Message,
    },
    /// Send one text message to every open peer (encoded once, copied to each). The server
    /// copies it out a slice of peers per loop turn, so that a large broadcast does not stall
    /// every other connection: a peer may receive it after messages sent to it later, and a
    /// peer that connects meanwhile may receive it too.
    Broadcast {
        /// The text.
        text: String,
    },
    /// Close a peer's WebSocket with a status code (RFC 6455 §7.4) and a short reason.
    Close {
        /// The peer.
        peer: PeerId,
        /// The close status code.
        code: u16,
        /// A reason of at most 123 bytes.
        reason: &'static str,
    },
    /// `client`'s address holds `max_connections_per_address` across a cluster: the server
    /// answers its next WebSocket upgrades with 429 until `until` (what it learnt from Redis;
    /// its own count covers only this worker). An `until` already past lifts it.
    Crowded {
        /// The address.
        client: AddrHash,
        /// Until when.
        until: Instant,
    },
    /// An address was shadow-banned (the server logs it: the short hash and the counts, never
    /// a line of chat).
    Banned {
        /// Who.
        client: AddrHash,
        /// Distinct addresses that reported it within the window.
        reports: usize,
        /// For how long.
        duration: std::time::Duration,
    },
}

/// A WebSocket application: the echo example, the roulette.
///
/// Every method receives `now` from the server loop; an application never reads the clock.
pub trait App {
    /// The application's own settings, given again on every reload.
    type Settings;

    /// Handles one event for one peer, pushing any resulting actions to `out`.
    fn handle_event(&mut self, now: Instant, peer: PeerId, event: Event<'_>, out: &mut Vec<Action>);

    /// The earliest instant at which the application wants `handle_timeout` to be called.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Called by the server once `now` has reached the instant returned by `poll_timeout`.
    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        let _ = (now, out);
    }

    /// The configuration was reloaded: apply the new settings to new and existing peers.
    fn reconfigure(&mut self, settings: Self::Settings) {
        let _ = settings;
    }

    /// Appends the application's metrics to `out` in the Prometheus text format (version
    /// 0.0.4), each family with its `# HELP` and `# TYPE` lines.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// In a cluster: the next operation for the shared crowd (a search, a line for a partner
    /// on another worker, ...). The loop drains these after every apply point.
    fn poll_cluster_op(&mut self) -> Option<crate::cluster::Op> {
        None
    }

    /// In a cluster: what the shared crowd said (a match, a partner's line, the link's state).
    fn handle_cluster_event(
        &mut self,
        now: Instant,
        event: crate::cluster::Event,
        out: &mut Vec<Action>,
    ) {
        let _ = (now, event, out);
    }

    /// In a cluster: people connected here, and (pushed to `pairs`) each local person chatting
    /// with someone elsewhere with that partner's key, for the heartbeat.
    fn cluster_state(&self, pairs: &mut Vec<(PeerId, String)>) -> usize {
        let _ = pairs;
        0
    }

    /// The server is shutting down: tell peers what they need to know before the close frames.
    fn handle_shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        let _ = (now, out);
    }
}
