//! What people did to each other, by address hash: reports, shadow bans and repeated lines
//! (spam), each with its time limit, and the proof-of-work check. Blocks live with the queue
//! (the matchmaker, or Redis). Sans-IO: `now` comes in, decisions come out; the roulette tells
//! people, and a cluster keeps reports and bans in Redis instead.
//!
//! Every map is capped ([`MAX_ENTRIES`]) and swept of what has expired, so a flood of
//! addresses cannot grow memory without bound: past the cap, new entries are not recorded (a
//! report still gets its `reported`, it just does not count).
//!
//! Owns: the per-address safety state of one worker. May not touch: sockets, the clock, Redis.
use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{BuildHasher, Hasher},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::AddrHash;

/// Entries each map holds at most (reported addresses, bans, tracked lines).
pub const MAX_ENTRIES: usize = 100_000;

/// A report or block is good this long after the chat ended.
pub const AFTER_CHAT: Duration = Duration::from_secs(60);

/// The bits of the proof of work that `pow_bits = "auto"` asks for when it is on.
pub const AUTO_BITS: u8 = 18;

/// The most bits `pow_bits` may ask for (about 17 s of a phone's time at 24).
pub const MAX_BITS: u8 = 24;

/// The longest nonce accepted, in bytes.
pub const MAX_NONCE: usize = 64;

/// Proof of work before each search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pow {
    /// Never asked.
    Off,
    /// Always, with this many leading zero bits.
    Bits(u8),
    /// [`AUTO_BITS`] while searches per second (this worker's, over the last seconds) are above
    /// the rate; off below it.
    Auto {
        /// `pow_auto_rate`.
        rate: f64,
    },
}

/// The `[safety]` rules of the roulette (the per-address limits are in `ChatConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Reports from distinct addresses within `report_window` that shadow-ban. Default 3.
    pub report_threshold: u32,
    /// Default 1 h.
    pub report_window: Duration,
    /// How long a shadow ban lasts. Default 24 h.
    pub ban_duration: Duration,
    /// How long a block keeps two addresses apart. Default 24 h.
    pub block_duration: Duration,
    /// Distinct strangers that one address sending the same line to makes spam. Default 5.
    pub spam_partners: u32,
    /// Default 10 min.
    pub spam_window: Duration,
    /// Lines shorter than this (in characters, after trimming) never count as spam: "hi" to
    /// five strangers is a greeting. Default 16.
    pub spam_min_chars: usize,
    /// Proof of work. Default off.
    pub pow: Pow,
    /// Short hashes (`AddrHash::short`) whose shadow bans a reload lifts.
    pub pardon: Vec<String>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            report_threshold: 3,
            report_window: Duration::from_secs(3600),
            ban_duration: Duration::from_secs(24 * 3600),
            block_duration: Duration::from_secs(24 * 3600),
            spam_partners: 5,
            spam_window: Duration::from_secs(600),
            spam_min_chars: 16,
            pow: Pow::Off,
            pardon: Vec::new(),
        }
    }
}

/// Why someone was reported (the `reason` of `report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Advertising, repeated lines.
    Spam,
    /// Insults, harassment.
    Abuse,
    /// Looks under age.
    Underage,
    /// Anything else.
    Other,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 4] = [Reason::Spam, Reason::Abuse, Reason::Underage, Reason::Other];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Spam => "spam",
            Reason::Abuse => "abuse",
            Reason::Underage => "underage",
            Reason::Other => "other",
        }
    }

    /// The reason for a wire name.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A shadow ban that a report (or spam) just caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub client: AddrHash,
    /// Distinct reporters within the window.
    pub reports: usize,
    /// For how long.
    pub duration: Duration,
}

/// Distinct long lines remembered per sending address, most recently sent first. A spammer's
/// line is sent again in every chat and stays; a person's ordinary lines, each new, push each
/// other out. So memory is bounded per address, however much it chats.
pub const LINES_PER_ADDRESS: usize = 8;

/// A line one address sent, the strangers it went to and when (the last time to each). Most
/// lines go to one stranger only: the first is kept inline, so a new line allocates nothing.
#[derive(Debug)]
struct Line {
    digest: u64,
    first: (AddrHash, Instant),
    more: Vec<(AddrHash, Instant)>,
}

impl Line {
    fn new(digest: u64, to: AddrHash, now: Instant) -> Line {
        Line { digest, first: (to, now), more: Vec::new() }
    }

