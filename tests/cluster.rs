//! One crowd across nodes: two chatd processes sharing a real redis-server (issue 10). Every
//! test starts its own Redis on a free port and its own nodes on 127.0.0.1, and checks what
//! people see.
mod util;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use tungstenite::{Message, WebSocket};
use util::{connect_from, eventually, message, redis::RedisServer, Chat, Server, TempDir};

/// A node of the cluster named `name` on `redis`, with `extra` settings.
fn node(redis: &RedisServer, name: &str, extra: &str) -> Server {
    node_with(redis, name, extra, "max_connections_per_address = 0\naddress_search_burst = 0")
}

/// A node with `chat` settings in `[chat]` and `safety` settings in `[safety]`.
fn node_with(redis: &RedisServer, name: &str, chat: &str, safety: &str) -> Server {
    Server::start(&format!(
        "[chat]\nonline_interval = \"100ms\"\n{chat}\n[safety]\n{safety}\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\n",
        redis.url()
    ))
}

/// Waits until the node's `/healthz` answers `status`.
fn await_health(server: &Server, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.get("/healthz");
        if r.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "/healthz stayed {} ({:?})", r.status, r.text());
        thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes on one Redis, both linked.
fn two_nodes(extra: &str) -> (RedisServer, Server, Server) {
    let redis = RedisServer::start();
    let a = node(&redis, "a", extra);
    let b = node(&redis, "b", extra);
    await_health(&a, 200);
    await_health(&b, 200);
    (redis, a, b)
}

/// `a` (already searching) and `b` search; both are matched with `common`.
fn expect_pair(a: &mut Chat, b: &mut Chat, common: serde_json::Value) {
    a.expect(json!({"type": "matched", "common_interests": common}));
    b.expect(json!({"type": "matched", "common_interests": common}));
}

fn search(c: &mut Chat, interests: &[&str]) {
    c.search(interests);
    c.expect(json!({"type": "searching"}));
}

/// A person on each node, paired.
fn pair_across(a: &Server, b: &Server) -> (Chat, Chat) {
    let mut x = Chat::connect(a.addr());
    let mut y = Chat::connect(b.addr());
    search(&mut x, &[]);
    search(&mut y, &[]);
    expect_pair(&mut x, &mut y, json!([]));
    (x, y)
}

#[test]
fn people_on_two_nodes_are_paired_and_chat_in_order() {
    let (_redis, a, b) = two_nodes("rate_burst = 200\nrate_per_second = 100.0");
    let (mut x, mut y) = pair_across(&a, &b);
    for i in 0..50 {
        x.say(&format!("x{i}"));
        y.say(&format!("y{i}"));
    }
    for i in 0..50 {
        y.expect(message(&format!("x{i}")));
        x.expect(message(&format!("y{i}")));
    }
    x.send(json!({"type": "typing", "active": true}));
    y.expect(json!({"type": "typing", "active": true}));
    // A skip tells the other side `next`; leaving tells `left`.
    search(&mut x, &[]);
    y.expect(json!({"type": "partner_left", "reason": "next"}));
    let mut z = Chat::connect(b.addr());
    search(&mut z, &[]);
    expect_pair(&mut x, &mut z, json!([]));
    z.send(json!({"type": "leave"}));
    x.expect(json!({"type": "partner_left", "reason": "left"}));
    // A line never reaches anyone but the partner.
    y.expect_silence(200);
}

#[test]
fn interests_and_their_timeout_hold_across_nodes() {
    let (_redis, a, b) = two_nodes("interest_timeout = \"1500ms\"");
    let mut picky = Chat::connect(a.addr());
    search(&mut picky, &["music"]);
    // Someone without interests does not take a picky waiter.
    let mut open = Chat::connect(b.addr());
    search(&mut open, &[]);
    open.expect_silence(300);
    // A sharer does, although the open one waited longer.
    let mut sharer = Chat::connect(b.addr());
    search(&mut sharer, &["chess", "music"]);
    expect_pair(&mut picky, &mut sharer, json!(["music"]));
    // Once its interest timeout passes, a picky searcher takes anyone: the open one.
    let mut late = Chat::connect(a.addr());
    search(&mut late, &["knitting"]);
    late.expect_silence(500);
    late.expect(json!({"type": "matched", "common_interests": []}));
    open.expect(json!({"type": "matched", "common_interests": []}));
}

