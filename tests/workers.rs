//! `workers = N` (issue 10 items 2 and 8), against the real binary: the master and its worker
//! processes seen through /proc, connections spread over both workers on one port, a worker
//! killed with SIGKILL and replaced, SIGHUP reaching every worker (and a broken file reaching
//! none), SIGTERM closing every worker's WebSockets with 1001, a second SIGINT, the master's
//! death taking the workers along, systemd's notifications from the master alone, and, as root,
//! the privilege drop before the first fork on a port below 1024 in daemon mode.
//!
//! Each master gets its own real `redis-server` (tests/util/redis.rs), the crowd the workers
//! share: two people on different workers are paired through it, and the partner of someone
//! whose worker is killed is told.
//!
//! Every wait is bounded; the file runs in a few seconds.

mod util;

use std::{
    collections::HashMap,
    fs,
    io::BufReader,
    net::{SocketAddr, TcpListener},
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::ChildStdout,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use util::{
    close_payload, eventually, frame, handshake, is_root, message, redis::RedisServer, run_chatd,
    skip_without_root, user_line, Chat, Client, KillOnDrop, Response, TempDir, RFC_KEY, TIMEOUT,
};

/// Two workers and the `[cluster]` table they need, on `redis` (after every top-level key).
/// Every test client connects from 127.0.0.1: no per-address cap.
fn workers_on(redis: &str) -> String {
    format!(
        "workers = 2\n[safety]\nmax_connections_per_address = 0\n[cluster]\nredis = \"{redis}\"\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Processes, from /proc

/// The fields of /proc/PID/stat after the command name: state, ppid, ...
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// The running (not zombie) children of `pid`, in pid order.
fn children(pid: i32) -> Vec<i32> {
    let mut kids: Vec<i32> = fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| {
            proc_stat(p)
                .is_some_and(|f| f[1] == pid.to_string() && !matches!(f[0].as_str(), "Z" | "X"))
        })
        .collect();
    kids.sort_unstable();
    kids
}

/// Whether `pid` runs (and is not a zombie).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| !matches!(f[0].as_str(), "Z" | "X"))
}

/// Waits until `pid` has exited.
fn wait_gone(pid: i32) {
    eventually(&format!("process {pid} to exit"), || !alive(pid));
}

/// Real, effective, saved and filesystem user ids of `pid`.
fn uids(pid: i32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("a Uid line");
    line.split_whitespace().map(|v| v.parse().unwrap()).collect()
}

/// What the descriptors of `pid` point to (`socket:[N]`, paths, ...).
fn fd_targets(pid: i32) -> Vec<PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).collect())
        .unwrap_or_default()
}

/// The worker among `workers` that holds the server side of the client connection from
/// `client` to port `port`, found by the socket's inode in /proc/net/tcp{,6} and /proc/W/fd.
fn worker_of(client: SocketAddr, port: u16, workers: &[i32]) -> Option<i32> {
    let hex_port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        fs::read_to_string(table).ok()?.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && hex_port(f[1]) == Some(port) && hex_port(f[2]) == Some(client.port()))
                .then(|| f[9].to_owned())
        })
    })?;
    let target = PathBuf::from(format!("socket:[{inode}]"));
    workers.iter().copied().find(|&w| fd_targets(w).contains(&target))
}

/// How many sockets `pid` holds.
fn sockets(pid: i32) -> usize {
    fd_targets(pid).iter().filter(|t| t.to_string_lossy().starts_with("socket:")).count()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// The uid of `nobody`, from /etc/passwd.
fn nobody_uid() -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| l.strip_prefix("nobody:")?.split(':').nth(1)?.parse().ok())
        .expect("a `nobody` line in /etc/passwd")
}

