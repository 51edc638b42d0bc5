//! chatd-bench: a WebSocket load generator for chatd and for other servers' echo endpoints.
//!
//! It opens N connections across several threads (each a mio loop) from several 127.0.0.x
//! source addresses, then either relays chat messages between the partners chatd pairs
//! (`--mode chat`), bounces messages off an echo endpoint (`--mode echo`), or runs
//! connect-search-chat-close cycles (`--mode churn`). Closed loop (a window of messages in
//! flight per connection) or open loop (`--rate`: a fixed total rate, each message stamped with
//! the time it was due, so latency is corrected for coordinated omission). Latency goes into an
//! HDR histogram; with `--server-pid` the server's CPU time and RSS are read from /proc.
//!
//! Bounded: connect timeout + warm-up + duration + drain, and `--max-messages`; it stops by
//! itself. Load is only ever sent to 127.0.0.0/8.
#![recursion_limit = "256"]

use std::{
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    sync::{atomic::Ordering::*, Arc},
    thread,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

mod procfs;
mod worker;
mod ws;

use worker::{Cfg, Mode, Shared, Target, DRAIN, EXIT, RUN};

const USAGE: &str = "\
chatd-bench: WebSocket load for chatd (chat relay, churn) and any echo server

Usage: chatd-bench [OPTIONS]

  --url URL            ws://127.0.0.x:PORT/PATH            [ws://127.0.0.1:8080/ws]
                       given more than once: connection g goes to the (g mod count)-th,
                       so with two, half go to each and each pair's sides to different ones
  --mode MODE          chat | echo | churn                  [chat]
  --conns N            connections (churn: concurrent cycles) [200]
  --threads N          load threads                         [CPUs this process may use]
  --duration SECS      measurement window                   [10]
  --warmup SECS        load before the window opens         [1]
  --rate MSGS          total messages/s, open loop; 0 = closed loop [0]
  --window N           closed loop: messages in flight per connection [8]
  --size BYTES         message text size, at least 16       [20]
  --idle               connect (and pair) only; send nothing
  --sources N          source addresses FIRST .. FIRST+N-1  [4]
  --source-first ADDR  the first source address, 127.0.0.x  [127.0.0.2]
                       (several generators: give each its own, ports run out per address)
  --pair-interests     chat: connection g searches with the interest p{g/2}, so 2p and 2p+1
                       are matched with each other (with two --url: across the two)
  --server-pid PID[,PID...]  read the server's CPU time and RSS from /proc (summed over
                       the pids given: workers, nodes)
  --redis-pid PID      read Redis' CPU time and RSS too (reported apart and in a total)
  --go-file FILE       chat: connect and read welcome, then wait until FILE exists before
                       anyone searches (a crowd: first idle, then paired); implies --idle
  --search-rate N      with --go-file: searches per second after the go; 0 = all at once [0]
  --stop-file FILE     end the window early when FILE exists
  --mark FILE          rewrite FILE with the live counts (JSON) every 100 ms
  --connect-timeout S  give up waiting for connections      [60]
  --drain SECS         wait for messages still in flight    [3]
  --max-messages N     end the window early after N deliveries
  --label TEXT         name of this run in the report
  --json FILE          also write the result as JSON
  --check              exit 1 unless every connection opened and every message arrived
                       without error (for smoke tests; asserts no speed)
  --quiet              no progress lines
";

#[derive(Debug)]
struct Args {
    cfg: Cfg,
    redis_pid: Option<u32>,
    go_file: Option<String>,
    stop_file: Option<String>,
    mark: Option<String>,
    threads: usize,
    duration: f64,
    warmup: f64,
    server_pids: Vec<u32>,
    connect_timeout: f64,
    drain: f64,
    max_messages: u64,
    label: String,
    json: Option<String>,
    check: bool,
    quiet: bool,
    url: String,
}

