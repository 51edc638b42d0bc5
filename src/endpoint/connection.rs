//! One connection as the endpoint sees it: its transport (opaque here), state, buffers and
//! deadline, laid out for the idle case.
//!
//! An idle WebSocket is what a roulette holds most of (people reading, people waiting), so it
//! costs as little as it can: the transport, a state tag with a 16-byte session, one deadline
//! and its timer mark, a generation and its client's address hash, and one pointer that is null
//! while nothing is buffered. 88 bytes; the buffers live in a box that exists only while bytes
//! wait in either direction, and the endpoint recycles those boxes.
//!
//! No raw client address outlives the HTTP state: `Http` holds the TCP peer's address (which
//! `trusted_proxies` judges on every request), and the upgrade drops it, leaving only the hash.
//!
//! Owns: the state enum and its transitions (`upgrade`, `start_closing`), the buffer box.
//! May not touch: sockets (the transport is a type parameter it never calls), the clock.
use std::net::{IpAddr, Ipv6Addr};

use crate::{safety::AddrHash, ws::Session};

/// No deadline, or no live timer entry.
pub(super) const NEVER: u64 = u64::MAX;

/// Where a connection is in its life. Changes by value, forward only:
/// `Http` -> `WebSocket` (a good upgrade) and either -> `Closing`.
#[derive(Debug)]
pub(super) enum ConnState {
    /// Reading request heads (keep-alive, pipelined).
    Http {
        /// The TCP peer: the client, or a proxy that may name the client per request.
        peer: PeerIp,
    },
    /// An open WebSocket.
    WebSocket(Session),
    /// The last bytes (an error response, a close frame) are being flushed; then the write
    /// side is shut and input is read and dropped until the peer closes or the linger passes.
    Closing {
        /// The write side was shut.
        shut: bool,
        /// The peer already closed its side: drop the connection once the output is out.
        peer_done: bool,
    },
}

/// The bytes waiting in either direction.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// Unconsumed input: a partial request head or frame.
    pub(super) rbuf: Vec<u8>,
    /// Unsent output.
    pub(super) wbuf: Vec<u8>,
}

/// Spare buffer boxes the endpoint keeps for reuse, so that a relayed message costs no
/// allocation. Bounded in count and in the capacity each keeps.
#[derive(Debug, Default)]
// The boxes themselves are what is reused: a connection takes one as it is, no copy.
#[allow(clippy::vec_box)]
pub(super) struct Spares(Vec<Box<Buffers>>);

impl Spares {
    const MAX_BOXES: usize = 256;
    const MAX_KEPT_CAPACITY: usize = 16 * 1024;

    fn take(&mut self) -> Box<Buffers> {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, mut bufs: Box<Buffers>) {
        if self.0.len() < Spares::MAX_BOXES {
            bufs.rbuf = Vec::new();
            bufs.wbuf.clear();
            if bufs.wbuf.capacity() > Spares::MAX_KEPT_CAPACITY {
                bufs.wbuf = Vec::new();
            }
            self.0.push(bufs);
        }
    }
}

/// A TCP peer's IP address in 16 bytes instead of `IpAddr`'s 17: IPv4 kept as IPv4-mapped IPv6.
/// No port: nothing needs it, and the address itself is only asked whom to believe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerIp([u8; 16]);

impl PeerIp {
    pub(super) fn new(ip: IpAddr) -> PeerIp {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        PeerIp(v6.octets())
    }

    /// The address, IPv4-mapped addresses (from a dual-stack listener too) shown as IPv4.
    pub(super) fn ip(self) -> IpAddr {
        Ipv6Addr::from(self.0).to_canonical()
    }
}

/// The output buffer in `bufs`, taking a box from `spares` if there was none. A function of the
/// field, not of the connection, so that it can be borrowed while the session is.
pub(super) fn output<'a>(
    bufs: &'a mut Option<Box<Buffers>>,
    spares: &mut Spares,
) -> &'a mut Vec<u8> {
    &mut bufs.get_or_insert_with(|| spares.take()).wbuf
}

/// One connection.
#[derive(Debug)]
pub(super) struct Connection<S> {
    /// The socket, or a test's fake; the endpoint hands it to the loop and to `Transport`.
    pub(super) transport: S,
    /// When this connection next needs attention, in ms since the endpoint's epoch.
    pub(super) deadline: u64,
    /// The deadline of this connection's live timer entry, or `NEVER`.
    pub(super) armed: u64,
    /// A later entry that an earlier deadline superseded and that is still in the heap, or
    /// `NEVER`: re-arming to exactly that instant reuses it instead of pushing a twin.
    pub(super) superseded: u64,
    pub(super) state: ConnState,
    /// Null while nothing is buffered; see [`output`] to borrow it beside `state`.
    pub(super) bufs: Option<Box<Buffers>>,
    /// Distinguishes successive occupants of the same slot (see `PeerId`).
    pub(super) generation: u32,
    /// Who the connection is, for the log and the per-address count: the TCP peer's hash from
    /// the accept, the real client's (after `trusted_proxies`) from the upgrade on.
    pub(super) client: AddrHash,
    /// In the endpoint's dirty list (output to flush this turn).
    pub(super) dirty: bool,
}

impl<S> Connection<S> {
    /// A connection from `peer`, whose hash is `client`, reading its first request head.
    pub(super) fn new(
        transport: S,
        peer: IpAddr,
        client: AddrHash,
        generation: u32,
        deadline: u64,
    ) -> Self {
        Connection {
            transport,
            deadline,
            armed: NEVER,
            superseded: NEVER,
            state: ConnState::Http { peer: PeerIp::new(peer) },
            bufs: None,
            generation,
            client,
            dirty: false,
        }
    }

