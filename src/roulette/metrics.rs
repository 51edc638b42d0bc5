//! The roulette's counters and their exposition in the Prometheus text format, version 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>).
//!
//! Counting is plain integer arithmetic on the code paths that already exist: no allocation, no
//! clock, no atomics (one roulette lives on one thread). Formatting happens only when the
//! server serves `GET /metrics`, into the `String` it passes to
//! [`App::write_metrics`](crate::app::App::write_metrics).
//!
//! Exposed families (every name starts with `chatd_`):
//!
//! | name | type | what |
//! |---|---|---|
//! | `chatd_people_online` | gauge | WebSocket peers the roulette knows (incl. those it is closing) |
//! | `chatd_people_searching` | gauge | people in the waiting queue |
//! | `chatd_pairs` | gauge | chats in progress |
//! | `chatd_messages_relayed_total` | counter | chat messages relayed to a partner |
//! | `chatd_messages_relayed_remote_total` | counter | of those, to a partner on another worker (through Redis) |
//! | `chatd_matches_total` | counter | chats started |
//! | `chatd_match_wait_seconds` | histogram | per matched person, search to match |
//! | `chatd_errors_total{code}` | counter | `error` replies sent, by wire code (all codes) |
//! | `chatd_rate_limited_total` | counter | messages, typing events and searches dropped for rate |
//! | `chatd_abuse_closes_total` | counter | connections closed with 1008 |
//! | `chatd_binary_closes_total` | counter | connections closed with 1003 |
//! | `chatd_resume_drops_total` | counter | dropped connections whose session waits for a resume |
//! | `chatd_resumes_total` | counter | sessions resumed by a new connection |
//! | `chatd_resume_expiries_total` | counter | sessions whose resume window passed |
//! | `chatd_reports_total{reason}` | counter | `report`s accepted, by reason (spam detections count as `spam`) |
//! | `chatd_shadow_bans_total` | counter | addresses shadow-banned here (by reports or spam) |
//! | `chatd_blocks_total` | counter | `block`s accepted |
//! | `chatd_spam_detections_total` | counter | lines found sent to `spam_partners` strangers |
//!
//! Proof-of-work failures are `chatd_errors_total{code="pow_required"}` and `{code="pow_invalid"}`.
//!
//! Owns: the roulette's counters. May not touch: formatting rules (those are `crate::metrics`).
use std::time::Duration;

use super::{protocol::ErrorCode, RouletteStats};
use crate::metrics::{counter, gauge, header, sample, Seconds};
use crate::safety::Reason;

/// Upper bounds of the `chatd_match_wait_seconds` buckets, with their `le` label as written.
/// Inclusive (`wait <= bound`), as Prometheus defines `le`; `+Inf` is implied.
pub const WAIT_BUCKETS: [(Duration, &str); 11] = [
    (Duration::from_millis(5), "0.005"),
    (Duration::from_millis(10), "0.01"),
    (Duration::from_millis(50), "0.05"),
    (Duration::from_millis(100), "0.1"),
    (Duration::from_millis(500), "0.5"),
    (Duration::from_secs(1), "1"),
    (Duration::from_millis(2500), "2.5"),
    (Duration::from_secs(5), "5"),
    (Duration::from_secs(10), "10"),
    (Duration::from_secs(30), "30"),
    (Duration::from_secs(60), "60"),
];

/// A fixed-bucket histogram of durations ([`WAIT_BUCKETS`]).
///
/// Counts are kept per bucket (not cumulative) so that an observation is one increment; they are
/// summed into Prometheus' cumulative `_bucket` series when written. The sum is a `Duration`, so
/// it is exact to the nanosecond however many observations it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    /// `counts[i]`: observations in `(WAIT_BUCKETS[i-1], WAIT_BUCKETS[i]]`; the last one is
    /// everything above the largest bound.
    counts: [u64; WAIT_BUCKETS.len() + 1],
    sum: Duration,
}

