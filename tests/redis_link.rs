//! The Redis link against a real `redis-server`: the test is the IO edge, driving
//! `chatd::cluster::Link` over a non-blocking std `TcpStream` in a small loop, as the mio loop
//! does with its sockets.
mod util;

use std::{
    collections::VecDeque,
    io::{ErrorKind, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    thread,
    time::{Duration, Instant},
};

use chatd::cluster::{Link, LinkConfig, LinkError, LinkEvent, RedisAddr, RedisTarget, Role, Value};
use util::{redis::RedisServer, TIMEOUT};

type Event = LinkEvent<u32>;

/// A link and its socket: one turn of [`Driver::turn`] is one turn of an event loop.
struct Driver {
    link: Link<u32>,
    sock: Option<TcpStream>,
    events: VecDeque<Event>,
}

impl Driver {
    fn new(url: &str, role: Role) -> Driver {
        Driver::with_config(url, role, LinkConfig::default())
    }

    fn with_config(url: &str, role: Role, config: LinkConfig) -> Driver {
        let target = RedisTarget::parse(url).expect("a valid URL");
        let link = Link::with_config(target, "chatd-test".into(), role, config);
        Driver { link, sock: None, events: VecDeque::new() }
    }

    /// Timers, connect, write, read, events; sleeps a millisecond when nothing moved.
    fn turn(&mut self) {
        let now = Instant::now();
        self.link.handle_timeout(now);
        if self.link.poll_connect(now) {
            let RedisAddr::Tcp { host, port } = &self.link.target().addr else {
                panic!("TCP only here")
            };
            let addr = (host.as_str(), *port).to_socket_addrs().unwrap().next().unwrap();
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    s.set_nodelay(true).unwrap();
                    self.sock = Some(s);
                    self.link.handle_connected(Instant::now());
                }
                Err(e) => self.link.handle_closed(Instant::now(), e.to_string()),
            }
        }
        let mut moved = false;
        if let Some(s) = &mut self.sock {
            while !self.link.transmit_buf().is_empty() {
                match s.write(self.link.transmit_buf()) {
                    Ok(n) => {
                        self.link.handle_sent(n);
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.link.handle_closed(Instant::now(), e.to_string());
                        break;
                    }
                }
            }
        }
        if let Some(s) = &mut self.sock {
            let mut buf = [0; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        self.link.handle_closed(Instant::now(), "closed by Redis");
                        break;
                    }
                    Ok(n) => {
                        self.link.handle_input(Instant::now(), &buf[..n]);
                        moved = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.link.handle_closed(Instant::now(), e.to_string());
                        break;
                    }
                }
            }
        }
        while let Some(e) = self.link.poll_event() {
            if matches!(e, LinkEvent::Down { .. }) {
                // The link is done with this connection, whoever ended it.
                self.sock = None;
            }
            self.events.push_back(e);
            moved = true;
        }
        if !moved {
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next event, driving the loop for at most `within`.
    fn next_within(&mut self, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.turn();
        }
    }

    /// The next event; panics after [`TIMEOUT`].
    fn next(&mut self) -> Event {
        self.next_within(TIMEOUT).unwrap_or_else(|| panic!("no link event within {TIMEOUT:?}"))
    }

    /// Drives until `Up`; panics on anything else.
    fn up(&mut self) {
        match self.next() {
            LinkEvent::Up => assert!(self.link.is_ready()),
            e => panic!("expected Up, got {e:?}"),
        }
    }

    /// Sends one command and waits for its reply.
    fn call(&mut self, args: &[&str]) -> Value {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.link.send(Instant::now(), 0, &args).expect("send");
        match self.next() {
            LinkEvent::Reply { tag: 0, value, rtt } => {
                assert!(rtt < TIMEOUT, "{rtt:?}");
                value
            }
            e => panic!("expected the reply, got {e:?}"),
        }
    }
}

fn simple(s: &str) -> Value {
    Value::Simple(s.into())
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(s.as_bytes().to_vec()))
}

#[test]
fn the_test_server_starts_stops_and_restarts_empty() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.cli(&["GET", "k"]), "v");
    let port = redis.port();
    redis.stop();
    assert!(!redis.is_running());
    assert!(std::net::TcpStream::connect(redis.addr()).is_err(), "nothing listens after stop");
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["GET", "k"]), "", "a restarted server is empty");
    let with_pw = RedisServer::start_with(&["--requirepass", "pw"]);
    assert_eq!(with_pw.cli(&["PING"]), "PONG");
    assert_ne!(with_pw.port(), port);
    let acl = RedisServer::start_with(&["--user", "chatd", "on", ">secret", "~*", "&*", "+@all"]);
    assert_eq!(acl.cli(&["--user", "chatd", "--pass", "secret", "ACL", "WHOAMI"]), "chatd");
}

