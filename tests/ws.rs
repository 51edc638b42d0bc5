//! The WebSocket side of the real binary (RFC 6455): the opening handshake over raw TCP, every
//! framing rule of issue 2 ("WebSocket" and "Tests") with its exact close code, the close
//! handshake, idle pings, `max_connections`, and a real client library (tungstenite). After each
//! violation, a new client still connects and gets its welcome.
mod util;

use std::time::{Duration, Instant};

use tungstenite::{
    handshake::derive_accept_key,
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};
use util::{
    close_payload, frame, handshake, header, unmasked_frame, Client, Response, Server, RFC_ACCEPT,
    RFC_KEY,
};

/// A config with a small message limit (the chat limit must fit in it).
const SMALL: &str = "max_message_bytes = 1024\n[chat]\nmax_message_chars = 100";
/// A config with short idle timeouts.
const IDLE: &str = "idle_timeout = \"300ms\"\nping_timeout = \"300ms\"";

/// Sends `raw` as an upgrade request on a fresh connection and returns the response head.
fn upgrade(server: &Server, raw: &str) -> (Client, Response) {
    let mut c = server.connect();
    c.send(raw.as_bytes());
    let r = c.read_head_response();
    (c, r)
}

/// `raw` is refused with `status`; the response has a body of its Content-Length and the server
/// closes the connection. Another client is still served.
fn assert_upgrade_refused(server: &Server, raw: &str, status: u16) -> Response {
    let mut c = server.connect();
    c.send(raw.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, status, "for\n{raw}\ngot {r:?}");
    assert!(r.header("sec-websocket-accept").is_none(), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    c.expect_eof();
    server.assert_serving();
    r
}

/// The handshake succeeded with the accept value for `key`; the welcome follows.
fn assert_upgraded(server: &Server, raw: &str, key: &str) {
    let (mut c, r) = upgrade(server, raw);
    assert_eq!(r.status, 101, "for\n{raw}\ngot {r:?}");
    assert_eq!(r.reason, "Switching Protocols");
    assert!(r.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "{r:?}");
    assert!(r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")), "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(derive_accept_key(key.as_bytes()).as_str()));
    assert!(r.header("content-length").is_none(), "a 101 has no body: {r:?}");
    c.expect_welcome();
}

// ---------------------------------------------------------------------------------------------
// The opening handshake (RFC 6455 §4.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_answers_the_rfc_key_with_the_rfc_accept() {
    let server = Server::start("");
    // The RFC's example, checked against the literal value rather than a computed one.
    let raw = handshake(&server.host(), RFC_KEY, "");
    let (mut c, r) = upgrade(&server, &raw);
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some(derive_accept_key(RFC_KEY.as_bytes()).as_str())
    );
    let welcome = c.expect_welcome();
    assert!(welcome.is_object());
}

#[test]
fn handshake_negotiates_no_extension_and_no_subprotocol() {
    let server = Server::start("");
    let extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n";
    let (mut c, r) = upgrade(&server, &handshake(&server.host(), RFC_KEY, extra));
    assert_eq!(r.status, 101);
    assert!(r.header("sec-websocket-extensions").is_none(), "{r:?}");
    assert!(r.header("sec-websocket-protocol").is_none(), "{r:?}");
    c.expect_welcome();
}

#[test]
fn handshake_tokens_in_lists_and_any_case() {
    let server = Server::start("");
    let host = server.host();
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    for headers in [
        "Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n",
        "upgrade: websocket\r\nconnection: upgrade\r\n",
        "UPGRADE: WEBSOCKET\r\nCONNECTION: UPGRADE\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade, keep-alive\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive,Upgrade\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n",
        "Upgrade: foo/2, websocket\r\nConnection: Upgrade\r\n",
    ] {
        let raw = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\n{headers}Sec-WebSocket-Key: {key}\r\n\
sec-websocket-version: 13\r\n\r\n"
        );
        assert_upgraded(&server, &raw, key);
    }
    // A query string does not change the route.
    let raw = handshake(&host, key, "").replacen("GET /ws ", "GET /ws?room=1 ", 1);
    assert_upgraded(&server, &raw, key);
}