#[test]
fn a_parted_pair_is_not_paired_again_within_the_cooldown() {
    let (_redis, a, b) = two_nodes("rematch_cooldown = \"2s\"");
    let (mut x, mut y) = pair_across(&a, &b);
    search(&mut x, &[]);
    y.expect(json!({"type": "partner_left", "reason": "next"}));
    search(&mut y, &[]);
    // Both wait; a third person takes the longest-waiting one.
    x.expect_silence(300);
    let mut z = Chat::connect(b.addr());
    search(&mut z, &[]);
    expect_pair(&mut x, &mut z, json!([]));
    // After the cooldown, x and y meet again.
    search(&mut x, &[]);
    z.expect(json!({"type": "partner_left", "reason": "next"}));
    let waited = Instant::now();
    expect_pair(&mut x, &mut y, json!([]));
    assert!(waited.elapsed() < Duration::from_secs(5));
}

#[test]
fn nobody_is_paired_with_themself_and_the_online_count_is_global() {
    let (_redis, a, b) = two_nodes("");
    let mut x = Chat::connect(a.addr());
    search(&mut x, &[]);
    search(&mut x, &[]);
    x.expect_silence(300);
    let _y = Chat::connect(a.addr());
    let mut z = Chat::connect(b.addr());
    // Three people on two nodes: each node's count reaches 3.
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in [&mut x, &mut z] {
        loop {
            let v = c.next_json(deadline).expect("an online count of 3 within 5 s");
            if v["type"] == "online" && v["count"] == 3 {
                break;
            }
        }
    }
}

#[test]
fn a_killed_node_is_noticed_within_5s_and_its_searchers_are_never_matched() {
    let (_redis, a, b) = two_nodes("");
    let (mut x, _y) = pair_across(&a, &b);
    let mut ghost = Chat::connect(b.addr());
    search(&mut ghost, &[]);
    thread::sleep(Duration::from_millis(200));
    b.signal(libc::SIGKILL);
    let killed = Instant::now();
    x.expect(json!({"type": "partner_left", "reason": "disconnected"}));
    assert!(killed.elapsed() < Duration::from_secs(5), "told after {:?}", killed.elapsed());
    // The dead node's searcher is never matched: a new searcher waits for a live one.
    let mut n = Chat::connect(a.addr());
    search(&mut n, &[]);
    n.expect_silence(500);
    let mut m = Chat::connect(a.addr());
    search(&mut m, &[]);
    expect_pair(&mut n, &mut m, json!([]));
}

#[test]
fn redis_lost_and_back_empty_pairing_resumes_and_local_chats_go_on() {
    let (mut redis, a, b) = two_nodes("");
    let mut x = Chat::connect(a.addr());
    let mut y = Chat::connect(a.addr());
    search(&mut x, &[]);
    search(&mut y, &[]);
    expect_pair(&mut x, &mut y, json!([]));
    redis.stop();
    await_health(&a, 503);
    await_health(&b, 503);
    assert!(a.get("/healthz").text().contains("redis"), "{}", a.get("/healthz").text());
    // The page is still served, chats on one node go on, and a search waits and says why.
    assert_eq!(a.get("/").status, 200);
    x.say("still here");
    y.expect(message("still here"));
    let mut s = Chat::connect(b.addr());
    s.search(&[]);
    s.expect(json!({"type": "searching"}));
    s.expect(json!({"type": "matching", "available": false}));
    redis.restart();
    await_health(&a, 200);
    await_health(&b, 200);
    s.expect(json!({"type": "matching", "available": true}));
    let mut t = Chat::connect(a.addr());
    search(&mut t, &[]);
    expect_pair(&mut s, &mut t, json!([]));
    t.say("back");
    s.expect(message("back"));
}

