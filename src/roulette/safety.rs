//! The roulette's side of trust and safety: `report`, `block`, spam, shadow bans and the proof
//! of work before each search. The state by address is in [`Ledger`] (one process) or Redis
//! (a cluster, which has the last word on bans and blocks: its matcher applies them).
//!
//! Owns: what the roulette does about reports, blocks, spam and proof of work. May not touch:
//! sockets, the clock, Redis (it speaks `cluster::Op`).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    is_remote, matchmaker::Searcher, protocol::PowChallenge, send, ChatState, LeaveReason,
    RequestError, Roulette, ServerMessage, SWEEP,
};
use crate::{
    app::{Action, PeerId},
    cluster::Op,
    safety::{
        ledger::{pow_ok, AFTER_CHAT, AUTO_BITS},
        AddrHash, Ban, Pow, Reason,
    },
};

/// Searches one address adds to [`SearchRate`] per second at most: one address alone cannot
/// switch the proof of work on for everyone.
const RATE_PER_ADDRESS: u32 = 3;

/// Searches counted for `pow_bits = "auto"`: this worker's, per second, over the last second.
/// Only searches that passed every budget count, each address at most [`RATE_PER_ADDRESS`].
#[derive(Debug, Default)]
pub(super) struct SearchRate {
    second: Option<Instant>,
    this: u32,
    last: u32,
    /// This second's searches per address (cleared every second, so at most a second's worth).
    by_address: HashMap<AddrHash, u32>,
}

impl SearchRate {
    fn count(&mut self, now: Instant, client: AddrHash) {
        self.roll(now);
        let mine = self.by_address.entry(client).or_default();
        if *mine < RATE_PER_ADDRESS {
            *mine += 1;
            self.this = self.this.saturating_add(1);
        }
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.second.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            // A quiet second in between means the last full second had none.
            self.last = if elapsed < Duration::from_secs(2) { self.this } else { 0 };
            self.this = 0;
            self.by_address.clear();
            self.second = Some(now);
        }
    }

    /// Searches in the last full second (or in this one, if it already has more), as of `now`.
    fn per_second(&self, now: Instant) -> u32 {
        let elapsed = self.second.map_or(Duration::MAX, |s| now.saturating_duration_since(s));
        if elapsed >= Duration::from_secs(2) {
            0
        } else if elapsed >= Duration::from_secs(1) {
            self.this
        } else {
            self.last.max(self.this)
        }
    }
}

impl Roulette {
    /// The bits the proof of work asks for now (0: off).
    pub(super) fn pow_bits(&self, now: Instant) -> u8 {
        match self.config.safety.pow {
            Pow::Off => 0,
            Pow::Bits(n) => n,
            Pow::Auto { rate } => {
                if f64::from(self.search_rate.per_second(now)) > rate {
                    AUTO_BITS
                } else {
                    0
                }
            }
        }
    }

    /// A new challenge for `peer`'s next search, when the proof of work is on.
    pub(super) fn new_challenge(&mut self, now: Instant, peer: PeerId) -> Option<PowChallenge> {
        let bits = self.pow_bits(now);
        if bits == 0 {
            self.challenges.remove(&peer);
            return None;
        }
        let mut challenge = [0u8; 16];
        (self.random)(&mut challenge);
        let pow = PowChallenge { challenge, bits };
        self.challenges.insert(peer, pow);
        Some(pow)
    }

    /// The challenge `peer` is to solve (sent with `pow_required` and `pow_invalid`).
    pub(super) fn challenge_of(&self, peer: PeerId) -> Option<PowChallenge> {
        self.challenges.get(&peer).copied()
    }

    /// Checks a search's proof of work. A wrong nonce gets a new challenge (so a client cannot
    /// grind against the server); a good one is used up by [`Roulette::pow_used`] once every
    /// other check has passed, so that a search refused for its rate keeps its solution.
    pub(super) fn check_pow(
        &mut self,
        now: Instant,
        peer: PeerId,
        nonce: Option<&str>,
    ) -> Result<(), RequestError> {
        if self.pow_bits(now) == 0 {
            return Ok(());
        }
        let Some(&pow) = self.challenges.get(&peer) else {
            // It was off when this connection last heard: here is one.
            self.new_challenge(now, peer);
            return Err(RequestError::PowRequired);
        };
        let Some(nonce) = nonce else { return Err(RequestError::PowRequired) };
        // Against the bits the challenge was sent with: what the client was asked.
        if !pow_ok(&pow.challenge, nonce, pow.bits) {
            self.new_challenge(now, peer);
            return Err(RequestError::PowInvalid);
        }
        Ok(())
    }