#[test]
fn handshake_key_with_surrounding_whitespace_is_trimmed() {
    let server = Server::start("");
    let raw = handshake(&server.host(), RFC_KEY, "").replace(
        &format!("Sec-WebSocket-Key: {RFC_KEY}"),
        &format!("Sec-WebSocket-Key: \t {RFC_KEY} \t"),
    );
    let (mut c, r) = upgrade(&server, &raw);
    assert_eq!((r.status, r.header("sec-websocket-accept")), (101, Some(RFC_ACCEPT)), "{r:?}");
    c.expect_welcome();
}

/// RFC 6455 §11.3.1: `Sec-WebSocket-Key` must not appear more than once.
#[test]
fn handshake_with_two_keys_is_400() {
    let server = Server::start("");
    let raw = handshake(&server.host(), RFC_KEY, "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n");
    assert_upgrade_refused(&server, &raw, 400);
}

/// A client may send its first frames right behind the handshake, in the same write: they are
/// WebSocket input, not lost and not parsed as HTTP.
#[test]
fn frames_sent_with_the_handshake_are_not_lost() {
    let server = Server::start("");
    let mut c = server.connect();
    let mut bytes = handshake(&server.host(), RFC_KEY, "").into_bytes();
    bytes.extend(frame(0x89, b"early"));
    c.send(&bytes);
    let r = c.read_head_response();
    assert_eq!(r.status, 101, "{r:?}");
    // The pong may come before or after the welcome (control frames may be interleaved with
    // messages), but both come.
    let mut frames = [c.read_frame(), c.read_frame()];
    frames.sort_by_key(|f| f.opcode);
    assert_eq!(frames[0].opcode, 0x1, "{frames:?}");
    assert!(frames[0].text().contains("\"welcome\""), "{frames:?}");
    assert_eq!((frames[1].opcode, frames[1].payload.as_slice()), (0xa, b"early".as_slice()));
}

/// The upgrade may come on a connection that already served keep-alive requests.
#[test]
fn upgrade_after_keep_alive_requests_on_the_same_connection() {
    let server = Server::start("");
    let host = server.host();
    let mut c = server.connect();
    c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response().status, 200);
    c.send(handshake(&host, RFC_KEY, "").as_bytes());
    let r = c.read_head_response();
    assert_eq!((r.status, r.header("sec-websocket-accept")), (101, Some(RFC_ACCEPT)), "{r:?}");
    c.expect_welcome();
    c.send(&frame(0x88, &close_payload(1000, "")));
    c.expect_close(1000);
}

#[test]
fn handshake_with_a_bad_or_missing_key_is_400() {
    let server = Server::start("");
    let host = server.host();
    for key in [
        "c2hvcnQ=",                 // 5 bytes
        "AAAAAAAAAAAAAAAAAAAAAAA=", // 17 bytes
        "AAAAAAAAAAAAAAAAAAAA",     // 15 bytes
        "dGhlIHNhbXBsZSBub25jZQ",   // 16 bytes, unpadded
        "!!!!!!!!!!!!!!!!!!!!!!!!", // not base64
        "",
    ] {
        let r = assert_upgrade_refused(&server, &handshake(&host, key, ""), 400);
        assert_eq!(r.reason, "Bad Request");
    }
    let missing =
        handshake(&host, RFC_KEY, "").replace(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"), "");
    assert!(!missing.contains("Key"));
    assert_upgrade_refused(&server, &missing, 400);
}

#[test]
fn handshake_with_another_version_is_426_naming_13() {
    let server = Server::start("");
    let host = server.host();
    for version in ["Sec-WebSocket-Version: 8\r\n", "Sec-WebSocket-Version: 14\r\n", ""] {
        let raw = handshake(&host, RFC_KEY, "").replace("Sec-WebSocket-Version: 13\r\n", version);
        let r = assert_upgrade_refused(&server, &raw, 426);
        assert_eq!(r.reason, "Upgrade Required");
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "{r:?}");
    }
}