#[test]
fn a_chat_resumes_on_the_other_node_with_the_lines_in_order() {
    let (_redis, a, b) = two_nodes("rate_burst = 200\nrate_per_second = 100.0");
    // X on A, Y on B. X drops and comes back on B, where its partner is.
    let (x, mut y) = pair_across(&a, &b);
    let token = x.token();
    x.reset();
    y.expect(json!({"type": "partner_away"}));
    for line in ["one", "two", "three"] {
        y.say(line);
    }
    let mut x = Chat::connect(b.addr());
    x.resume(&token);
    x.expect(json!({"type": "resumed", "resume_token": x.token(), "state": "chatting"}));
    for line in ["one", "two", "three"] {
        x.expect(message(line));
    }
    y.expect(json!({"type": "partner_back"}));
    // Lines sent while the session moves arrive once each, in order, both ways.
    for i in 0..20 {
        y.say(&format!("y{i}"));
        x.say(&format!("x{i}"));
    }
    for i in 0..20 {
        x.expect(message(&format!("y{i}")));
        y.expect(message(&format!("x{i}")));
    }
    // Again, back to A (its partner now on the other node), with the new token.
    let token = x.token();
    let mut x = {
        let old = x;
        old.reset();
        y.expect(json!({"type": "partner_away"}));
        y.say("four");
        let mut x = Chat::connect(a.addr());
        x.resume(&token);
        x
    };
    x.expect_type("resumed");
    x.expect(message("four"));
    y.expect(json!({"type": "partner_back"}));
    x.say("done");
    y.expect(message("done"));
    // The partner leaves: told on the resumed side.
    y.send(json!({"type": "leave"}));
    x.expect(json!({"type": "partner_left", "reason": "left"}));
    let resumes = |s: &Server| s.metrics()["chatd_resumes_total"];
    assert_eq!(resumes(&a) + resumes(&b), 2.0);
}

#[test]
fn both_drop_and_resume_on_each_others_node_at_once_and_the_chat_goes_on() {
    let (_redis, a, b) = two_nodes("");
    for _ in 0..3 {
        let (x, y) = pair_across(&a, &b);
        let (tx, ty) = (x.token(), y.token());
        x.reset();
        y.reset();
        // Each comes back on the other's node, the two resumes in flight together.
        let mut x = Chat::connect(b.addr());
        let mut y = Chat::connect(a.addr());
        x.resume(&tx);
        y.resume(&ty);
        x.expect_type("resumed");
        y.expect_type("resumed");
        x.say("from x");
        assert_eq!(next_line(&mut y), message("from x"));
        y.say("from y");
        assert_eq!(next_line(&mut x), message("from y"));
    }
}

/// The next message that is not the partner going away or coming back.
fn next_line(c: &mut Chat) -> serde_json::Value {
    loop {
        let v = c.recv();
        if v["type"] != "partner_away" && v["type"] != "partner_back" {
            return v;
        }
    }
}

#[test]
fn a_searcher_resumes_its_place_on_the_other_node_and_a_used_token_fails_everywhere() {
    let (_redis, a, b) = two_nodes("");
    let mut s = Chat::connect(a.addr());
    let token = s.token();
    search(&mut s, &["chess"]);
    s.reset();
    // Once the node has seen the drop, nobody is matched with it.
    util::eventually("the drop", || a.metrics()["chatd_resume_drops_total"] == 1.0);
    let mut t = Chat::connect(b.addr());
    search(&mut t, &["chess"]);
    t.expect_silence(300);
    let mut s = Chat::connect(b.addr());
    s.resume(&token);
    s.expect(json!({"type": "resumed", "resume_token": s.token(), "state": "searching"}));
    expect_pair(&mut s, &mut t, json!(["chess"]));
    for node in [&a, &b] {
        let mut u = Chat::connect(node.addr());
        u.resume(&token);
        u.expect_error("resume_failed");
    }
}

