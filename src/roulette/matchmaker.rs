//! Pairing strangers: the waiting queue, interests, the interest timeout and the re-match
//! cooldown. Pure and deterministic: no IO, no clock (`now` is passed in), no randomness.
//!
//! # Rules
//! - The queue is FIFO: a searcher is paired at once with the longest-waiting *compatible*
//!   stranger, or waits. Nothing polls; matching happens on the event that makes it possible:
//!   [`Matchmaker::handle_search`], or [`Matchmaker::handle_timeout`] when an interest timeout
//!   or a cooldown that blocked a pair has run out ([`Matchmaker::poll_timeout`] says when).
//! - A waiter with interests is *picky* until `since + interest_timeout`: it only takes someone
//!   who shares an interest. After that (and always, for a waiter without interests) it is
//!   *open*: it takes a sharer first if there is one, else the longest-waiting open waiter.
//!   An open waiter without interests never takes a picky one.
//! - Never self; never two people who parted less than `rematch_cooldown` ago. A blocked pair
//!   stays in the queue and others are matched instead; the blocked searcher gets a timer at the
//!   cooldown's end so that, if both still wait then, they are paired then.
//! - A repeated search keeps the waiter's place (its sequence number) and its interest deadline,
//!   and replaces its interests.
//! - No randomness is needed: arrival order already makes partners random to the people
//!   involved, and FIFO is the fairest wait. Tests are reproducible as a result.
//!
//! # Data structures, and why
//! Each waiter gets a sequence number at its first search; smaller is older. Three ordered
//! indexes hold the queue, each a `BTreeMap<seq, PeerId>` so that the oldest entry is the first
//! one and removal from the middle (leave, disconnect, match) is `O(log n)` with no tombstones:
//! - `open`: every open waiter (the "takes anyone" pool).
//! - `by_interest[i]`: every waiter (picky or open) that gave interest `i`.
//! - `timers`: a `BTreeSet<(Instant, seq, PeerId)>` with at most one entry per waiter, its next
//!   wake-up (interest deadline or cooldown retry), removed eagerly with the waiter.
//!
//! A search looks at the head of at most [`MAX_INTERESTS`](super::protocol::MAX_INTERESTS)
//! interest queues and at the head of `open`: `O(k log n)`. The only entries it ever steps over
//! are the searcher's own recent partners that are still waiting (cooldown), whose number is
//! bounded by how fast one person can skip (the roulette rate-limits searches), never by the
//! queue length; so 100,000 waiters cost the same per search as ten. A plain `VecDeque` with
//! lazy deletion was the alternative; it makes cancellation O(1) but lets stale entries pile up
//! under skip-heavy load and needs a compaction pass, for no gain at this size.
//!
//! Cooldowns are a `HashMap` keyed by the (ordered) pair plus a `VecDeque` in parting order.
//! Since every pair gets the same cooldown, expiry order is parting order, and pruning is an
//! amortised `O(1)` pop from the front. Memory is bounded by [`MAX_REMEMBERED_PARTINGS`].
//!
//! Owns: the in-process queue. May not touch: anything but its own state.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::protocol::Interests;
use crate::{app::PeerId, safety::AddrHash};

/// Most partings remembered for the cooldown at once; past this the oldest are forgotten early
/// (their pair could then meet again before the cooldown ends). At the default 10 s cooldown this
/// is 100,000 partings per second.
pub const MAX_REMEMBERED_PARTINGS: usize = 1 << 20;

/// A pair the matchmaker made. Both peers have left the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The one who was already waiting.
    pub waiting: PeerId,
    /// The one whose search (or timer) made the match.
    pub searcher: PeerId,
    /// The interests both gave, sorted; empty for a random match.
    pub common_interests: Interests,
    /// When `waiting` started the search that made this match (a repeated search keeps the
    /// first one's instant, as it keeps the place in the queue).
    pub waiting_since: Instant,
    /// When `searcher` started the search that made this match (`now` for a first search).
    pub searcher_since: Instant,
}

/// One person in the queue.
#[derive(Debug)]
struct Waiter {
    /// Place in the queue: smaller waited longer. Kept across repeated searches.
    seq: u64,
    /// When the search started; the interest deadline counts from here.
    since: Instant,
    interests: Interests,
    /// Takes anyone (no interests, or the interest deadline has passed). Never goes back.
    is_open: bool,
    /// When the earliest-ending cooldown that blocked this waiter's last scan started.
    blocked_since: Option<Instant>,
    /// The instant under which this waiter sits in `timers`, if any.
    wake: Option<Instant>,
    /// Who is searching, for blocks and the shadow pool.
    who: Searcher,
}

/// Who a searcher is, as far as matching goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Searcher {
    /// The client's address hash: two addresses that blocked each other are never paired.
    pub client: AddrHash,
    /// Shadow-banned: matched only with other shadow-banned people.
    pub shadow: bool,
}

/// One pool of waiters: everyone, or the shadow-banned. Nobody is ever paired across pools.
#[derive(Debug, Default)]
struct Pool {
    open: BTreeMap<u64, PeerId>,
    by_interest: HashMap<Box<str>, BTreeMap<u64, PeerId>>,
}

/// A searcher's place in the queue, held while its connection is away.
#[derive(Debug)]
pub struct Parked(Waiter);

