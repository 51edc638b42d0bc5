//! The Redis link against a real `redis-server`: the test is the IO edge, driving
//! `chatd::cluster::Link` over a std `TcpStream`.
mod util;

use util::redis::RedisServer;

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