#[test]
fn a_session_on_a_node_that_dies_is_lost_gracefully() {
    let (_redis, a, b) = two_nodes("");
    let (mut x, y) = pair_across(&a, &b);
    let token = y.token();
    y.reset();
    x.expect(json!({"type": "partner_away"}));
    b.signal(libc::SIGKILL);
    x.expect(json!({"type": "partner_left", "reason": "disconnected"}));
    let mut z = Chat::connect(a.addr());
    z.resume(&token);
    z.expect_error("resume_failed");
}

/// A client of the random test, with what it has seen.
struct Person {
    chat: Chat,
    node: usize,
    /// Chats this person has been matched into (its own count).
    chats: u32,
    /// In a chat (matched, no `partner_left` since), as this person's page sees it.
    in_chat: bool,
    /// A `search` was sent and its `searching` not yet seen: messages of the old chat may
    /// still arrive and are ignored, as the page does.
    awaiting_searching: u32,
    /// The sender (person, chat number) of the lines received in the current chat.
    partner: Option<(usize, u32)>,
    /// Lines sent: the next sequence number.
    seq: u32,
    /// The last sequence number received from the current partner.
    last_seq: Option<u32>,
}

impl Person {
    /// A new person on `server`, which is node number `node`, before any search.
    fn connect(server: &Server, node: usize) -> Person {
        Person {
            chat: Chat::connect(server.addr()),
            node,
            chats: 0,
            in_chat: false,
            awaiting_searching: 0,
            partner: None,
            seq: 0,
            last_seq: None,
        }
    }
}

/// Person `i`'s connection is reset; a new one on `server` (node `node`) resumes its session.
/// What the old connection had not read yet is lost with it, so the person's view follows the
/// state `resumed` reports.
/// Returns whether the session was resumed (an idle one is not kept).
fn resume_elsewhere(people: &mut [Person], i: usize, server: &Server, node: usize) -> bool {
    let token = people[i].chat.token();
    let old = std::mem::replace(&mut people[i].chat, Chat::connect(server.addr()));
    old.reset();
    let p = &mut people[i];
    p.chat.resume(&token);
    let resumed = p.chat.recv();
    if resumed["type"] == "error" {
        // Idle (its chat had ended, no search): nothing waited for it. A new person.
        assert_eq!(resumed["code"], "resume_failed", "{resumed}");
        assert!(!p.in_chat, "person {i}: a chat was not kept: {resumed}");
        p.node = node;
        return false;
    }
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    p.chat.welcome["resume_token"] = resumed["resume_token"].clone();
    p.node = node;
    let chatting = resumed["state"] == "chatting";
    if chatting && !p.in_chat {
        // Matched while the `matched` was on its way to the old connection.
        p.chats += 1;
        p.partner = None;
        p.last_seq = None;
    }
    p.in_chat = chatting;
    true
}

/// xorshift64*: seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Reads everything that has arrived for person `i` and checks the single-process rules as a
/// client can see them: nobody meets themself, a chat's lines come from one partner in order,
/// never outside a chat, never twice.
fn drain(people: &mut [Person], i: usize, seen: &mut (u32, u32)) {
    loop {
        let Some(v) = people[i].chat.next_json(Instant::now()) else { return };
        let p = &mut people[i];
        match v["type"].as_str().unwrap_or("") {
            "searching" => p.awaiting_searching = p.awaiting_searching.saturating_sub(1),
            _ if p.awaiting_searching > 0 => {}
            "matched" => {
                assert!(!p.in_chat, "person {i}: matched while in a chat");
                p.in_chat = true;
                p.chats += 1;
                seen.0 += 1;
                p.partner = None;
                p.last_seq = None;
            }
            "partner_left" => {
                assert!(p.in_chat, "person {i}: partner_left outside a chat: {v}");
                p.in_chat = false;
            }
            "message" => {
                assert!(p.in_chat, "person {i}: a line outside a chat: {v}");
                let text = v["text"].as_str().unwrap();
                let parts: Vec<u32> = text.split(':').map(|s| s.parse().unwrap()).collect();
                let (from, their_chat, seq) = (parts[0] as usize, parts[1], parts[2]);
                assert_ne!(from, i, "person {i} got its own line: paired with itself");
                match p.partner {
                    None => p.partner = Some((from, their_chat)),
                    Some(partner) => assert_eq!(
                        partner,
                        (from, their_chat),
                        "person {i}: lines from two partners in one chat"
                    ),
                }
                assert!(p.last_seq.is_none_or(|l| seq > l), "person {i}: {text} out of order");
                p.last_seq = Some(seq);
                seen.1 += 1;
            }
            // The partner dropped and came back (or will): the chat goes on.
            "partner_away" | "partner_back" => assert!(p.in_chat, "person {i}: {v} outside a chat"),
            "typing" | "online" | "welcome" | "matching" => {}
            // A line sent before this client read its `partner_left` finds no chat: the page
            // meets the same race.
            "error" => assert_eq!(v["code"], "not_in_chat", "person {i}: {v}"),
            other => panic!("person {i}: unexpected {other}: {v}"),
        }
    }
}