#[test]
fn handshake_without_upgrade_tokens_is_400() {
    let server = Server::start("");
    let host = server.host();
    let good = handshake(&host, RFC_KEY, "");
    for (from, to) in [
        ("Upgrade: websocket\r\n", ""),
        ("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"),
        ("Upgrade: websocket\r\n", "Upgrade: websockets\r\n"),
        ("Connection: Upgrade\r\n", ""),
        ("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"),
        ("Connection: Upgrade\r\n", "Connection: Upgraded\r\n"),
    ] {
        assert_upgrade_refused(&server, &good.replace(from, to), 400);
    }
    // A browser visiting /ws by hand.
    assert_upgrade_refused(&server, &format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n"), 400);
}

#[test]
fn handshake_over_http_1_0_is_400() {
    let server = Server::start("");
    let raw = handshake(&server.host(), RFC_KEY, "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_upgrade_refused(&server, &raw, 400);
}

#[test]
fn handshake_with_another_method_is_405() {
    let server = Server::start("");
    let raw = handshake(&server.host(), RFC_KEY, "").replacen("GET ", "POST ", 1);
    let r = assert_upgrade_refused(&server, &raw, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn origin_must_match_the_host_unless_allowed() {
    let server = Server::start("allowed_origins = [\"https://friend.example\"]");
    let host = server.host();
    let with = |origin: &str| handshake(&host, RFC_KEY, &format!("Origin: {origin}\r\n"));
    // Absent: a non-browser client.
    assert_upgraded(&server, &handshake(&host, RFC_KEY, ""), RFC_KEY);
    // The page's own origin.
    assert_upgraded(&server, &with(&format!("http://{host}")), RFC_KEY);
    // Listed in allowed_origins.
    assert_upgraded(&server, &with("https://friend.example"), RFC_KEY);
    for foreign in [
        "http://evil.example".to_owned(),
        "https://friend.example:8443".to_owned(),
        "http://friend.example".to_owned(),
        format!("http://{host}.evil.example"),
        format!("http://127.0.0.2:{}", server.addr().port()),
        "http://127.0.0.1".to_owned(),
        "null".to_owned(),
        "file://".to_owned(),
    ] {
        let r = assert_upgrade_refused(&server, &with(&foreign), 403);
        assert_eq!(r.reason, "Forbidden", "{foreign}");
    }
}

#[test]
fn foreign_origin_is_403_without_allowed_origins() {
    let server = Server::start("");
    let raw = handshake(&server.host(), RFC_KEY, "Origin: https://friend.example\r\n");
    assert_upgrade_refused(&server, &raw, 403);
}

#[test]
fn max_connections_refuses_a_third_websocket_with_503() {
    let server = Server::start("max_connections = 2");
    let first = server.ws();
    let second = server.ws();
    let mut third = server.connect();
    third.send(handshake(&server.host(), RFC_KEY, "").as_bytes());
    let r = third.read_response();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("sec-websocket-accept").is_none());
    third.expect_eof();
    drop((first, second));
    util::eventually("a free slot", || {
        let mut c = server.connect();
        c.send(handshake(&server.host(), RFC_KEY, "").as_bytes());
        let r = c.read_head_response();
        r.status == 101
    });
}

// ---------------------------------------------------------------------------------------------
// Framing (RFC 6455 §5): each violation closes with its code, then the server closes TCP
// ---------------------------------------------------------------------------------------------

/// Opens a WebSocket, sends `bytes`, expects a close frame with `code` and EOF, then checks that
/// the server still serves a new client.
fn assert_violation(server: &Server, bytes: &[u8], code: u16) {
    let mut c = server.ws();
    c.send(bytes);
    c.expect_close(code);
    server.assert_serving();
}

#[test]
fn unmasked_frame_is_1002() {
    let server = Server::start("");
    assert_violation(&server, &unmasked_frame(0x81, b"hi"), 1002);
    assert_violation(&server, &unmasked_frame(0x89, b""), 1002);
}

#[test]
fn reserved_bits_are_1002() {
    let server = Server::start("");
    for b0 in [0xc1, 0xa1, 0x91, 0xf1, 0xc9] {
        assert_violation(&server, &frame(b0, b"x"), 1002);
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    let server = Server::start("");
    for opcode in [0x3, 0x7, 0xb, 0xf] {
        assert_violation(&server, &frame(0x80 | opcode, b""), 1002);
    }
}

#[test]
fn ping_over_125_bytes_is_1002() {
    let server = Server::start("");
    assert_violation(&server, &frame(0x89, &[b'p'; 126]), 1002);
    assert_violation(&server, &frame(0x8a, &[b'p'; 126]), 1002);
    assert_violation(&server, &frame(0x88, &close_payload(1000, &"r".repeat(124))), 1002);
}

#[test]
fn fragmented_control_frames_are_1002() {
    let server = Server::start("");
    for b0 in [0x09, 0x0a, 0x08] {
        assert_violation(&server, &frame(b0, b""), 1002);
    }
}

#[test]
fn continuation_without_a_start_is_1002() {
    let server = Server::start("");
    assert_violation(&server, &frame(0x80, b"tail"), 1002);
    assert_violation(&server, &frame(0x00, b"middle"), 1002);
}

#[test]
fn new_message_inside_a_fragmented_one_is_1002() {
    let server = Server::start("");
    assert_violation(&server, &[frame(0x01, b"{\"ty"), frame(0x81, b"{}")].concat(), 1002);
    assert_violation(&server, &[frame(0x01, b"{\"ty"), frame(0x02, b"xx")].concat(), 1002);
}

#[test]
fn invalid_utf8_text_is_1007() {
    let server = Server::start("");
    for bad in [
        b"\xc0\x80".as_slice(), // overlong NUL
        b"\xed\xa0\x80",        // a surrogate
        b"\xf4\x90\x80\x80",    // above U+10FFFF
        b"\xff",                // never valid
        b"ok so far \xce",      // cut at the end of the message
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    ] {
        assert_violation(&server, &frame(0x81, bad), 1007);
    }
}

#[test]
fn invalid_utf8_split_across_fragments_is_1007() {
    let server = Server::start("");
    // The first fragment ends inside a valid 4-byte sequence; the second cannot continue it.
    assert_violation(&server, &[frame(0x01, b"x\xf0\x9f"), frame(0x80, b"(y")].concat(), 1007);
    // A sequence left open at the end of the message.
    assert_violation(&server, &[frame(0x01, b"x\xf0\x9f"), frame(0x80, b"")].concat(), 1007);
    // Split at every point, the valid sequence (U+1F600) is accepted: the connection stays open.
    let mut c = server.ws();
    let text = "{\"type\":\"leave\",\"x\":\"\u{1f600}\"}".as_bytes();
    let cut = text.iter().position(|&b| b == 0xf0).unwrap() + 2;
    c.send(&[frame(0x01, &text[..cut]), frame(0x80, &text[cut..])].concat());
    c.send(&frame(0x89, b"still open"));
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"still open".as_slice()));
}

/// Invalid UTF-8 is detected as early as possible: in the received part of a frame whose rest
/// has not arrived.
#[test]
fn invalid_utf8_is_1007_before_the_frame_is_complete() {
    let server = Server::start("");
    let mut payload = vec![b'a'; 100];
    payload[3] = 0xc0;
    let whole = frame(0x81, &payload);
    assert_violation(&server, &whole[..2 + 4 + 10], 1007);
}

#[test]
fn close_reason_with_invalid_utf8_is_1007() {
    let server = Server::start("");
    let mut payload = close_payload(1000, "");
    payload.extend_from_slice(b"\xff\xfe");
    assert_violation(&server, &frame(0x88, &payload), 1007);
}

#[test]
fn frame_header_declaring_1_mib_is_1009_at_once() {
    let server = Server::start(SMALL);
    for b0 in [0x81, 0x82, 0x01] {
        let mut c = server.ws();
        let t0 = Instant::now();
        // The header alone: the server must not wait for (or reserve) the payload.
        c.send(&header(b0, 1 << 20));
        c.expect_close(1009);
        assert!(t0.elapsed() < Duration::from_secs(3), "1009 after {:?}", t0.elapsed());
    }
    // Just over the limit, and the largest 64-bit length.
    assert_violation(&server, &frame(0x81, &[b' '; 1025]), 1009);
    assert_violation(&server, &header(0x82, (1 << 63) - 1), 1009);
    server.assert_serving();
}

#[test]
fn fragments_adding_up_past_the_limit_are_1009() {
    let server = Server::start(SMALL);
    assert_violation(
        &server,
        &[frame(0x01, &[b' '; 600]), frame(0x80, &[b' '; 600])].concat(),
        1009,
    );
    let mut many = Vec::new();
    many.extend(frame(0x01, &[b' '; 100]));
    for _ in 0..10 {
        many.extend(frame(0x00, &[b' '; 100]));
    }
    assert_violation(&server, &many, 1009);
    // The continuation's header alone already goes over.
    assert_violation(&server, &[frame(0x02, &[0; 1000]), header(0x80, 25)].concat(), 1009);
}

#[test]
fn a_message_of_exactly_the_limit_is_accepted() {
    let server = Server::start(SMALL);
    let mut text = String::from("{\"type\":\"leave\",\"pad\":\"");
    let pad = 1024 - text.len() - 2;
    text.push_str(&" ".repeat(pad));
    text.push_str("\"}");
    assert_eq!(text.len(), 1024);
    let mut c = server.ws();
    c.send(&frame(0x81, text.as_bytes()));
    // And as fragments.
    c.send(&[frame(0x01, &text.as_bytes()[..500]), frame(0x80, &text.as_bytes()[500..])].concat());
    c.send(&frame(0x89, b"after"));
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"after".as_slice()));
}

