//! One load thread: its own mio `Poll` and its share of the connections, driven through the
//! phases that the main thread sets (connect, run, drain, exit).
//!
//! Sockets are registered once, edge-triggered, for reading and writing; input is parsed where
//! it landed in one scratch buffer; output for a connection is gathered during a loop turn and
//! written with one `write` at its end. The generator must stay cheaper per message than the
//! server it loads, so nothing allocates per message.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::FromRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::*},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use mio::{net::TcpStream, Events, Interest, Poll, Token};

use crate::ws::{self, MaskGen, OpCode};

/// The phases, in order. Threads only move forward through them.
pub const CONNECT: u8 = 0;
pub const RUN: u8 = 1;
pub const DRAIN: u8 = 2;
pub const EXIT: u8 = 3;

/// Connects and upgrades in progress per thread at once (the listener's SYN queue is finite).
const CONNECTS_IN_FLIGHT: usize = 256;
const SCRATCH: usize = 64 * 1024;
/// Open-loop sends done in one loop turn before input gets a look again.
const SENDS_PER_TURN: usize = 4096;
/// Error texts kept for the report.
const ERROR_SAMPLES: usize = 5;

/// What the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// chatd's roulette: search, matched, then messages between partners.
    Chat,
    /// Any echo endpoint: every message comes back.
    Echo,
    /// chatd's roulette, one short life after another: connect, search, one message each way,
    /// close, reconnect.
    Churn,
}

/// One server to connect to (`--url`, given once or more).
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub host: String,
    pub path: String,
}

/// The run's settings, shared by every thread.
#[derive(Debug)]
pub struct Cfg {
    /// Connection number `g` (counted over every thread) goes to `targets[g % len]`: with two
    /// nodes, half the connections at each, and the two sides of a pair (`2p`, `2p + 1`) on
    /// different nodes.
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub conns: usize,
    pub sources: Vec<Ipv4Addr>,
    pub size: usize,
    /// Messages per second in total; 0 for closed loop.
    pub rate: f64,
    /// Closed loop: messages in flight per connection.
    pub window: usize,
    /// Connect (and pair) only; send nothing.
    pub idle: bool,
    /// Chat: connection `g` searches with the interest `p{g / 2}`, shared with its pair's other
    /// side only, so that `2p` and `2p + 1` are matched with each other (a shared interest beats
    /// waiting time): with two `--url`s each pair spans the two nodes.
    pub pair_interests: bool,
    /// Chat: connect and read `welcome`, then wait for [`Shared::search_go`] before searching
    /// (a crowd: first idle, then paired).
    pub hold_search: bool,
    /// `hold_search`: searches per second this process sends after the go (spread over its
    /// threads by their share of the connections); 0 = all at once.
    pub search_rate: f64,
}

/// What the threads and the main thread share: the phase, the measurement window and live
/// counters for the progress line. Threads add their counts once per loop turn.
#[derive(Debug, Default)]
pub struct Shared {
    pub phase: AtomicU8,
    /// Connections ready: matched (chat), open (echo), or with `hold_search` welcomed.
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Chat: connections that got `matched` (with `hold_search`, after the go).
    pub matched: AtomicUsize,
    /// `hold_search`: set once; every welcomed connection then searches.
    pub search_go: AtomicBool,
    /// When sending starts: the closed loop's kick and the open loop's schedule origin.
    pub run_ns: AtomicU64,
    /// The measurement window: throughput counts receptions in it, latency counts messages
    /// sent (or due) in it.
    pub start_ns: AtomicU64,
    pub stop_ns: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub window_msgs: AtomicU64,
    pub errors: AtomicU64,
    pub cycles: AtomicU64,
    /// Since the last progress line: the longest latency seen and how far the open-loop
    /// schedule ran behind (both ns; the main thread swaps them to 0).
    pub interval_max_ns: AtomicU64,
    pub interval_lag_ns: AtomicU64,
}

/// Nanoseconds since the process's reference instant (one clock for every thread, so a message
/// sent by one thread and received by another is timed correctly).
pub fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// One thread's findings, merged by the main thread.
#[derive(Debug)]
pub struct Outcome {
    pub latency: Histogram<u64>,
    pub cycle: Histogram<u64>,
    /// From sending `search` to reading `matched` (chat, churn), per connection; churn counts
    /// searches sent in the window.
    pub matching: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub window_msgs: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub partner_left: u64,
    pub server_closes: u64,
    pub cycles: u64,
    /// `matched` read for a search sent in the window (churn) or at any time (chat).
    pub searches: u64,
    pub open_at_end: usize,
}