    /// A search passed every check: its challenge is used up, and it counts for "auto".
    pub(super) fn pow_used(&mut self, now: Instant, peer: PeerId, client: AddrHash) {
        if !self.challenges.is_empty() {
            self.challenges.remove(&peer);
        }
        // Only "auto" reads the rate (a map entry per address and second).
        if let Pow::Auto { .. } = self.config.safety.pow {
            self.search_rate.count(now, client);
        }
    }

    /// Who `peer` is for the queue: its address, and whether that address is shadow-banned.
    pub(super) fn searcher(&self, now: Instant, peer: PeerId) -> Searcher {
        let client = self.person(peer).map_or(AddrHash::default(), |p| p.client);
        Searcher { client, shadow: self.ledger.is_banned(now, client) }
    }

    /// The address of `id`: a local person (connected or away) or a partner elsewhere.
    pub(super) fn client_of(&self, id: PeerId) -> Option<AddrHash> {
        if is_remote(id) {
            return self.cluster.as_ref()?.clients.get(&id).copied();
        }
        self.person(id).map(|p| p.client)
    }

    /// Notes, as a chat ends, whom each local side talked to: a report or block within
    /// [`AFTER_CHAT`] is about that partner.
    pub(super) fn remember_partners(&mut self, now: Instant, a: PeerId, b: PeerId) {
        if self.is_draining {
            return; // Nobody reports anyone on the way out.
        }
        for (me, other) in [(a, b), (b, a)] {
            if is_remote(me) {
                continue;
            }
            match self.client_of(other) {
                Some(client) => {
                    self.recent.insert(me, (client, now));
                    self.schedule_sweep(now);
                }
                // Never the chat before this one.
                None => {
                    self.recent.remove(&me);
                }
            }
        }
    }

    /// `peer`'s own address and the one it may report or block now: its partner's in a chat
    /// (whose chat then ends as a skip does), or its last partner's within [`AFTER_CHAT`].
    fn target(
        &mut self,
        now: Instant,
        peer: PeerId,
        out: &mut Vec<Action>,
    ) -> Result<(AddrHash, AddrHash), RequestError> {
        let Some(p) = self.peers.get(&peer) else { return Err(RequestError::NobodyToReport) };
        let me = p.client;
        if let ChatState::Chatting(partner) = p.state {
            // A partner whose address this worker never learnt (one that matched through an
            // older version) cannot be reported; the chat goes on.
            let client = self.client_of(partner).ok_or(RequestError::NobodyToReport)?;
            self.end_chat(now, peer, partner, LeaveReason::Next, out);
            return Ok((me, client));
        }
        match self.recent.get(&peer) {
            Some(&(client, at)) if now.saturating_duration_since(at) < AFTER_CHAT => {
                Ok((me, client))
            }
            _ => Err(RequestError::NobodyToReport),
        }
    }

    /// `report`: counts against the partner's address; the partner is never told.
    pub(super) fn handle_report(
        &mut self,
        now: Instant,
        peer: PeerId,
        reason: Reason,
        out: &mut Vec<Action>,
    ) -> Result<(), RequestError> {
        let (reporter, target) = self.target(now, peer, out)?;
        self.counters.reports[reason as usize] += 1;
        self.file_report(now, target, reporter, out);
        send(out, peer, &ServerMessage::Reported);
        Ok(())
    }

    /// `block`: the two addresses are not paired again for `block_duration`.
    pub(super) fn handle_block(
        &mut self,
        now: Instant,
        peer: PeerId,
        out: &mut Vec<Action>,
    ) -> Result<(), RequestError> {
        let (me, target) = self.target(now, peer, out)?;
        let duration = self.config.safety.block_duration;
        self.counters.blocks += 1;
        match &mut self.cluster {
            Some(c) => c.safety_op(Op::Block {
                a: me.to_string(),
                b: target.to_string(),
                ms: duration.as_millis() as u64,
            }),
            None => {
                let until = now.checked_add(duration).unwrap_or(now + Duration::from_secs(86400));
                self.matchmaker.keep_apart(me, target, until);
                self.schedule_sweep(now);
            }
        }
        send(out, peer, &ServerMessage::Blocked);
        Ok(())
    }