#[test]
fn ping_set_get() {
    let redis = RedisServer::start();
    let mut d = Driver::new(&redis.url(), Role::Commands);
    d.up();
    assert_eq!(d.call(&["PING"]), simple("PONG"));
    assert_eq!(d.call(&["SET", "greeting", "hello\r\nworld"]), simple("OK"));
    assert_eq!(d.call(&["GET", "greeting"]), bulk("hello\r\nworld"));
    assert_eq!(d.call(&["GET", "missing"]), Value::Bulk(None));
    assert_eq!(d.call(&["CLIENT", "GETNAME"]), bulk("chatd-test"));
    assert!(matches!(d.call(&["NOSUCHCOMMAND"]), Value::Error(e) if e.starts_with("ERR")));
    assert!(d.link.is_ready(), "an error reply does not end the link");
    let stats = d.link.stats();
    assert_eq!((stats.commands, stats.replies, stats.error_replies), (6, 6, 1));
}

#[test]
fn a_thousand_pipelined_commands_get_a_thousand_replies_in_order() {
    let redis = RedisServer::start();
    let mut d = Driver::new(&redis.url(), Role::Commands);
    d.up();
    let now = Instant::now();
    for i in 0..1000u32 {
        let text = format!("echo {i}");
        if i % 2 == 0 {
            d.link.send(now, i, &[b"ECHO", text.as_bytes()]).unwrap();
        } else {
            d.link.send(now, i, &[b"INCR", b"odd"]).unwrap();
        }
    }
    for i in 0..1000u32 {
        let LinkEvent::Reply { tag, value, .. } = d.next() else { panic!("not a reply") };
        assert_eq!(tag, i);
        if i % 2 == 0 {
            assert_eq!(value, bulk(&format!("echo {i}")));
        } else {
            assert_eq!(value, Value::Integer(i64::from(i / 2 + 1)));
        }
    }
    assert_eq!(d.link.pending(), 0);
}

#[test]
fn auth_with_an_acl_user_and_a_database() {
    let redis = RedisServer::start_with(&["--user", "chatd", "on", ">s3cret", "~*", "&*", "+@all"]);
    let port = redis.port();
    let mut d = Driver::new(&format!("redis://chatd:s3cret@127.0.0.1:{port}/2"), Role::Commands);
    d.up();
    assert_eq!(d.call(&["ACL", "WHOAMI"]), bulk("chatd"));
    assert_eq!(d.call(&["SET", "where", "db2"]), simple("OK"));
    assert_eq!(redis.cli(&["-n", "2", "GET", "where"]), "db2");
    assert_eq!(redis.cli(&["-n", "0", "EXISTS", "where"]), "0");

    let mut d = Driver::new(&format!("redis://chatd:wrong@127.0.0.1:{port}"), Role::Commands);
    match d.next() {
        LinkEvent::Down { reason: LinkError::Refused { command, message }, failed } => {
            assert_eq!(command, "AUTH");
            assert!(message.starts_with("WRONGPASS"), "{message}");
            assert!(failed.is_empty());
            let shown = LinkError::Refused { command, message }.to_string();
            assert!(!shown.contains("wrong"), "the password is never shown: {shown}");
        }
        e => panic!("expected a refused AUTH, got {e:?}"),
    }
    assert!(!d.link.is_ready());
}

#[test]
fn a_subscriber_gets_what_another_link_publishes_in_order() {
    let redis = RedisServer::start();
    let channels = vec![b"chatd:node:a".to_vec()];
    let mut sub = Driver::new(&redis.url(), Role::Subscriber { channels });
    sub.up();
    let mut publisher = Driver::new(&redis.url(), Role::Commands);
    publisher.up();
    let now = Instant::now();
    for i in 0..200u32 {
        let payload = format!("line {i}");
        publisher.link.send(now, i, &[b"PUBLISH", b"chatd:node:a", payload.as_bytes()]).unwrap();
    }
    for i in 0..200u32 {
        let LinkEvent::Reply { tag, value, .. } = publisher.next() else { panic!() };
        assert_eq!((tag, value), (i, Value::Integer(1)), "one subscriber got it");
    }
    for i in 0..200u32 {
        match sub.next() {
            LinkEvent::Message { channel, payload } => {
                assert_eq!(channel, b"chatd:node:a");
                assert_eq!(payload, format!("line {i}").into_bytes());
            }
            e => panic!("expected message {i}, got {e:?}"),
        }
    }
    // A channel added while up.
    sub.link.subscribe(Instant::now(), b"chatd:node:b").unwrap();
    assert_eq!(sub.next(), LinkEvent::Subscribed { channel: b"chatd:node:b".to_vec() });
    assert_eq!(publisher.call(&["PUBLISH", "chatd:node:b", "hi"]), Value::Integer(1));
    assert_eq!(
        sub.next(),
        LinkEvent::Message { channel: b"chatd:node:b".to_vec(), payload: b"hi".to_vec() }
    );
    sub.link.unsubscribe(Instant::now(), b"chatd:node:a").unwrap();
    // Once the unsubscription is confirmed, the channel has no subscriber.
    let deadline = Instant::now() + TIMEOUT;
    while sub.link.pending() > 0 {
        assert!(Instant::now() < deadline, "no unsubscribe confirmation");
        sub.turn();
    }
    assert_eq!(publisher.call(&["PUBLISH", "chatd:node:a", "gone"]), Value::Integer(0));
    assert_eq!(sub.next_within(Duration::from_millis(100)), None);
    assert_eq!(sub.link.stats().messages, 201);
}