pub fn histogram() -> Histogram<u64> {
    // 1 ns to 10 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Connecting,
    Upgrading,
    /// `hold_search`: upgraded, `welcome` not read yet.
    AwaitWelcome,
    /// `hold_search`: welcomed, waiting for the go to search.
    Held,
    AwaitMatch,
    Ready,
    /// Churn: our message is out, waiting for the partner's.
    ChurnWait,
    /// Churn: our close is out; the cycle ends with the server's FIN.
    Closing,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    st: St,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    writable: bool,
    dirty: bool,
    /// When this connection's connect began (churn: the cycle's start).
    born_ns: u64,
    /// When it sent `search`.
    search_ns: u64,
}

/// Why a connection is given up.
#[derive(Debug)]
enum Gone {
    /// The churn cycle completed normally.
    Done,
    Error(String),
}

struct Worker {
    cfg: Arc<Cfg>,
    shared: Arc<Shared>,
    base: Instant,
    id: usize,
    /// The number (over every thread) of this thread's first connection.
    first: usize,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    /// Slots to (re)open after this loop turn (churn), or not yet opened.
    to_open: Vec<usize>,
    /// Opened so far, for spreading source addresses.
    opened: usize,
    connecting: usize,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    mask: MaskGen,
    now: u64,
    phase: u8,
    start_ns: u64,
    stop_ns: u64,
    out: Outcome,
    /// Counts not yet added to the shared ones.
    unpublished: [u64; 5],
    max_ns: u64,
    lag_ns: u64,
    ready_here: Vec<usize>,
}