fn parse_args() -> Result<Args, String> {
    let mut urls: Vec<String> = Vec::new();
    let mut mode = Mode::Chat;
    let mut conns = 200usize;
    let mut threads = thread::available_parallelism().map_or(1, |n| n.get());
    let (mut duration, mut warmup, mut rate) = (10.0, 1.0, 0.0);
    let (mut window, mut size, mut idle, mut sources) = (8usize, 20usize, false, 4usize);
    let mut server_pids = Vec::new();
    let (mut redis_pid, mut source_first) = (None, Ipv4Addr::new(127, 0, 0, 2));
    let (mut go_file, mut stop_file, mut mark, mut pair_interests) = (None, None, None, false);
    let mut search_rate = 0.0f64;
    let (mut connect_timeout, mut drain, mut max_messages) = (60.0, 3.0, u64::MAX);
    let (mut label, mut json, mut check, mut quiet) = (String::new(), None, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: `{v}` is not a number"))
        }
        match arg.as_str() {
            "--url" => urls.push(value()?),
            "--mode" => {
                mode = match value()?.as_str() {
                    "chat" => Mode::Chat,
                    "echo" => Mode::Echo,
                    "churn" => Mode::Churn,
                    other => return Err(format!("--mode: unknown mode `{other}`")),
                }
            }
            "--conns" => conns = num(&arg, value()?)?,
            "--threads" => threads = num(&arg, value()?)?,
            "--duration" => duration = num(&arg, value()?)?,
            "--warmup" => warmup = num(&arg, value()?)?,
            "--rate" => rate = num(&arg, value()?)?,
            "--window" => window = num(&arg, value()?)?,
            "--size" => size = num(&arg, value()?)?,
            "--idle" => idle = true,
            "--sources" => sources = num(&arg, value()?)?,
            "--server-pid" => {
                for p in value()?.split(',') {
                    server_pids.push(num(&arg, p.to_owned())?);
                }
            }
            "--redis-pid" => redis_pid = Some(num(&arg, value()?)?),
            "--source-first" => source_first = num(&arg, value()?)?,
            "--pair-interests" => pair_interests = true,
            "--go-file" => go_file = Some(value()?),
            "--search-rate" => search_rate = num(&arg, value()?)?,
            "--stop-file" => stop_file = Some(value()?),
            "--mark" => mark = Some(value()?),
            "--connect-timeout" => connect_timeout = num(&arg, value()?)?,
            "--drain" => drain = num(&arg, value()?)?,
            "--max-messages" => max_messages = num(&arg, value()?)?,
            "--label" => label = value()?,
            "--json" => json = Some(value()?),
            "--check" => check = true,
            "--quiet" => quiet = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option `{other}` (see --help)")),
        }
    }
    if urls.is_empty() {
        urls.push("ws://127.0.0.1:8080/ws".to_owned());
    }
    let mut targets = Vec::new();
    for url in &urls {
        let rest = url.strip_prefix("ws://").ok_or("--url must start with ws://")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host
            .to_socket_addrs()
            .map_err(|e| format!("--url: {host}: {e}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("--url: {host}: no IPv4 address"))?;
        let addr = worker::loopback_only(addr)?;
        targets.push(Target { addr, host: host.to_owned(), path: path.to_owned() });
    }
    let first = u32::from(source_first);
    if conns == 0 || threads == 0 || sources == 0 || sources > 250 {
        return Err("--conns and --threads must be positive, --sources 1..=250".into());
    }
    if !source_first.is_loopback() || !Ipv4Addr::from(first + sources as u32 - 1).is_loopback() {
        return Err("--source-first and --sources: every source must be in 127.0.0.0/8".into());
    }
    if go_file.is_some() && mode != Mode::Chat {
        return Err("--go-file is for --mode chat".into());
    }
    if go_file.is_some() {
        idle = true;
    }
    if !(16..=256).contains(&size) {
        return Err("--size must be 16..=256 (the text carries a 16-digit time stamp)".into());
    }
    // A crowd (--go-file) spans several generators: a pair may be split between two of them.
    if mode == Mode::Chat && conns % 2 != 0 && go_file.is_none() {
        return Err("--mode chat needs an even --conns (people are paired)".into());
    }
    if !(duration > 0.0 && warmup >= 0.0 && rate >= 0.0 && drain >= 0.0) {
        return Err("--duration must be positive; --warmup, --rate, --drain not negative".into());
    }
    threads = threads.min(conns);
    let sources = (0..sources as u32).map(|i| Ipv4Addr::from(first + i)).collect();
    let cfg = Cfg {
        targets,
        mode,
        conns,
        sources,
        size,
        rate,
        window: window.max(1),
        idle,
        pair_interests,
        hold_search: go_file.is_some(),
        search_rate,
    };
    Ok(Args {
        cfg,
        redis_pid,
        go_file,
        stop_file,
        mark,
        threads,
        duration,
        warmup,
        server_pids,
        connect_timeout,
        drain,
        max_messages,
        label,
        json,
        check,
        quiet,
        url: urls.join(" "),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chatd-bench: {e}");
            std::process::exit(2);
        }
    };
    let ok = run(args);
    std::process::exit(if ok { 0 } else { 1 });
}

fn secs(d: f64) -> u64 {
    (d * 1e9) as u64
}

/// A /proc reading summed over several processes; `None` without any, or if one is unreadable.
fn sum_over<T: std::iter::Sum<T>>(pids: &[u32], read: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| read(p)).sum()
}