#[test]
fn seeded_random_crowd_on_two_nodes_keeps_the_rules() {
    for seed in [1_u64, 42] {
        let (_redis, a, b) =
            two_nodes("rate_burst = 1000\nrate_per_second = 1000.0\nrematch_cooldown = \"200ms\"");
        let nodes = [&a, &b];
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut people: Vec<Person> = (0..10)
            .map(|n| {
                let node = n % 2;
                Person::connect(nodes[node], node)
            })
            .collect();
        let interests = [&[][..], &["music"][..], &["chess"][..], &["music", "chess"][..]];
        // Matches and lines seen: the walk must exercise what it checks.
        let mut seen = (0, 0);
        let mut resumes = 0;
        for step in 0..300 {
            let i = rng.below(people.len() as u64) as usize;
            match rng.below(10) {
                0..=2 => {
                    let pick = interests[rng.below(4) as usize];
                    let p = &mut people[i];
                    p.chat.search(pick);
                    p.awaiting_searching += 1;
                    p.in_chat = false;
                }
                3..=6 => {
                    let p = &mut people[i];
                    if p.in_chat {
                        p.seq += 1;
                        let line = format!("{i}:{}:{}", p.chats, p.seq);
                        p.chat.say(&line);
                    }
                }
                7 => {
                    // Leave, then search again: the `searching` marks where the old chat ends
                    // in the stream (a leave has no answer of its own).
                    drain(&mut people, i, &mut seen);
                    let p = &mut people[i];
                    p.chat.send(json!({"type": "leave"}));
                    p.chat.search(&[]);
                    p.awaiting_searching += 1;
                    p.in_chat = false;
                }
                8 => {
                    drain(&mut people, i, &mut seen);
                    let node = rng.below(2) as usize;
                    let quiet = people[i].awaiting_searching == 0;
                    if quiet && rng.below(2) == 0 {
                        // A network drop, and a resume on a random node: the chat (or the
                        // search) goes on where it was.
                        resumes += u32::from(resume_elsewhere(&mut people, i, nodes[node], node));
                    } else {
                        // The tab closed: a new person on a random node.
                        let old =
                            std::mem::replace(&mut people[i], Person::connect(nodes[node], node));
                        let mut old = old.chat;
                        old.ws.close(None).expect("close");
                    }
                }
                _ => thread::sleep(Duration::from_millis(5)),
            }
            // Reading costs a timed-out read per person: everyone every 20 steps (sockets
            // buffer meanwhile), the one who acted every step.
            if step % 20 == 19 {
                for j in 0..people.len() {
                    drain(&mut people, j, &mut seen);
                }
            } else {
                drain(&mut people, i, &mut seen);
            }
        }
        // Settle, then every pair still chatting exchanges a last line each way: it arrives
        // exactly once, at the partner its lines came from.
        thread::sleep(Duration::from_millis(300));
        for j in 0..people.len() {
            drain(&mut people, j, &mut seen);
        }
        let chatting: Vec<usize> = (0..people.len()).filter(|&j| people[j].in_chat).collect();
        for &j in &chatting {
            let p = &mut people[j];
            p.seq += 1;
            let line = format!("{j}:{}:{}", p.chats, p.seq);
            p.chat.say(&line);
        }
        thread::sleep(Duration::from_millis(300));
        for j in 0..people.len() {
            drain(&mut people, j, &mut seen);
        }
        for &j in &chatting {
            if let Some((partner, _)) = people[j].partner {
                if people[partner].in_chat {
                    assert_eq!(
                        people[partner].partner.map(|(p, _)| p),
                        Some(j),
                        "seed {seed}: {j} and {partner} disagree about their chat"
                    );
                }
            }
        }
        let nodes_used: std::collections::BTreeSet<usize> = people.iter().map(|p| p.node).collect();
        assert_eq!(nodes_used.len(), 2, "seed {seed}: the crowd spans both nodes");
        assert!(seen.0 >= 20 && seen.1 >= 15, "seed {seed}: only {seen:?} matches and lines");
        assert!(resumes >= 3, "seed {seed}: only {resumes} resumes");
    }
}

