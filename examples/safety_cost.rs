//! What the per-message spam tracking (`[safety] spam_partners`) costs the roulette, in-process:
//! `cargo run --release --example safety_cost [pairs] [messages] [rounds]`.
//!
//! N pairs of people, each person on a different address, are opened, searched and matched
//! through the `App` trait (as `fuzz/fuzz_targets/chat_protocol.rs` drives the roulette); then M
//! chat lines are relayed round-robin over the pairs and timed. Three variants run interleaved
//! in the same process, a fresh roulette each run, and the median run of each is reported:
//! - A: `safety.spam_partners = 0`, spam tracking off;
//! - B: the defaults, every long line (16+ characters) tracked per sender;
//! - C: the defaults with short lines, which the tracking turns away before hashing.
//!
//! Every variant raises the message rate limit out of the way (`rate_burst`), turns the
//! address search budget off (`address_search_burst = 0`) and builds its lines the same way:
//! a fixed template whose 7-digit counter is rewritten in place, so every line is distinct and
//! no line is allocated. The `out` vector is cleared and reused between calls.
//!
//! Printed per variant: wall and CPU time per message (the relay loop only; CPU and the time
//! spent waiting for a core come from `/proc/thread-self/schedstat`, so a busy machine shows),
//! and VmRSS after setup and relay with the roulette alive, against before it was built (the
//! heap is trimmed between runs so that each run's growth is its own).
use std::time::{Duration, Instant};

use chatd::{
    app::{Action, App, Event, Message, PeerId},
    config::ChatConfig,
    roulette::Roulette,
    safety::AddrHash,
};

/// The three variants, in the order they run in each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    TrackingOff,
    Defaults,
    ShortLines,
}

const VARIANTS: [Variant; 3] = [Variant::TrackingOff, Variant::Defaults, Variant::ShortLines];

