//! The roulette end to end: real WebSocket clients (tungstenite) against the real `chatd`
//! binary. Pairing, relay (unchanged text, no echo), typing, skip, leave, disconnect, interests
//! and the interest timeout, the re-match cooldown, every error code, the rate limit, abuse
//! (1008), binary frames (1003), several pairs at once, the online count and a slow reader.
//!
//! The chat client (`util::Chat`) and `pair` are shared with the daemon tests.
//!
//! Every test starts its own server, so tests run in parallel. Timeouts that a test waits for are
//! configured short through the `[chat]` table; waits for "nothing happens" are at most 300 ms.

mod util;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;
use util::{message, pair, Chat, Server, TIMEOUT};

/// How long a negative check ("no echo", "not matched") listens.
const SILENCE_MS: u64 = 200;

/// None of `clients` receives anything but `online` for [`SILENCE_MS`] (waited once, in total).
fn expect_all_silent<'a>(clients: impl IntoIterator<Item = &'a mut Chat>) {
    let deadline = Instant::now() + Duration::from_millis(SILENCE_MS);
    for c in clients {
        while let Some(v) = c.next_json(deadline) {
            assert_eq!(v["type"], "online", "expected silence, got {v}");
        }
    }
}

fn partner_left(reason: &str) -> Value {
    json!({"type": "partner_left", "reason": reason})
}

#[test]
fn welcome_reports_online_and_max_message_chars() {
    let server = Server::start("[chat]\nmax_message_chars = 50\nonline_interval = \"1h\"");
    let welcome = |online: u64, max: u64, token: String| json!({"type": "welcome", "online": online, "max_message_chars": max, "resume_token": token});
    let a = Chat::connect(server.addr());
    assert_eq!(a.welcome, welcome(1, 50, a.token()));
    let b = Chat::connect(server.addr());
    assert_eq!(b.welcome, welcome(2, 50, b.token()));
    // 128 bits as 32 lowercase hex digits, one per connection.
    for token in [a.token(), b.token()] {
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }
    assert_ne!(a.token(), b.token());
    drop(b);

    let server = Server::start("");
    let c = Chat::connect(server.addr());
    assert_eq!(c.welcome, welcome(1, 2000, c.token()));
}

#[test]
fn two_searchers_are_matched() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    a.expect_silence(SILENCE_MS);
    b.expect_silence(0);
}

#[test]
fn messages_are_relayed_unchanged_both_ways_without_echo() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    let texts = [
        "hello",
        "héllo wörld ✓ 日本語 😀👩‍👩‍👧",
        "two\nlines\r\nand a\ttab",
        "<img src=x onerror=alert(1)>",
        "  leading and trailing spaces  ",
        "\"quotes\" \\backslash\\ </script> &amp; \u{0} nul",
    ];
    for text in texts {
        a.say(text);
        b.expect(message(text));
        // A different reply, so that an echo of A's own line could not pass for it.
        let reply = format!("{text}|reply");
        b.say(&reply);
        a.expect(message(&reply));
    }
    // The raw frame too: the text is a JSON string that decodes to exactly what was sent.
    a.say("<b>x</b>");
    match b.read_until(Instant::now() + TIMEOUT) {
        Some(Message::Text(t)) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v, message("<b>x</b>"), "raw frame {t:?}");
        }
        other => panic!("expected the message, got {other:?}"),
    }
    a.expect_silence(SILENCE_MS);
    b.expect_silence(0);
}

#[test]
fn typing_is_relayed() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    a.send(json!({"type": "typing", "active": true}));
    b.expect(json!({"type": "typing", "active": true}));
    a.send(json!({"type": "typing", "active": false}));
    b.expect(json!({"type": "typing", "active": false}));
    b.send(json!({"type": "typing", "active": true}));
    a.expect(json!({"type": "typing", "active": true}));
    b.say("done");
    a.expect(message("done"));
    a.expect_silence(SILENCE_MS);
    b.expect_silence(0);
}