/// Runs one thread's share (`count` connections) until the main thread says `EXIT`.
pub fn run(
    cfg: Arc<Cfg>,
    shared: Arc<Shared>,
    base: Instant,
    id: usize,
    first: usize,
    count: usize,
) -> Outcome {
    let mut w = Worker {
        cfg,
        shared,
        base,
        id,
        first,
        poll: Poll::new().expect("epoll"),
        conns: (0..count).map(|_| None).collect(),
        to_open: (0..count).rev().collect(),
        opened: 0,
        connecting: 0,
        scratch: vec![0; SCRATCH],
        dirty: Vec::new(),
        mask: MaskGen::new(0x9e37_79b9_7f4a_7c15 ^ ((id as u64 + 1) * 0x1000_0001)),
        now: 0,
        phase: CONNECT,
        start_ns: u64::MAX,
        stop_ns: u64::MAX,
        out: Outcome {
            latency: histogram(),
            cycle: histogram(),
            matching: histogram(),
            sent: 0,
            received: 0,
            window_msgs: 0,
            errors: 0,
            error_samples: Vec::new(),
            partner_left: 0,
            server_closes: 0,
            cycles: 0,
            searches: 0,
            open_at_end: 0,
        },
        unpublished: [0; 5],
        max_ns: 0,
        lag_ns: 0,
        ready_here: Vec::new(),
    };
    w.run();
    w.out.open_at_end = w.conns.iter().flatten().count();
    w.out
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut kicked = false;
        // Open loop: this thread's share of the rate and its next message's sequence number.
        let mut next_seq = 0u64;
        let mut rr = 0usize;
        let mut interval_ns = 0.0f64;
        let mut run_ns = 0u64;
        // hold_search: searches sent since the go, when the go came, the next slot to look at.
        let (mut searched, mut go_ns, mut next_slot) = (0usize, None::<u64>, 0usize);
        loop {
            self.phase = self.shared.phase.load(Acquire);
            self.now = now_ns(self.base);
            if self.phase == EXIT {
                break;
            }
            if self.cfg.hold_search
                && next_slot < self.conns.len()
                && self.shared.search_go.load(Acquire)
            {
                let go = *go_ns.get_or_insert(self.now);
                let allowed = if self.cfg.search_rate > 0.0 {
                    let share =
                        self.cfg.search_rate * self.conns.len() as f64 / self.cfg.conns as f64;
                    1 + ((self.now - go) as f64 / 1e9 * share) as usize
                } else {
                    usize::MAX
                };
                while searched < allowed && next_slot < self.conns.len() {
                    let slot = next_slot;
                    next_slot += 1;
                    let Some(mut c) = self.conns[slot].take() else { continue };
                    if c.st == St::Held {
                        searched += 1;
                        self.search(slot, &mut c);
                        if !c.dirty {
                            c.dirty = true;
                            self.dirty.push(slot);
                        }
                    }
                    self.conns[slot] = Some(c);
                }
            }
            if self.phase >= RUN && !kicked {
                kicked = true;
                self.start_ns = self.shared.start_ns.load(Acquire);
                self.stop_ns = self.shared.stop_ns.load(Acquire);
                run_ns = self.shared.run_ns.load(Acquire);
                self.ready_here = (0..self.conns.len())
                    .filter(|&s| self.conns[s].as_ref().is_some_and(|c| c.st == St::Ready))
                    .collect();
                if !self.cfg.idle && self.cfg.mode != Mode::Churn {
                    if self.cfg.rate > 0.0 {
                        let total = self.shared.ready.load(Acquire).max(1) as f64;
                        let share = self.cfg.rate * self.ready_here.len() as f64 / total;
                        interval_ns = if share > 0.0 { 1e9 / share } else { f64::INFINITY };
                    } else {
                        for i in 0..self.ready_here.len() {
                            let slot = self.ready_here[i];
                            for _ in 0..self.cfg.window {
                                self.send_message(slot, self.now);
                            }
                        }
                    }
                }
            }
            // Open what is due: the whole share while connecting, or churn's finished slots.
            let may_open = match self.cfg.mode {
                Mode::Churn => self.phase == RUN,
                _ => self.phase == CONNECT,
            };
            while may_open && self.connecting < CONNECTS_IN_FLIGHT {
                let Some(slot) = self.to_open.pop() else { break };
                self.open(slot);
            }
            let timeout = if self.cfg.rate > 0.0 && kicked && self.phase == RUN {
                // Epoll's timeout is in milliseconds: spin while the next send is closer than
                // that, so that sends leave on time (the generator has a core of its own).
                let due = run_ns + (next_seq as f64 * interval_ns) as u64;
                if due <= self.now + 1_000_000 {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(due - self.now - 1_000_000)
                }
            } else {
                Duration::from_millis(5)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll: {e}");
            }
            self.now = now_ns(self.base);
            for event in events.iter() {
                let slot = event.token().0;
                let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else { continue };
                if event.is_writable() {
                    c.writable = true;
                    if c.st == St::Connecting {
                        self.on_connected(slot);
                    } else if !c.wbuf.is_empty() && !c.dirty {
                        c.dirty = true;
                        self.dirty.push(slot);
                    }
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(slot);
                }
            }
            if self.cfg.rate > 0.0 && kicked && self.phase == RUN && !self.ready_here.is_empty() {
                for _ in 0..SENDS_PER_TURN {
                    let due = run_ns + (next_seq as f64 * interval_ns) as u64;
                    if due > self.now {
                        break;
                    }
                    self.lag_ns = self.lag_ns.max(self.now - due);
                    let slot = self.ready_here[rr];
                    rr = (rr + 1) % self.ready_here.len();
                    next_seq += 1;
                    // The message carries the time it was due, not the time it left: a late
                    // send shows up as latency (coordinated omission corrected).
                    self.send_message(slot, due);
                }
            }
            self.flush();
            self.publish();
        }
    }

    fn publish(&mut self) {
        let [sent, received, window, errors, cycles] = std::mem::take(&mut self.unpublished);
        let s = &self.shared;
        if sent > 0 {
            s.sent.fetch_add(sent, Relaxed);
        }
        if received > 0 {
            s.received.fetch_add(received, Relaxed);
        }
        if window > 0 {
            s.window_msgs.fetch_add(window, Relaxed);
        }
        if errors > 0 {
            s.errors.fetch_add(errors, Relaxed);
        }
        if cycles > 0 {
            s.cycles.fetch_add(cycles, Relaxed);
        }
        if self.max_ns > 0 {
            s.interval_max_ns.fetch_max(std::mem::take(&mut self.max_ns), Relaxed);
        }
        if self.lag_ns > 0 {
            s.interval_lag_ns.fetch_max(std::mem::take(&mut self.lag_ns), Relaxed);
        }
    }

    fn error(&mut self, what: String) {
        self.out.errors += 1;
        self.unpublished[3] += 1;
        if self.out.error_samples.len() < ERROR_SAMPLES {
            self.out.error_samples.push(what);
        }
    }

    fn target(&self, slot: usize) -> &Target {
        &self.cfg.targets[(self.first + slot) % self.cfg.targets.len()]
    }

    fn open(&mut self, slot: usize) {
        let src = self.cfg.sources[(self.opened * 7 + self.id) % self.cfg.sources.len()];
        self.opened += 1;
        match connect(src, self.target(slot).addr) {
            Ok(mut stream) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail_connect(format!("register: {e}"));
                    return;
                }
                self.connecting += 1;
                self.conns[slot] = Some(Conn {
                    stream,
                    st: St::Connecting,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    writable: false,
                    dirty: false,
                    born_ns: self.now,
                    search_ns: 0,
                });
            }
            Err(e) => self.fail_connect(format!("connect from {src}: {e}")),
        }
    }

    fn fail_connect(&mut self, what: String) {
        if self.cfg.mode != Mode::Churn {
            self.shared.failed.fetch_add(1, Relaxed);
        }
        self.error(what);
    }

    fn on_connected(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        match c.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                return self.drop_conn(slot, Gone::Error(format!("connect: {e}")))
            }
        }
        // A writable event before the handshake completed is not a connection yet.
        if let Err(e) = c.stream.peer_addr() {
            if e.kind() == io::ErrorKind::NotConnected {
                return;
            }
            return self.drop_conn(slot, Gone::Error(format!("connect: {e}")));
        }
        c.st = St::Upgrading;
        let t = &self.cfg.targets[(self.first + slot) % self.cfg.targets.len()];
        ws::write_upgrade(&mut c.wbuf, &t.host, &t.path);
        self.mark_dirty(slot);
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].as_mut() {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn on_readable(&mut self, slot: usize) {
        loop {
            let Some(c) = self.conns[slot].as_mut() else { return };
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let gone = if c.st == St::Closing {
                        Gone::Done
                    } else {
                        self.out.server_closes += 1;
                        Gone::Error(format!("server closed the connection ({:?})", c.st))
                    };
                    return self.drop_conn(slot, gone);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.drop_conn(slot, Gone::Error(format!("read: {e}"))),
            };
            let mut c = self.conns[slot].take().expect("checked above");
            let result = if c.rbuf.is_empty() {
                let buf = std::mem::take(&mut self.scratch);
                let r = self.parse(slot, &mut c, &buf[..n]);
                if let Ok(used) = r {
                    if used < n {
                        c.rbuf.extend_from_slice(&buf[used..n]);
                    }
                }
                self.scratch = buf;
                r.map(|_| ())
            } else {
                let mut buf = std::mem::take(&mut c.rbuf);
                buf.extend_from_slice(&self.scratch[..n]);
                let r = self.parse(slot, &mut c, &buf);
                if let Ok(used) = r {
                    buf.drain(..used);
                    c.rbuf = buf;
                }
                r.map(|_| ())
            };
            if !c.wbuf.is_empty() && !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
            self.conns[slot] = Some(c);
            if let Err(what) = result {
                return self.drop_conn(slot, Gone::Error(what));
            }
        }
    }

    /// Handles every complete item at the start of `data`; returns the bytes consumed.
    fn parse(&mut self, slot: usize, c: &mut Conn, data: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        loop {
            if c.st == St::Upgrading {
                match ws::parse_upgrade(&data[pos..]) {
                    Ok(None) => return Ok(pos),
                    Ok(Some(n)) => {
                        pos += n;
                        self.connecting -= 1;
                        self.on_open(slot, c);
                        continue;
                    }
                    Err(e) => return Err(e.to_owned()),
                }
            }
            let (frame, n) = match ws::parse_frame(&data[pos..]) {
                Ok(None) => return Ok(pos),
                Ok(Some(x)) => x,
                Err(e) => return Err(e.to_owned()),
            };
            pos += n;
            if !frame.fin {
                return Err("fragmented server message".into());
            }
            match frame.opcode {
                ws::TEXT => self.on_text(slot, c, frame.payload)?,
                ws::PING => {
                    let mask = self.mask.next();
                    ws::encode_masked(&mut c.wbuf, OpCode::Pong, frame.payload, mask);
                }
                ws::PONG => {}
                ws::CLOSE => {
                    if c.st == St::Closing {
                        continue; // the cycle ends at the server's FIN
                    }
                    self.out.server_closes += 1;
                    let code = frame.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[]));
                    return Err(format!("server closed with {code:?} {reason}"));
                }
                op => return Err(format!("unexpected opcode {op:#x}")),
            }
        }
    }

    fn on_open(&mut self, slot: usize, c: &mut Conn) {
        match self.cfg.mode {
            Mode::Echo => {
                c.st = St::Ready;
                self.shared.ready.fetch_add(1, Relaxed);
            }
            Mode::Chat if self.cfg.hold_search => c.st = St::AwaitWelcome,
            Mode::Chat | Mode::Churn => self.search(slot, c),
        }
    }

    /// Sends `search` (with the pair's interest under `pair_interests`).
    fn search(&mut self, slot: usize, c: &mut Conn) {
        c.st = St::AwaitMatch;
        c.search_ns = self.now;
        let mask = self.mask.next();
        if self.cfg.pair_interests {
            let mut text = [0u8; 80];
            let mut w = &mut text[..];
            let _ =
                write!(w, r#"{{"type":"search","interests":["p{}"]}}"#, (self.first + slot) / 2);
            let len = 80 - w.len();
            ws::encode_masked(&mut c.wbuf, OpCode::Text, &text[..len], mask);
        } else {
            ws::encode_masked(&mut c.wbuf, OpCode::Text, br#"{"type":"search"}"#, mask);
        }
    }

    fn on_text(&mut self, slot: usize, c: &mut Conn, payload: &[u8]) -> Result<(), String> {
        const MESSAGE: &[u8] = br#"{"type":"message","text":""#;
        if self.cfg.mode == Mode::Echo {
            let ts = ws::read_stamp(payload).ok_or("echo without a time stamp")?;
            return self.on_message(slot, c, ts);
        }
        if let Some(rest) = payload.strip_prefix(MESSAGE) {
            let ts = ws::read_stamp(rest).ok_or("message without a time stamp")?;
            return self.on_message(slot, c, ts);
        }
        if payload.starts_with(br#"{"type":"matched""#) {
            if c.st == St::AwaitMatch {
                let wait = self.now.saturating_sub(c.search_ns).max(1);
                let counts = self.cfg.mode == Mode::Chat
                    || (c.search_ns >= self.start_ns && c.search_ns < self.stop_ns);
                if counts {
                    let _ = self.out.matching.record(wait);
                    self.out.searches += 1;
                }
                self.shared.matched.fetch_add(1, Relaxed);
                self.connecting_done_match(c);
            }
        } else if payload.starts_with(br#"{"type":"welcome""#) {
            if c.st == St::AwaitWelcome {
                c.st = St::Held;
                self.shared.ready.fetch_add(1, Relaxed);
            }
        } else if payload.starts_with(br#"{"type":"error""#) {
            self.error(String::from_utf8_lossy(payload).into_owned());
        } else if payload.starts_with(br#"{"type":"partner_left""#) {
            self.out.partner_left += 1;
            // Past EXIT another load thread may already have dropped its connections, and
            // their partners here hear of it: only a partner lost during the run is an error.
            if self.cfg.mode == Mode::Chat {
                if self.shared.phase.load(Acquire) < EXIT {
                    self.error(String::from_utf8_lossy(payload).into_owned());
                }
            } else if c.st == St::ChurnWait {
                // The partner went before its message arrived: end this cycle too.
                self.error("churn: partner left before its message".into());
                self.close_cycle(c);
            }
        }
        // welcome, searching, online, typing: nothing to do.
        Ok(())
    }

    fn connecting_done_match(&mut self, c: &mut Conn) {
        match self.cfg.mode {
            Mode::Churn => {
                c.st = St::ChurnWait;
                let ts = self.now;
                self.write_message(c, ts);
            }
            _ => {
                c.st = St::Ready;
                if !self.cfg.hold_search {
                    self.shared.ready.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn on_message(&mut self, slot: usize, c: &mut Conn, ts: u64) -> Result<(), String> {
        let now = self.now;
        self.out.received += 1;
        self.unpublished[1] += 1;
        if now >= self.start_ns && now < self.stop_ns {
            self.out.window_msgs += 1;
            self.unpublished[2] += 1;
        }
        let latency = now.saturating_sub(ts).max(1);
        self.max_ns = self.max_ns.max(latency);
        if ts >= self.start_ns && ts < self.stop_ns {
            let _ = self.out.latency.record(latency);
        }
        let _ = slot;
        match self.cfg.mode {
            Mode::Churn => {
                if c.st == St::ChurnWait {
                    self.close_cycle(c);
                }
            }
            _ => {
                // Closed loop: every arrival sends the next message on the same connection (to
                // the partner, or back to the echo server), keeping the window full.
                if self.cfg.rate == 0.0 && self.phase == RUN && !self.cfg.idle {
                    self.write_message(c, now);
                }
            }
        }
        Ok(())
    }

    fn close_cycle(&mut self, c: &mut Conn) {
        c.st = St::Closing;
        let mask = self.mask.next();
        ws::encode_masked(&mut c.wbuf, OpCode::Close, &1000u16.to_be_bytes(), mask);
    }

    fn send_message(&mut self, slot: usize, ts: u64) {
        let Some(mut c) = self.conns[slot].take() else { return };
        self.write_message(&mut c, ts);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(slot);
        }
        self.conns[slot] = Some(c);
    }

    fn write_message(&mut self, c: &mut Conn, ts: u64) {
        let mut text = [0u8; 256];
        let text = ws::stamp(ts, self.cfg.size, &mut text);
        let mask = self.mask.next();
        match self.cfg.mode {
            Mode::Echo => ws::encode_masked(&mut c.wbuf, OpCode::Text, text, mask),
            Mode::Chat | Mode::Churn => ws::write_frame_parts(
                &mut c.wbuf,
                OpCode::Text,
                &[br#"{"type":"message","text":""#, text, b"\"}"],
                mask,
            ),
        }
        self.out.sent += 1;
        self.unpublished[0] += 1;
    }

    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            let Some(c) = self.conns[slot].as_mut() else { continue };
            c.dirty = false;
            if !c.writable || c.st == St::Connecting {
                continue;
            }
            let mut written = 0;
            let mut failed = None;
            while written < c.wbuf.len() {
                match c.stream.write(&c.wbuf[written..]) {
                    Ok(0) => {
                        failed = Some("write returned 0".to_owned());
                        break;
                    }
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.writable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(format!("write: {e}"));
                        break;
                    }
                }
            }
            if written == c.wbuf.len() {
                c.wbuf.clear();
            } else {
                c.wbuf.drain(..written);
            }
            if let Some(what) = failed {
                self.drop_conn(slot, Gone::Error(what));
            }
        }
        self.dirty = dirty;
    }

    fn drop_conn(&mut self, slot: usize, gone: Gone) {
        let Some(mut c) = self.conns[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if matches!(c.st, St::Connecting | St::Upgrading) {
            self.connecting -= 1;
        }
        // Lost before it was ready (before `matched` in chat, `welcome` when holding): failed.
        let unready = match c.st {
            St::Connecting | St::Upgrading | St::AwaitWelcome => true,
            St::AwaitMatch => !self.cfg.hold_search,
            _ => false,
        };
        if unready && self.cfg.mode != Mode::Churn && self.phase == CONNECT {
            self.shared.failed.fetch_add(1, Relaxed);
        }
        match gone {
            Gone::Done => {
                if self.now >= self.start_ns && self.now < self.stop_ns {
                    self.out.cycles += 1;
                    self.unpublished[4] += 1;
                    let _ = self.out.cycle.record(self.now.saturating_sub(c.born_ns).max(1));
                }
            }
            Gone::Error(what) => self.error(what),
        }
        if self.cfg.mode == Mode::Churn {
            self.to_open.push(slot);
        }
        drop(c);
    }
}

/// A non-blocking connect from `src` (port chosen at connect time, so each source address
/// offers a full ephemeral range per destination) to `dst`.
fn connect(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; every pointer passed
    // points to a live local of the stated length. The descriptor is handed to a TcpStream
    // (which closes it) as soon as it exists.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // IP_BIND_ADDRESS_NO_PORT: defer the port choice to connect().
        libc::setsockopt(fd, libc::IPPROTO_IP, 24, (&one as *const libc::c_int).cast(), int_len);
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            int_len,
        );
        let local = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = sockaddr(dst);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(stream))
    }
}

/// The address a target string names, refusing anything outside 127.0.0.0/8.
pub fn loopback_only(addr: SocketAddr) -> Result<SocketAddrV4, String> {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => Ok(a),
        other => Err(format!("{other}: load is only ever sent to 127.0.0.0/8")),
    }
}