    /// Whether the connection is an open WebSocket (its application knows it).
    pub(super) fn is_websocket(&self) -> bool {
        matches!(self.state, ConnState::WebSocket(_))
    }

    /// Whether any input or output is buffered.
    #[cfg(test)]
    pub(super) fn has_buffers(&self) -> bool {
        self.bufs.is_some()
    }

    /// Bytes waiting to be sent.
    pub(super) fn pending_output(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.wbuf.len())
    }

    /// Whether a partial request head or frame is buffered.
    pub(super) fn has_partial_input(&self) -> bool {
        self.bufs.as_ref().is_some_and(|b| !b.rbuf.is_empty())
    }

    /// The output buffer, taking a box from `spares` if there was none.
    pub(super) fn output(&mut self, spares: &mut Spares) -> &mut Vec<u8> {
        output(&mut self.bufs, spares)
    }

    /// Takes the buffered input out (to be parsed with new bytes appended); `put_input` gives
    /// back what is left.
    pub(super) fn take_input(&mut self) -> Vec<u8> {
        self.bufs.as_mut().map(|b| std::mem::take(&mut b.rbuf)).unwrap_or_default()
    }

    /// Keeps `rest` as the partial input.
    pub(super) fn put_input(&mut self, rest: Vec<u8>, spares: &mut Spares) {
        if !rest.is_empty() {
            self.bufs.get_or_insert_with(|| spares.take()).rbuf = rest;
        }
    }

    /// Output that was sent: `n` bytes off the front. A box left with nothing in it goes back
    /// to `spares`, so an idle connection holds no buffer.
    pub(super) fn consume_output(&mut self, n: usize, spares: &mut Spares) {
        let Some(bufs) = &mut self.bufs else { return };
        if n >= bufs.wbuf.len() {
            bufs.wbuf.clear();
        } else {
            bufs.wbuf.drain(..n);
        }
        self.release_if_empty(spares);
    }

    /// Gives the buffer box back if it holds nothing.
    pub(super) fn release_if_empty(&mut self, spares: &mut Spares) {
        if self.bufs.as_ref().is_some_and(|b| b.rbuf.is_empty() && b.wbuf.is_empty()) {
            if let Some(bufs) = self.bufs.take() {
                spares.give(bufs);
            }
        }
    }

    /// Gives the buffer box back whatever it holds (the connection is going away).
    pub(super) fn release(&mut self, spares: &mut Spares) {
        if let Some(bufs) = self.bufs.take() {
            spares.give(bufs);
        }
    }

    /// Leaves whatever state for `Closing`, dropping buffered input; returns the session if it
    /// was an open WebSocket (its application must be told).
    pub(super) fn start_closing(&mut self, linger_until: u64, peer_done: bool) -> Option<Session> {
        if let Some(bufs) = &mut self.bufs {
            bufs.rbuf = Vec::new();
        }
        self.deadline = linger_until;
        let old = std::mem::replace(&mut self.state, ConnState::Closing { shut: false, peer_done });
        match old {
            ConnState::WebSocket(session) => Some(session),
            ConnState::Closing { shut, .. } => {
                self.state = ConnState::Closing { shut, peer_done };
                None
            }
            ConnState::Http { .. } => None,
        }
    }

    /// `Http` -> `WebSocket` of the client whose hash is `client`: the TCP peer's address
    /// goes with the HTTP state.
    pub(super) fn upgrade(&mut self, session: Session, client: AddrHash, idle_until: u64) {
        debug_assert!(matches!(self.state, ConnState::Http { .. }));
        self.state = ConnState::WebSocket(session);
        self.client = client;
        self.deadline = idle_until;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_websocket_is_small() {
        // The transport of the real loop is a socket and a readiness flag: 8 bytes.
        let size = std::mem::size_of::<Connection<(i32, bool)>>();
        assert!(size <= 88, "Connection is {size} bytes");
        // A state tag and the larger of the session and the TCP peer's address.
        assert!(std::mem::size_of::<ConnState>() <= 24);
        assert_eq!(std::mem::size_of::<Session>(), 16);
    }

    #[test]
    fn addresses_keep_ipv4_as_ipv4() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(PeerIp::new(v4).ip(), v4);
        assert_eq!(PeerIp::new(v6).ip(), v6);
        assert_eq!(PeerIp::new(mapped).ip(), v4);
    }

    #[test]
    fn the_upgrade_drops_the_peer_address() {
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let (proxy, client) = (AddrHash::from_bytes([1; 16]), AddrHash::from_bytes([2; 16]));
        let mut c = Connection::new((), peer, proxy, 0, NEVER);
        assert!(matches!(c.state, ConnState::Http { peer: p } if p.ip() == peer));
        c.upgrade(Session::new(100), client, NEVER);
        assert!(c.is_websocket());
        assert_eq!(c.client, client);
    }

    #[test]
    fn buffers_come_and_go() {
        let mut spares = Spares::default();
        let hash = AddrHash::from_bytes([0; 16]);
        let mut c = Connection::new((), "127.0.0.1".parse().unwrap(), hash, 0, NEVER);
        assert!(!c.has_buffers());
        c.output(&mut spares).extend_from_slice(b"hello");
        assert_eq!(c.pending_output(), 5);
        c.consume_output(2, &mut spares);
        assert_eq!(c.bufs.as_ref().unwrap().wbuf, b"llo");
        c.consume_output(3, &mut spares);
        assert!(!c.has_buffers());
        assert_eq!(spares.0.len(), 1);
        c.put_input(b"GET".to_vec(), &mut spares);
        assert!(c.has_partial_input());
        assert_eq!(spares.0.len(), 0);
        assert_eq!(c.take_input(), b"GET");
        c.release_if_empty(&mut spares);
        assert!(!c.has_buffers());
    }
}
