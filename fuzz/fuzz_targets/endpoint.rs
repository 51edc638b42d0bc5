//! Arbitrary bytes drive an endpoint as the loop would, with an echo application: accepts, reads
//! cut at arbitrary points on several connections (raw bytes, upgrades, masked frames of any
//! first byte), EOFs, failures, full and slow sockets, time jumping past deadlines, reloads and a
//! graceful stop. No panic, and the cheap invariants hold after every step: each WebSocket opened
//! is open or ended exactly once and the application agrees, a connection is gone exactly when
//! its transport was dropped, nothing is sent after the FIN, and after an apply point every open
//! connection has a deadline. Finally the stop completes.
#![no_main]
use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    sync::OnceLock,
    time::{Duration, Instant},
};

use chatd::{
    app::{Action, App, Event, Message, PeerId},
    config::LogLevel,
    endpoint::{Endpoint, Sent, Settings, Transport},
    http::Site,
    log::{self, LevelSwitch},
    ws::{self, OpCode},
};
use libfuzzer_sys::fuzz_target;

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// What a fake socket saw, shared with the target so that it outlives the connection.
#[derive(Debug)]
struct Wire {
    /// Bytes one send takes (`None`: all); fewer than offered makes it unwritable.
    room: Option<usize>,
    writable: bool,
    broken: bool,
    shut: bool,
    dropped: bool,
}

struct Socket(Rc<RefCell<Wire>>);

impl Transport for Socket {
    fn send(&mut self, buf: &[u8]) -> Sent {
        let mut w = self.0.borrow_mut();
        assert!(!w.shut, "a send after shutdown_write");
        if w.broken {
            return Sent::Failed;
        }
        let n = w.room.map_or(buf.len(), |room| room.min(buf.len()));
        if n < buf.len() {
            w.writable = false;
        }
        Sent::Bytes(n)
    }

    fn is_writable(&self) -> bool {
        self.0.borrow().writable
    }

    fn shutdown_write(&mut self) {
        let mut w = self.0.borrow_mut();
        assert!(!w.shut, "shutdown_write twice");
        w.shut = true;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.0.borrow_mut().dropped = true;
    }
}

/// Echoes, obeys `!close` and `!bcast`, and checks that each peer opens once, closes once and
/// hears nothing outside that span.
#[derive(Default)]
struct Echo {
    open: BTreeSet<PeerId>,
    ended: BTreeSet<PeerId>,
}

impl App for Echo {
    type Settings = ();

    fn handle_event(
        &mut self,
        _now: Instant,
        peer: PeerId,
        event: Event<'_>,
        out: &mut Vec<Action>,
    ) {
        let message = match event {
            Event::Open { .. } => {
                assert!(!self.ended.contains(&peer) && self.open.insert(peer), "opened twice");
                return;
            }
            Event::Closed { .. } => {
                assert!(self.open.remove(&peer), "closed but not open");
                self.ended.insert(peer);
                return;
            }
            Event::Text("!close") => {
                out.push(Action::Close { peer, code: 4000, reason: "bye" });
                return;
            }
            Event::Text(t) if t.starts_with("!bcast") => {
                out.push(Action::Broadcast { text: t.to_owned() });
                return;
            }
            Event::Text(t) => Message::Text(t.to_owned()),
            Event::Binary(b) => Message::Binary(b.to_vec()),
        };
        assert!(self.open.contains(&peer), "a message from a peer that is not open");
        out.push(Action::Send { to: peer, message });
    }

    fn handle_shutdown(&mut self, _now: Instant, out: &mut Vec<Action>) {
        for &to in &self.open {
            out.push(Action::Send { to, message: Message::Text("bye".into()) });
        }
    }
}

/// The fuzzer's bytes, read as operations; zeros once they run out.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

struct Conn {
    slot: usize,
    generation: u32,
    wire: Rc<RefCell<Wire>>,
}

struct Run {
    ep: Endpoint<Echo, Socket>,
    now: Instant,
    conns: Vec<Conn>,
    port: u16,
}

impl Run {
    fn is_open(&self, c: &Conn) -> bool {
        self.ep.generation(c.slot) == Some(c.generation)
    }

    /// The `k`-th connection that is still open, if any.
    fn live(&self, k: u8) -> Option<usize> {
        let live: Vec<usize> =
            (0..self.conns.len()).filter(|&i| self.is_open(&self.conns[i])).collect();
        (!live.is_empty()).then(|| live[usize::from(k) % live.len()])
    }

    fn input(&mut self, k: u8, bytes: &[u8]) {
        if let Some(i) = self.live(k) {
            let slot = self.conns[i].slot;
            self.ep.handle_input(self.now, slot, &mut bytes.to_vec());
        }
    }

    fn turn(&mut self) {
        self.ep.handle_timeout(self.now);
        self.ep.apply(self.now);
        // After the apply point every connection has a deadline, so the loop would wake.
        assert!(
            self.ep.is_empty() || self.ep.poll_timeout().is_some(),
            "a connection without a deadline"
        );
        self.ep.transmit(self.now);
    }

    fn check(&self) {
        let s = self.ep.stats();
        let app = self.ep.app();
        assert_eq!(s.websockets_opened, (app.open.len() + app.ended.len()) as u64);
        assert_eq!(s.websockets_closed, app.ended.len() as u64);
        assert_eq!(s.accepted, self.conns.len() as u64);
        let mut live = 0;
        for c in &self.conns {
            let open = self.is_open(c);
            assert_eq!(
                open,
                !c.wire.borrow().dropped,
                "gone exactly when the transport is dropped"
            );
            live += usize::from(open);
        }
        assert_eq!(live, self.ep.len());
    }
}