    /// A line a local person at address `sender` sent to `to`: spam when it went to
    /// `spam_partners` strangers.
    pub(super) fn note_line(
        &mut self,
        now: Instant,
        sender: AddrHash,
        to: PeerId,
        text: &str,
        out: &mut Vec<Action>,
    ) {
        if self.config.safety.spam_partners == 0 {
            return;
        }
        let Some(receiver) = self.client_of(to) else { return };
        let rules = &self.config.safety;
        let Some(strangers) = self.ledger.line(now, rules, sender, receiver, text) else { return };
        self.counters.spam_detections += 1;
        self.schedule_sweep(now);
        for stranger in strangers {
            self.counters.reports[Reason::Spam as usize] += 1;
            self.file_report(now, sender, stranger, out);
        }
    }

    /// One report of `target` by `reporter`: counted here, or in Redis for a cluster.
    fn file_report(
        &mut self,
        now: Instant,
        target: AddrHash,
        reporter: AddrHash,
        out: &mut Vec<Action>,
    ) {
        self.schedule_sweep(now);
        let rules = &self.config.safety;
        if let Some(c) = &mut self.cluster {
            c.safety_op(Op::Report {
                target: target.to_string(),
                reporter: reporter.to_string(),
                threshold: rules.report_threshold,
                window_ms: rules.report_window.as_millis() as u64,
                ban_ms: rules.ban_duration.as_millis() as u64,
            });
            return;
        }
        if let Some(ban) = self.ledger.report(now, rules, target, reporter) {
            self.banned(now, ban, out);
        }
    }

    /// A shadow ban was made (here, or by this worker's report in Redis): counted, logged,
    /// and the address's searchers here move to the shadow pool.
    pub(super) fn banned(&mut self, now: Instant, ban: Ban, out: &mut Vec<Action>) {
        self.counters.shadow_bans += 1;
        out.push(Action::Banned {
            client: ban.client,
            reports: ban.reports,
            duration: ban.duration,
        });
        if self.cluster.is_some() {
            return; // Redis's matcher moves them at their next match.
        }
        self.move_searchers(now, ban.client, true, out);
    }

    /// Moves `client`'s waiting searchers here into the shadow pool or out of it.
    fn move_searchers(
        &mut self,
        now: Instant,
        client: AddrHash,
        shadow: bool,
        out: &mut Vec<Action>,
    ) {
        let searchers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.client == client && p.state == ChatState::Searching)
            .map(|(&id, _)| id)
            .collect();
        for peer in searchers {
            if let Some(m) = self.matchmaker.set_pool(now, peer, shadow) {
                self.start_chat(now, m, out);
            }
        }
    }

    /// Searchers whose ban a reload lifted go back to everyone (at the next timeout: a reload
    /// brings no clock).
    pub(super) fn release_pardoned(&mut self, now: Instant, out: &mut Vec<Action>) {
        for client in std::mem::take(&mut self.pardoned) {
            self.move_searchers(now, client, false, out);
        }
    }

    /// Lifts the shadow bans a reload's `pardon` lists.
    pub(super) fn apply_pardons(&mut self) {
        let shorts = self.config.safety.pardon.clone();
        if shorts.is_empty() {
            return;
        }
        if let Some(c) = &mut self.cluster {
            // A pardoned waiter goes back to everyone from its next search (its worker's).
            c.safety_op(Op::Pardon { shorts: shorts.clone() });
        }
        let lifted = self.ledger.pardon(&shorts);
        if self.cluster.is_none() {
            self.pardoned.extend(lifted);
        }
    }

    pub(super) fn schedule_sweep(&mut self, now: Instant) {
        self.next_sweep.get_or_insert(now + SWEEP);
    }

    /// Forgets expired reports, bans, lines, blocks and last partners. Returns whether anything
    /// is left to sweep later.
    pub(super) fn sweep_safety(&mut self, now: Instant) -> bool {
        self.ledger.sweep(now, &self.config.safety);
        self.matchmaker.forget_apart(now);
        self.recent.retain(|_, &mut (_, at)| now.saturating_duration_since(at) < AFTER_CHAT);
        !(self.ledger.is_empty() && self.recent.is_empty() && !self.matchmaker.has_blocks())
    }
}