#[test]
fn search_during_a_chat_skips_and_the_cooldown_pairs_someone_else() {
    let server = Server::start("[chat]\nrematch_cooldown = \"10s\"");
    let (mut a, mut b) = pair(server.addr());
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    b.expect(partner_left("next"));
    // B searches again at once: A is waiting, but they just parted.
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    a.expect_silence(SILENCE_MS);
    b.expect_silence(0);
    // C arrives: A waited longest and may take C.
    let mut c = Chat::connect(server.addr());
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
    c.expect(json!({"type": "matched", "common_interests": []}));
    a.expect(json!({"type": "matched", "common_interests": []}));
    a.say("from a");
    c.expect(message("from a"));
    // D takes B.
    let mut d = Chat::connect(server.addr());
    d.search(&[]);
    d.expect(json!({"type": "searching"}));
    d.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
    b.say("from b");
    d.expect(message("from b"));
    expect_all_silent([&mut a, &mut b, &mut c, &mut d]);
}

#[test]
fn leave_ends_the_chat_for_the_partner() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    a.send(json!({"type": "leave"}));
    b.expect(partner_left("left"));
    a.expect_silence(SILENCE_MS);
    // Neither is in a chat any more.
    b.say("anyone?");
    b.expect_error("not_in_chat");
    a.expect_silence(0);
}

#[test]
fn leave_while_searching_cancels_the_search() {
    let server = Server::start("");
    let mut c = Chat::connect(server.addr());
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
    c.send(json!({"type": "leave"}));
    let mut d = Chat::connect(server.addr());
    d.search(&[]);
    d.expect(json!({"type": "searching"}));
    d.expect_silence(SILENCE_MS);
    c.expect_silence(0);
    // D is still searching and gets the next one.
    let mut e = Chat::connect(server.addr());
    e.search(&[]);
    e.expect(json!({"type": "searching"}));
    e.expect(json!({"type": "matched", "common_interests": []}));
    d.expect(json!({"type": "matched", "common_interests": []}));
    c.expect_silence(50);
}

#[test]
fn dropped_connection_tells_the_partner_disconnected() {
    let server = Server::start("[chat]\nresume_window = \"1s\"");
    let (a, mut b) = pair(server.addr());
    // The end of the stream without a close frame is a drop: away first, gone after the window.
    drop(a);
    b.expect(json!({"type": "partner_away"}));
    b.expect(partner_left("disconnected"));
    b.expect_silence(SILENCE_MS);
    // Without a window, at once.
    let server = Server::start("[chat]\nresume_window = \"0s\"");
    let (a, mut b) = pair(server.addr());
    a.reset();
    b.expect(partner_left("disconnected"));
}

#[test]
fn a_close_frame_ends_the_chat_at_once() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    let token = a.token();
    a.ws.close(None).expect("send a close frame");
    b.expect(partner_left("disconnected"));
    let mut c = Chat::connect(server.addr());
    c.resume(&token);
    c.expect_error("resume_failed");
}

#[test]
fn after_a_reset_the_chat_resumes_with_the_lines_sent_meanwhile_in_order() {
    let server = Server::start("");
    let (a, mut b) = pair(server.addr());
    let token = a.token();
    a.reset();
    b.expect(json!({"type": "partner_away"}));
    for line in ["one", "two", "three"] {
        b.say(line);
    }
    let mut c = Chat::connect(server.addr());
    c.resume(&token);
    c.expect(json!({"type": "resumed", "resume_token": c.token(), "state": "chatting"}));
    for line in ["one", "two", "three"] {
        c.expect(message(line));
    }
    b.expect(json!({"type": "partner_back"}));
    c.say("back");
    b.expect(message("back"));
    b.say("hi again");
    c.expect(message("hi again"));
    // The token is good once; a forged one is no better. Both connections carry on.
    let mut d = Chat::connect(server.addr());
    d.resume(&token);
    d.expect_error("resume_failed");
    let mut e = Chat::connect(server.addr());
    e.resume(&"f".repeat(32));
    e.expect_error("resume_failed");
    let (mut d, mut e) = (d, e);
    d.search(&[]);
    d.expect(json!({"type": "searching"}));
    e.search(&[]);
    e.expect(json!({"type": "searching"}));
    e.expect_type("matched");
    d.expect_type("matched");
    let m = server.metrics();
    assert_eq!(m["chatd_resume_drops_total"], 1.0);
    assert_eq!(m["chatd_resumes_total"], 1.0);
    assert_eq!(m["chatd_errors_total{code=\"resume_failed\"}"], 2.0);
}

#[test]
fn the_window_passes_then_the_partner_is_told_and_the_token_is_void() {
    let server = Server::start("[chat]\nresume_window = \"500ms\"");
    let (a, mut b) = pair(server.addr());
    let token = a.token();
    a.reset();
    b.expect(json!({"type": "partner_away"}));
    b.expect(partner_left("disconnected"));
    let mut c = Chat::connect(server.addr());
    c.resume(&token);
    c.expect_error("resume_failed");
    assert_eq!(server.metrics()["chatd_resume_expiries_total"], 1.0);
}