#[test]
fn ping_is_answered_with_a_pong_of_the_same_payload() {
    let server = Server::start("");
    let mut c = server.ws();
    for payload in [b"hello".to_vec(), Vec::new(), vec![0xab; 125], (0..=124).collect()] {
        c.send(&frame(0x89, &payload));
        let pong = c.read_frame_skipping_text();
        assert_eq!(pong.opcode, 0xa, "{pong:?}");
        assert!(pong.fin);
        assert_eq!(pong.payload, payload);
    }
    // An unsolicited pong is ignored.
    c.send(&frame(0x8a, b"unsolicited"));
    c.send(&frame(0x89, b"x"));
    assert_eq!(c.read_frame_skipping_text().payload, b"x");
}

#[test]
fn ping_between_fragments_is_answered() {
    let server = Server::start("");
    let mut c = server.ws();
    c.send(&frame(0x01, b"{\"type\":"));
    c.send(&frame(0x89, b"between"));
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"between".as_slice()));
    // An unsolicited pong in between is fine too.
    c.send(&frame(0x8a, b""));
    c.send(&frame(0x80, b"\"leave\"}"));
    c.send(&frame(0x89, b"after"));
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"after".as_slice()));
}

#[test]
fn close_is_answered_with_the_same_code_then_eof() {
    let server = Server::start("");
    for code in [1000, 1001, 3000, 4999] {
        let mut c = server.ws();
        c.send(&frame(0x88, &close_payload(code, "bye now")));
        let f = c.expect_close(code);
        assert!(f.fin);
    }
    // An empty close is answered with an empty close.
    let mut c = server.ws();
    c.send(&frame(0x88, b""));
    let f = c.read_frame_skipping_text();
    assert_eq!((f.opcode, f.payload.len()), (0x8, 0), "{f:?}");
    c.expect_eof();
    server.assert_serving();
}

