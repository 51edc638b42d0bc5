//! Trust and safety at the door (issue 13, items 4 and 5): the per-address WebSocket cap (429)
//! and the operator's ban list (403), with its reload. Several 127.0.0.x source addresses play
//! different people.

mod util;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use serde_json::json;
use tungstenite::WebSocket;
use util::{connect_from, eventually, Chat, Server, TempDir};

/// A WebSocket upgrade from `from`: the socket, or the refusal's status code.
fn upgrade_from(from: Ipv4Addr, server: &Server) -> Result<WebSocket<TcpStream>, u16> {
    let SocketAddr::V4(to) = server.addr() else { panic!("an IPv4 server") };
    let stream = connect_from(from, to);
    match tungstenite::client(format!("ws://{}/ws", server.addr()), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("upgrade from {from}: {e}"),
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn log_has(server: &Server, needle: &str) -> bool {
    server.stderr().lines().any(|l| l.contains(needle))
}

#[test]
fn one_address_gets_429_past_its_cap_and_others_are_not_affected() {
    let server = Server::start("[safety]\nmax_connections_per_address = 3");
    let mut held: Vec<_> =
        (0..3).map(|_| upgrade_from(ip(2), &server).expect("under the cap")).collect();
    assert_eq!(upgrade_from(ip(2), &server).err(), Some(429));
    // Another address is another person.
    let other = upgrade_from(ip(3), &server).expect("another address");
    // One closes: its place is free again.
    let mut first = held.remove(0);
    first.close(None).expect("close");
    while first.read().is_ok() {}
    eventually("the place to free up", || match upgrade_from(ip(2), &server) {
        Ok(ws) => {
            held.push(ws);
            true
        }
        Err(_) => false,
    });
    assert_eq!(upgrade_from(ip(2), &server).err(), Some(429));
    let m = server.metrics();
    assert!(m["chatd_websockets_refused_total{reason=\"per_address\"}"] >= 2.0);
    drop(other);
}

#[test]
fn a_banned_address_gets_403_and_the_list_is_reloaded_on_sighup() {
    let dir = TempDir::new("bans");
    let bans = dir.write("bans", "# two spammers\n127.0.0.2\n127.0.0.16/30 # a range\n");
    let server = Server::start(&format!(
        "log_level = \"info\"\n[safety]\nban_file = \"{}\"",
        bans.display()
    ));
    for banned in [2, 16, 19] {
        assert_eq!(upgrade_from(ip(banned), &server).err(), Some(403), "127.0.0.{banned}");
    }
    for free in [3, 20] {
        upgrade_from(ip(free), &server).expect("not banned");
    }
    // A plain GET of /ws tells a banned page why its WebSocket failed.
    let SocketAddr::V4(to) = server.addr() else { unreachable!() };
    let mut raw = connect_from(ip(2), to);
    use std::io::{Read, Write};
    write!(raw, "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr())
        .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(server.metrics()["chatd_websockets_refused_total{reason=\"banned\"}"], 4.0);

    // Unbanned by editing the file and reloading.
    dir.write("bans", "127.0.0.3\n");
    server.signal(libc::SIGHUP);
    eventually("the reload", || log_has(&server, "reloaded"));
    upgrade_from(ip(2), &server).expect("unbanned");
    assert_eq!(upgrade_from(ip(3), &server).err(), Some(403));
    // A bad line is refused by file and line, and the list in force stays.
    dir.write("bans", "127.0.0.4\nnot-an-address\n");
    server.signal(libc::SIGHUP);
    eventually("the failed reload", || log_has(&server, "reload failed"));
    let bans_line = format!("{}:2: `not-an-address`", bans.display());
    assert!(log_has(&server, &bans_line), "{}", server.stderr());
    assert_eq!(upgrade_from(ip(3), &server).err(), Some(403));
    upgrade_from(ip(4), &server).expect("the bad file was not applied");
}

#[test]
fn a_bad_ban_file_or_key_file_stops_the_start_with_the_reason() {
    let dir = TempDir::new("bad");
    let bans = dir.write("bans", "10.0.0.1/8\n");
    let cfg = dir.write("a.toml", &format!("[safety]\nban_file = \"{}\"", bans.display()));
    let out = util::run_chatd(&["-t", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = &out.stderr;
    assert!(err.contains(&format!("{}:1:", bans.display())) && err.contains("host bits"), "{err}");
    let key = dir.write("key", "too short");
    let cfg = dir.write("b.toml", &format!("[safety]\naddress_key_file = \"{}\"", key.display()));
    let out = util::run_chatd(&["-t", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("safety.address_key_file"), "{}", out.stderr);
}

/// A chat client from `from`, its welcome read.
fn chat_from(from: Ipv4Addr, server: &Server) -> Chat {
    let ws = upgrade_from(from, server).expect("upgrade");
    let mut c = Chat { ws, welcome: serde_json::Value::Null };
    c.welcome = c.recv_any();
    assert_eq!(c.welcome["type"], "welcome");
    c
}

#[test]
fn searches_are_budgeted_per_address_across_its_connections() {
    let server =
        Server::start("[safety]\naddress_search_burst = 12\naddress_searches_per_second = 0.01");
    let mut mine: Vec<Chat> = (0..3).map(|_| chat_from(ip(5), &server)).collect();
    // 12 searches among three connections (4 each, well within each one's own 20), then no more.
    for i in 0..12 {
        // Each its own topic: they do not meet one another.
        let topic = format!("topic {}", i % 3);
        let c = &mut mine[i % 3];
        c.search(&[topic.as_str()]);
        c.expect(json!({"type": "searching"}));
    }
    mine[0].search(&[]);
    mine[0].expect_error("rate_limited");
    // A new connection of the same address shares the spent budget; another address does not.
    let mut again = chat_from(ip(5), &server);
    again.search(&[]);
    again.expect_error("rate_limited");
    let mut other = chat_from(ip(6), &server);
    other.search(&[]);
    other.expect(json!({"type": "searching"}));
}

// ---- Reports, shadow bans, blocks, spam and proof of work (issue 13, items 1, 2, 3 and 6) ----

/// `{"type":"search"}`, answered with `searching`.
fn search(c: &mut Chat) {
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
}

fn matched(c: &mut Chat) {
    c.expect(json!({"type": "matched", "common_interests": []}));
}

/// `first` searches, then `second`: they meet.
fn meet(first: &mut Chat, second: &mut Chat) {
    search(first);
    search(second);
    matched(first);
    matched(second);
}

/// `c` reports its partner (or last partner) for `reason` and is told `reported`.
fn report(c: &mut Chat, reason: &str) {
    c.send(json!({"type": "report", "reason": reason}));
    c.expect(json!({"type": "reported"}));
}

fn partner_left(c: &mut Chat, reason: &str) {
    c.expect(json!({"type": "partner_left", "reason": reason}));
}

/// Three reporters each chat with `target` and report it for `reasons`: the first during the
/// chat (which ends it for the target as a skip does), the second after leaving, the third
/// after the target left.
fn report_three_times(target: &mut Chat, reporters: &mut [Chat], reasons: [&str; 3]) {
    let [r1, r2, r3] = reporters else { panic!("three reporters") };
    meet(target, r1);
    report(r1, reasons[0]);
    partner_left(target, "next");
    meet(target, r2);
    r2.send(json!({"type": "leave"}));
    partner_left(target, "left");
    report(r2, reasons[1]);
    meet(target, r3);
    target.send(json!({"type": "leave"}));
    partner_left(r3, "left");
    report(r3, reasons[2]);
    // The reporters are idle: nothing more comes (no `searching`: their page searches).
    for r in [r1, r2, r3] {
        r.expect_silence(50);
    }
}

/// The `shadow ban` lines of a server with `log_format = "json"`.
fn ban_lines(server: &Server) -> Vec<serde_json::Value> {
    server
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "shadow ban")
        .collect()
}

/// The short hash (8 lowercase hex digits) a `shadow ban` line names.
fn banned_client(line: &serde_json::Value) -> String {
    let short = line["client"].as_str().unwrap_or_else(|| panic!("no client in {line}"));
    assert!(
        short.len() == 8 && short.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{line}"
    );
    short.to_owned()
}

fn metric(server: &Server, series: &str) -> f64 {
    let m = server.metrics();
    *m.get(series).unwrap_or_else(|| panic!("no {series} in the metrics"))
}

#[test]
fn three_reports_shadow_ban_an_address_which_then_meets_only_banned_people() {
    let server = Server::start("log_format = \"json\"\n[chat]\nrematch_cooldown = \"10ms\"");
    let mut target = chat_from(ip(9), &server);
    let mut reporters: Vec<Chat> = [2, 3, 4].map(|n| chat_from(ip(n), &server)).into();
    report_three_times(&mut target, &mut reporters, ["spam", "abuse", "underage"]);
    let m = server.metrics();
    assert_eq!(m["chatd_shadow_bans_total"], 1.0);
    for (reason, n) in [("spam", 1.0), ("abuse", 1.0), ("underage", 1.0), ("other", 0.0)] {
        assert_eq!(m[&format!("chatd_reports_total{{reason=\"{reason}\"}}")], n, "{reason}");
    }
    let bans = ban_lines(&server);
    assert_eq!(bans.len(), 1, "{}", server.stderr());
    assert_eq!(bans[0]["reports"], 3, "{}", bans[0]);
    let target_short = banned_client(&bans[0]);

    // A second address, banned the same way (the same three reporters).
    let mut other_banned = chat_from(ip(10), &server);
    report_three_times(&mut other_banned, &mut reporters, ["other"; 3]);
    assert_eq!(metric(&server, "chatd_shadow_bans_total"), 2.0);
    assert_eq!(metric(&server, "chatd_reports_total{reason=\"other\"}"), 3.0);
    let bans = ban_lines(&server);
    assert_eq!(bans.len(), 2);
    assert_ne!(banned_client(&bans[1]), target_short, "two addresses, two hashes");

    // The target searches as anyone does and is told nothing else; a normal person searching
    // after it does not get it, although it waited longer.
    target.expect_silence(50);
    search(&mut target);
    let mut normal = chat_from(ip(5), &server);
    search(&mut normal);
    target.expect_silence(300);
    normal.expect_silence(0);
    // Another banned address does get it.
    search(&mut other_banned);
    matched(&mut other_banned);
    matched(&mut target);
    other_banned.say("we are the banned ones");
    target.expect(util::message("we are the banned ones"));
    // The normal one meets the next normal one.
    normal.expect_silence(0);
    let mut next = chat_from(ip(6), &server);
    search(&mut next);
    matched(&mut next);
    matched(&mut normal);

    // The log names the bans by hash only.
    let log = server.stderr();
    assert!(log.contains("shadow ban"), "{log}");
    for raw in ["127.0.0.9", "127.0.0.10"] {
        assert!(!log.contains(raw), "the log holds the address {raw}:\n{log}");
    }
}

#[test]
fn a_blocked_pair_is_never_paired_again_while_others_are() {
    let server = Server::start("[chat]\nrematch_cooldown = \"50ms\"");
    let mut a = chat_from(ip(2), &server);
    let mut b = chat_from(ip(3), &server);
    meet(&mut a, &mut b);
    a.send(json!({"type": "block"}));
    a.expect(json!({"type": "blocked"}));
    partner_left(&mut b, "next");
    a.expect_silence(0);
    // Both search again; the cooldown ends within the wait, the block does not.
    search(&mut a);
    search(&mut b);
    a.expect_silence(400);
    b.expect_silence(0);
    // A third person meets the one who waited longest.
    let mut c = chat_from(ip(4), &server);
    search(&mut c);
    matched(&mut c);
    matched(&mut a);
    b.expect_silence(0);
    // It is the address that is blocked: A again, on a new connection, still does not meet B.
    drop(a);
    let mut a2 = chat_from(ip(2), &server);
    search(&mut a2);
    a2.expect_silence(300);
    b.expect_silence(0);
    let mut d = chat_from(ip(5), &server);
    search(&mut d);
    matched(&mut d);
    matched(&mut b);
    assert_eq!(metric(&server, "chatd_blocks_total"), 1.0);
}

#[test]
fn one_line_sent_to_five_strangers_is_spam_and_bans_its_sender_but_greetings_are_not() {
    let server = Server::start(
        "log_format = \"json\"\n[chat]\nrematch_cooldown = \"10ms\"\nrate_burst = 100\nrate_per_second = 100.0",
    );
    let mut spammer = chat_from(ip(9), &server);
    // The same line, however it is spaced and cased.
    let ads = [
        "Visit my SITE for free stuff",
        "  visit my site for free stuff ",
        "VISIT MY SITE FOR FREE STUFF",
        "Visit my site for free stuff\n",
        "visit My Site for Free stuff",
    ];
    for (n, ad) in ads.iter().enumerate() {
        let mut stranger = chat_from(ip(2 + n as u8), &server);
        meet(&mut spammer, &mut stranger);
        // A greeting, and a 15-character line (one short of `spam_min_chars`), to all five.
        for line in ["hi", "hello, stranger", ad] {
            spammer.say(line);
            stranger.expect(util::message(line));
        }
        if n < 4 {
            let m = server.metrics();
            assert_eq!(m["chatd_spam_detections_total"], 0.0, "after {} strangers", n + 1);
            assert_eq!(m["chatd_shadow_bans_total"], 0.0);
        }
        stranger.send(json!({"type": "leave"}));
        partner_left(&mut spammer, "left");
    }
    // The strangers received the line before the server counted it: no waiting needed.
    let m = server.metrics();
    assert_eq!(m["chatd_spam_detections_total"], 1.0, "the greetings must not count");
    assert_eq!(m["chatd_reports_total{reason=\"spam\"}"], 5.0);
    assert_eq!(m["chatd_shadow_bans_total"], 1.0);
    let bans = ban_lines(&server);
    assert_eq!(bans.len(), 1, "{}", server.stderr());
    // Banned at the third of the five (the threshold): the line logs the count then.
    assert_eq!(bans[0]["reports"], 3, "{}", bans[0]);
    // The spammer now waits among the banned only.
    search(&mut spammer);
    let mut normal = chat_from(ip(7), &server);
    search(&mut normal);
    spammer.expect_silence(300);
    normal.expect_silence(0);
}

#[test]
fn report_and_block_outside_a_chat_are_refused_and_a_bad_reason_is_invalid() {
    let server = Server::start("");
    let mut a = chat_from(ip(2), &server);
    // Never chatted.
    a.send(json!({"type": "report", "reason": "abuse"}));
    a.expect_error("not_in_chat");
    a.send(json!({"type": "block"}));
    a.expect_error("not_in_chat");
    // Searching is not chatting.
    search(&mut a);
    a.send(json!({"type": "report", "reason": "spam"}));
    a.expect_error("not_in_chat");
    // A reason outside the four, or none.
    let mut b = chat_from(ip(3), &server);
    search(&mut b);
    matched(&mut a);
    matched(&mut b);
    for bad in [json!({"type": "report", "reason": "rude"}), json!({"type": "report"})] {
        a.send(bad);
        a.expect_error("invalid_json");
    }
    b.expect_silence(100);
    // Within the minute after the chat: accepted.
    b.send(json!({"type": "leave"}));
    partner_left(&mut a, "left");
    report(&mut a, "other");
    a.send(json!({"type": "block"}));
    a.expect(json!({"type": "blocked"}));
    // The reported one is never told.
    b.expect_silence(100);
    let m = server.metrics();
    assert_eq!(m["chatd_errors_total{code=\"not_in_chat\"}"], 3.0);
    assert_eq!(m["chatd_reports_total{reason=\"other\"}"], 1.0);
    assert_eq!(m["chatd_blocks_total"], 1.0);
}

/// The 16 bytes of a challenge in hex.
fn challenge_bytes(hex: &str) -> [u8; 16] {
    assert_eq!(hex.len(), 32, "{hex}");
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_else(|_| panic!("{hex}"));
    }
    out
}

/// The leading zero bits of SHA-256(challenge ‖ nonce).
fn pow_bits(challenge: &str, nonce: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(challenge_bytes(challenge))
        .chain_update(nonce.as_bytes())
        .finalize();
    let mut n = 0;
    for b in digest {
        n += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    n
}

/// A nonce that solves `pow` (`{"challenge":HEX,"bits":N}`).
fn solve(pow: &serde_json::Value) -> String {
    let challenge = pow["challenge"].as_str().unwrap_or_else(|| panic!("a challenge: {pow}"));
    let bits = u32::try_from(pow["bits"].as_u64().expect("bits")).unwrap();
    (0u64..).map(|n| n.to_string()).find(|n| pow_bits(challenge, n) >= bits).expect("a nonce")
}

/// The next message is the error `code` carrying a challenge of 12 bits; returns it.
fn expect_pow_error(c: &mut Chat, code: &str) -> serde_json::Value {
    let got = c.recv();
    assert_eq!((&got["type"], &got["code"]), (&json!("error"), &json!(code)), "{got}");
    assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()), "{got}");
    assert_eq!(got["pow"]["bits"], 12, "{got}");
    challenge_bytes(got["pow"]["challenge"].as_str().expect("a challenge"));
    got["pow"].clone()
}

fn search_with(c: &mut Chat, nonce: &str) {
    c.send(json!({"type": "search", "pow": nonce}));
}

#[test]
fn proof_of_work_is_required_checked_and_good_for_one_search() {
    let server = Server::start("[safety]\npow_bits = 12");
    let mut a = chat_from(ip(2), &server);
    let first = a.welcome["pow"].clone();
    assert_eq!(first["bits"], 12, "{}", a.welcome);
    let hex = first["challenge"].as_str().expect("a challenge in the welcome");
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex}");
    challenge_bytes(hex);
    assert_ne!(chat_from(ip(2), &server).welcome["pow"], first, "one challenge per connection");

    // No nonce: the challenge to solve is still the welcome's.
    a.search(&[]);
    assert_eq!(expect_pow_error(&mut a, "pow_required"), first);
    // A wrong nonce: refused, and a new challenge replaces the old one.
    let wrong =
        (0u64..).map(|n| format!("x{n}")).find(|n| pow_bits(hex, n) < 12).expect("a wrong nonce");
    search_with(&mut a, &wrong);
    let second = expect_pow_error(&mut a, "pow_invalid");
    assert_ne!(second["challenge"], first["challenge"]);
    // So the old challenge's answer no longer works.
    let stale = solve(&first);
    let second_hex = second["challenge"].as_str().unwrap();
    // (1 in 4096: the stale answer solves the new one too; then a wrong nonce stands in.)
    let stale = if pow_bits(second_hex, &stale) < 12 { stale } else { wrong };
    search_with(&mut a, &stale);
    let now = expect_pow_error(&mut a, "pow_invalid");
    assert_ne!(now["challenge"], second["challenge"]);
    // Now solved: `searching`, with the challenge of the next search.
    let nonce = solve(&now);
    search_with(&mut a, &nonce);
    let searching = a.expect_type("searching");
    let next = searching["pow"].clone();
    assert_eq!(next["bits"], 12, "{searching}");
    assert_ne!(next["challenge"], now["challenge"], "{searching}");
    // The same answer twice: the challenge was used up.
    let next_hex = next["challenge"].as_str().unwrap();
    let invalid_before = metric(&server, "chatd_errors_total{code=\"pow_invalid\"}");
    if pow_bits(next_hex, &nonce) < 12 {
        search_with(&mut a, &nonce);
        expect_pow_error(&mut a, "pow_invalid");
        assert_eq!(
            metric(&server, "chatd_errors_total{code=\"pow_invalid\"}"),
            invalid_before + 1.0
        );
    }
    // Another person solves its own challenge; the two meet.
    let mut b = chat_from(ip(3), &server);
    let nonce = solve(&b.welcome["pow"]);
    search_with(&mut b, &nonce);
    b.expect_type("searching");
    matched(&mut a);
    matched(&mut b);
    let m = server.metrics();
    assert_eq!(m["chatd_errors_total{code=\"pow_required\"}"], 1.0);
    assert!(m["chatd_errors_total{code=\"pow_invalid\"}"] >= 2.0, "{m:?}");
}

#[test]
fn a_pardon_and_sighup_lift_a_shadow_ban() {
    let config = "log_format = \"json\"\n[chat]\nrematch_cooldown = \"10ms\"\n[safety]\nreport_threshold = 1";
    let server = Server::start(config);
    let mut target = chat_from(ip(9), &server);
    let mut reporter = chat_from(ip(2), &server);
    meet(&mut target, &mut reporter);
    report(&mut reporter, "abuse");
    partner_left(&mut target, "next");
    let bans = ban_lines(&server);
    assert_eq!(bans.len(), 1, "one report bans at report_threshold = 1: {}", server.stderr());
    assert_eq!(bans[0]["reports"], 1);
    let short = banned_client(&bans[0]);
    // Banned: a normal person searching after it does not get it.
    search(&mut target);
    let mut normal = chat_from(ip(5), &server);
    search(&mut normal);
    target.expect_silence(300);
    normal.expect_silence(0);

    server.rewrite_config(&format!("{config}\npardon = [\"{short}\"]"));
    server.signal(libc::SIGHUP);
    eventually("the reload", || log_has(&server, "\"reloaded\""));
    // Still waiting, it goes back to everyone at once and meets the normal one.
    matched(&mut normal);
    matched(&mut target);
    // A new connection of that address is not banned either.
    let mut again = chat_from(ip(9), &server);
    search(&mut again);
    let mut other = chat_from(ip(6), &server);
    search(&mut other);
    matched(&mut again);
    matched(&mut other);
}