/// The waiting queue and the matching rules. See the module documentation.
#[derive(Debug)]
pub struct Matchmaker {
    interest_timeout: Duration,
    rematch_cooldown: Duration,
    next_seq: u64,
    waiters: HashMap<PeerId, Waiter>,
    /// `[everyone, shadow-banned]`.
    pools: [Pool; 2],
    timers: BTreeSet<(Instant, u64, PeerId)>,
    parted: HashMap<(PeerId, PeerId), Instant>,
    partings: VecDeque<(Instant, (PeerId, PeerId))>,
    /// Address pairs (smaller first) kept apart by a block, until when.
    apart: HashMap<(AddrHash, AddrHash), Instant>,
}

impl Matchmaker {
    /// An empty queue with the given limits (`chat.interest_timeout`, `chat.rematch_cooldown`).
    pub fn new(interest_timeout: Duration, rematch_cooldown: Duration) -> Matchmaker {
        Matchmaker {
            interest_timeout,
            rematch_cooldown,
            next_seq: 0,
            waiters: HashMap::new(),
            pools: Default::default(),
            timers: BTreeSet::new(),
            parted: HashMap::new(),
            partings: VecDeque::new(),
            apart: HashMap::new(),
        }
    }

    /// Changes the limits (config reload). Waiters keep their place; their deadlines and retries
    /// are recomputed from when they started searching or parted, so a shorter timeout may make
    /// [`poll_timeout`](Self::poll_timeout) return an instant in the past.
    pub fn set_limits(&mut self, interest_timeout: Duration, rematch_cooldown: Duration) {
        self.interest_timeout = interest_timeout;
        self.rematch_cooldown = rematch_cooldown;
        self.timers.clear();
        for (&peer, w) in &mut self.waiters {
            w.wake = wake_of(w, interest_timeout, rematch_cooldown);
            if let Some(t) = w.wake {
                self.timers.insert((t, w.seq, peer));
            }
        }
    }

    /// Starts (or repeats) `peer`'s search and returns the match if a compatible stranger is
    /// waiting; otherwise `peer` waits. A repeated search keeps the place in the queue and the
    /// interest deadline, and replaces the interests.
    pub fn handle_search(
        &mut self,
        now: Instant,
        peer: PeerId,
        interests: Interests,
    ) -> Option<Match> {
        self.handle_search_as(now, peer, interests, Searcher::default())
    }