/// A client that sends its close frame and then half-closes TCP (shutdown of its write side)
/// still gets the server's close frame: the server reads EOF right after the close frame.
#[test]
fn close_then_half_close_still_gets_the_close_answer() {
    let server = Server::start("");
    let mut c = server.ws();
    c.send(&frame(0x88, &close_payload(1000, "bye")));
    c.shutdown_write();
    c.expect_close(1000);
}

#[test]
fn close_with_an_invalid_code_is_1002() {
    let server = Server::start("");
    for code in [1005, 1006, 1015, 0, 999, 1004, 1016, 2000, 2999, 5000, 65535] {
        assert_violation(&server, &frame(0x88, &close_payload(code, "")), 1002);
    }
    // A payload of one byte cannot hold a code.
    assert_violation(&server, &frame(0x88, &[0x03]), 1002);
}

#[test]
fn binary_frame_is_1003() {
    let server = Server::start("");
    assert_violation(&server, &frame(0x82, b"\x00\x01binary"), 1003);
    assert_violation(&server, &[frame(0x02, b"frag"), frame(0x80, b"ment")].concat(), 1003);
}

#[test]
fn frames_split_in_single_bytes_are_assembled() {
    let server = Server::start("");
    let mut c = server.ws();
    let bytes = [frame(0x89, b"slow"), frame(0x88, &close_payload(1000, ""))].concat();
    for b in bytes.chunks(1) {
        c.send(b);
    }
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"slow".as_slice()));
    c.expect_close(1000);
}