    /// Notes a send to `to` at `now` and forgets sends older than `window`; returns how many
    /// distinct strangers it went to within the window.
    fn send(&mut self, to: AddrHash, now: Instant, window: Duration) -> usize {
        let fresh = |&(who, at): &(AddrHash, Instant)| {
            who != to && now.saturating_duration_since(at) < window
        };
        self.more.retain(fresh);
        if fresh(&self.first) {
            self.more.push(self.first);
        }
        self.first = (to, now);
        1 + self.more.len()
    }

    fn is_fresh(&self, now: Instant, window: Duration) -> bool {
        let fresh = |at: Instant| now.saturating_duration_since(at) < window;
        fresh(self.first.1) || self.more.iter().any(|&(_, at)| fresh(at))
    }
}

/// A 64-bit digest of `text` lowercased, keyed by `seed`: ASCII (nearly every line) eight bytes
/// at a time; anything else a character at a time. Compared only within this process.
fn digest(seed: u64, text: &str) -> u64 {
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    let mut h = seed;
    if text.is_ascii() {
        for chunk in text.as_bytes().chunks(8) {
            let mut word = [0u8; 8];
            for (d, s) in word.iter_mut().zip(chunk) {
                *d = s.to_ascii_lowercase();
            }
            h = mix(h, u64::from_le_bytes(word));
        }
    } else {
        for c in text.chars().flat_map(char::to_lowercase) {
            h = mix(h, u64::from(c));
        }
    }
    mix(h, text.len() as u64)
}

/// One worker's safety state. See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    /// Reported address -> (reporter, when), oldest first, at most one per reporter.
    reports: HashMap<AddrHash, Vec<(AddrHash, Instant)>>,
    /// Shadow-banned address -> until.
    bans: HashMap<AddrHash, Instant>,
    /// Sender -> its last [`LINES_PER_ADDRESS`] distinct long lines and whom each went to.
    lines: HashMap<AddrHash, Vec<Line>>,
    /// Keys the line digests (per process).
    seed: u64,
}

impl Default for Ledger {
    fn default() -> Ledger {
        // std's RandomState is seeded from the OS once per process: a random 64 bits for free.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Ledger { reports: HashMap::new(), bans: HashMap::new(), lines: HashMap::new(), seed }
    }
}