/// Writes the live counts to `--mark` (whole file, renamed into place: a reader never sees
/// half of it).
fn write_mark(path: &str, shared: &Shared, phase: &str, t: f64) {
    let v = json!({
        "phase": phase,
        "t": t,
        "ready": shared.ready.load(Relaxed),
        "failed": shared.failed.load(Relaxed),
        "matched": shared.matched.load(Relaxed),
        "errors": shared.errors.load(Relaxed),
    });
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn run(args: Args) -> bool {
    let base = Instant::now();
    let now = || worker::now_ns(base);
    let pids = args.server_pids.clone();
    let pid = (!pids.is_empty()).then_some(());
    let rss = || sum_over(&pids, procfs::rss_kib);
    let cpu = || sum_over(&pids, procfs::cpu_seconds);
    let rwait = || sum_over(&pids, procfs::runqueue_wait_seconds);
    let redis = args.redis_pid;
    let rss_before = rss();
    let redis_rss_before = redis.and_then(procfs::rss_kib);
    let kmem_before = procfs::kernel_mem();
    let mark = |phase: &str, shared: &Shared| {
        if let Some(path) = &args.mark {
            write_mark(path, shared, phase, now() as f64 / 1e9);
        }
    };
    let cfg = Arc::new(args.cfg);
    let shared = Arc::new(Shared::default());
    let mode = cfg.mode;
    let progress = |what: &str, t0: u64| {
        if !args.quiet {
            eprintln!(
                "[{:6.1}s] {what}: ready {}/{}, failed {}, sent {}, received {}, errors {}, cycles {}",
                (now() - t0) as f64 / 1e9,
                shared.ready.load(Relaxed),
                cfg.conns,
                shared.failed.load(Relaxed),
                shared.sent.load(Relaxed),
                shared.received.load(Relaxed),
                shared.errors.load(Relaxed),
                shared.cycles.load(Relaxed),
            );
        }
    };

    let t0 = now();
    if mode == Mode::Churn {
        let run_ns = t0;
        shared.run_ns.store(run_ns, Release);
        shared.start_ns.store(run_ns + secs(args.warmup), Release);
        shared.stop_ns.store(run_ns + secs(args.warmup + args.duration), Release);
        shared.phase.store(RUN, Release);
    }
    let mut first = 0;
    let handles: Vec<_> = (0..args.threads)
        .map(|i| {
            let count = cfg.conns / args.threads + usize::from(i < cfg.conns % args.threads);
            let (cfg, shared) = (cfg.clone(), shared.clone());
            let f = first;
            first += count;
            thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || worker::run(cfg, shared, base, i, f, count))
                .expect("spawn a load thread")
        })
        .collect();

    // 1. Connect (and pair), unless churning.
    let mut connect_s = 0.0;
    let mut ready = 0;
    let (mut rss_connected, mut kmem_connected) = (None, kmem_before);
    let (mut redis_rss_connected, mut pair_s) = (None, None);
    if mode != Mode::Churn {
        let deadline = t0 + secs(args.connect_timeout);
        let mut next_progress = t0 + secs(1.0);
        loop {
            ready = shared.ready.load(Acquire);
            let failed = shared.failed.load(Acquire);
            if ready + failed >= cfg.conns || now() >= deadline {
                break;
            }
            if now() >= next_progress {
                progress("connect", t0);
                mark("connect", &shared);
                next_progress += secs(1.0);
            }
            thread::sleep(Duration::from_millis(2));
        }
        connect_s = (now() - t0) as f64 / 1e9;
        progress("connected", t0);
        mark("connected", &shared);
        // Let the server settle (finish flushing handshakes) before its memory is read.
        thread::sleep(Duration::from_millis(200));
        rss_connected = rss();
        redis_rss_connected = redis.and_then(procfs::rss_kib);
        kmem_connected = procfs::kernel_mem();
        // A crowd: everyone connected and welcomed; search when told, then wait for matches.
        if let Some(go) = &args.go_file {
            let deadline = now() + secs(args.connect_timeout);
            while !std::path::Path::new(go).exists() && now() < deadline {
                mark("connected", &shared);
                thread::sleep(Duration::from_millis(100));
            }
            let go_ns = now();
            shared.search_go.store(true, Release);
            let deadline = go_ns + secs(args.connect_timeout);
            let mut next_progress = go_ns + secs(1.0);
            let mut last = (0, go_ns);
            loop {
                let m = shared.matched.load(Acquire);
                let r = shared.ready.load(Acquire);
                if m != last.0 {
                    last = (m, now());
                }
                // Everyone matched; or all but one (an odd crowd) and nothing new for 2 s; or
                // the crowd's other side is another process's: told to stop.
                let stop =
                    args.stop_file.as_deref().is_some_and(|f| std::path::Path::new(f).exists());
                if m >= r || (m + 1 >= r && now() - last.1 > secs(2.0)) || stop || now() >= deadline
                {
                    break;
                }
                if now() >= next_progress {
                    if !args.quiet {
                        eprintln!("[{:6.1}s] pair: matched {m}/{r}", (now() - go_ns) as f64 / 1e9);
                    }
                    next_progress += secs(1.0);
                }
                mark("pairing", &shared);
                thread::sleep(Duration::from_millis(5));
            }
            pair_s = Some((last.1 - go_ns) as f64 / 1e9);
            mark("paired", &shared);
        }
        let run_ns = now();
        shared.run_ns.store(run_ns, Release);
        shared.start_ns.store(run_ns + secs(args.warmup), Release);
        shared.stop_ns.store(run_ns + secs(args.warmup + args.duration), Release);
        shared.phase.store(RUN, Release);
    }

    // 2. Warm up, then the measurement window.
    let start_ns = shared.start_ns.load(Acquire);
    let mut stop_ns = shared.stop_ns.load(Acquire);
    while now() < start_ns {
        thread::sleep(Duration::from_millis(1));
    }
    let cpu0 = cpu();
    let redis_cpu0 = redis.and_then(procfs::cpu_seconds);
    let busy0 = procfs::machine_busy_seconds();
    let wait0 = rwait();
    let gen_wait0 = procfs::self_runqueue_wait_seconds();
    let self0 = procfs::self_cpu_seconds();
    let mut next_progress = start_ns + secs(1.0);
    let mut last_window = 0;
    let mut next_mark = now();
    while now() < stop_ns {
        let stop = args.stop_file.as_deref().is_some_and(|f| std::path::Path::new(f).exists());
        if shared.window_msgs.load(Relaxed) >= args.max_messages || stop {
            stop_ns = now();
            break;
        }
        if args.mark.is_some() && now() >= next_mark {
            mark("run", &shared);
            next_mark = now() + secs(0.1);
        }
        if now() >= next_progress {
            let w = shared.window_msgs.load(Relaxed);
            if !args.quiet {
                eprintln!(
                    "[{:6.1}s] run: {} msgs/s, max latency {:.2} ms, schedule lag {:.2} ms, \
                     errors {}, cycles {}, ready {}",
                    (now() - start_ns) as f64 / 1e9,
                    w - last_window,
                    shared.interval_max_ns.swap(0, Relaxed) as f64 / 1e6,
                    shared.interval_lag_ns.swap(0, Relaxed) as f64 / 1e6,
                    shared.errors.load(Relaxed),
                    shared.cycles.load(Relaxed),
                    shared.ready.load(Relaxed),
                );
            }
            last_window = w;
            next_progress += secs(1.0);
        }
        thread::sleep(Duration::from_millis(1));
    }
    let cpu1 = cpu();
    let redis_cpu1 = redis.and_then(procfs::cpu_seconds);
    let redis_rss_end = redis.and_then(procfs::rss_kib);
    let busy1 = procfs::machine_busy_seconds();
    let wait1 = rwait();
    let gen_wait1 = procfs::self_runqueue_wait_seconds();
    let self1 = procfs::self_cpu_seconds();
    let rss_end = rss();
    let window_s = (stop_ns - start_ns) as f64 / 1e9;
    // The window may have ended early (--max-messages): tell the threads.
    shared.stop_ns.store(stop_ns, Release);

    // 3. Drain: no new messages; wait for those in flight.
    shared.phase.store(DRAIN, Release);
    let drain_deadline = now() + secs(args.drain);
    while now() < drain_deadline {
        let done = match mode {
            Mode::Churn => false,
            _ => shared.received.load(Acquire) >= shared.sent.load(Acquire),
        };
        if done {
            thread::sleep(Duration::from_millis(20)); // let the threads publish their last turn
            if shared.received.load(Acquire) >= shared.sent.load(Acquire) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    shared.phase.store(EXIT, Release);
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().expect("load thread")).collect();
    progress("done", t0);
    mark("done", &shared);

    // 4. Merge and report.
    let mut latency = worker::histogram();
    let mut cycle = worker::histogram();
    let mut matching = worker::histogram();
    let mut searches = 0;
    let (mut sent, mut received, mut window_msgs, mut errors) = (0, 0, 0, 0);
    let (mut partner_left, mut server_closes, mut cycles, mut open_at_end) = (0, 0, 0, 0);
    let mut samples = Vec::new();
    for o in &outcomes {
        latency.add(&o.latency).expect("same bounds");
        cycle.add(&o.cycle).expect("same bounds");
        matching.add(&o.matching).expect("same bounds");
        searches += o.searches;
        sent += o.sent;
        received += o.received;
        window_msgs += o.window_msgs;
        errors += o.errors;
        partner_left += o.partner_left;
        server_closes += o.server_closes;
        cycles += o.cycles;
        open_at_end += o.open_at_end;
        samples.extend(o.error_samples.iter().cloned());
    }
    samples.truncate(5);
    let drops = sent.saturating_sub(received);
    let failed = shared.failed.load(Acquire);
    let msgs_per_s = window_msgs as f64 / window_s;
    let cpu_s = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let redis_cpu_s = match (redis_cpu0, redis_cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // The cluster's whole cost: the chatd processes and Redis.
    let total_cpu_s = cpu_s.map(|c| c + redis_cpu_s.unwrap_or(0.0));
    // Everything else the machine did during the window, in cores: other processes competing
    // with the server and the generator for the two cores.
    let other_cores = match (busy0, busy1, self0, self1) {
        (Some(b0), Some(b1), Some(s0), Some(s1)) => {
            Some(((b1 - b0) - (s1 - s0) - total_cpu_s.unwrap_or(0.0)).max(0.0) / window_s)
        }
        _ => None,
    };
    let generator_cpu_s = match (self0, self1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let per_conn_from = |rss: Option<u64>, before: Option<u64>| match (rss, before) {
        (Some(r), Some(b)) if ready > 0 => Some((r as f64 - b as f64) / ready as f64),
        _ => None,
    };
    let per_conn = |rss: Option<u64>| per_conn_from(rss, rss_before);
    let per_msg = |c: Option<f64>| {
        c.filter(|&c| c > 0.0).map(|c| {
            if mode == Mode::Churn {
                cycles as f64 / c
            } else {
                window_msgs as f64 / c
            }
        })
    };
    let kmem_per_conn = |kib: u64, before: u64| {
        if ready > 0 {
            Some((kib as f64 - before as f64) / ready as f64)
        } else {
            None
        }
    };
    let lat = |h: &Histogram<u64>| {
        let q = |p: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(p) as f64 / 1e3 };
        json!({
            "count": h.len(),
            "mean": if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
            "max": if h.is_empty() { 0.0 } else { h.max() as f64 / 1e3 },
        })
    };
    let mode_name = match mode {
        Mode::Chat => "chat",
        Mode::Echo => "echo",
        Mode::Churn => "churn",
    };
    let result = json!({
        "label": args.label,
        "url": args.url,
        "mode": mode_name,
        "loop": if cfg.idle { "idle" } else if cfg.rate > 0.0 { "open" } else { "closed" },
        "conns": cfg.conns,
        "ready": ready,
        "failed": failed,
        "threads": args.threads,
        "sources": cfg.sources.len(),
        "size": cfg.size,
        "rate": cfg.rate,
        "window": cfg.window,
        "window_s": window_s,
        "connect_s": connect_s,
        "connects_per_s": if mode == Mode::Churn {
            cycles as f64 / window_s
        } else if connect_s > 0.0 { ready as f64 / connect_s } else { 0.0 },
        "messages": window_msgs,
        "msgs_per_s": msgs_per_s,
        "sent": sent,
        "received": received,
        "drops": drops,
        "errors": errors,
        "error_samples": samples,
        "partner_left": partner_left,
        "server_closes": server_closes,
        "cycles": cycles,
        "cycles_per_s": cycles as f64 / window_s,
        "matched": shared.matched.load(Acquire),
        // Searches answered with `matched`: per second of the window (churn), and the time from
        // `search` to `matched`.
        "searches": searches,
        "searches_per_s": if mode == Mode::Churn { Some(searches as f64 / window_s) } else { None },
        "pair_s": pair_s,
        "match_us": lat(&matching),
        // A crowd spans several generators: their histograms are merged by the caller, from
        // [microseconds, count] pairs (the recorded values, 3 significant digits).
        "match_hist": args.go_file.as_ref().map(|_| {
            matching
                .iter_recorded()
                .map(|v| json!([v.value_iterated_to() as f64 / 1e3, v.count_at_value()]))
                .collect::<Vec<_>>()
        }),
        "open_at_end": open_at_end,
        "latency_us": lat(&latency),
        "cycle_us": lat(&cycle),
        "server": pid.map(|_| json!({
            "pid": pids[0],
            "pids": pids,
            "cpu_s": cpu_s,
            "cpu_pct": cpu_s.map(|c| 100.0 * c / window_s),
            // Ready to run but waiting for its core (another process had it), in % of the window.
            "runqueue_wait_pct": match (wait0, wait1) {
                (Some(a), Some(b)) => Some(100.0 * (b - a) / window_s),
                _ => None,
            },
            "msgs_per_cpu_s": per_msg(cpu_s),
            "rss_kib_before": rss_before,
            "rss_kib_connected": rss_connected,
            "rss_kib_end": rss_end,
            "kib_per_conn": per_conn(rss_connected),
            "kib_per_conn_end": per_conn(rss_end),
        })),
        "redis": redis.map(|p| json!({
            "pid": p,
            "cpu_s": redis_cpu_s,
            "cpu_pct": redis_cpu_s.map(|c| 100.0 * c / window_s),
            "rss_kib_before": redis_rss_before,
            "rss_kib_connected": redis_rss_connected,
            "rss_kib_end": redis_rss_end,
            "kib_per_conn": per_conn_from(redis_rss_connected, redis_rss_before),
            "kib_per_conn_end": per_conn_from(redis_rss_end, redis_rss_before),
        })),
        // chatd's processes and Redis together (without --redis-pid: the server alone).
        "total": pid.map(|_| json!({
            "cpu_s": total_cpu_s,
            "cpu_pct": total_cpu_s.map(|c| 100.0 * c / window_s),
            "msgs_per_cpu_s": per_msg(total_cpu_s),
        })),
        "generator_cpu_s": generator_cpu_s,
        // The generator's threads ready to run but waiting for a core, in % of the window: a
        // late reader inflates the latencies it measures.
        "generator_wait_pct": match (gen_wait0, gen_wait1) {
            (Some(a), Some(b)) => Some(100.0 * (b - a) / window_s),
            _ => None,
        },
        "other_load_cores": other_cores,
        "kernel": {
            "note": "machine-wide, client and server sockets together",
            "tcp_mem_kib_per_conn": kmem_per_conn(kmem_connected.tcp_kib, kmem_before.tcp_kib),
            "slab_kib_per_conn": kmem_per_conn(kmem_connected.slab_kib, kmem_before.slab_kib),
        },
    });
    print_table(&result);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).expect("json");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("chatd-bench: cannot write {path}: {e}");
            return false;
        }
    }
    if args.check {
        let mut problems = Vec::new();
        if mode != Mode::Churn && ready < cfg.conns {
            problems.push(format!("only {ready} of {} connections ready", cfg.conns));
        }
        if errors > 0 {
            problems.push(format!("{errors} errors: {samples:?}"));
        }
        if drops > 0 {
            problems.push(format!("{drops} messages sent but never received"));
        }
        if !cfg.idle && window_msgs == 0 && cycles == 0 {
            problems.push("nothing was delivered".into());
        }
        for p in &problems {
            eprintln!("chatd-bench: check failed: {p}");
        }
        return problems.is_empty();
    }
    true
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    let i = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.0}"));
    let l = &r["latency_us"];
    let s = &r["server"];
    println!(
        "{:<24} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>7} {:>9} {:>8}",
        "run",
        "conns",
        "msgs/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9",
        "max us",
        "errs",
        "drops",
        "conn/s",
        "cpu s",
        "msg/cpu-s",
        "KiB/conn"
    );
    let label = r["label"].as_str().filter(|s| !s.is_empty()).unwrap_or("-");
    println!(
        "{:<24} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>7} {:>9} {:>8}",
        label,
        i(&r["conns"]),
        i(&r["msgs_per_s"]),
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["p999"]),
        f(&l["max"]),
        i(&r["errors"]),
        i(&r["drops"]),
        i(&r["connects_per_s"]),
        s.get("cpu_s").map_or("-".into(), |v| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))),
        s.get("msgs_per_cpu_s").map_or("-".into(), i),
        s.get("kib_per_conn")
            .map_or("-".into(), |v| { v.as_f64().map_or("-".into(), |x| format!("{x:.2}")) }),
    );
    if let Some(other) = r["other_load_cores"].as_f64().filter(|&x| x > 0.1) {
        println!("note: other processes used {other:.2} cores during the window (noise)");
    }
    if let Some(wait) = s.get("runqueue_wait_pct").and_then(Value::as_f64).filter(|&x| x > 1.0) {
        println!("note: the server waited for its core {wait:.1}% of the window (contention)");
    }
    if let Some(wait) = r["generator_wait_pct"].as_f64().filter(|&x| x > 1.0) {
        println!("note: the generator waited for its core {wait:.1}% of the window (contention)");
    }
    if let Some(samples) = r["error_samples"].as_array().filter(|a| !a.is_empty()) {
        println!("errors, first {}: {samples:?}", samples.len());
    }
}