/// A temp folder the service account may write to (pid file, log).
fn service_dir(what: &str) -> TempDir {
    let dir = TempDir::new(what);
    if is_root() {
        let uid = nobody_uid();
        std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the temp dir");
    }
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// A master in the foreground

/// chatd with two workers in the foreground, stderr (every process's log) kept in a file.
struct Master {
    /// First, so that it is killed (and its log printed) before its folder is removed.
    process: KillOnDrop,
    addr: SocketAddr,
    config: PathBuf,
    listen: String,
    _dir: TempDir,
    _stdout: BufReader<ChildStdout>,
    /// Last: stopped once chatd is gone.
    redis: RedisServer,
}

impl Master {
    fn config_text(listen: &str, top: &str, redis: &str) -> String {
        format!("listen = \"{listen}\"\n{}{top}\n{}", user_line(), workers_on(redis))
    }

    /// Starts on 127.0.0.1:0 with `top` among the top-level keys; returns once the master
    /// printed its address, which it does once every worker serves.
    fn start(top: &str) -> Master {
        Master::start_with("127.0.0.1:0", top, &[])
    }

    fn start_with(listen: &str, top: &str, env: &[(&str, &str)]) -> Master {
        let redis = RedisServer::start();
        let dir = service_dir("workers");
        let config = dir.write("chatd.toml", &Master::config_text(listen, top, &redis.url()));
        let (process, addr, stdout) = util::spawn_chatd(&dir, &config, "chatd master", |c| {
            c.envs(env.iter().copied());
        });
        Master {
            process,
            addr,
            config,
            listen: listen.to_owned(),
            _dir: dir,
            _stdout: stdout,
            redis,
        }
    }

    fn pid(&self) -> i32 {
        self.process.pid()
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Rewrites the configuration file with `top` among the top-level keys.
    fn rewrite(&self, top: &str) {
        let text = Master::config_text(&self.listen, top, &self.redis.url());
        fs::write(&self.config, text).expect("rewrite");
    }

    /// Waits until `/healthz` answers 200 on 16 connections in a row: every worker's Redis link
    /// is up (one that is not answers 503).
    fn await_linked(&self) {
        eventually("every worker linked to Redis", || {
            (0..16).all(|_| get_keep_alive(self.addr, "/healthz").1.status == 200)
        });
    }

    /// The two workers, once there are two.
    fn workers(&self) -> Vec<i32> {
        let mut w = Vec::new();
        eventually("two workers", || {
            w = children(self.pid());
            w.len() == 2
        });
        w
    }

    /// Waits until the log holds `needle` at least `n` times.
    fn wait_log(&self, needle: &str, n: usize) {
        eventually(&format!("{n} x {needle:?} in the log"), || {
            self.log().matches(needle).count() >= n
        });
    }

    /// The log lines that contain `needle`.
    fn lines(&self, needle: &str) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // The workers follow a killed master (SIGTERM on its death); wait so that none outlives
        // the test's folder.
        let workers = children(self.pid());
        // SAFETY: kill(2) has no memory effects; the master may be gone already.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        for w in workers {
            let deadline = Instant::now() + TIMEOUT;
            while alive(w) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// `GET path` with keep-alive on a fresh connection; the connection stays open.
fn get_keep_alive(addr: SocketAddr, path: &str) -> (Client, Response) {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let r = c.read_response();
    (c, r)
}

/// A WebSocket with its welcome read.
fn ws(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.send(handshake(&addr.to_string(), RFC_KEY, "").as_bytes());
    let r = c.read_head_response();
    assert_eq!(r.status, 101, "{r:?}");
    c.expect_welcome();
    c
}

/// `/metrics` on a fresh connection, as `series -> value`.
fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let (_, r) = get_keep_alive(addr, "/metrics");
    util::parse_metrics(&r)
}

/// Opens `n` connections (each kept open, one request answered) and returns them with how many
/// more sockets each worker holds than before.
fn spread(addr: SocketAddr, workers: &[i32], n: usize) -> (Vec<Client>, Vec<usize>) {
    let before: Vec<usize> = workers.iter().map(|&w| sockets(w)).collect();
    let clients: Vec<Client> = (0..n)
        .map(|_| {
            let (c, r) = get_keep_alive(addr, "/");
            assert_eq!(r.status, 200, "{r:?}");
            c
        })
        .collect();
    let gained = workers.iter().zip(before).map(|(&w, b)| sockets(w).saturating_sub(b)).collect();
    (clients, gained)
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Two workers, children of the master, on one port: both take connections. One killed with
/// SIGKILL is logged and replaced by a new process, and the service keeps answering.
#[test]
fn both_workers_take_connections_and_a_killed_one_is_replaced() {
    let m = Master::start("");
    let workers = m.workers();
    let exe = |pid: i32| fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    for &w in &workers {
        assert_eq!(exe(w), exe(m.pid()), "worker {w} is chatd");
    }
    assert_eq!(m.lines("worker serving").len(), 2, "{}", m.log());

    // SO_REUSEPORT spreads connections by a hash of the address pair: 64 reach both.
    let (clients, gained) = spread(m.addr, &workers, 64);
    assert!(gained.iter().all(|&g| g > 0), "sockets gained per worker: {gained:?}");
    assert_eq!(gained.iter().sum::<usize>(), 64, "{gained:?}");
    drop(clients);

    let victim = workers[0];
    kill(victim, libc::SIGKILL);
    let mut now = Vec::new();
    eventually("a replacement worker", || {
        now = children(m.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(now.contains(&workers[1]), "the other worker was left alone: {now:?}");
    let died = m.lines("worker died");
    assert_eq!(died.len(), 1, "{}", m.log());
    assert!(died[0].contains(&victim.to_string()) && died[0].contains("SIGKILL"), "{died:?}");

    // Both serve again, the replacement included.
    m.wait_log("worker serving", 3);
    let (clients, gained) = spread(m.addr, &now, 64);
    assert!(gained.iter().all(|&g| g > 0), "sockets gained per worker: {gained:?}");
    drop(clients);
}

/// Two people on different workers are paired through Redis and chat both ways; when one's
/// worker is killed without a word, the other is told (`disconnected`) and the crowd goes on
/// with the replacement.
#[test]
fn people_on_different_workers_pair_and_a_killed_workers_partner_is_told() {
    let m = Master::start("");
    let workers = m.workers();
    m.await_linked();
    // Connect until each worker holds one person.
    let mut on: Vec<Option<Chat>> = vec![None, None];
    for _ in 0..64 {
        let c = Chat::connect(m.addr);
        let local = c.ws.get_ref().local_addr().unwrap();
        let w = worker_of(local, m.addr.port(), &workers).expect("the chat's worker");
        let i = workers.iter().position(|&p| p == w).unwrap();
        if on[i].is_none() {
            on[i] = Some(c);
        }
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(mut x), Some(mut y)] = <[Option<Chat>; 2]>::try_from(on).unwrap() else {
        panic!("64 connections all reached one worker");
    };
    x.search(&[]);
    x.expect(json!({"type": "searching"}));
    y.search(&[]);
    y.expect(json!({"type": "searching"}));
    x.expect(json!({"type": "matched", "common_interests": []}));
    y.expect(json!({"type": "matched", "common_interests": []}));
    for i in 0..10 {
        x.say(&format!("x{i}"));
        y.say(&format!("y{i}"));
    }
    for i in 0..10 {
        y.expect(message(&format!("x{i}")));
        x.expect(message(&format!("y{i}")));
    }

    // y's worker dies: x hears of it within 5 s (TIMEOUT), from the Redis heartbeat's expiry.
    kill(workers[1], libc::SIGKILL);
    x.expect(json!({"type": "partner_left", "reason": "disconnected"}));
    drop(y);
    eventually("a replacement worker", || {
        let now = children(m.pid());
        now.len() == 2 && !now.contains(&workers[1])
    });
    m.await_linked();
    // x searches again and meets a newcomer, wherever the newcomer lands.
    x.search(&[]);
    x.expect(json!({"type": "searching"}));
    let mut z = Chat::connect(m.addr);
    z.search(&[]);
    z.expect(json!({"type": "searching"}));
    x.expect(json!({"type": "matched", "common_interests": []}));
    z.expect(json!({"type": "matched", "common_interests": []}));
}

/// SIGHUP: the master checks the file, then every worker reloads it. A broken file reaches no
/// worker: only the master says so, and both keep serving on the old configuration.
#[test]
fn sighup_reaches_every_worker_and_a_broken_file_none() {
    let m = Master::start("max_connections = 100");
    let workers = m.workers();
    m.rewrite("max_connections = 200");
    m.signal(libc::SIGHUP);
    m.wait_log("reloaded", 2);
    let reloaded = m.lines("reloaded");
    for i in 0..2 {
        let tag = format!("worker: {i}");
        assert!(
            reloaded.iter().any(|l| l.contains(&tag) && l.contains("changed: max_connections")),
            "no reload by {tag}: {reloaded:?}"
        );
    }
    // Seen from connections to both workers: each counts one good reload, no failed one.
    let (clients, gained) = spread(m.addr, &workers, 32);
    assert!(gained.iter().all(|&g| g > 0), "{gained:?}");
    drop(clients);
    // One scrape of the shared port shows every worker (the shared metrics board).
    eventually("both workers' reloads in one scrape", || {
        let v = metrics(m.addr);
        (0..2).all(|w| {
            v.get(&format!("chatd_reloads_total{{worker=\"{w}\",result=\"ok\"}}")) == Some(&1.0)
        })
    });
    // Each worker rebuilds what it serves every 250 ms: after two rounds every scrape agrees.
    thread::sleep(Duration::from_millis(600));
    for _ in 0..16 {
        let v = metrics(m.addr);
        for w in 0..2 {
            assert_eq!(v[&format!("chatd_reloads_total{{worker=\"{w}\",result=\"ok\"}}")], 1.0);
            assert_eq!(v[&format!("chatd_reloads_total{{worker=\"{w}\",result=\"failed\"}}")], 0.0);
        }
    }

    m.rewrite("max_connections = 300\nno_such_key = true");
    m.signal(libc::SIGHUP);
    m.wait_log("reload failed, every worker keeps the previous configuration", 1);
    let failed = m.lines("reload failed");
    assert_eq!(failed.len(), 1, "a worker saw the broken file: {failed:?}");
    assert!(failed[0].contains("no_such_key"), "{failed:?}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(m.lines("reloaded").len(), 2, "{}", m.log());
    assert_eq!(children(m.pid()), workers, "the workers changed");
    thread::sleep(Duration::from_millis(600));
    for _ in 0..16 {
        let v = metrics(m.addr);
        for w in 0..2 {
            assert_eq!(v[&format!("chatd_reloads_total{{worker=\"{w}\",result=\"ok\"}}")], 1.0);
            let failed = &format!("chatd_reloads_total{{worker=\"{w}\",result=\"failed\"}}");
            assert_eq!(v[failed], 0.0, "a worker tried the file");
        }
    }

    // Mended: both reload again.
    m.rewrite("max_connections = 300");
    m.signal(libc::SIGHUP);
    m.wait_log("reloaded", 4);
}

/// SIGTERM: every worker closes its WebSockets with 1001; then the master exits 0.
#[test]
fn sigterm_closes_every_workers_websockets_with_1001_and_the_master_exits_0() {
    let mut m = Master::start("shutdown_timeout = \"3s\"");
    let workers = m.workers();
    let before: Vec<usize> = workers.iter().map(|&w| sockets(w)).collect();
    let mut peers: Vec<Client> = (0..24).map(|_| ws(m.addr)).collect();
    let gained: Vec<usize> =
        workers.iter().zip(before).map(|(&w, b)| sockets(w).saturating_sub(b)).collect();
    assert!(gained.iter().all(|&g| g > 0), "WebSockets per worker: {gained:?}");

    let start = Instant::now();
    m.signal(libc::SIGTERM);
    for p in &mut peers {
        let f = p.read_frame_skipping_text();
        assert_eq!((f.opcode, f.close_code()), (0x8, Some(1001)), "{f:?}");
        // Answering the close lets the worker finish at once.
        p.send(&frame(0x88, &close_payload(1001, "")));
    }
    let (status, _) = m.process.wait_exit(TIMEOUT);
    assert!(status.success(), "master: {status:?}\n{}", m.log());
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    for w in workers {
        assert!(!alive(w), "worker {w} outlived the master");
    }
    let stopped = m.lines("stopped");
    assert_eq!(stopped.len(), 2, "{}", m.log());
    let closed: usize = stopped
        .iter()
        .filter_map(|l| {
            l.split("closed_websockets: ").nth(1)?.split(',').next()?.parse::<usize>().ok()
        })
        .sum();
    assert_eq!(closed, 24, "{stopped:?}");
    assert_eq!(m.lines("all workers exited").len(), 1, "{}", m.log());
}

/// SIGINT stops gracefully; a second one kills the workers without waiting for peers.
#[test]
fn a_second_sigint_kills_the_workers_at_once() {
    let mut m = Master::start("shutdown_timeout = \"10s\"");
    let workers = m.workers();
    // Silent peers on both workers: they never answer the close, holding each worker's stop.
    let before: Vec<usize> = workers.iter().map(|&w| sockets(w)).collect();
    let silent: Vec<Client> = (0..16).map(|_| ws(m.addr)).collect();
    let gained: Vec<usize> =
        workers.iter().zip(before).map(|(&w, b)| sockets(w).saturating_sub(b)).collect();
    assert!(gained.iter().all(|&g| g > 0), "{gained:?}");
    m.signal(libc::SIGINT);
    m.wait_log("stopping, connections", 2);
    let start = Instant::now();
    m.signal(libc::SIGINT);
    let (status, _) = m.process.wait_exit(TIMEOUT);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(m.log().contains("second interrupt"), "{}", m.log());
    // The first SIGINT reached the workers as a SIGTERM: not their second interrupt.
    for w in workers {
        assert!(!alive(w));
    }
    drop(silent);
}

/// A master killed without a word takes its workers along (their parent-death signal is
/// SIGTERM: they stop gracefully).
#[test]
fn the_workers_exit_when_the_master_is_killed() {
    let m = Master::start("");
    let workers = m.workers();
    kill(m.pid(), libc::SIGKILL);
    for w in workers {
        wait_gone(w);
    }
}

/// systemd hears READY=1 from the master once both workers serve, RELOADING=1 and READY=1
/// around a reload, STOPPING=1, and nothing from the workers.
#[test]
fn systemd_hears_the_master_only() {
    let dir = service_dir("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let sock_path = path.to_str().unwrap();
    let mut m = Master::start_with("127.0.0.1:0", "", &[("NOTIFY_SOCKET", sock_path)]);
    assert!(next().contains("READY=1"));
    assert_eq!(m.lines("worker serving").len(), 2, "READY=1 before both served:\n{}", m.log());
    // Had a worker inherited NOTIFY_SOCKET, its own READY=1 would come next (or be left over
    // at the end).
    m.signal(libc::SIGHUP);
    assert!(next().contains("RELOADING=1"));
    assert!(next().contains("READY=1"));
    m.wait_log("reloaded", 2);
    m.signal(libc::SIGTERM);
    assert!(next().contains("STOPPING=1"));
    let (status, _) = m.process.wait_exit(TIMEOUT);
    assert!(status.success(), "{status:?}");
    util::assert_no_more_notifications(&sock);
}

/// `[::]` with workers takes IPv4 and IPv6 connections.
#[test]
fn the_ipv6_wildcard_serves_both_families() {
    // No quiet skip: a machine without IPv6 loopback fails here, and says why.
    TcpListener::bind("[::1]:0").expect("this test needs IPv6 on loopback (::1)");
    let m = Master::start_with("[::]:0", "", &[]);
    assert!(m.addr.is_ipv6(), "{}", m.addr);
    for host in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(host.parse().unwrap(), m.addr.port());
        let (_, r) = get_keep_alive(addr, "/");
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
}

/// A second chatd with workers on a port the first one holds fails at start-up, and the first
/// keeps all of its connections (SO_REUSEPORT would have let it join and take half).
#[test]
fn a_second_instance_on_the_same_port_is_refused() {
    let m = Master::start("");
    let dir = TempDir::new("second");
    let config =
        dir.write("chatd.toml", &Master::config_text(&m.addr.to_string(), "", &m.redis.url()));
    let exit = run_chatd(&["--config", config.to_str().unwrap()]);
    assert!(!exit.status.success(), "{exit:?}");
    assert!(exit.stderr.contains("cannot listen on") && exit.stderr.contains("in use"), "{exit:?}");
    let workers = m.workers();
    let (clients, gained) = spread(m.addr, &workers, 32);
    assert_eq!(gained.iter().sum::<usize>(), 32, "{gained:?}");
    drop(clients);
}

/// `chatd -t` refuses more than one worker without `[cluster]`, naming the key.
#[test]
fn check_config_names_workers_without_a_cluster() {
    let dir = TempDir::new("check");
    let bad = dir.write("bad.toml", "listen = \"127.0.0.1:0\"\nworkers = 2\n");
    let exit = run_chatd(&["-t", "--config", bad.to_str().unwrap()]);
    assert!(!exit.status.success(), "{exit:?}");
    assert!(exit.stderr.contains("`workers`") || exit.stderr.contains("workers"), "{exit:?}");
    assert!(exit.stderr.contains("[cluster]"), "{exit:?}");
    let text = format!("listen = \"127.0.0.1:0\"\n{}", workers_on("redis://127.0.0.1:6379"));
    let good = dir.write("good.toml", &text);
    let exit = run_chatd(&["-t", "--config", good.to_str().unwrap()]);
    assert!(exit.status.success(), "{exit:?}");
}

/// As root, in daemon mode, on a port below 1024 with `user = "nobody"`: the master binds,
/// detaches, writes its pid to the pid file and drops to nobody before forking; both workers
/// run as nobody; the starting command exits 0 once both serve; SIGTERM removes the pid file.
#[test]
fn root_daemon_drops_privileges_before_forking_workers() {
    if skip_without_root() {
        return;
    }
    let redis = RedisServer::start();
    let dir = service_dir("daemon");
    let port = (0..400)
        .map(|i| 600 + (std::process::id() as u16 % 400 + i) % 400)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 600-999");
    let pid_file = dir.path().join("chatd.pid");
    let log_file = dir.path().join("chatd.log");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndaemon = true\nuser = \"nobody\"\npid_file = \"{}\"\n\
         log_file = \"{}\"\nshutdown_timeout = \"2s\"\n{}",
        pid_file.display(),
        log_file.display(),
        workers_on(&redis.url())
    );
    let config = dir.write("chatd.toml", &text);
    let exit = run_chatd(&["--config", config.to_str().unwrap()]);
    let log = || fs::read_to_string(&log_file).unwrap_or_default();
    assert!(exit.status.success(), "{exit:?}\n{}", log());
    let master: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // Killed (with its workers) if the test fails from here on.
    struct Guard(i32);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _guard = Guard(master);
    // The starting command said "ok" only once both workers served: no retry needed.
    assert_eq!(log().matches("worker serving").count(), 2, "{}", log());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, r) = get_keep_alive(addr, "/");
    assert_eq!(r.status, 200);

    let nobody = nobody_uid();
    assert_eq!(uids(master), [nobody; 4], "master uids");
    let workers = children(master);
    assert_eq!(workers.len(), 2, "{}", log());
    for &w in &workers {
        assert_eq!(uids(w), [nobody; 4], "worker {w} uids");
        // The pid file's lock is the master's alone.
        let targets = fd_targets(w);
        assert!(!targets.iter().any(|t| t == &pid_file), "worker {w} holds the pid file");
    }
    assert!(fd_targets(master).iter().any(|t| t == &pid_file), "the master holds its lock");
    assert!(log().contains("role: master") && log().contains("user: nobody"), "{}", log());

    kill(master, libc::SIGTERM);
    wait_gone(master);
    for w in workers {
        wait_gone(w);
    }
    assert!(!Path::new(&pid_file).exists(), "the pid file is still there\n{}", log());
    assert!(log().contains("all workers exited"), "{}", log());
}
