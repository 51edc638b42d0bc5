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