impl WaitHistogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let i =
            WAIT_BUCKETS.iter().position(|&(bound, _)| d <= bound).unwrap_or(WAIT_BUCKETS.len());
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(d);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of all observations (saturating).
    pub fn sum(&self) -> Duration {
        self.sum
    }
}

/// Everything the roulette counts, since it started. Gauges are not here: they are read from
/// the live state ([`RouletteStats`]) when written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouletteCounters {
    /// Chat messages relayed to a partner.
    pub messages_relayed: u64,
    /// Of those, relayed to a partner on another worker (through Redis).
    pub messages_relayed_remote: u64,
    /// Chats started.
    pub matches: u64,
    /// For each matched person (two per match): from the start of the search that made the
    /// match until the match. A repeated search keeps its place and so its start.
    pub match_wait: WaitHistogram,
    /// `error` replies sent, indexed by `ErrorCode as usize` (the order of [`ErrorCode::ALL`]).
    /// A refused request that spends the last of the error budget is answered with close 1008
    /// instead, and counted in `abuse_closes`.
    pub errors: [u64; ErrorCode::ALL.len()],
    /// Messages, typing events and searches dropped for exceeding their rate, whether answered
    /// with `rate_limited` or with close 1008.
    pub rate_limited: u64,
    /// Connections the roulette closed with 1008 (error budget spent).
    pub abuse_closes: u64,
    /// Connections the roulette closed with 1003 (binary frame).
    pub binary_closes: u64,
    /// Connections that dropped (no close handshake) and whose session waits for a resume.
    pub resume_drops: u64,
    /// Sessions resumed by a new connection.
    pub resumes: u64,
    /// Sessions whose resume window passed.
    pub resume_expiries: u64,
    /// Reports accepted, indexed by `Reason as usize` (the order of [`Reason::ALL`]).
    pub reports: [u64; Reason::ALL.len()],
    /// Addresses this worker shadow-banned.
    pub shadow_bans: u64,
    /// Blocks accepted.
    pub blocks: u64,
    /// Lines found sent to `spam_partners` strangers.
    pub spam_detections: u64,
}

impl RouletteCounters {
    /// Counts an `error` reply with `code`.
    pub fn count_error(&mut self, code: ErrorCode) {
        self.errors[code as usize] += 1;
    }

    /// `error` replies sent with `code`.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code as usize]
    }
}