#[test]
fn a_connection_still_open_is_closed_4000_when_its_session_resumes_elsewhere() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    let mut c = Chat::connect(server.addr());
    c.resume(&a.token());
    c.expect_type("resumed");
    a.expect_close(4000);
    b.expect(json!({"type": "partner_back"}));
    b.say("still here");
    c.expect(message("still here"));
}

#[test]
fn a_searcher_who_drops_keeps_the_place_and_is_not_matched_meanwhile() {
    let server = Server::start("");
    let mut a = Chat::connect(server.addr());
    let token = a.token();
    a.search(&["chess"]);
    a.expect(json!({"type": "searching"}));
    a.reset();
    // Once the server has seen the drop, nobody is matched with the searcher who is away.
    util::eventually("the drop", || server.metrics()["chatd_resume_drops_total"] == 1.0);
    let mut b = Chat::connect(server.addr());
    b.search(&["chess"]);
    b.expect(json!({"type": "searching"}));
    b.expect_silence(SILENCE_MS);
    let mut c = Chat::connect(server.addr());
    c.resume(&token);
    c.expect(json!({"type": "resumed", "resume_token": c.token(), "state": "searching"}));
    c.expect(json!({"type": "matched", "common_interests": ["chess"]}));
    b.expect(json!({"type": "matched", "common_interests": ["chess"]}));
}

#[test]
fn shared_interests_are_preferred_and_reported() {
    let server = Server::start("[chat]\ninterest_timeout = \"5s\"");
    let mut a = Chat::connect(server.addr());
    let mut b = Chat::connect(server.addr());
    let mut c = Chat::connect(server.addr());
    a.search(&["music", "Chess "]);
    a.expect(json!({"type": "searching"}));
    // C takes anyone, but A is still waiting for a shared interest.
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
    a.expect_silence(SILENCE_MS);
    c.expect_silence(0);
    b.search(&["chess"]);
    b.expect(json!({"type": "searching"}));
    b.expect(json!({"type": "matched", "common_interests": ["chess"]}));
    a.expect(json!({"type": "matched", "common_interests": ["chess"]}));
    a.say("e4");
    b.expect(message("e4"));
    c.expect_silence(50);
}

#[test]
fn interest_timeout_then_anyone() {
    let server = Server::start("[chat]\ninterest_timeout = \"300ms\"");
    let mut a = Chat::connect(server.addr());
    let mut b = Chat::connect(server.addr());
    let start = Instant::now();
    a.search(&["rare"]);
    a.expect(json!({"type": "searching"}));
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    b.expect_silence(100);
    a.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300), "matched after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(3), "matched only after {waited:?}");
}

#[test]
fn parted_pair_is_not_rematched_within_the_cooldown() {
    let server = Server::start("[chat]\nrematch_cooldown = \"1s\"");
    let (mut a, mut b) = pair(server.addr());
    let parted = Instant::now();
    a.send(json!({"type": "leave"}));
    b.expect(partner_left("left"));
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    a.expect_silence(300);
    b.expect_silence(0);
    a.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
    let waited = parted.elapsed();
    assert!(waited >= Duration::from_secs(1), "re-paired after {waited:?}, within the cooldown");
    assert!(waited < Duration::from_secs(4), "re-paired only after {waited:?}");
    a.say("again");
    b.expect(message("again"));
}

#[test]
fn invalid_json_and_unknown_type_are_errors_that_keep_the_connection() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    let cases = [
        ("not json", "invalid_json"),
        ("{\"type\":\"message\",\"text\":\"unterminated", "invalid_json"),
        ("[\"message\",\"hi\"]", "invalid_json"),
        ("\"message\"", "invalid_json"),
        ("{\"text\":\"no type\"}", "invalid_json"),
        ("{\"type\":42}", "invalid_json"),
        ("{\"type\":\"message\"}", "invalid_json"),
        ("{\"type\":\"typing\",\"active\":\"yes\"}", "invalid_json"),
        ("{\"type\":\"dance\"}", "unknown_type"),
        ("{\"type\":\"MESSAGE\",\"text\":\"hi\"}", "unknown_type"),
    ];
    for (i, (input, code)) in cases.into_iter().enumerate() {
        a.send_text(input);
        a.expect_error(code);
        let ok = format!("still here {i}");
        a.say(&ok);
        b.expect(message(&ok));
    }
    a.expect_silence(SILENCE_MS);
    b.expect_silence(0);
}