impl Ledger {
    /// Counts a report of `target` by `reporter`. A reporter counts once per window; when
    /// `rules.report_threshold` distinct reporters are reached, `target` is shadow-banned for
    /// `rules.ban_duration` and the ban is returned (once: later reports while banned add none).
    pub fn report(
        &mut self,
        now: Instant,
        rules: &Rules,
        target: AddrHash,
        reporter: AddrHash,
    ) -> Option<Ban> {
        if target == reporter || self.is_banned(now, target) {
            return None;
        }
        let len = self.reports.len();
        let list = match self.reports.entry(target) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if len >= MAX_ENTRIES => return None,
            Entry::Vacant(e) => e.insert(Vec::new()),
        };
        list.retain(|&(who, at)| {
            who != reporter && now.saturating_duration_since(at) < rules.report_window
        });
        list.push((reporter, now));
        let reports = list.len();
        if reports < rules.report_threshold.max(1) as usize {
            return None;
        }
        self.reports.remove(&target);
        self.ban(now, target, rules.ban_duration).then_some(Ban {
            client: target,
            reports,
            duration: rules.ban_duration,
        })
    }

    /// Shadow-bans `client` until `now + duration`. Returns whether the ban was recorded (not
    /// past [`MAX_ENTRIES`]).
    pub fn ban(&mut self, now: Instant, client: AddrHash, duration: Duration) -> bool {
        if self.bans.len() >= MAX_ENTRIES && !self.bans.contains_key(&client) {
            return false;
        }
        let until = now.checked_add(duration).unwrap_or(now + Duration::from_secs(86400 * 365));
        self.bans.insert(client, until);
        true
    }

    /// Whether `client` is shadow-banned now.
    pub fn is_banned(&self, now: Instant, client: AddrHash) -> bool {
        self.bans.get(&client).is_some_and(|&until| now < until)
    }

    /// Lifts the bans whose short hash is listed; returns the clients lifted.
    pub fn pardon(&mut self, shorts: &[String]) -> Vec<AddrHash> {
        let lifted: Vec<AddrHash> =
            self.bans.keys().filter(|c| shorts.contains(&c.short())).copied().collect();
        for c in &lifted {
            self.bans.remove(c);
            self.reports.remove(c);
        }
        lifted
    }

    /// Notes that `from` sent `text` to `to`. When the same line (trimmed, lowercased) has now
    /// gone to `rules.spam_partners` distinct strangers within `rules.spam_window`, returns them:
    /// each counts as a reporter of `from` (and the line starts over).
    pub fn line(
        &mut self,
        now: Instant,
        rules: &Rules,
        from: AddrHash,
        to: AddrHash,
        text: &str,
    ) -> Option<Vec<AddrHash>> {
        let text = text.trim();
        if rules.spam_partners == 0
            || from == to
            || text.chars().nth(rules.spam_min_chars.max(1) - 1).is_none()
        {
            return None;
        }
        let digest = digest(self.seed, text);
        let len = self.lines.len();
        let recent = match self.lines.entry(from) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if len >= MAX_ENTRIES => return None,
            Entry::Vacant(e) => e.insert(Vec::with_capacity(2)),
        };
        // Most recent first: the line moves (or comes) to the front, the oldest falls out.
        let Some(i) = recent.iter().position(|l| l.digest == digest) else {
            recent.truncate(LINES_PER_ADDRESS - 1);
            recent.insert(0, Line::new(digest, to, now));
            return (rules.spam_partners <= 1).then(|| vec![to]);
        };
        let mut line = recent.remove(i);
        // A sliding window: the strangers it went to within the last `spam_window`.
        if line.send(to, now, rules.spam_window) < rules.spam_partners as usize {
            recent.insert(0, line);
            return None;
        }
        // Spam: each stranger reports it, and the line starts over.
        let mut strangers: Vec<AddrHash> = line.more.into_iter().map(|(who, _)| who).collect();
        strangers.push(line.first.0);
        Some(strangers)
    }

    /// Forgets what has expired. `O(entries)`; the roulette calls it every few seconds.
    pub fn sweep(&mut self, now: Instant, rules: &Rules) {
        self.reports.retain(|_, list| {
            list.retain(|&(_, at)| now.saturating_duration_since(at) < rules.report_window);
            !list.is_empty()
        });
        self.bans.retain(|_, &mut until| now < until);
        self.lines.retain(|_, recent| {
            recent.retain(|l| l.is_fresh(now, rules.spam_window));
            !recent.is_empty()
        });
    }

    /// Bans in force (for the metrics gauge).
    pub fn bans(&self) -> usize {
        self.bans.len()
    }

    /// Whether anything needs sweeping.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.bans.is_empty() && self.lines.is_empty()
    }
}

/// Whether SHA-256(`challenge` ‖ `nonce`) starts with `bits` zero bits.
pub fn pow_ok(challenge: &[u8; 16], nonce: &str, bits: u8) -> bool {
    if nonce.is_empty() || nonce.len() > MAX_NONCE {
        return false;
    }
    let digest = Sha256::new().chain_update(challenge).chain_update(nonce.as_bytes()).finalize();
    leading_zeros(&digest) >= u32::from(bits)
}

