//! One crowd across nodes: two chatd processes sharing a real redis-server (issue 10). Every
//! test starts its own Redis on a free port and its own nodes on 127.0.0.1, and checks what
//! people see.
mod util;

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use util::{message, redis::RedisServer, Chat, Server};

/// A node of the cluster named `name` on `redis`, with `extra` settings.
fn node(redis: &RedisServer, name: &str, extra: &str) -> Server {
    Server::start(&format!(
        "[chat]\nonline_interval = \"100ms\"\n{extra}\n[cluster]\nredis = \"{}\"\nnode = \"{name}\"\n",
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

#[test]
fn people_on_two_nodes_are_paired_and_chat_in_order() {
    let (_redis, a, b) = two_nodes("rate_burst = 200\nrate_per_second = 100.0");
    let mut x = Chat::connect(a.addr());
    let mut y = Chat::connect(b.addr());
    search(&mut x, &[]);
    search(&mut y, &[]);
    expect_pair(&mut x, &mut y, json!([]));
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
    let mut x = Chat::connect(a.addr());
    let mut y = Chat::connect(b.addr());
    search(&mut x, &[]);
    search(&mut y, &[]);
    expect_pair(&mut x, &mut y, json!([]));
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
    let mut x = Chat::connect(a.addr());
    let mut y = Chat::connect(b.addr());
    search(&mut x, &[]);
    search(&mut y, &[]);
    expect_pair(&mut x, &mut y, json!([]));
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