#[test]
fn not_in_chat_errors_keep_the_connection() {
    let server = Server::start("");
    let mut a = Chat::connect(server.addr());
    a.say("hello?");
    a.expect_error("not_in_chat");
    a.send(json!({"type": "typing", "active": true}));
    a.expect_error("not_in_chat");
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    // Searching is not chatting either.
    a.say("hello?");
    a.expect_error("not_in_chat");
    a.send(json!({"type": "typing", "active": false}));
    a.expect_error("not_in_chat");
    let mut b = Chat::connect(server.addr());
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    b.expect_type("matched");
    a.expect(json!({"type": "matched", "common_interests": []}));
    a.say("hello!");
    b.expect(message("hello!"));
}

#[test]
fn message_too_long_counts_unicode_scalar_values() {
    let server = Server::start("[chat]\nmax_message_chars = 50");
    let (mut a, mut b) = pair(server.addr());
    // 50 characters of 2, 3 and 4 bytes each: at the limit, delivered.
    for c in ["é", "€", "😀"] {
        let at_limit = c.repeat(50);
        assert!(at_limit.len() > 50);
        a.say(&at_limit);
        b.expect(message(&at_limit));
    }
    let ascii = "x".repeat(50);
    a.say(&ascii);
    b.expect(message(&ascii));
    // 51 characters: refused, not delivered, and the connection goes on.
    for c in ["x", "é", "😀"] {
        a.say(&c.repeat(51));
        a.expect_error("message_too_long");
        b.expect_silence(50);
        a.say("short");
        b.expect(message("short"));
    }
}

#[test]
fn empty_message_is_refused() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    for empty in ["", "   ", "\n\t \r\n"] {
        a.say(empty);
        a.expect_error("empty_message");
        b.expect_silence(50);
        a.say("not empty");
        b.expect(message("not empty"));
    }
}

#[test]
fn over_the_rate_a_message_is_dropped_with_rate_limited() {
    let server = Server::start("[chat]\nrate_burst = 3\nrate_per_second = 0.5");
    let (mut a, mut b) = pair(server.addr());
    for i in 1..=4 {
        a.say(&format!("m{i}"));
    }
    a.expect_error("rate_limited");
    for i in 1..=3 {
        b.expect(message(&format!("m{i}")));
    }
    b.expect_silence(SILENCE_MS);
    // Typing shares the bucket.
    a.send(json!({"type": "typing", "active": true}));
    a.expect_error("rate_limited");
    b.expect_silence(50);
    // The connection is still served: a skip works.
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    b.expect(partner_left("next"));
    b.expect_silence(50);
}

#[test]
fn bad_interests_are_refused_and_start_no_search() {
    let server = Server::start("");
    let mut a = Chat::connect(server.addr());
    let too_long = "x".repeat(33);
    let bad = [
        json!({"type": "search", "interests": ["a", "b", "c", "d", "e", "f"]}),
        json!({"type": "search", "interests": [too_long]}),
        json!({"type": "search", "interests": ["music", 1]}),
        json!({"type": "search", "interests": "music"}),
        json!({"type": "search", "interests": ["   "]}),
    ];
    for v in bad {
        a.send(v);
        a.expect_error("bad_interests");
    }
    // None of those started a search: B is not matched with A.
    let mut b = Chat::connect(server.addr());
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    b.expect_silence(SILENCE_MS);
    a.expect_silence(0);
    // A valid search on the same connection works. At the limits: 5 interests (6 given, with a
    // duplicate after normalisation) and 32 characters.
    let longest = "y".repeat(32);
    a.search(&["a", "b", "c", "d", &longest, " A "]);
    a.expect(json!({"type": "searching"}));
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    a.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
}

#[test]
fn sustained_abuse_is_closed_with_1008() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    for _ in 0..60 {
        // The server may close the connection before the last ones are written.
        if a.ws.send(Message::Text("garbage".to_owned())).is_err() {
            break;
        }
    }
    let errors = a.expect_close(1008);
    assert!(!errors.is_empty() && errors.len() < 60, "{} errors before the close", errors.len());
    for e in &errors {
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "invalid_json", "{e}");
    }
    b.expect(partner_left("disconnected"));
    // Others are still served.
    let mut c = Chat::connect(server.addr());
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
}