/// A peer that floods pings and never reads the pongs cannot make the server buffer without
/// bound: past `max_outbound_bytes` of unsent output it is disconnected.
#[test]
fn ping_flood_from_a_peer_that_never_reads_is_disconnected() {
    let server = Server::start("max_outbound_bytes = 65536");
    let mut c = server.ws();
    let batch = frame(0x89, &[b'p'; 125]).repeat(1000);
    c.send_until_refused(&batch);
    server.assert_serving();
}

/// SIGTERM: open WebSockets get a close 1001 (going away), then the process exits with 0.
#[test]
fn sigterm_closes_websockets_with_1001_and_exits() {
    let mut server = Server::start("");
    let mut a = server.ws();
    let mut b = server.ws();
    server.signal(libc::SIGTERM);
    for c in [&mut a, &mut b] {
        let f = c.read_frame_skipping_text();
        assert_eq!(f.opcode, 0x8, "{f:?}");
        assert_eq!(f.close_code(), Some(1001), "{f:?}");
        // Answer the close as a client should, so that the server can finish at once.
        c.send(&frame(0x88, &close_payload(1001, "")));
        c.expect_eof();
    }
    drop((a, b));
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Idle connections
// ---------------------------------------------------------------------------------------------

#[test]
fn silent_client_is_pinged_then_closed_with_1001() {
    let server = Server::start(IDLE);
    let t0 = Instant::now();
    let mut c = server.ws();
    let ping = c.read_frame_skipping_text();
    assert_eq!(ping.opcode, 0x9, "{ping:?}");
    assert!(t0.elapsed() >= Duration::from_millis(250), "pinged after only {:?}", t0.elapsed());
    c.expect_close(1001);
    assert!(t0.elapsed() >= Duration::from_millis(500), "closed after only {:?}", t0.elapsed());
    server.assert_serving();
}

#[test]
fn client_that_answers_pings_stays_connected() {
    let server = Server::start(IDLE);
    let mut c = server.ws();
    let t0 = Instant::now();
    let mut pings = 0;
    // Six idle periods.
    while let Some(left) = Duration::from_millis(1800).checked_sub(t0.elapsed()) {
        let Some(f) = c.try_read_frame(left) else { break };
        match f.opcode {
            0x9 => {
                pings += 1;
                c.send(&frame(0x8a, &f.payload));
            }
            0x1 => {}
            _ => panic!("unexpected frame {f:?} after {:?}", t0.elapsed()),
        }
    }
    assert!(pings >= 2, "only {pings} pings in {:?}", t0.elapsed());
    c.send(&frame(0x89, b"alive?"));
    let pong = c.read_frame_skipping_text();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xa, b"alive?".as_slice()));
}