fn leading_zeros(bytes: &[u8]) -> u32 {
    let mut n = 0;
    for &b in bytes {
        n += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> AddrHash {
        AddrHash::from_bytes([n; 16])
    }

    #[test]
    fn three_distinct_reporters_within_the_window_ban_once() {
        let (mut l, r, t) = (Ledger::default(), Rules::default(), Instant::now());
        assert_eq!(l.report(t, &r, h(9), h(1)), None);
        // The same reporter twice counts once.
        assert_eq!(l.report(t, &r, h(9), h(1)), None);
        assert_eq!(l.report(t, &r, h(9), h(2)), None);
        assert!(!l.is_banned(t, h(9)));
        let ban = l.report(t, &r, h(9), h(3)).unwrap();
        assert_eq!((ban.client, ban.reports), (h(9), 3));
        assert!(l.is_banned(t, h(9)));
        assert_eq!(l.report(t, &r, h(9), h(4)), None, "banned already");
        assert!(!l.is_banned(t + r.ban_duration, h(9)), "the ban ends");
        // Self-reports never count.
        assert_eq!(l.report(t, &r, h(5), h(5)), None);
    }

    #[test]
    fn reports_older_than_the_window_do_not_count() {
        let (mut l, r, t) = (Ledger::default(), Rules::default(), Instant::now());
        l.report(t, &r, h(9), h(1));
        l.report(t, &r, h(9), h(2));
        assert_eq!(l.report(t + r.report_window, &r, h(9), h(3)), None);
        l.sweep(t + r.report_window * 2, &r);
        assert!(l.is_empty());
    }

    #[test]
    fn a_pardon_lifts_a_ban_by_its_short_hash() {
        let (mut l, t) = (Ledger::default(), Instant::now());
        l.ban(t, h(9), Duration::from_secs(60));
        l.ban(t, h(8), Duration::from_secs(60));
        assert_eq!(l.pardon(&[h(9).short()]), vec![h(9)]);
        assert!(!l.is_banned(t, h(9)));
        assert!(l.is_banned(t, h(8)));
    }

    #[test]
    fn the_same_line_to_five_strangers_is_spam_and_short_lines_never_are() {
        let (mut l, r, t) = (Ledger::default(), Rules::default(), Instant::now());
        let ad = "Visit my SITE for free stuff";
        for n in 1..=4u8 {
            let text = if n % 2 == 0 { ad.to_uppercase() } else { format!("  {ad} ") };
            assert_eq!(l.line(t, &r, h(9), h(n), &text), None);
        }
        // The same stranger again does not count twice.
        assert_eq!(l.line(t, &r, h(9), h(4), ad), None);
        assert_eq!(l.line(t, &r, h(9), h(5), ad), Some((1..=5).map(h).collect()));
        // A greeting to many is not spam.
        for n in 1..=10u8 {
            assert_eq!(l.line(t, &r, h(7), h(n), "hi, how are you"), None);
        }
        // A line pushed out by eight newer ones starts over.
        for n in 1..=4u8 {
            assert_eq!(l.line(t, &r, h(4), h(n), ad), None);
        }
        for k in 0..LINES_PER_ADDRESS {
            assert_eq!(l.line(t, &r, h(4), h(1), &format!("an ordinary line, number {k}")), None);
        }
        assert_eq!(l.lines[&h(4)].len(), LINES_PER_ADDRESS, "bounded per address");
        assert_eq!(l.line(t, &r, h(4), h(5), ad), None);
        // A line spread over more than the window is not.
        for n in 1..=5u8 {
            let at = t + r.spam_window * u32::from(n);
            assert_eq!(l.line(at, &r, h(6), h(n), ad), None);
        }
        // The window slides: five strangers within any ten minutes count, wherever the first
        // send of the line fell.
        let minute = Duration::from_secs(60);
        assert_eq!(l.line(t, &r, h(3), h(9), ad), None);
        for (n, m) in [(1u8, 9u32), (2, 10), (4, 11), (5, 12)] {
            assert_eq!(l.line(t + minute * m, &r, h(3), h(n), ad), None);
        }
        assert!(l.line(t + minute * 13, &r, h(3), h(6), ad).is_some());
    }

    #[test]
    fn maps_are_capped() {
        let (mut l, r, t) = (Ledger::default(), Rules::default(), Instant::now());
        for n in 0..MAX_ENTRIES as u32 + 10 {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&n.to_le_bytes());
            l.ban(t, AddrHash::from_bytes(b), r.ban_duration);
        }
        assert_eq!(l.bans(), MAX_ENTRIES);
    }

    #[test]
    fn proof_of_work_counts_leading_zero_bits() {
        let challenge = [7u8; 16];
        let nonce = (0u64..).map(|n| n.to_string()).find(|n| pow_ok(&challenge, n, 12)).unwrap();
        let digest =
            Sha256::new().chain_update(challenge).chain_update(nonce.as_bytes()).finalize();
        assert!(leading_zeros(&digest) >= 12);
        assert!(pow_ok(&challenge, &nonce, 0));
        assert!(!pow_ok(&challenge, "", 0), "a nonce is required");
        assert!(!pow_ok(&challenge, &"1".repeat(MAX_NONCE + 1), 0));
        assert_eq!(leading_zeros(&[0, 0x10, 0xff]), 11);
        assert_eq!(leading_zeros(&[0, 0]), 16);
        // Some nonce fails 12 bits (1 in 4096 pass).
        assert!((0u64..10).any(|n| !pow_ok(&challenge, &n.to_string(), 12)));
    }
}