    /// [`handle_search`](Self::handle_search) for a searcher whose address and pool matter.
    pub fn handle_search_as(
        &mut self,
        now: Instant,
        peer: PeerId,
        interests: Interests,
        who: Searcher,
    ) -> Option<Match> {
        self.prune(now);
        let (seq, since) = match self.remove(peer) {
            Some(old) => (old.seq, old.since),
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                (seq, now)
            }
        };
        let is_open = interests.is_empty()
            || since.checked_add(self.interest_timeout).is_some_and(|deadline| now >= deadline);
        let w = Waiter { seq, since, interests, is_open, blocked_since: None, wake: None, who };
        self.place(now, peer, w)
    }

    /// Takes `peer` out of the queue (leave, skip into a chat, disconnect). Returns whether it
    /// was waiting.
    pub fn cancel(&mut self, peer: PeerId) -> bool {
        self.remove(peer).is_some()
    }

    /// Takes `peer` out of the queue but keeps its place: it is not matched until
    /// [`unpark`](Self::unpark) puts it back (a searcher whose connection dropped).
    pub fn park(&mut self, peer: PeerId) -> Option<Parked> {
        self.remove(peer).map(Parked)
    }

    /// Puts a parked searcher back in its old place under its new id (the resumed connection),
    /// as `who` is now (a ban may have come or gone meanwhile), and returns the match if
    /// someone compatible arrived meanwhile.
    pub fn unpark(
        &mut self,
        now: Instant,
        peer: PeerId,
        parked: Parked,
        who: Searcher,
    ) -> Option<Match> {
        self.prune(now);
        let mut w = parked.0;
        w.who = who;
        if !w.is_open && self.deadline(&w).is_some_and(|d| now >= d) {
            w.is_open = true;
        }
        w.blocked_since = None;
        self.place(now, peer, w)
    }

    /// Moves a waiting `peer` into the shadow pool (it was just shadow-banned) or out of it (its
    /// ban was lifted), keeping its place, and returns the match if someone in its new pool is
    /// waiting for it.
    pub fn set_pool(&mut self, now: Instant, peer: PeerId, shadow: bool) -> Option<Match> {
        let mut w = self.remove(peer)?;
        if w.who.shadow == shadow {
            self.insert(peer, w);
            return None;
        }
        w.who.shadow = shadow;
        w.blocked_since = None;
        self.place(now, peer, w)
    }

    /// Keeps the addresses `a` and `b` apart until `until` (a block). At most
    /// [`MAX_REMEMBERED_PARTINGS`] pairs; past that, new blocks are not kept.
    pub fn keep_apart(&mut self, a: AddrHash, b: AddrHash, until: Instant) {
        let key = pair_key(a, b);
        if a != b && (self.apart.len() < MAX_REMEMBERED_PARTINGS || self.apart.contains_key(&key)) {
            self.apart.insert(key, until);
        }
    }

    /// Whether any block is kept.
    pub fn has_blocks(&self) -> bool {
        !self.apart.is_empty()
    }

    /// Forgets blocks that have ended (`O(blocks)`: the roulette calls it every few seconds).
    pub fn forget_apart(&mut self, now: Instant) {
        self.apart.retain(|_, &mut until| now < until);
    }

    /// Records that `a` and `b` just parted: they will not be paired again before
    /// `now + rematch_cooldown`.
    pub fn handle_parting(&mut self, now: Instant, a: PeerId, b: PeerId) {
        self.prune(now);
        if a == b || self.rematch_cooldown.is_zero() {
            return;
        }
        let key = pair_key(a, b);
        self.parted.insert(key, now);
        self.partings.push_back((now, key));
        while self.partings.len() > MAX_REMEMBERED_PARTINGS {
            self.forget_oldest_parting();
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work: an
    /// interest deadline, or the end of a cooldown that keeps a waiting pair apart.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _, _)| t)
    }

    /// Runs every timer due at `now`, oldest first, pushing the matches they make to `out`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Match>) {
        self.prune(now);
        while let Some(&(t, seq, peer)) = self.timers.first() {
            if t > now {
                break;
            }
            // Remove the entry itself first: whatever the waiter's state, the loop must advance.
            self.timers.pop_first();
            let Some(mut w) = self.remove(peer) else { continue };
            w.wake = None;
            debug_assert_eq!(w.seq, seq);
            if !w.is_open && self.deadline(&w).is_some_and(|d| now >= d) {
                w.is_open = true;
            }
            // `place` re-arms the timer strictly after `now` (a deadline not yet reached or a
            // cooldown still running), so this loop ends.
            if let Some(m) = self.place(now, peer, w) {
                out.push(m);
            }
        }
    }

    /// Empties the queue (shutdown). Cooldown memory is kept.
    pub fn clear(&mut self) {
        self.waiters.clear();
        self.pools = Default::default();
        self.timers.clear();
    }

    /// Whether `peer` is waiting.
    pub fn is_waiting(&self, peer: PeerId) -> bool {
        self.waiters.contains_key(&peer)
    }

    /// How many people are waiting.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether nobody is waiting.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Pairs `peer` with the best waiting partner, or queues it.
    fn place(&mut self, now: Instant, peer: PeerId, mut w: Waiter) -> Option<Match> {
        let (found, blocked_since) = self.find_partner(now, peer, &w);
        if let Some(other) = found {
            if let Some(o) = self.remove(other) {
                let common_interests = w.interests.intersection(&o.interests);
                return Some(Match {
                    waiting: other,
                    searcher: peer,
                    common_interests,
                    waiting_since: o.since,
                    searcher_since: w.since,
                });
            }
        }
        w.blocked_since = blocked_since;
        w.wake = wake_of(&w, self.interest_timeout, self.rematch_cooldown);
        self.insert(peer, w);
        None
    }

    /// The longest-waiting compatible partner for `w` (which is not in the indexes), and the
    /// start of the earliest cooldown that made the scan step over someone.
    fn find_partner(
        &self,
        now: Instant,
        peer: PeerId,
        w: &Waiter,
    ) -> (Option<PeerId>, Option<Instant>) {
        let mut blocked = None;
        let pool = &self.pools[usize::from(w.who.shadow)];
        // A sharer is preferred over anyone else, however long that one has waited. Every
        // waiter in `by_interest[i]` accepts `peer`: they share `i`.
        let mut best: Option<(u64, PeerId)> = None;
        for i in w.interests.iter() {
            let Some(queue) = pool.by_interest.get(i) else { continue };
            if let Some((seq, p)) = self.first_eligible(now, peer, w.who, queue, &mut blocked) {
                if best.is_none_or(|(b, _)| seq < b) {
                    best = Some((seq, p));
                }
            }
        }
        if best.is_none() && w.is_open {
            best = self.first_eligible(now, peer, w.who, &pool.open, &mut blocked);
        }
        (best.map(|(_, p)| p), blocked)
    }

    /// The oldest entry of `queue` that is neither `peer`, nor in cooldown with `peer`, nor
    /// kept apart from `peer`'s address by a block. A block sets no timer (it usually outlasts
    /// any wait; the next search or timeout sees that it ended), and the blocked pairs one
    /// searcher steps over are bounded by how often one person can chat.
    fn first_eligible(
        &self,
        now: Instant,
        peer: PeerId,
        who: Searcher,
        queue: &BTreeMap<u64, PeerId>,
        blocked: &mut Option<Instant>,
    ) -> Option<(u64, PeerId)> {
        for (&seq, &p) in queue {
            if p == peer {
                continue;
            }
            if !self.apart.is_empty() {
                let other = self.waiters.get(&p).map_or(AddrHash::default(), |o| o.who.client);
                if self.apart.get(&pair_key(who.client, other)).is_some_and(|&until| now < until) {
                    continue;
                }
            }
            if let Some(t) = self.parted_at(now, peer, p) {
                *blocked = Some(blocked.map_or(t, |b: Instant| b.min(t)));
                continue;
            }
            return Some((seq, p));
        }
        None
    }

    /// When `a` and `b` parted, if that was less than `rematch_cooldown` before `now`.
    fn parted_at(&self, now: Instant, a: PeerId, b: PeerId) -> Option<Instant> {
        let t = *self.parted.get(&pair_key(a, b))?;
        match t.checked_add(self.rematch_cooldown) {
            Some(end) if now >= end => None,
            _ => Some(t),
        }
    }

    fn deadline(&self, w: &Waiter) -> Option<Instant> {
        w.since.checked_add(self.interest_timeout)
    }

    fn insert(&mut self, peer: PeerId, w: Waiter) {
        let pool = &mut self.pools[usize::from(w.who.shadow)];
        if w.is_open {
            pool.open.insert(w.seq, peer);
        }
        for i in w.interests.iter() {
            match pool.by_interest.get_mut(i) {
                Some(queue) => {
                    queue.insert(w.seq, peer);
                }
                None => {
                    pool.by_interest.insert(i.into(), BTreeMap::from([(w.seq, peer)]));
                }
            }
        }
        if let Some(t) = w.wake {
            self.timers.insert((t, w.seq, peer));
        }
        self.waiters.insert(peer, w);
    }

    fn remove(&mut self, peer: PeerId) -> Option<Waiter> {
        let w = self.waiters.remove(&peer)?;
        let pool = &mut self.pools[usize::from(w.who.shadow)];
        pool.open.remove(&w.seq);
        for i in w.interests.iter() {
            if let Some(queue) = pool.by_interest.get_mut(i) {
                queue.remove(&w.seq);
                if queue.is_empty() {
                    // Keep the map as small as the set of interests people are waiting with.
                    pool.by_interest.remove(i);
                }
            }
        }
        if let Some(t) = w.wake {
            self.timers.remove(&(t, w.seq, peer));
        }
        Some(w)
    }

    /// Forgets partings whose cooldown is over.
    fn prune(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.partings.front() {
            match t.checked_add(self.rematch_cooldown) {
                Some(end) if end <= now => self.forget_oldest_parting(),
                _ => break,
            }
        }
    }

    fn forget_oldest_parting(&mut self) {
        if let Some((t, key)) = self.partings.pop_front() {
            // The pair may have parted again since; only the latest parting counts.
            if self.parted.get(&key) == Some(&t) {
                self.parted.remove(&key);
            }
        }
    }
}