#[test]
fn client_traffic_resets_the_idle_timer() {
    let server = Server::start(IDLE);
    let mut c = server.ws();
    let t0 = Instant::now();
    // A ping every 50 ms: the server never needs to ping and never closes.
    while t0.elapsed() < Duration::from_millis(1500) {
        c.send(&frame(0x89, b"tick"));
        let f = c.read_frame_skipping_text();
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (0xa, b"tick".as_slice()),
            "after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A real client library
// ---------------------------------------------------------------------------------------------

/// Reads until tungstenite reports the connection closed; returns the close frame received.
fn read_until_closed(
    ws: &mut tungstenite::WebSocket<std::net::TcpStream>,
) -> Option<CloseFrame<'static>> {
    let mut close = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => close = f,
            Ok(Message::Text(_)) | Ok(Message::Pong(_)) | Ok(Message::Ping(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => return close,
            Err(e) => panic!("tungstenite: {e}"),
        }
    }
}

#[test]
fn tungstenite_client_gets_the_welcome_and_closes_cleanly() {
    let server = Server::start("");
    let (mut ws, response) = util::tungstenite_connect(server.addr());
    assert_eq!(response.status(), 101);
    let Message::Text(text) = ws.read().expect("welcome") else { panic!("welcome is text") };
    let welcome: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws.send(Message::Ping(b"t".to_vec())).unwrap();
    loop {
        match ws.read().expect("pong") {
            Message::Pong(p) => break assert_eq!(p, b"t"),
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() })).unwrap();
    let close = read_until_closed(&mut ws).expect("the server answers the close");
    assert_eq!(close.code, CloseCode::Normal);
    server.assert_serving();
}

#[test]
fn tungstenite_client_sending_binary_gets_1003() {
    let server = Server::start("");
    let (mut ws, _) = util::tungstenite_connect(server.addr());
    ws.send(Message::Binary(vec![1, 2, 3])).unwrap();
    let close = read_until_closed(&mut ws).expect("a close frame");
    assert_eq!(close.code, CloseCode::Unsupported);
    server.assert_serving();
}

#[test]
fn tungstenite_client_sending_too_much_gets_1009() {
    let server = Server::start(SMALL);
    let (mut ws, _) = util::tungstenite_connect(server.addr());
    ws.send(Message::Text("x".repeat(2000))).unwrap();
    let close = read_until_closed(&mut ws).expect("a close frame");
    assert_eq!(close.code, CloseCode::Size);
    server.assert_serving();
}

/// Many clients at once, each opened and closed by the library: none is refused or lost.
#[test]
fn twenty_tungstenite_clients_at_once() {
    // All from 127.0.0.1: no per-address cap.
    let server = Server::start("[safety]\nmax_connections_per_address = 0");
    let mut all: Vec<_> = (0..20).map(|_| util::tungstenite_connect(server.addr()).0).collect();
    for ws in &mut all {
        let Message::Text(t) = ws.read().expect("welcome") else { panic!("welcome is text") };
        assert!(t.contains("welcome"));
    }
    for ws in &mut all {
        ws.close(None).unwrap();
    }
    for ws in &mut all {
        read_until_closed(ws);
    }
}