// ---- Trust and safety across nodes (issue 13, item 8) ----

/// Two nodes on one Redis sharing one `address_key_file` (so an address has one hash on
/// both), with `chat` and `safety` settings; both linked. The folder holds the key.
fn two_safe_nodes(chat: &str, safety: &str) -> (RedisServer, TempDir, Server, Server) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("key");
    let key = dir.write("address.key", "0123456789abcdef0123456789abcdef\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let safety = format!("address_key_file = \"{}\"\n{safety}", key.display());
    let redis = RedisServer::start();
    let a = node_with(&redis, "a", chat, &safety);
    let b = node_with(&redis, "b", chat, &safety);
    await_health(&a, 200);
    await_health(&b, 200);
    (redis, dir, a, b)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A WebSocket upgrade from `from`: the socket, or the refusal's status code.
fn upgrade_from(from: Ipv4Addr, server: &Server) -> Result<WebSocket<TcpStream>, u16> {
    let SocketAddr::V4(to) = server.addr() else { panic!("an IPv4 server") };
    match tungstenite::client(format!("ws://{}/ws", server.addr()), connect_from(from, to)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("upgrade from {from}: {e}"),
    }
}

/// A chat client from `from`, its welcome read.
fn chat_from(from: Ipv4Addr, server: &Server) -> Chat {
    let ws = upgrade_from(from, server).expect("upgrade");
    ws.get_ref().set_nodelay(true).expect("TCP_NODELAY");
    let mut c = Chat { ws, welcome: serde_json::Value::Null };
    c.welcome = c.recv_any();
    assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
    c
}

/// `first` searches, then `second`: they meet.
fn meet(first: &mut Chat, second: &mut Chat) {
    search(first, &[]);
    search(second, &[]);
    expect_pair(first, second, json!([]));
}

/// `c` reports its partner (or last partner) and is told `reported`.
fn report(c: &mut Chat, reason: &str) {
    c.send(json!({"type": "report", "reason": reason}));
    c.expect(json!({"type": "reported"}));
}

fn partner_left(c: &mut Chat, reason: &str) {
    c.expect(json!({"type": "partner_left", "reason": reason}));
}

/// Three reporters each chat with `target` and report it: the first during the chat, the
/// second after leaving it, the third after the target left.
fn report_three_times(target: &mut Chat, reporters: &mut [Chat]) {
    let [r1, r2, r3] = reporters else { panic!("three reporters") };
    meet(target, r1);
    report(r1, "spam");
    partner_left(target, "next");
    meet(target, r2);
    r2.send(json!({"type": "leave"}));
    partner_left(target, "left");
    report(r2, "abuse");
    meet(target, r3);
    target.send(json!({"type": "leave"}));
    partner_left(r3, "left");
    report(r3, "other");
}