/// A 40-character line; `#` marks the 7 digits rewritten per message.
const LONG_LINE: &str = "line #######, the safety cost bench says";
/// A 11-character line: under `spam_min_chars` (16), so tracking returns before hashing.
const SHORT_LINE: &str = "hi #######!";
const DIGITS: usize = 7;

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::TrackingOff => "A",
            Variant::Defaults => "B",
            Variant::ShortLines => "C",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Variant::TrackingOff => "spam_partners=0, 40-char lines",
            Variant::Defaults => "defaults (spam_partners=5), 40-char lines",
            Variant::ShortLines => "defaults, 11-char lines (untracked)",
        }
    }

    fn config(self) -> ChatConfig {
        let mut config = ChatConfig {
            address_search_burst: 0,
            // Each person sends M / 2N lines at one instant: the bucket must hold them all
            // (its code still runs on every line, in every variant).
            rate_burst: 1_000_000,
            rate_per_second: 1_000_000.0,
            ..ChatConfig::default()
        };
        if self == Variant::TrackingOff {
            config.safety.spam_partners = 0;
        }
        config
    }

    fn line(self) -> &'static str {
        match self {
            Variant::ShortLines => SHORT_LINE,
            _ => LONG_LINE,
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Wall time of the relay loop.
    elapsed: Duration,
    /// This thread's CPU time over the relay loop (`/proc/thread-self/schedstat`, field 1).
    cpu: Duration,
    /// Time it was ready to run but waited for a core meanwhile (field 2): other processes.
    waited: Duration,
    /// VmRSS before the roulette was built, and after its setup and relay (roulette alive).
    rss_before_kib: u64,
    rss_after_kib: u64,
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (on CPU, waiting for a CPU) of this thread so far, in ns; zeros without schedstats.
fn schedstat_ns() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = s.split_whitespace().map(|v| v.parse().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

fn peer(slot: u32) -> PeerId {
    PeerId::new(0, 0, slot)
}

/// Person `slot`'s address: distinct for every person.
fn client(slot: u32) -> AddrHash {
    let mut bytes = [0x5a; 16];
    bytes[..4].copy_from_slice(&slot.to_le_bytes());
    AddrHash::from_bytes(bytes)
}

fn is_matched(action: &Action) -> bool {
    matches!(action, Action::Send { message: Message::Text(t), .. }
        if t.starts_with(r#"{"type":"matched""#))
}

/// Opens and matches `pairs` pairs: person 2i with 2i+1. Panics unless every person got `matched`.
fn set_up(app: &mut Roulette, now: Instant, pairs: u32, out: &mut Vec<Action>) {
    for slot in 0..2 * pairs {
        app.handle_event(now, peer(slot), Event::Open { client: client(slot) }, out);
        out.clear();
    }
    let mut matched = 0;
    for slot in 0..2 * pairs {
        app.handle_event(now, peer(slot), Event::Text(r#"{"type":"search"}"#), out);
        let got: Vec<PeerId> = out
            .iter()
            .filter(|a| is_matched(a))
            .map(|a| match a {
                Action::Send { to, .. } => *to,
                _ => unreachable!(),
            })
            .collect();
        if slot % 2 == 1 {
            let mut want = vec![peer(slot - 1), peer(slot)];
            let mut got = got;
            got.sort();
            want.sort();
            assert_eq!(got, want, "person {slot} should be matched with {}", slot - 1);
            matched += got.len();
        } else {
            assert!(got.is_empty(), "person {slot} matched on its own: {out:?}");
        }
        out.clear();
    }
    assert_eq!(matched, 2 * pairs as usize);
}

/// Writes `n` as `DIGITS` decimal digits.
fn digits(mut n: u64, buf: &mut [u8; DIGITS]) {
    for d in buf.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn run(variant: Variant, pairs: u32, messages: u64) -> Run {
    let rss_before_kib = vm_rss_kib();
    let now = Instant::now();
    let mut app = Roulette::new(variant.config());
    let mut out = Vec::with_capacity(16);
    set_up(&mut app, now, pairs, &mut out);

    let template = format!(r#"{{"type":"message","text":"{}"}}"#, variant.line());
    let at = template.find('#').expect("the template has a counter");
    let mut json = template.clone();
    let mut buf = [0u8; DIGITS];
    let mut misrouted = 0u64;
    let (cpu0, wait0) = schedstat_ns();
    let start = Instant::now();
    for m in 0..messages {
        // Round-robin over the pairs; the sending side alternates each pass.
        let pair = (m % u64::from(pairs)) as u32;
        let side = ((m / u64::from(pairs)) % 2) as u32;
        let (from, to) = (peer(2 * pair + side), peer(2 * pair + 1 - side));
        digits(m, &mut buf);
        json.replace_range(at..at + DIGITS, std::str::from_utf8(&buf).expect("ascii digits"));
        app.handle_event(now, from, Event::Text(&json), &mut out);
        // Exactly one action, the line to the partner: no error, no rate limit, no report.
        match out.as_slice() {
            [Action::Send { to: t, .. }] if *t == to => {}
            _ => misrouted += 1,
        }
        out.clear();
    }
    let elapsed = start.elapsed();
    let (cpu1, wait1) = schedstat_ns();
    let (cpu, waited) = (Duration::from_nanos(cpu1 - cpu0), Duration::from_nanos(wait1 - wait0));
    assert_eq!(misrouted, 0, "{} lines were not relayed as one send to the partner", misrouted);
    let rss_after_kib = vm_rss_kib();
    drop(app);
    drop(out);
    // Hand the freed heap back to the kernel, so that the next run's RSS growth is its own and
    // not the pages this run left behind (glibc keeps freed memory mapped otherwise).
    // SAFETY: malloc_trim only releases free memory; no pointer into the heap is invalidated.
    unsafe { libc::malloc_trim(0) };
    Run { elapsed, cpu, waited, rss_before_kib, rss_after_kib }
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: u32 = args.next().map_or(1_000, |a| a.parse().expect("pairs"));
    let messages: u64 = args.next().map_or(2_000_000, |a| a.parse().expect("messages"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("rounds"));
    assert!(pairs > 0 && rounds > 0);
    assert!(messages < 10u64.pow(DIGITS as u32), "the counter has {DIGITS} digits");
    assert_eq!(LONG_LINE.chars().count(), 40);
    let per_msg = |d: Duration| d.as_nanos() as f64 / messages as f64;

    println!(
        "safety_cost: {pairs} pairs ({} people, one address each), {messages} messages per run, \
         {rounds} rounds of A, B, C interleaved",
        2 * pairs
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); VARIANTS.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (i, &variant) in VARIANTS.iter().enumerate() {
            let r = run(variant, pairs, messages);
            line += &format!(
                "  {} {:.1} ns/msg wall, {:.1} CPU, waited {:.0}% (RSS {} -> {} KiB)",
                variant.label(),
                per_msg(r.elapsed),
                per_msg(r.cpu),
                100.0 * r.waited.as_secs_f64() / r.elapsed.as_secs_f64(),
                r.rss_before_kib,
                r.rss_after_kib
            );
            runs[i].push(r);
        }
        println!("{line}");
    }

    let wall: Vec<Vec<f64>> =
        runs.iter().map(|rs| rs.iter().map(|r| per_msg(r.elapsed)).collect()).collect();
    let cpu: Vec<Vec<f64>> =
        runs.iter().map(|rs| rs.iter().map(|r| per_msg(r.cpu)).collect()).collect();
    let wall_med: Vec<f64> = wall.iter().map(|v| median(v)).collect();
    let cpu_med: Vec<f64> = cpu.iter().map(|v| median(v)).collect();
    let rss_after: Vec<u64> = runs
        .iter()
        .map(|rs| median(&rs.iter().map(|r| r.rss_after_kib).collect::<Vec<_>>()))
        .collect();
    let growth: Vec<i64> = runs
        .iter()
        .map(|rs| {
            median(
                &rs.iter()
                    .map(|r| r.rss_after_kib as i64 - r.rss_before_kib as i64)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let waited: Vec<f64> = runs
        .iter()
        .map(|rs| {
            let w: Vec<f64> = rs
                .iter()
                .map(|r| 100.0 * r.waited.as_secs_f64() / r.elapsed.as_secs_f64())
                .collect();
            median(&w)
        })
        .collect();

    println!();
    println!(
        "| variant | lines | wall ns/msg, median (min-max) | msgs/s (wall) | CPU ns/msg, median \
         (min-max) | msgs per CPU-s | waited for a core | RSS after setup+run, KiB | RSS growth, KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, &variant) in VARIANTS.iter().enumerate() {
        let ((wlo, whi), (clo, chi)) = (min_max(&wall[i]), min_max(&cpu[i]));
        println!(
            "| {} | {} | {:.1} ({wlo:.1}-{whi:.1}) | {:.0} | {:.1} ({clo:.1}-{chi:.1}) | {:.0} | \
             {:.0}% | {} | {:+} |",
            variant.label(),
            variant.describe(),
            wall_med[i],
            1e9 / wall_med[i],
            cpu_med[i],
            1e9 / cpu_med[i],
            waited[i],
            rss_after[i],
            growth[i]
        );
    }
    println!();
    for (name, m) in [("wall", &wall_med), ("CPU", &cpu_med)] {
        println!(
            "{name}: B/A {:.2} ({:+.1} ns/msg), C/A {:.2} ({:+.1} ns/msg)",
            m[1] / m[0],
            m[1] - m[0],
            m[2] / m[0],
            m[2] - m[0]
        );
    }
    let people = 2 * u64::from(pairs);
    println!(
        "memory: RSS after setup+run B {} KiB vs A {} KiB ({:+} KiB); growth B {:+} KiB vs A \
         {:+} KiB: {:+.0} bytes per active address ({people} addresses sending; medians; heap \
         trimmed between runs, 4 KiB pages)",
        rss_after[1],
        rss_after[0],
        rss_after[1] as i64 - rss_after[0] as i64,
        growth[1],
        growth[0],
        (growth[1] - growth[0]) as f64 * 1024.0 / people as f64
    );
}