fn settings(max_message_bytes: usize) -> Settings {
    Settings {
        max_connections: 8,
        max_message_bytes,
        max_outbound_bytes: 4096,
        handshake_timeout: Duration::from_millis(1000),
        idle_timeout: Duration::from_millis(2000),
        ping_timeout: Duration::from_millis(1000),
        shutdown_timeout: Duration::from_millis(3000),
        allowed_origins: Vec::new(),
        metrics_allow: vec![IpAddr::from([127, 0, 0, 1])],
        // Every fuzzed connection comes from one address.
        max_connections_per_address: 0,
        ..Settings::default()
    }
}

fn site() -> Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(Site::embedded).clone()
}

fuzz_target!(|data: &[u8]| {
    let base = Instant::now();
    // The endpoint logs at debug level only: an error-level logger keeps the run quiet.
    let log = log::terminal(&LevelSwitch::new(LogLevel::Error.to_slog()));
    let ep = Endpoint::new(settings(512), site(), Echo::default(), 0, log, base);
    let mut run = Run { ep, now: base, conns: Vec::new(), port: 1024 };
    let mut ops = Ops(data);
    while !ops.0.is_empty() && !run.ep.is_stopped(run.now) {
        match ops.byte() % 12 {
            0 => {
                run.port = run.port.wrapping_add(1);
                let ip = if ops.byte() & 1 == 0 { [127, 0, 0, 1] } else { [192, 0, 2, 1] };
                let addr = SocketAddr::new(IpAddr::from(ip), run.port);
                let wire = Rc::new(RefCell::new(Wire {
                    room: None,
                    writable: true,
                    broken: false,
                    shut: false,
                    dropped: false,
                }));
                if let Some(slot) = run.ep.handle_accept(run.now, addr, Socket(wire.clone())) {
                    let generation = run.ep.generation(slot).expect("just accepted");
                    run.conns.push(Conn { slot, generation, wire });
                } else {
                    assert!(wire.borrow().dropped, "a refused transport is dropped");
                }
            }
            1 => {
                let k = ops.byte();
                let n = usize::from(ops.byte());
                let bytes = ops.take(n).to_vec();
                run.input(k, &bytes);
            }
            2 => {
                // An upgrade, possibly cut: the fuzzer reaches WebSocket states quickly.
                let k = ops.byte();
                let cut = usize::from(ops.byte()) % UPGRADE.len() + 1;
                run.input(k, &UPGRADE[..cut]);
                run.input(k, &UPGRADE[cut..]);
            }
            3 => {
                // A masked frame with any first byte, so every opcode and flag is reached.
                let k = ops.byte();
                let b0 = ops.byte();
                let len = usize::from(ops.byte());
                let payload = ops.take(len).to_vec();
                let mask = [ops.byte(), ops.byte(), ops.byte(), ops.byte()];
                let mut frame = Vec::new();
                ws::encode_masked(&mut frame, OpCode::Binary, &payload, mask);
                frame[0] = b0;
                run.input(k, &frame);
            }
            4 => {
                if let Some(i) = run.live(ops.byte()) {
                    let slot = run.conns[i].slot;
                    run.ep.handle_eof(run.now, slot);
                }
            }
            5 => {
                if let Some(i) = run.live(ops.byte()) {
                    let slot = run.conns[i].slot;
                    run.ep.handle_failure(run.now, slot);
                }
            }
            6 => {
                let ms = u64::from(u16::from_le_bytes([ops.byte(), ops.byte()]));
                run.now += Duration::from_millis(ms);
                run.ep.handle_time(784_111_777 + (run.now - base).as_secs());
                run.turn();
            }
            7 => run.turn(),
            8 => {
                let k = ops.byte();
                let room = ops.byte();
                if let Some(i) = run.live(k) {
                    let (slot, wire) = (run.conns[i].slot, run.conns[i].wire.clone());
                    let mut w = wire.borrow_mut();
                    w.room = room.checked_sub(1).map(usize::from);
                    w.writable = true;
                    drop(w);
                    run.ep.handle_writable(slot);
                }
            }
            9 => {
                if let Some(i) = run.live(ops.byte()) {
                    let mut w = run.conns[i].wire.borrow_mut();
                    w.broken = !w.broken;
                }
            }
            10 => {
                let max = 16 << (ops.byte() % 8);
                run.ep.reconfigure(settings(max), site(), ());
            }
            _ => run.ep.begin_shutdown(run.now),
        }
        run.check();
    }
    // The stop completes: clients read everything and hang up once the server has.
    run.ep.begin_shutdown(run.now);
    for _ in 0..100 {
        if run.ep.is_stopped(run.now) {
            break;
        }
        for i in 0..run.conns.len() {
            let c = &run.conns[i];
            if !run.is_open(c) {
                continue;
            }
            let (slot, shut) = {
                let mut w = c.wire.borrow_mut();
                (w.room, w.writable, w.broken) = (None, true, false);
                (c.slot, w.shut)
            };
            run.ep.handle_writable(slot);
            if shut {
                run.ep.handle_eof(run.now, slot);
            }
        }
        run.now += Duration::from_millis(100);
        run.turn();
        run.check();
    }
    assert!(run.ep.is_stopped(run.now), "the stop did not complete");
});