/// The keys of Redis matching `pattern`, each with its time to live in ms.
fn keys_with_ttl(redis: &RedisServer, pattern: &str) -> Vec<(String, i64)> {
    let keys = redis.cli(&["--scan", "--pattern", pattern]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .map(|k| {
            let ttl = redis.cli(&["PTTL", k]).parse().expect("PTTL is a number");
            (k.to_owned(), ttl)
        })
        .collect()
}

fn shadow_bans(nodes: &[&Server]) -> f64 {
    nodes.iter().map(|n| n.metrics()["chatd_shadow_bans_total"]).sum()
}

#[test]
fn a_shadow_ban_made_on_one_node_holds_on_the_other() {
    let (redis, _key, a, b) = two_safe_nodes("rematch_cooldown = \"10ms\"", "");
    // The target chats on node A with reporters on both nodes (one across nodes).
    let mut target = chat_from(ip(9), &a);
    let mut reporters = vec![chat_from(ip(2), &a), chat_from(ip(3), &b), chat_from(ip(4), &a)];
    report_three_times(&mut target, &mut reporters);
    eventually("the ban", || shadow_bans(&[&a, &b]) == 1.0);
    assert_eq!(a.metrics()["chatd_shadow_bans_total"], 1.0, "the node of the third report");
    assert!(a.stderr().contains("shadow ban"), "{}", a.stderr());
    // In Redis: one ban, with its TTL (ban_duration, 24 h), under a hash, not the address.
    let bans = keys_with_ttl(&redis, "*:ban:*");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert!(bans[0].1 > 23 * 3600 * 1000 && bans[0].1 <= 24 * 3600 * 1000, "{bans:?}");
    assert!(!bans[0].0.contains("127.0.0"), "{bans:?}");
    drop(target);

    // A second address, on node B, reported from both nodes.
    let mut other_banned = chat_from(ip(10), &b);
    report_three_times(&mut other_banned, &mut reporters);
    eventually("the second ban", || shadow_bans(&[&a, &b]) == 2.0);
    assert_eq!(keys_with_ttl(&redis, "*:ban:*").len(), 2);

    // The target comes back on node B and searches first; a normal person on B does not get
    // it, and a normal person on A takes the normal one, not the target.
    let mut target = chat_from(ip(9), &b);
    search(&mut target, &[]);
    let mut normal_b = chat_from(ip(5), &b);
    search(&mut normal_b, &[]);
    target.expect_silence(300);
    normal_b.expect_silence(0);
    let mut normal_a = chat_from(ip(6), &a);
    search(&mut normal_a, &[]);
    expect_pair(&mut normal_b, &mut normal_a, json!([]));
    target.expect_silence(200);
    // The other banned address does get it.
    search(&mut other_banned, &[]);
    expect_pair(&mut target, &mut other_banned, json!([]));
    other_banned.say("banned together");
    target.expect(message("banned together"));
    for node in [&a, &b] {
        assert!(!node.stderr().contains("127.0.0.9"), "{}", node.stderr());
    }
}

#[test]
fn a_block_made_on_one_node_keeps_the_pair_apart_on_the_other() {
    let (redis, _key, a, b) = two_safe_nodes("rematch_cooldown = \"10ms\"", "");
    let mut x = chat_from(ip(2), &a);
    let mut y = chat_from(ip(3), &a);
    meet(&mut x, &mut y);
    x.send(json!({"type": "block"}));
    x.expect(json!({"type": "blocked"}));
    partner_left(&mut y, "next");
    assert_eq!(a.metrics()["chatd_blocks_total"], 1.0);
    // In Redis (where the node sends it after answering `blocked`), for block_duration (24 h).
    let mut blocks = Vec::new();
    eventually("the block in Redis", || {
        blocks = keys_with_ttl(&redis, "*:blk:*");
        !blocks.is_empty()
    });
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert!(blocks[0].1 > 23 * 3600 * 1000, "{blocks:?}");
    assert!(!blocks[0].0.contains("127.0.0"), "{blocks:?}");
    // Both come back on node B (new connections: no rematch cooldown between them) and search.
    let mut x2 = chat_from(ip(2), &b);
    let mut y2 = chat_from(ip(3), &b);
    search(&mut x2, &[]);
    search(&mut y2, &[]);
    x2.expect_silence(400);
    y2.expect_silence(0);
    // A third person, on A, meets the one who waited longest; the other still waits.
    let mut z = chat_from(ip(4), &a);
    search(&mut z, &[]);
    expect_pair(&mut x2, &mut z, json!([]));
    y2.expect_silence(200);
    let mut w = chat_from(ip(5), &b);
    search(&mut w, &[]);
    expect_pair(&mut y2, &mut w, json!([]));
    assert_eq!(b.metrics()["chatd_blocks_total"], 0.0);
}

/// What a fresh connection from `from` to `server` sees in its first `ms`: `Ok` with the chat
/// if it stays open, `Err` with the close code and reason if the server closes it.
fn stays_open(from: Ipv4Addr, server: &Server, ms: u64) -> Result<Chat, (u16, String)> {
    let mut c = chat_from(from, server);
    let deadline = Instant::now() + Duration::from_millis(ms);
    while let Some(m) = c.read_until(deadline) {
        match m {
            Message::Close(Some(f)) => return Err((u16::from(f.code), f.reason.into_owned())),
            Message::Close(None) => return Err((0, String::new())),
            Message::Text(t) => assert!(t.contains("\"online\""), "unexpected {t}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok(c)
}

#[test]
fn connections_per_address_are_counted_across_nodes() {
    let (redis, _key, a, b) = two_safe_nodes("", "max_connections_per_address = 2");
    let mut held = vec![chat_from(ip(7), &a), chat_from(ip(7), &a)];
    // Node A tells Redis after the welcome: wait until the count is there.
    eventually("the count in Redis", || connections_in_redis(&redis) == 2);
    // On one node, the cap refuses the upgrade.
    assert_eq!(upgrade_from(ip(7), &a).err(), Some(429));
    // On the other, the connection opens and is closed right after its welcome; that node then
    // refuses the address's upgrades with 429 too, for a while.
    let crowded = (1008, "too many connections from your address".to_owned());
    assert_eq!(stays_open(ip(7), &b, 2000).err(), Some(crowded.clone()));
    assert_eq!(upgrade_from(ip(7), &b).err(), Some(429));
    // Another address is another person.
    let _other = stays_open(ip(8), &b, 300).expect("another address stays");
    // One of the two closes: a place frees up on its node at once.
    let mut first = held.remove(0);
    first.ws.close(None).expect("close");
    while first.ws.read().is_ok() {}
    eventually("the count in Redis", || connections_in_redis(&redis) == 2);
    let mut kept = stays_open(ip(7), &a, 300).expect("the freed place");
    // Two again: a third is refused on either node (429, or a close right after it opens).
    eventually("the counts in Redis", || connections_in_redis(&redis) == 3);
    assert_eq!(upgrade_from(ip(7), &a).err(), Some(429));
    match upgrade_from(ip(7), &b) {
        Err(status) => assert_eq!(status, 429),
        Ok(mut ws) => {
            ws.get_ref().set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            let code = loop {
                match ws.read().expect("a close within 2 s") {
                    Message::Close(f) => break f.map(|f| u16::from(f.code)),
                    _ => continue,
                }
            };
            assert_eq!(code, Some(crowded.0));
        }
    }
    // The two kept were never closed.
    search(&mut kept, &[]);
    search(&mut held[0], &[]);
    expect_pair(&mut kept, &mut held[0], json!([]));
}

/// Connections of every address on every node, as Redis counts them.
fn connections_in_redis(redis: &RedisServer) -> u64 {
    let keys = redis.cli(&["--scan", "--pattern", "*:ac:*"]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .flat_map(|k| {
            let fields = redis.cli(&["HVALS", k]);
            fields.lines().map(|v| v.parse::<u64>().expect("a count")).collect::<Vec<_>>()
        })
        .sum()
}