#[test]
fn eval_runs_a_lua_script() {
    let redis = RedisServer::start();
    let mut d = Driver::new(&redis.url(), Role::Commands);
    d.up();
    // Pop a waiting stranger or push the caller, atomically: the shape of the matchmaking script.
    let script = "local other = redis.call('LPOP', KEYS[1]) \
                  if other then return {'matched', other} end \
                  redis.call('RPUSH', KEYS[1], ARGV[1]) return {'waiting', redis.call('LLEN', KEYS[1])}";
    let eval = |d: &mut Driver, who: &str| d.call(&["EVAL", script, "1", "chatd:{q}:wait", who]);
    let array = |items: Vec<Value>| Value::Array(Some(items));
    assert_eq!(eval(&mut d, "alice"), array(vec![bulk("waiting"), Value::Integer(1)]));
    assert_eq!(eval(&mut d, "bob"), array(vec![bulk("matched"), bulk("alice")]));
    assert!(matches!(d.call(&["EVAL", "return redis.call('NOPE')", "0"]), Value::Error(_)));
    assert!(d.link.is_ready());
}

#[test]
fn redis_killed_then_restarted() {
    let mut redis = RedisServer::start();
    let mut d = Driver::new(&redis.url(), Role::Commands);
    d.up();
    assert_eq!(d.call(&["SET", "k", "v"]), simple("OK"));
    // Frozen, Redis takes the commands into its socket buffer and answers none.
    redis.pause();
    let now = Instant::now();
    for tag in 1..=3 {
        d.link.send(now, tag, &[b"GET", b"k"]).unwrap();
    }
    for _ in 0..20 {
        d.turn();
    }
    assert!(d.link.transmit_buf().is_empty(), "the commands were written");
    redis.stop();
    match d.next() {
        LinkEvent::Down { reason: LinkError::Closed(_), failed } => assert_eq!(failed, [1, 2, 3]),
        e => panic!("expected Down with the pending tags, got {e:?}"),
    }
    // While Redis is away, each attempt fails, and the delays grow.
    let mut downs = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        if let Some(e) = d.next_within(Duration::from_millis(50)) {
            assert!(matches!(e, LinkEvent::Down { .. }), "{e:?}");
            downs += 1;
        }
    }
    // 100 ms, 200 ms, 400 ms after the first: two or three attempts in 700 ms (one on a
    // machine slow enough), never a busy loop.
    assert!((1..=3).contains(&downs), "{downs} attempts");
    redis.restart();
    let up_at = loop {
        match d.next() {
            LinkEvent::Up => break Instant::now(),
            LinkEvent::Down { .. } => {}
            e => panic!("{e:?}"),
        }
    };
    assert!(up_at - start < TIMEOUT);
    assert_eq!(d.call(&["GET", "k"]), Value::Bulk(None), "the restarted Redis is empty");
    assert_eq!(d.link.stats().ups, 2);
    assert!(d.link.stats().reconnects >= 3);
}

#[test]
fn a_hung_redis_fails_the_link_at_the_reply_deadline() {
    let redis = RedisServer::start();
    let config = LinkConfig { reply_timeout: Duration::from_millis(300), ..LinkConfig::default() };
    let mut d = Driver::with_config(&redis.url(), Role::Commands, config);
    d.up();
    redis.pause();
    let sent_at = Instant::now();
    d.link.send(sent_at, 9, &[b"PING"]).unwrap();
    match d.next() {
        LinkEvent::Down { reason: LinkError::ReplyTimeout(waited), failed } => {
            assert_eq!(failed, [9]);
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
        }
        e => panic!("expected a reply timeout, got {e:?}"),
    }
    assert!(sent_at.elapsed() < Duration::from_secs(2));
    assert_eq!(d.link.stats().timeouts, 1);
    redis.resume();
    d.up();
    assert_eq!(d.call(&["PING"]), simple("PONG"));
}