/// The next instant a waiter needs attention: its interest deadline while picky, or the end of
/// the cooldown that blocked it. `None` when neither applies (or the sum overflows: never).
fn wake_of(w: &Waiter, interest_timeout: Duration, cooldown: Duration) -> Option<Instant> {
    let deadline = if w.is_open { None } else { w.since.checked_add(interest_timeout) };
    let retry = w.blocked_since.and_then(|t| t.checked_add(cooldown));
    match (deadline, retry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A pair in one order whichever way it is given (partings by peer, blocks by address).
fn pair_key<T: Ord>(a: T, b: T) -> (T, T) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);
    const COOLDOWN: Duration = Duration::from_secs(10);

    fn p(n: u32) -> PeerId {
        PeerId::new(0, 0, n)
    }

    fn int(list: &[&str]) -> Interests {
        Interests::parse(list).unwrap()
    }

    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
    }

    fn setup() -> (Matchmaker, Clock) {
        (Matchmaker::new(TIMEOUT, COOLDOWN), Clock(Instant::now()))
    }

    fn pair(m: &Option<Match>) -> Option<(PeerId, PeerId)> {
        m.as_ref().map(|m| (m.waiting, m.searcher))
    }

    /// Sanity checks of the internal invariants, run after every step in the tests.
    fn check(mm: &Matchmaker) {
        let mut in_open = 0;
        for (peer, w) in &mm.waiters {
            let pool = &mm.pools[usize::from(w.who.shadow)];
            assert_eq!(pool.open.get(&w.seq) == Some(peer), w.is_open);
            in_open += usize::from(w.is_open);
            for i in w.interests.iter() {
                assert_eq!(pool.by_interest[i].get(&w.seq), Some(peer));
            }
            if let Some(t) = w.wake {
                assert!(mm.timers.contains(&(t, w.seq, *peer)));
            }
        }
        assert_eq!(mm.pools.iter().map(|p| p.open.len()).sum::<usize>(), in_open);
        let interest_queues = || mm.pools.iter().flat_map(|p| p.by_interest.values());
        assert!(interest_queues().all(|q| !q.is_empty()));
        let indexed: usize = interest_queues().map(BTreeMap::len).sum();
        let expected: usize = mm.waiters.values().map(|w| w.interests.len()).sum();
        assert_eq!(indexed, expected);
        assert_eq!(mm.timers.len(), mm.waiters.values().filter(|w| w.wake.is_some()).count());
    }

    #[test]
    fn fifo_without_interests() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        let m = mm.handle_search(c.at(1.0), p(2), Interests::none());
        assert_eq!(pair(&m), Some((p(1), p(2))));
        assert!(m.unwrap().common_interests.is_empty());
        assert!(mm.is_empty());
        assert_eq!(mm.handle_search(c.at(2.0), p(3), Interests::none()), None);
        assert_eq!(pair(&mm.handle_search(c.at(3.0), p(4), Interests::none())), Some((p(3), p(4))));
        assert_eq!(mm.poll_timeout(), None);
        check(&mm);
    }

    #[test]
    fn never_pairs_with_self() {
        let (mut mm, c) = setup();
        for i in 0..5 {
            assert_eq!(mm.handle_search(c.at(f64::from(i)), p(1), Interests::none()), None);
            check(&mm);
        }
        assert_eq!(mm.len(), 1);
        assert!(mm.is_waiting(p(1)));
    }

    #[test]
    fn shared_interest_is_preferred_and_reported() {
        let (mut mm, c) = setup();
        // p1 (no interests) waits; p2 is picky for music and will not take p1.
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["music", "chess"])), None);
        check(&mm);
        // p3 shares music and chess with p2: paired with p2 although p1 waited longer.
        let m = mm.handle_search(c.at(2.0), p(3), int(&["chess", "art", "music"])).unwrap();
        assert_eq!((m.waiting, m.searcher), (p(2), p(3)));
        assert_eq!(m.common_interests, int(&["chess", "music"]));
        assert!(mm.is_waiting(p(1)));
        check(&mm);
    }

    #[test]
    fn longest_waiting_sharer_wins_across_interests() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["chess"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["music"])), None);
        let m = mm.handle_search(c.at(2.0), p(3), int(&["music", "chess"])).unwrap();
        assert_eq!(m.waiting, p(1));
        assert_eq!(m.common_interests, int(&["chess"]));
    }

    #[test]
    fn open_searcher_does_not_take_a_picky_one() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), Interests::none()), None);
        assert_eq!(mm.len(), 2);
        // The picky one's deadline is the next wake-up.
        assert_eq!(mm.poll_timeout(), Some(c.at(5.0)));
        check(&mm);
    }

    #[test]
    fn interest_timeout_falls_back_to_anyone() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), Interests::none()), None);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(4.9), &mut out);
        assert!(out.is_empty());
        mm.handle_timeout(c.at(5.0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].waiting, out[0].searcher), (p(2), p(1)));
        assert!(out[0].common_interests.is_empty());
        assert!(mm.is_empty());
        assert_eq!(mm.poll_timeout(), None);
        check(&mm);
    }

    #[test]
    fn expired_waiter_is_open_to_later_searchers_and_still_found_by_sharers() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(5.0), &mut out);
        assert!(out.is_empty());
        assert_eq!(mm.poll_timeout(), None);
        check(&mm);
        // A picky searcher with another interest does not take it ...
        assert_eq!(mm.handle_search(c.at(6.0), p(2), int(&["chess"])), None);
        // ... a sharer does, and they are told what they share ...
        let m = mm.handle_search(c.at(7.0), p(3), int(&["music"])).unwrap();
        assert_eq!((m.waiting, m.common_interests), (p(1), int(&["music"])));
        // ... and someone without interests takes the next expired one.
        mm.handle_timeout(c.at(11.0), &mut out);
        assert!(out.is_empty());
        assert_eq!(
            pair(&mm.handle_search(c.at(12.0), p(4), Interests::none())),
            Some((p(2), p(4)))
        );
        check(&mm);
    }

    #[test]
    fn open_searcher_prefers_a_younger_sharer() {
        // Interest timeout zero: everyone is open at once. p1 and p2 are in cooldown, so both
        // wait; p3 shares music with p2 and takes p2, not the older p1.
        let (_, c) = setup();
        let mut mm = Matchmaker::new(Duration::ZERO, COOLDOWN);
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(0.0), p(2), int(&["music"])), None);
        let m = mm.handle_search(c.at(1.0), p(3), int(&["music"])).unwrap();
        assert_eq!((m.waiting, m.common_interests), (p(2), int(&["music"])));
        // Without a sharer, the oldest open waiter.
        let m = mm.handle_search(c.at(2.0), p(4), int(&["chess"])).unwrap();
        assert_eq!((m.waiting, m.common_interests), (p(1), Interests::none()));
        check(&mm);
    }

    #[test]
    fn cooldown_keeps_a_parted_pair_apart_and_others_are_matched_instead() {
        let (mut mm, c) = setup();
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(0.5), p(2), Interests::none()), None);
        // The blocked searcher is woken when the cooldown ends.
        assert_eq!(mm.poll_timeout(), Some(c.at(10.0)));
        check(&mm);
        // Someone else arrives: takes the longest waiter, p1.
        assert_eq!(pair(&mm.handle_search(c.at(3.0), p(3), Interests::none())), Some((p(1), p(3))));
        // Then p2 is matched with the next arrival.
        assert_eq!(pair(&mm.handle_search(c.at(4.0), p(4), Interests::none())), Some((p(2), p(4))));
        // p2's retry timer went with it.
        assert_eq!(mm.poll_timeout(), None);
        check(&mm);
    }

    #[test]
    fn cooldown_expiry_pairs_a_pair_that_still_waits() {
        let (mut mm, c) = setup();
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(1.0), p(2), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(2.0), p(1), Interests::none()), None);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(9.999), &mut out);
        assert!(out.is_empty());
        assert_eq!(mm.poll_timeout(), Some(c.at(10.0)));
        mm.handle_timeout(c.at(10.0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].waiting, out[0].searcher), (p(2), p(1)));
        check(&mm);
    }

    #[test]
    fn cooldown_applies_to_interest_matches_too() {
        let (mut mm, c) = setup();
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(0.0), p(2), int(&["music"])), None);
        // p2's deadline (5 s) comes before the cooldown's end (10 s).
        assert_eq!(mm.poll_timeout(), Some(c.at(5.0)));
        let mut out = Vec::new();
        mm.handle_timeout(c.at(5.0), &mut out);
        assert!(out.is_empty());
        assert_eq!(mm.poll_timeout(), Some(c.at(10.0)));
        check(&mm);
        mm.handle_timeout(c.at(10.0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].common_interests, int(&["music"]));
        check(&mm);
    }

    #[test]
    fn cooldown_is_forgotten_after_it_ends() {
        let (mut mm, c) = setup();
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.parted.len(), 1);
        assert_eq!(mm.handle_search(c.at(10.0), p(1), Interests::none()), None);
        assert!(mm.parted.is_empty() && mm.partings.is_empty());
        assert_eq!(
            pair(&mm.handle_search(c.at(10.0), p(2), Interests::none())),
            Some((p(1), p(2)))
        );
    }

    #[test]
    fn parting_again_restarts_the_cooldown() {
        let (mut mm, c) = setup();
        mm.handle_parting(c.at(0.0), p(1), p(2));
        mm.handle_parting(c.at(8.0), p(2), p(1));
        assert_eq!(mm.handle_search(c.at(12.0), p(1), Interests::none()), None);
        // The first parting's entry is pruned without dropping the second.
        assert_eq!(mm.parted.len(), 1);
        assert_eq!(mm.handle_search(c.at(12.0), p(2), Interests::none()), None);
        assert_eq!(mm.poll_timeout(), Some(c.at(18.0)));
    }

    #[test]
    fn zero_cooldown_allows_immediate_rematch() {
        let (_, c) = setup();
        let mut mm = Matchmaker::new(TIMEOUT, Duration::ZERO);
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        assert_eq!(pair(&mm.handle_search(c.at(0.0), p(2), Interests::none())), Some((p(1), p(2))));
    }

    #[test]
    fn cancel_removes_everything() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert!(mm.cancel(p(1)));
        assert!(!mm.cancel(p(1)));
        assert!(mm.is_empty() && mm.pools[0].by_interest.is_empty() && mm.timers.is_empty());
        assert_eq!(mm.poll_timeout(), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["music"])), None);
        check(&mm);
    }

    #[test]
    fn repeated_search_keeps_the_place() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["chess"])), None);
        assert_eq!(mm.handle_search(c.at(2.0), p(1), int(&["music"])), None);
        check(&mm);
        let m = mm.handle_search(c.at(3.0), p(3), int(&["chess", "music"])).unwrap();
        assert_eq!(m.waiting, p(1), "p1 kept its place ahead of p2");
    }

    #[test]
    fn a_match_says_when_each_side_started_searching() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["chess"])), None);
        assert_eq!(mm.handle_search(c.at(2.0), p(2), int(&["chess"])), None);
        let m = mm.handle_search(c.at(3.0), p(3), int(&["chess"])).unwrap();
        assert_eq!(m.waiting, p(2));
        assert_eq!((m.waiting_since, m.searcher_since), (c.at(1.0), c.at(3.0)), "p2 repeated");
        // A match made by a timer: p1's interest deadline passes and it takes p4.
        assert_eq!(mm.handle_search(c.at(4.0), p(4), Interests::none()), None);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(5.0), &mut out);
        let m = out.pop().unwrap();
        assert_eq!((m.waiting, m.searcher), (p(4), p(1)));
        assert_eq!((m.waiting_since, m.searcher_since), (c.at(4.0), c.at(0.0)));
    }

    #[test]
    fn search_after_cancel_goes_to_the_back() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["chess"])), None);
        mm.cancel(p(1));
        assert_eq!(mm.handle_search(c.at(2.0), p(1), int(&["music"])), None);
        let m = mm.handle_search(c.at(3.0), p(3), int(&["chess", "music"])).unwrap();
        assert_eq!(m.waiting, p(2));
    }

    #[test]
    fn repeated_search_replaces_interests_and_keeps_the_deadline() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(4.0), p(1), int(&["chess"])), None);
        assert_eq!(mm.poll_timeout(), Some(c.at(5.0)));
        check(&mm);
        assert_eq!(mm.handle_search(c.at(4.1), p(2), int(&["music"])), None);
        let m = mm.handle_search(c.at(4.2), p(3), int(&["chess"])).unwrap();
        assert_eq!((m.waiting, m.common_interests), (p(1), int(&["chess"])));
        check(&mm);
    }

    #[test]
    fn repeated_search_can_make_a_match() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(1.0), p(2), int(&["chess"])), None);
        // p2 drops its interests: open, but p1 is still picky, so still nothing.
        assert_eq!(mm.handle_search(c.at(2.0), p(2), Interests::none()), None);
        check(&mm);
        // p2 switches to music: shares with p1.
        let m = mm.handle_search(c.at(3.0), p(2), int(&["music"])).unwrap();
        assert_eq!((m.waiting, m.searcher, m.common_interests), (p(1), p(2), int(&["music"])));
        check(&mm);
    }

    #[test]
    fn expired_repeat_is_open_at_once() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(0.0), p(2), int(&["music"])), None);
        // p2 repeats after its deadline (its timer has not been run yet): open now.
        let m = mm.handle_search(c.at(6.0), p(2), int(&["music"])).unwrap();
        assert_eq!((m.waiting, m.searcher), (p(1), p(2)));
    }

    #[test]
    fn set_limits_reschedules() {
        let (mut mm, c) = setup();
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["music"])), None);
        assert_eq!(mm.handle_search(c.at(0.0), p(2), Interests::none()), None);
        assert_eq!(mm.poll_timeout(), Some(c.at(5.0)));
        mm.set_limits(Duration::from_secs(2), COOLDOWN);
        assert_eq!(mm.poll_timeout(), Some(c.at(2.0)));
        check(&mm);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(3.0), &mut out);
        assert_eq!(out.len(), 1);
        // A cooldown shortened by a reload is honoured too.
        mm.handle_parting(c.at(3.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(3.0), p(1), Interests::none()), None);
        assert_eq!(mm.handle_search(c.at(3.0), p(2), Interests::none()), None);
        assert_eq!(mm.poll_timeout(), Some(c.at(13.0)));
        mm.set_limits(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(mm.poll_timeout(), Some(c.at(4.0)));
        mm.handle_timeout(c.at(4.0), &mut out);
        assert_eq!(out.len(), 2);
        check(&mm);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let (_, c) = setup();
        let mut mm = Matchmaker::new(Duration::MAX, Duration::MAX);
        mm.handle_parting(c.at(0.0), p(1), p(2));
        assert_eq!(mm.handle_search(c.at(0.0), p(1), int(&["a"])), None);
        assert_eq!(mm.handle_search(c.at(0.0), p(2), int(&["a"])), None);
        assert_eq!(mm.poll_timeout(), None);
        let mut out = Vec::new();
        mm.handle_timeout(c.at(1e6), &mut out);
        assert!(out.is_empty());
        check(&mm);
    }

    #[test]
    fn clear_empties_the_queue() {
        let (mut mm, c) = setup();
        mm.handle_search(c.at(0.0), p(1), int(&["music"]));
        mm.handle_search(c.at(0.0), p(2), int(&["chess"]));
        mm.clear();
        assert!(mm.is_empty());
        assert_eq!(mm.poll_timeout(), None);
        check(&mm);
    }

    #[test]
    fn many_peers_pair_in_arrival_order() {
        let (mut mm, c) = setup();
        let mut pairs = Vec::new();
        for n in 0..1000 {
            if let Some(m) = mm.handle_search(c.at(0.0), p(n), Interests::none()) {
                pairs.push((m.waiting, m.searcher));
            }
        }
        assert_eq!(pairs.len(), 500);
        assert!(pairs.iter().enumerate().all(|(i, &(a, b))| {
            let i = i as u32;
            a == p(2 * i) && b == p(2 * i + 1)
        }));
    }

    #[test]
    fn a_hundred_thousand_waiters_stay_cheap() {
        // 100,000 picky waiters with pairwise distinct interests, then 100,000 sharers: each
        // search touches a few queue heads, so this runs in well under a second in release and
        // a few seconds in debug. A quadratic scan would take hours.
        let (mut mm, c) = setup();
        let n = 100_000u32;
        let tags: Vec<Interests> = (0..n).map(|i| int(&[&format!("tag{i}")])).collect();
        for (i, t) in tags.iter().enumerate() {
            assert_eq!(mm.handle_search(c.at(0.0), p(i as u32), t.clone()), None);
        }
        assert_eq!(mm.len(), n as usize);
        check(&mm);
        for (i, t) in tags.iter().enumerate().rev() {
            let m = mm.handle_search(c.at(1.0), p(n + i as u32), t.clone()).unwrap();
            assert_eq!(m.waiting, p(i as u32));
        }
        assert!(mm.is_empty() && mm.pools[0].by_interest.is_empty() && mm.timers.is_empty());
    }

    #[test]
    fn a_searcher_steps_over_its_recent_partners_only() {
        // p0 parted from p1, p2 and p3, who also parted from each other, so all four wait.
        let (mut mm, c) = setup();
        for (a, b) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)] {
            mm.handle_parting(c.at(0.0), p(a), p(b));
        }
        for n in 1..=3 {
            assert_eq!(mm.handle_search(c.at(0.0), p(n), Interests::none()), None);
        }
        assert_eq!(mm.handle_search(c.at(1.0), p(0), Interests::none()), None);
        assert_eq!(mm.len(), 4);
        check(&mm);
        // A newcomer takes the head of the queue.
        assert_eq!(pair(&mm.handle_search(c.at(2.0), p(9), Interests::none())), Some((p(1), p(9))));
        // When the cooldowns end, the timers run oldest first: p2 takes the head, p3.
        let mut out = Vec::new();
        mm.handle_timeout(c.at(10.0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].waiting, out[0].searcher), (p(3), p(2)));
        assert_eq!(mm.len(), 1);
        check(&mm);
    }

    /// No two waiting peers are compatible at `now` (the timers due at `now` having run): the
    /// proof that matching really happens on the event that makes it possible.
    fn assert_no_compatible_pair(mm: &Matchmaker, now: Instant) {
        for (&a, wa) in &mm.waiters {
            for (&b, wb) in &mm.waiters {
                if a >= b || mm.parted_at(now, a, b).is_some() {
                    continue;
                }
                let share = !wa.interests.intersection(&wb.interests).is_empty();
                let compatible = share || (wa.is_open && wb.is_open);
                assert!(!compatible, "{a:?} and {b:?} both wait");
            }
        }
    }

    /// Runs a schedule of `(peer, op)` steps `step` seconds apart, where op is 0: search with
    /// no interests, 1: music, 2: chess, 3: cancel. Matched chats end at once (they part). After
    /// every step: the internal invariants hold, nobody was paired with themself or within a
    /// cooldown, and no two waiting peers are compatible.
    fn run_schedule(steps: impl IntoIterator<Item = (u32, u32)>, step: f64) {
        let (_, c) = setup();
        let mut mm = Matchmaker::new(Duration::from_secs(2), Duration::from_secs(3));
        for (n, (peer, op)) in steps.into_iter().enumerate() {
            let now = c.at(n as f64 * step);
            let peer = p(peer);
            let mut matches = Vec::new();
            mm.handle_timeout(now, &mut matches);
            let found = match op {
                0 => mm.handle_search(now, peer, Interests::none()),
                1 => mm.handle_search(now, peer, int(&["music"])),
                2 => mm.handle_search(now, peer, int(&["chess"])),
                _ => {
                    mm.cancel(peer);
                    None
                }
            };
            matches.extend(found);
            for m in &matches {
                assert_ne!(m.waiting, m.searcher);
                assert_eq!(mm.parted_at(now, m.waiting, m.searcher), None);
                mm.handle_parting(now, m.waiting, m.searcher);
            }
            check(&mm);
            assert_no_compatible_pair(&mm, now);
            if let Some(t) = mm.poll_timeout() {
                assert!(t > now, "a timer due now was left unrun");
            }
        }
    }

    #[test]
    fn exhaustive_small_schedules_keep_the_invariants() {
        // Every sequence of 4 steps over 3 peers and 4 operations, one second apart.
        let choices: u32 = 3 * 4;
        for code in 0..choices.pow(4) {
            let steps = (0..4).map(|k| {
                let x = code / choices.pow(k);
                (x % 3, (x / 3) % 4)
            });
            run_schedule(steps, 1.0);
        }
    }

    #[test]
    fn random_long_schedules_keep_the_invariants() {
        // Longer schedules over 6 peers from a fixed xorshift seed, at several step lengths so
        // that deadlines and cooldowns end between, on and across steps.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let steps: Vec<(u32, u32)> =
                (0..40).map(|_| ((next() % 6) as u32, (next() % 4) as u32)).collect();
            run_schedule(steps, [0.25, 0.5, 1.0, 1.5][round % 4]);
        }
    }

    fn as_client(n: u8, shadow: bool) -> Searcher {
        Searcher { client: AddrHash::from_bytes([n; 16]), shadow }
    }

    #[test]
    fn the_shadow_pool_meets_only_itself() {
        let (mut mm, t) = setup();
        let (a, b) = (as_client(1, false), as_client(2, true));
        assert_eq!(mm.handle_search_as(t.0, p(1), int(&[]), a), None);
        assert_eq!(mm.handle_search_as(t.0, p(2), int(&[]), b), None, "banned meets no one else");
        check(&mm);
        let m = mm.handle_search_as(t.0, p(3), int(&[]), as_client(3, true));
        assert_eq!(pair(&m), Some((p(2), p(3))));
        // A waiter banned while it waits moves over, keeping its place.
        assert_eq!(mm.handle_search_as(t.0, p(4), int(&[]), as_client(4, true)), None);
        assert_eq!(pair(&mm.set_pool(t.0, p(1), true)), Some((p(4), p(1))));
        assert!(mm.is_empty());
        check(&mm);
        // And back, when a ban is lifted.
        assert_eq!(mm.handle_search_as(t.0, p(5), int(&[]), as_client(5, false)), None);
        assert_eq!(mm.handle_search_as(t.0, p(6), int(&[]), as_client(6, true)), None);
        assert_eq!(pair(&mm.set_pool(t.0, p(6), false)), Some((p(5), p(6))));
        check(&mm);
    }

    #[test]
    fn blocked_addresses_are_stepped_over_until_the_block_ends() {
        let (mut mm, t) = setup();
        let (a, b, c) = (as_client(1, false), as_client(2, false), as_client(3, false));
        let end = t.0 + Duration::from_secs(60);
        mm.keep_apart(b.client, a.client, end);
        assert_eq!(mm.handle_search_as(t.0, p(1), int(&[]), a), None);
        // Another connection of the same blocked address is kept apart too.
        assert_eq!(mm.handle_search_as(t.0, p(2), int(&["x"]), b), None);
        assert_eq!(mm.handle_search_as(t.0, p(5), int(&[]), b), None);
        check(&mm);
        assert_eq!(pair(&mm.handle_search_as(t.0, p(3), int(&[]), c)), Some((p(1), p(3))));
        mm.forget_apart(end);
        assert_eq!(pair(&mm.handle_search_as(end, p(6), int(&[]), a)), Some((p(5), p(6))));
        mm.forget_apart(end);
        assert!(mm.apart.is_empty());
    }
}