#[test]
fn binary_frame_is_closed_with_1003_and_the_partner_is_told() {
    let server = Server::start("");
    let (mut a, mut b) = pair(server.addr());
    a.ws.send(Message::Binary(b"{\"type\":\"message\",\"text\":\"hi\"}".to_vec())).unwrap();
    let before = a.expect_close(1003);
    assert!(before.is_empty(), "{before:?}");
    b.expect(partner_left("disconnected"));
    b.expect_silence(SILENCE_MS);
}

#[test]
fn six_clients_make_three_private_pairs() {
    let server = Server::start("");
    let mut clients: Vec<Chat> = (0..6).map(|_| Chat::connect(server.addr())).collect();
    for c in &mut clients {
        c.search(&[]);
        c.expect(json!({"type": "searching"}));
    }
    for c in &mut clients {
        c.expect(json!({"type": "matched", "common_interests": []}));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.say(&format!("from {i}"));
    }
    // Each receives exactly one message, from its partner; partnership is mutual.
    let mut partner = [usize::MAX; 6];
    for (i, c) in clients.iter_mut().enumerate() {
        let v = c.expect_type("message");
        let from: usize = v["text"]
            .as_str()
            .and_then(|t| t.strip_prefix("from "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{v}"));
        assert_ne!(from, i, "client {i} got its own message back");
        partner[i] = from;
    }
    for i in 0..6 {
        assert_eq!(partner[partner[i]], i, "not mutual: {partner:?}");
    }
    // First come, first paired.
    assert_eq!(partner, [1, 0, 3, 2, 5, 4]);
    expect_all_silent(&mut clients);
    // Replies reach only the partner too.
    for (i, c) in clients.iter_mut().enumerate() {
        c.say(&format!("reply {i}"));
    }
    for (c, p) in clients.iter_mut().zip(partner) {
        c.expect(message(&format!("reply {p}")));
    }
    expect_all_silent(&mut clients);
}

#[test]
fn online_count_is_broadcast_when_it_changes() {
    let server = Server::start("[chat]\nonline_interval = \"100ms\"");
    let mut a = Chat::connect(server.addr());
    let mut b = Chat::connect(server.addr());
    let c = Chat::connect(server.addr());
    assert_eq!(c.welcome["online"], 3);
    /// Reads `online` messages until one says `n`; others are only allowed in between.
    fn await_count(x: &mut Chat, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let v = x
                .next_json(deadline)
                .unwrap_or_else(|| panic!("no {{\"type\":\"online\",\"count\":{n}}} within 2 s"));
            assert_eq!(v["type"], "online", "{v}");
            if v["count"] == n {
                assert_eq!(v, json!({"type": "online", "count": n}));
                return;
            }
        }
    }
    await_count(&mut a, 3);
    await_count(&mut b, 3);
    drop(c);
    await_count(&mut a, 2);
    await_count(&mut b, 2);
    // Nothing changes, nothing is sent.
    if let Some(v) = a.next_json(Instant::now() + Duration::from_millis(250)) {
        panic!("unexpected {v} while the count stays 2");
    }
}

#[test]
fn slow_reader_is_disconnected_and_the_partner_told() {
    let server = Server::start(
        "max_outbound_bytes = 65536\n[chat]\nrate_per_second = 1000000.0\nrate_burst = 1000000",
    );
    let (mut a, b) = pair(server.addr());
    // B never reads. A sends 2000-character messages (8 KB each) until the server gives up on B.
    let big = json!({"type": "message", "text": "😀".repeat(2000)}).to_string();
    let start = Instant::now();
    let mut sent = 0u64;
    let left = loop {
        assert!(start.elapsed() < Duration::from_secs(20), "B still connected after {sent} msgs");
        a.send_text(&big);
        sent += 1;
        if sent % 16 == 0 {
            if let Some(v) = a.next_json(Instant::now() + Duration::from_millis(1)) {
                if v["type"] != "online" {
                    break v;
                }
            }
        }
    };
    // Cut for being slow is a drop: the session waits for a resume.
    assert_eq!(left, json!({"type": "partner_away"}), "after {sent} messages");
    drop(b);
    // The server is fine.
    let mut c = Chat::connect(server.addr());
    c.search(&[]);
    c.expect(json!({"type": "searching"}));
}