/// Appends every roulette family to `out`. See the module documentation for the list.
pub(super) fn write(out: &mut String, stats: RouletteStats, c: &RouletteCounters) {
    gauge(out, "chatd_people_online", "WebSocket peers connected to the roulette.", stats.online);
    gauge(out, "chatd_people_searching", "People waiting to be matched.", stats.searching);
    gauge(out, "chatd_pairs", "Chats in progress (two people each).", stats.pairs);
    counter(
        out,
        "chatd_messages_relayed_total",
        "Chat messages relayed to a partner.",
        c.messages_relayed,
    );
    counter(
        out,
        "chatd_messages_relayed_remote_total",
        "Chat messages relayed to a partner on another worker, through Redis (the rest stayed local).",
        c.messages_relayed_remote,
    );
    counter(out, "chatd_matches_total", "Chats started.", c.matches);

    header(
        out,
        "chatd_match_wait_seconds",
        "Time from the search that led to a match until the match, one per matched person.",
        "histogram",
    );
    let mut cumulative = 0;
    for (&(_, le), &n) in WAIT_BUCKETS.iter().zip(&c.match_wait.counts) {
        cumulative += n;
        sample(out, "chatd_match_wait_seconds_bucket", &[("le", le)], cumulative);
    }
    let count = c.match_wait.count();
    sample(out, "chatd_match_wait_seconds_bucket", &[("le", "+Inf")], count);
    sample(out, "chatd_match_wait_seconds_sum", &[], Seconds(c.match_wait.sum));
    sample(out, "chatd_match_wait_seconds_count", &[], count);

    let name = "chatd_errors_total";
    header(out, name, "Error replies sent to clients, by code.", "counter");
    for code in ErrorCode::ALL {
        sample(out, name, &[("code", code.as_str())], c.errors(code));
    }
    counter(
        out,
        "chatd_rate_limited_total",
        "Messages, typing events and searches dropped for exceeding the rate limit.",
        c.rate_limited,
    );
    counter(
        out,
        "chatd_abuse_closes_total",
        "Connections closed with 1008 after too many invalid or rate-limited messages.",
        c.abuse_closes,
    );
    counter(
        out,
        "chatd_binary_closes_total",
        "Connections closed with 1003 for sending a binary message.",
        c.binary_closes,
    );
    counter(
        out,
        "chatd_resume_drops_total",
        "Connections that dropped without a close handshake; their chat or search waits for a resume.",
        c.resume_drops,
    );
    counter(out, "chatd_resumes_total", "Sessions a new connection resumed.", c.resumes);
    counter(
        out,
        "chatd_resume_expiries_total",
        "Sessions whose resume window passed (the partner was told disconnected).",
        c.resume_expiries,
    );
    let name = "chatd_reports_total";
    header(out, name, "Reports accepted, by reason (spam detections count as spam).", "counter");
    for r in Reason::ALL {
        sample(out, name, &[("reason", r.as_str())], c.reports[r as usize]);
    }
    counter(
        out,
        "chatd_shadow_bans_total",
        "Addresses shadow-banned by this worker (reports from distinct addresses, or spam).",
        c.shadow_bans,
    );
    counter(out, "chatd_blocks_total", "Blocks accepted.", c.blocks);
    counter(
        out,
        "chatd_spam_detections_total",
        "Lines found sent by one address to spam_partners different strangers.",
        c.spam_detections,
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Parses an exposition into `"name{labels}" -> value`, checking the format as it goes:
    /// every line is `# HELP name text`, `# TYPE name kind` or `name[{labels}] value`; each
    /// family is declared once, HELP then TYPE, before its samples; no sample appears twice.
    pub(crate) fn parse(text: &str) -> BTreeMap<String, f64> {
        assert!(text.is_empty() || text.ends_with('\n'), "ends with a newline");
        let mut samples = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut typed = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(is_metric_name(name) && !help.is_empty(), "{line}");
                assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
                assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "{line}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let name = series.split_once('{').map_or(series, |(n, _)| n);
                assert!(is_metric_name(name), "{line}");
                if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                    assert!(is_label_set(labels), "{line}");
                }
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                    .unwrap_or(name);
                assert!(typed.contains_key(family), "sample before its TYPE: {line}");
                let v: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
                };
                assert!(samples.insert(series.to_owned(), v).is_none(), "twice: {line}");
            }
        }
        samples
    }

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// `{name="value",...}` with escapes `\\`, `\"`, `\n` only inside values.
    fn is_label_set(s: &str) -> bool {
        let Some(mut rest) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            return false;
        };
        loop {
            let Some((name, after)) = rest.split_once("=\"") else { return false };
            if !is_metric_name(name) || name.contains(':') {
                return false;
            }
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        _ => return false,
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) | None => return false,
                    Some(_) => {}
                }
            };
            rest = &after[end + 1..];
            if rest.is_empty() {
                return true;
            }
            let Some(next) = rest.strip_prefix(',') else { return false };
            rest = next;
        }
    }

    #[test]
    fn error_code_indexes_follow_all() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, i);
        }
    }

    #[test]
    fn bounds_are_inclusive_and_increasing() {
        assert!(WAIT_BUCKETS.windows(2).all(|w| w[0].0 < w[1].0));
        for (bound, le) in WAIT_BUCKETS {
            assert_eq!(le.parse::<f64>().unwrap(), bound.as_secs_f64(), "{le}");
        }
        let mut h = WaitHistogram::default();
        h.observe(Duration::ZERO);
        h.observe(Duration::from_millis(5)); // on the bound: in le="0.005"
        h.observe(Duration::from_nanos(5_000_001)); // just above: le="0.01"
        h.observe(Duration::from_secs(60));
        h.observe(Duration::from_secs(61)); // only +Inf
        assert_eq!(h.counts, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), Duration::from_nanos(121_010_000_001));
        h.observe(Duration::MAX);
        assert_eq!(h.sum(), Duration::MAX, "saturates");
    }

    #[test]
    fn empty_exposition_has_every_series_at_zero() {
        let mut out = String::new();
        write(&mut out, RouletteStats::default(), &RouletteCounters::default());
        let m = parse(&out);
        for code in ErrorCode::ALL {
            assert_eq!(m[&format!("chatd_errors_total{{code=\"{}\"}}", code.as_str())], 0.0);
        }
        assert_eq!(m["chatd_match_wait_seconds_bucket{le=\"+Inf\"}"], 0.0);
        assert_eq!(m["chatd_match_wait_seconds_sum"], 0.0);
        assert_eq!(
            m.len(),
            3 + 3 + (WAIT_BUCKETS.len() + 1 + 2) + ErrorCode::ALL.len() + 6 + Reason::ALL.len() + 3
        );
        assert!(m.values().all(|&v| v == 0.0));
        let families = out.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, 18);
    }

    #[test]
    fn histogram_is_written_cumulative_with_exact_sum() {
        let mut c = RouletteCounters::default();
        for ms in [0, 7, 7, 400, 1000, 90_000] {
            c.match_wait.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        write(&mut out, RouletteStats::default(), &c);
        let buckets: Vec<&str> =
            out.lines().filter(|l| l.starts_with("chatd_match_wait_seconds_")).collect();
        assert_eq!(
            buckets,
            [
                "chatd_match_wait_seconds_bucket{le=\"0.005\"} 1",
                "chatd_match_wait_seconds_bucket{le=\"0.01\"} 3",
                "chatd_match_wait_seconds_bucket{le=\"0.05\"} 3",
                "chatd_match_wait_seconds_bucket{le=\"0.1\"} 3",
                "chatd_match_wait_seconds_bucket{le=\"0.5\"} 4",
                "chatd_match_wait_seconds_bucket{le=\"1\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"2.5\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"5\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"10\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"30\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"60\"} 5",
                "chatd_match_wait_seconds_bucket{le=\"+Inf\"} 6",
                "chatd_match_wait_seconds_sum 91.414",
                "chatd_match_wait_seconds_count 6",
            ]
        );
    }

    #[test]
    fn seconds_are_exact() {
        let s = |d: Duration| Seconds(d).to_string();
        assert_eq!(s(Duration::ZERO), "0");
        assert_eq!(s(Duration::from_secs(3)), "3");
        assert_eq!(s(Duration::from_millis(1500)), "1.5");
        assert_eq!(s(Duration::from_nanos(1)), "0.000000001");
        assert_eq!(s(Duration::new(12, 340_000_000)), "12.34");
        assert_eq!(s(Duration::MAX), "18446744073709551615.999999999");
    }

    #[test]
    fn help_and_label_values_are_escaped() {
        let mut out = String::new();
        header(&mut out, "x", "a \\ b\nc \"q\"", "gauge");
        sample(&mut out, "x", &[("l", "a\\b\"c\nd"), ("m", "")], 1);
        assert_eq!(
            out,
            "# HELP x a \\\\ b\\nc \"q\"\n# TYPE x gauge\nx{l=\"a\\\\b\\\"c\\nd\",m=\"\"} 1\n"
        );
        assert_eq!(parse(&out)["x{l=\"a\\\\b\\\"c\\nd\",m=\"\"}"], 1.0);
    }

    #[test]
    fn the_checker_rejects_what_it_should() {
        for bad in
            ["x{l=\"a\"", "x{l=a} 1", "x{l=\"a\\q\"} 1", "x{l=\"a\"m=\"b\"} 1", "{l=\"a\"} 1"]
        {
            let text = format!("# HELP x h\n# TYPE x gauge\n{bad}\n");
            assert!(std::panic::catch_unwind(|| parse(&text)).is_err(), "{bad}");
        }
        for bad in ["x 1\n", "# TYPE x gauge\nx 1\n", "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n"] {
            assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad:?}");
        }
    }
}
