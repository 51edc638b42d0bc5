//! Behind a reverse proxy (issue 11, items 1 and 2): `trusted_proxies` and `X-Forwarded-For`
//! for `metrics_allow` and the log, spoofing attempts, reload, and a dual-stack `[::]` listener
//! whose IPv4 peers are judged and logged as plain IPv4.
mod util;

use std::net::TcpListener;

use util::{eventually, handshake, Client, Server, RFC_KEY};

/// `GET /metrics` from this machine (127.0.0.1) with extra header lines (each ending in CRLF).
fn metrics_status(server: &Server, extra: &str) -> u16 {
    let raw = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", server.host());
    server.request(&raw).status
}

fn xff(value: &str) -> String {
    format!("X-Forwarded-For: {value}\r\n")
}

/// The log lines holding `needle`.
fn log_lines(server: &Server, needle: &str) -> Vec<String> {
    server.stderr().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

/// Waits for a log line holding every one of `needles`.
fn wait_line(server: &Server, needles: &[&str]) {
    eventually(&format!("a log line with {needles:?}"), || {
        server.stderr().lines().any(|l| needles.iter().all(|n| l.contains(n)))
    });
}

/// The contract of issue 11: from a trusted proxy, the forwarded client is judged.
#[test]
fn a_trusted_proxy_is_judged_by_the_client_it_forwards() {
    let server = Server::start(
        "trusted_proxies = [\"127.0.0.1\"]\nmetrics_allow = [\"10.1.2.3\"]\nlog_level = \"debug\"",
    );
    assert_eq!(metrics_status(&server, &xff("10.1.2.3")), 200);
    assert_eq!(metrics_status(&server, &xff("10.9.9.9")), 403);
    wait_line(&server, &["metrics refused", "10.9.9.9"]);
    // The proxy's own request (no header) is judged as the proxy, which may not read.
    assert_eq!(metrics_status(&server, ""), 403);
    // The right-most address the proxy did not vouch for wins: a client that sends
    // `X-Forwarded-For: 10.1.2.3` through an appending proxy is still itself.
    assert_eq!(metrics_status(&server, &xff("10.1.2.3, 10.9.9.9")), 403);
    assert_eq!(metrics_status(&server, &xff("10.9.9.9, 10.1.2.3")), 200);
    // Several fields are one list, in order; trusted hops are passed over.
    assert_eq!(metrics_status(&server, &(xff("10.1.2.3") + &xff("127.0.0.1"))), 200);
    assert_eq!(metrics_status(&server, &(xff("10.1.2.3") + &xff("10.9.9.9"))), 403);
    assert_eq!(metrics_status(&server, &xff("[10.1.2.3]")), 403, "not an IPv6 address");
    assert_eq!(metrics_status(&server, &xff("10.1.2.3:4711")), 200, "a port is allowed");
    // Garbage: judged as the proxy itself, and still served.
    assert_eq!(metrics_status(&server, &xff("unknown")), 403);
    let page = format!("GET / HTTP/1.1\r\nHost: {}\r\n{}\r\n", server.host(), xff("unknown"));
    assert_eq!(server.request(&page).status, 200);
    server.assert_serving();
}

/// Without `trusted_proxies` nobody's header is believed.
#[test]
fn without_trusted_proxies_the_header_is_ignored() {
    let server = Server::start("");
    assert_eq!(metrics_status(&server, &xff("10.9.9.9")), 200, "127.0.0.1 is allowed");
    let server = Server::start("metrics_allow = [\"10.1.2.3\"]");
    assert_eq!(metrics_status(&server, &xff("10.1.2.3")), 403, "a client cannot pick its address");
}

/// Spoofing: a client that is not a trusted proxy sends the header itself.
#[test]
fn an_untrusted_peer_cannot_claim_an_address() {
    let server = Server::start(
        "trusted_proxies = [\"127.0.0.2\", \"10.0.0.0/8\", \"fd00::/8\"]\n\
         metrics_allow = [\"10.1.2.3\"]",
    );
    for claim in ["10.1.2.3", "127.0.0.2, 10.1.2.3", "10.1.2.3, 127.0.0.2"] {
        assert_eq!(metrics_status(&server, &xff(claim)), 403, "{claim}");
    }
}

/// The log names the forwarded client on the upgrade and refusal lines.
#[test]
fn the_log_shows_the_forwarded_client() {
    let server = Server::start("trusted_proxies = [\"127.0.0.1\", \"::1\"]\nlog_level = \"debug\"");
    let mut c = server.connect();
    let forwarded = xff("198.51.100.7") + "Origin: https://evil.test\r\n";
    c.send(handshake(&server.host(), RFC_KEY, &forwarded).as_bytes());
    assert_eq!(c.read_head_response().status, 403);
    wait_line(&server, &["upgrade refused", "peer: 198.51.100.7"]);
    let mut c = server.connect();
    c.send(handshake(&server.host(), RFC_KEY, &xff("2001:db8::7, ::1")).as_bytes());
    assert_eq!(c.read_head_response().status, 101);
    c.expect_welcome();
    wait_line(&server, &["websocket open", "peer: 2001:db8::7"]);
    // A direct client (not through a proxy) is logged as itself.
    let direct = Server::start("log_level = \"debug\"");
    let mut c = direct.connect();
    c.send(handshake(&direct.host(), RFC_KEY, &xff("198.51.100.7")).as_bytes());
    assert_eq!(c.read_head_response().status, 101);
    wait_line(&direct, &["websocket open", "peer: 127.0.0.1"]);
    assert!(!direct.stderr().contains("198.51.100.7"), "{}", direct.stderr());
}

/// `trusted_proxies` applies on SIGHUP, like `metrics_allow`.
#[test]
fn trusted_proxies_reload() {
    let server = Server::start("metrics_allow = [\"10.1.2.3\"]");
    assert_eq!(metrics_status(&server, &xff("10.1.2.3")), 403);
    server.rewrite_config("metrics_allow = [\"10.1.2.3\"]\ntrusted_proxies = [\"127.0.0.0/8\"]");
    server.signal(libc::SIGHUP);
    eventually("the reload", || !log_lines(&server, "reloaded").is_empty());
    assert!(log_lines(&server, "reloaded")[0].contains("trusted_proxies"), "{}", server.stderr());
    assert_eq!(metrics_status(&server, &xff("10.1.2.3")), 200);
    // An invalid value is refused by name and the running value stays.
    server.rewrite_config("metrics_allow = [\"10.1.2.3\"]\ntrusted_proxies = [\"127.0.0.1/8\"]");
    server.signal(libc::SIGHUP);
    eventually("the failed reload", || !log_lines(&server, "reload failed").is_empty());
    assert!(log_lines(&server, "reload failed")[0].contains("`trusted_proxies`: `127.0.0.1/8`"));
    assert_eq!(metrics_status(&server, &xff("10.1.2.3")), 200);
}

/// Issue 11, item 2: on `[::]` chatd takes IPv4 and IPv6 (Linux's default `bindv6only = 0`;
/// chatd never sets IPV6_V6ONLY), and an IPv4 client is judged and logged as plain IPv4, not
/// as `::ffff:127.0.0.1`.
#[test]
fn dual_stack_listener_takes_ipv4_as_ipv4() {
    // No quiet skip: a machine without IPv6 loopback fails here, and says why.
    TcpListener::bind("[::1]:0").expect("this test needs IPv6 on loopback (::1)");
    let server = Server::start_on("[::]:0", "log_level = \"debug\"");
    let port = server.addr().port();
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut c = Client::connect(addr.parse().unwrap());
        c.send(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        assert_eq!(c.read_response().status, 200, "{addr}: loopback may read /metrics");
    }
    wait_line(&server, &["accepted", "peer: 127.0.0.1:"]);
    wait_line(&server, &["accepted", "peer: [::1]:"]);
    assert!(!server.stderr().contains("::ffff:"), "{}", server.stderr());
}
