//! chatd as a service (issue 4, "Tests"), against the real binary: started as root in daemon mode
//! on a port below 1024 (privilege drop, pid file, detaching, readiness), the refusal to keep
//! root, reloads (chat limits applied to open chats, a broken file, a restart-only key), a second
//! instance on the same pid file, a failing daemon reported by the starting command, log rotation
//! (SIGUSR1, SIGHUP) and JSON logs, the graceful stop (SIGTERM, SIGINT, SIGQUIT, the
//! `shutdown_timeout` cut-off, a second SIGINT), `/healthz` and `/metrics` (403 from 127.0.0.2)
//! and systemd's notify protocol. The systemd unit itself is checked by tests/deploy/check.sh.
//!
//! CI runs as root, as a deployment starts chatd: every configuration says `user = "nobody"`,
//! and the pid file, log file and notify socket live where `nobody` can write, as
//! /run/chatd, /var/log/chatd and /run/systemd/notify do. Run as another user, the tests that
//! need root say so and return early; the others run without `user`.
//!
//! Every wait is bounded; the whole file runs in a few seconds.

mod util;

use std::{
    collections::HashMap,
    fs,
    io::{BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::MetadataExt, fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{ChildStdout, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use util::{
    eventually, is_root, message, pair, run_chatd, skip_without_root, user_line, Chat,
    Client as RawClient, KillOnDrop, Response, TempDir, TIMEOUT,
};

// ---------------------------------------------------------------------------------------------
// Accounts, directories, ports, processes

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == "nobody")
                .then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a `nobody` line in /etc/passwd")
}

/// A temp folder owned by the service account, which must be able to create (log rotation) and
/// remove (the pid file at exit) files in it.
fn service_dir(what: &str) -> TempDir {
    let dir = TempDir::new(what);
    if is_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the temp dir");
    }
    dir
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A free privileged port (600-999) on 127.0.0.1.
fn free_low_port() -> u16 {
    let offset = (std::process::id() % 400) as u16;
    (0..400)
        .map(|i| 600 + (offset + i) % 400)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in 600-999")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, tty_nr, ...
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// Whether `pid` is a running (not exited, not zombie) process.
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| !matches!(f[0].as_str(), "Z" | "X"))
}

/// /proc/PID/status as `name -> value` (the value trimmed).
fn proc_status(pid: i32) -> HashMap<String, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Waits up to `limit` for `pid` (not our child) to exit; returns how long that took.
fn wait_gone(pid: i32, limit: Duration) -> Duration {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < limit, "process {pid} still runs after {limit:?}");
        thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// `chatd listening on http://ADDR/` found in `text` (stdout, or a daemon's log file).
fn listening_addr(text: &str) -> Option<SocketAddr> {
    let at = text.find("chatd listening on http://")? + "chatd listening on http://".len();
    text[at..].split('/').next()?.parse().ok()
}

/// The address in a log's start line (`listen: ADDR` as text, `"listen":"ADDR"` as JSON).
fn logged_listen_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("chatd started"))?;
    ["listen: ", "\"listen\":\""].iter().find_map(|key| {
        let at = line.find(key)? + key.len();
        line[at..].split([',', '"', ' ']).next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// A daemon (daemon mode) and a foreground server

/// chatd started in daemon mode by a command that exited 0. Killed on drop if still running.
struct Daemon {
    pid: i32,
    addr: SocketAddr,
    dir: TempDir,
    config: PathBuf,
    pid_file: PathBuf,
    log_file: PathBuf,
}

impl Daemon {
    /// The configuration: `daemon = true`, `listen`, a pid file and a log file in a folder the
    /// service user owns, then `extra` (top-level keys, then tables).
    fn config_text(dir: &TempDir, listen: &str, extra: &str) -> String {
        format!(
            "listen = \"{listen}\"\ndaemon = true\n{}pid_file = \"{}\"\nlog_file = \"{}\"\n{extra}\n",
            user_line(),
            path_str(&dir.path().join("chatd.pid")),
            path_str(&dir.path().join("chatd.log")),
        )
    }

    /// Starts chatd in daemon mode and checks that the starting command exited 0 and that the
    /// pid file names a running process.
    fn start(listen: &str, extra: &str) -> Daemon {
        let dir = service_dir("daemon");
        Daemon::start_in(dir, listen, extra)
    }

    fn start_in(dir: TempDir, listen: &str, extra: &str) -> Daemon {
        let config = dir.write("chatd.toml", &Daemon::config_text(&dir, listen, extra));
        let pid_file = dir.path().join("chatd.pid");
        let log_file = dir.path().join("chatd.log");
        let exit = run_chatd(&["--config", path_str(&config)]);
        let log = fs::read_to_string(&log_file).unwrap_or_default();
        assert!(exit.status.success(), "the starting command failed: {exit:?}\nlog:\n{log}");
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("pid file {}: {e}; log:\n{log}", pid_file.display()))
            .trim()
            .parse()
            .expect("a pid in the pid file");
        // From here on the drop kills it if the test fails.
        let mut d =
            Daemon { pid, addr: "0.0.0.0:0".parse().unwrap(), dir, config, pid_file, log_file };
        assert!(alive(pid), "the pid file names {pid}, which does not run");
        // Logged before the daemon reports ready, so in the log by now. The address line goes to
        // the daemon's stdout (the log file) or, should the starting command print it, there.
        d.addr = listening_addr(&exit.stdout)
            .or_else(|| listening_addr(&log))
            .or_else(|| logged_listen_addr(&log))
            .unwrap_or_else(|| panic!("no address in the output ({exit:?}) or the log:\n{log}"));
        d
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        kill(self.pid, signal);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if alive(self.pid) {
            // SAFETY: as in `kill`; the pid is the daemon this test started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        if thread::panicking() {
            eprintln!("--- daemon log ({}) ---\n{}--- end ---", self.addr, self.log());
        }
    }
}

/// chatd in the foreground on `127.0.0.1:0`, stderr (its log) kept in a file. Killed on drop.
struct Fg {
    /// First, so that it is killed (and its log printed) before its folder is removed.
    process: KillOnDrop,
    addr: SocketAddr,
    config: PathBuf,
    /// The configuration and the log, owned by the service user.
    _dir: TempDir,
    /// Kept open so that chatd never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Fg {
    /// The configuration text: `listen` on port 0, the service user, then `extra`.
    fn config_text(extra: &str) -> String {
        format!("listen = \"127.0.0.1:0\"\n{}{extra}\n", user_line())
    }

    fn start(extra: &str) -> Fg {
        Fg::start_env(extra, &[])
    }

    /// Starts with `extra` in the configuration and `env` added to the environment; returns
    /// once chatd printed its address.
    fn start_env(extra: &str, env: &[(&str, &str)]) -> Fg {
        let dir = service_dir("fg");
        let config = dir.write("chatd.toml", &Fg::config_text(extra));
        let (process, addr, reader) = util::spawn_chatd(&dir, &config, "chatd", |c| {
            c.envs(env.iter().copied());
        });
        Fg { process, addr, config, _dir: dir, _stdout: reader }
    }

    fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// Rewrites the configuration file with `extra` after the fixed keys.
    fn rewrite(&self, extra: &str) {
        fs::write(&self.config, Fg::config_text(extra)).expect("rewrite the config");
    }

    /// Waits until the log holds `needle` at least `n` times.
    fn wait_log(&self, needle: &str, n: usize) {
        eventually(&format!("{n} x {needle:?} in the log"), || {
            self.log().matches(needle).count() >= n
        });
    }

    /// Waits up to `limit` for the exit; returns the status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        self.process.wait_exit(limit)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP and chat clients

/// `GET path` on a fresh connection, without retrying: the server must already serve.
fn get(addr: SocketAddr, path: &str) -> Response {
    let mut c = RawClient::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    c.read_response()
}

/// `/metrics` from 127.0.0.1, parsed into `series -> value`.
fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    util::parse_metrics(&get(addr, "/metrics"))
}

/// The status code of `GET path` sent from `from` (with `Connection: close`).
fn status_from(from: Ipv4Addr, addr: SocketAddr, path: &str) -> u16 {
    let SocketAddr::V4(to) = addr else { panic!("an IPv4 server address: {addr}") };
    let mut s = util::connect_from(from, to);
    assert_eq!(s.local_addr().unwrap().ip(), from);
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(0) => panic!("closed before a status line: {:?}", String::from_utf8_lossy(&head)),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("reading the status line: {e}"),
        }
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line:?}"))
}

/// `a` and `b` still chat both ways.
fn assert_chatting(a: &mut Chat, b: &mut Chat, tag: &str) {
    a.say(&format!("a{tag}"));
    b.expect(message(&format!("a{tag}")));
    b.say(&format!("b{tag}"));
    a.expect(message(&format!("b{tag}")));
}

/// Both partners of a chat get `partner_left` (shutdown) and then close 1001, and nothing else.
fn expect_shutdown_goodbye(a: Chat, b: Chat) {
    for (name, mut c) in [("a", a), ("b", b)] {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while let Some(v) = c.next_json(deadline) {
            if v["type"] == "online" {
                continue;
            }
            let done = v.get("close").is_some();
            got.push(v);
            if done {
                break;
            }
        }
        let expected =
            vec![json!({"type": "partner_left", "reason": "shutdown"}), json!({"close": 1001})];
        assert_eq!(got, expected, "what {name} received at the stop");
        // Closing our side lets the server finish at once.
        drop(c);
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up

/// Issue 4, test 1: root, daemon mode, `user = "nobody"`, a port below 1024.
#[test]
fn root_daemon_on_a_low_port_drops_privileges_detaches_and_serves() {
    if skip_without_root() {
        return;
    }
    let port = free_low_port();
    let d = Daemon::start(&format!("127.0.0.1:{port}"), "shutdown_timeout = \"3s\"");
    assert_eq!(d.addr, SocketAddr::from(([127, 0, 0, 1], port)));

    // The starting command exited 0 only once the daemon served: no retry here.
    let r = get(d.addr, "/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("<html") || r.text().contains("<!DOCTYPE"), "the page: {r:?}");

    // Real, effective, saved and filesystem ids are nobody's; no groups, no capabilities.
    let (uid, gid) = nobody();
    let st = proc_status(d.pid);
    let ids = |key: &str| -> Vec<u32> {
        st[key].split_whitespace().map(|v| v.parse().unwrap()).collect()
    };
    assert_eq!(ids("Uid"), [uid; 4], "Uid: real, effective, saved, fs");
    assert_eq!(ids("Gid"), [gid; 4], "Gid: real, effective, saved, fs");
    assert_eq!(st["Groups"], "", "supplementary groups");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}");
    }
    // daemonize: umask 027, cwd /, stdin from /dev/null, stdout and stderr to the log file.
    assert_eq!(st["Umask"], "0027");
    let link = |what: &str| fs::read_link(format!("/proc/{}/{what}", d.pid)).unwrap();
    assert_eq!(link("cwd"), Path::new("/"));
    assert_eq!(link("fd/0"), Path::new("/dev/null"));
    assert_eq!(link("fd/1"), d.log_file);
    assert_eq!(link("fd/2"), d.log_file);

    // Detached: not our child, in a session of its own (whose leader has exited, so that it can
    // never acquire a terminal), and without a controlling terminal.
    let stat = proc_stat(d.pid).expect("/proc/PID/stat");
    let (ppid, session, tty): (i32, i32, i32) =
        (stat[1].parse().unwrap(), stat[3].parse().unwrap(), stat[4].parse().unwrap());
    let me = std::process::id() as i32;
    assert_ne!(ppid, me, "the daemon is still the test's child");
    // SAFETY: getsid(0) has no preconditions.
    assert_ne!(session, unsafe { libc::getsid(0) }, "the daemon shares the test's session");
    assert_ne!(session, d.pid, "the daemon is a session leader (no second fork)");
    assert_eq!(tty, 0, "the daemon has a controlling terminal");

    // The log says who it runs as.
    let log = d.log();
    let started = log.lines().find(|l| l.contains("chatd started")).expect("a start line");
    assert!(started.contains("nobody") && started.contains("version"), "{started}");
    assert_eq!(logged_listen_addr(&log), Some(d.addr), "{started}");

    // A paired chat works.
    let (mut a, mut b) = pair(d.addr);
    assert_chatting(&mut a, &mut b, "1");

    // SIGTERM: both told, the pid file removed (by the unprivileged daemon), the process gone.
    d.signal(libc::SIGTERM);
    expect_shutdown_goodbye(a, b);
    let took = wait_gone(d.pid, Duration::from_secs(4));
    assert!(took < Duration::from_millis(3500), "stopped in {took:?}");
    assert!(!d.pid_file.exists(), "the pid file is still there");
    assert!(TcpStream::connect(d.addr).is_err(), "still listening after the stop");
}

/// Issue 4, "Start-up" 4: root with a configuration file but no `user` refuses to start.
#[test]
fn root_without_user_refuses_to_start() {
    if skip_without_root() {
        return;
    }
    let dir = service_dir("nouser");
    let port = free_port();
    let config = dir.write("chatd.toml", &format!("listen = \"127.0.0.1:{port}\"\n"));
    let config = path_str(&config);
    for args in [vec!["--config", config], vec!["--config", config, "--daemon"]] {
        let exit = run_chatd(&args);
        assert!(!exit.status.success(), "{args:?}: {exit:?}");
        assert!(
            exit.stderr.contains("root") && exit.stderr.contains("`user`"),
            "{args:?}: {exit:?}"
        );
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "{args:?}: something listens");
    }
    // `-t` judges the file, not who runs the check.
    let exit = run_chatd(&["-t", "--config", config]);
    assert!(exit.status.success(), "{exit:?}");
}

/// The starting command reports a daemon that could not come up (here: its pid file cannot be
/// created), exits non-zero, and leaves nothing listening.
#[test]
fn a_daemon_that_fails_to_start_is_reported_by_the_starting_command() {
    let dir = service_dir("failing");
    let port = free_port();
    let pid_file = dir.path().join("no-such-dir").join("chatd.pid");
    let config = dir.write(
        "chatd.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndaemon = true\n{}pid_file = \"{}\"\n",
            user_line(),
            path_str(&pid_file)
        ),
    );
    let started = Instant::now();
    let exit = run_chatd(&["--config", path_str(&config)]);
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    assert!(exit.stderr.contains("pid file"), "the message names the problem: {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    eventually("the port to be free", || TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Issue 4, test 4: a second instance on the same pid file.
#[test]
fn a_second_instance_on_the_same_pid_file_fails_and_leaves_the_first_alone() {
    let first = Daemon::start("127.0.0.1:0", "");
    let other = TempDir::new("second");
    let config = other.write(
        "chatd.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\n{}pid_file = \"{}\"\n",
            user_line(),
            path_str(&first.pid_file)
        ),
    );
    let exit = run_chatd(&["--config", path_str(&config), "--daemon"]);
    assert!(!exit.status.success(), "{exit:?}");
    assert!(
        exit.stderr.contains(path_str(&first.pid_file))
            && exit.stderr.contains("locked")
            && exit.stderr.contains(&first.pid.to_string()),
        "the message names the pid file, that it is locked and by whom: {exit:?}"
    );
    // The first one is undisturbed.
    assert!(alive(first.pid));
    assert_eq!(fs::read_to_string(&first.pid_file).unwrap().trim(), first.pid.to_string());
    assert_eq!(get(first.addr, "/healthz").status, 200);
}

/// A pid file left behind by a process that is gone (not locked) does not stop a start.
#[test]
fn a_stale_pid_file_is_taken_over() {
    let dir = service_dir("stale");
    fs::write(dir.path().join("chatd.pid"), "999999\n").unwrap();
    if is_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(dir.path().join("chatd.pid"), Some(uid), Some(gid)).unwrap();
    }
    let d = Daemon::start_in(dir, "127.0.0.1:0", "");
    assert_eq!(fs::read_to_string(&d.pid_file).unwrap().trim(), d.pid.to_string());
    assert_eq!(get(d.addr, "/healthz").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Reload

/// Issue 4, test 3 (first two parts): a reload applies `[chat] max_message_chars` to an open
/// chat without disconnecting anyone; a broken file changes nothing and is reported.
#[test]
fn sighup_applies_chat_limits_to_open_chats_and_survives_a_broken_file() {
    let keys = "log_level = \"info\"\nshutdown_timeout = \"3s\"\n[chat]\nrate_burst = 50\n";
    let server = Fg::start(keys);
    let (mut a, mut b) = pair(server.addr);
    let fifty = "x".repeat(50);
    a.say(&fifty);
    b.expect(message(&fifty));

    server.rewrite(&format!("{keys}max_message_chars = 10\n"));
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded", 1);
    let log = server.log();
    let line = log.lines().find(|l| l.contains("reloaded")).unwrap();
    assert!(line.contains("chat.max_message_chars"), "the reload says what changed: {line}");

    // The open chat: 50 characters are now too long (b sees nothing), 10 still pass.
    a.say(&fifty);
    a.expect_error("message_too_long");
    b.say(&fifty);
    b.expect_error("message_too_long");
    a.say("0123456789");
    b.expect(message("0123456789"));
    b.expect_silence(100);
    assert_chatting(&mut a, &mut b, "after");
    // New clients are told the new limit.
    let c = Chat::connect(server.addr);
    assert_eq!(c.welcome["max_message_chars"], 10, "{}", c.welcome);
    drop(c);

    // A broken file: an unknown key on line 3.
    server.rewrite(&format!("bogus_key = 1\n{keys}max_message_chars = 1000\n"));
    server.signal(libc::SIGHUP);
    server.wait_log("reload failed", 1);
    let log = server.log();
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    let at = format!("{}:3:", server.config.display());
    assert!(line.contains(&at) && line.contains("bogus_key"), "file, line and key: {line}");
    // Still the limit of 10 (not the broken file's 1000, nor the default), everyone connected.
    a.say(&fifty);
    a.expect_error("message_too_long");
    assert_chatting(&mut a, &mut b, "broken");
    assert_eq!(get(server.addr, "/").status, 200);
    assert_eq!(Chat::connect(server.addr).welcome["max_message_chars"], 10);
    assert_eq!(server.log().matches("reloaded").count(), 1, "the broken file was not applied");
}

/// Issue 4, test 3 (last part): a changed `listen` is not applied: a warning, still on the old
/// address, nothing on the new one; the reloadable keys of the same file are applied.
#[test]
fn sighup_with_a_changed_listen_warns_and_keeps_the_old_address() {
    let server = Fg::start("[chat]\nmax_message_chars = 100");
    let (mut a, mut b) = pair(server.addr);
    let new_port = free_port();
    fs::write(
        &server.config,
        format!(
            "listen = \"127.0.0.1:{new_port}\"\n{}[chat]\nmax_message_chars = 20\n",
            user_line()
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded", 1);
    let log = server.log();
    let warning = log
        .lines()
        .find(|l| l.contains("needs a restart"))
        .unwrap_or_else(|| panic!("no restart warning in:\n{log}"));
    assert!(warning.contains("WARN") && warning.contains("listen"), "{warning}");

    assert_eq!(get(server.addr, "/").status, 200, "the old address serves");
    let refused =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], new_port)), TIMEOUT);
    assert!(refused.is_err(), "the new address accepts connections");
    assert_chatting(&mut a, &mut b, "1");
    a.say(&"y".repeat(21));
    a.expect_error("message_too_long");
    assert_eq!(Chat::connect(server.addr).welcome["max_message_chars"], 20);
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Issue 4, test 5: logrotate moves the file, SIGUSR1 (and separately SIGHUP) makes the daemon
/// write a new one (created by the unprivileged daemon, in the folder it owns).
#[test]
fn log_rotation_on_sigusr1_and_sighup() {
    let d = Daemon::start("127.0.0.1:0", "");
    assert!(d.log().contains("chatd started"));

    for (round, signal) in [(1, libc::SIGUSR1), (2, libc::SIGHUP)] {
        let rotated = d.dir.path().join(format!("chatd.log.{round}"));
        fs::rename(&d.log_file, &rotated).unwrap();
        d.signal(signal);
        eventually("a new log file with the reopen line", || d.log().contains("log file reopened"));
        if signal == libc::SIGHUP {
            eventually("the reload line in the new file", || d.log().contains("reloaded"));
            let log = d.log();
            let line = log.lines().find(|l| l.contains("reloaded")).unwrap();
            assert!(line.contains(path_str(&d.config)), "the reload names its file: {line}");
        }
        // The moved file got no line about this reopen (only the previous round's, if any).
        let old = fs::read_to_string(&rotated).unwrap();
        assert_eq!(old.matches("log file reopened").count(), round - 1, "{old}");
        let meta = fs::metadata(&d.log_file).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640, "mode of the new file");
        if is_root() {
            assert_eq!((meta.uid(), meta.gid()), nobody(), "owner of the new file");
        }
    }
    // Later lines go to the newest file: the stop.
    d.signal(libc::SIGTERM);
    wait_gone(d.pid, TIMEOUT);
    let last = d.log();
    assert!(last.contains("stopping") && last.contains("exiting"), "{last}");
    assert!(!fs::read_to_string(d.dir.path().join("chatd.log.2")).unwrap().contains("stopping"));
}

/// `log_format = "json"`: every line of the daemon's log file is one JSON object with `msg`,
/// `level` and `ts` ("one JSON object per line for log shippers"); the start line carries the
/// version, address and user.
#[test]
fn json_log_lines_parse() {
    let d = Daemon::start("127.0.0.1:0", "log_format = \"json\"");
    d.signal(libc::SIGUSR1);
    eventually("the reopen line", || d.log().contains("log file reopened"));
    let log = d.log();
    let mut parsed = Vec::new();
    let mut not_json = Vec::new();
    for line in log.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                for key in ["msg", "level", "ts"] {
                    assert!(v[key].is_string(), "no string {key:?} in {line}");
                }
                parsed.push(v);
            }
            Err(_) => not_json.push(line),
        }
    }
    let started = parsed.iter().find(|v| v["msg"] == "chatd started").expect("a start line");
    assert_eq!(started["level"], "INFO", "{started}");
    assert_eq!(started["listen"], d.addr.to_string(), "{started}");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"), "{started}");
    if is_root() {
        assert_eq!(started["user"], "nobody", "{started}");
    }
    assert!(parsed.iter().any(|v| v["msg"] == "log file reopened"), "{log}");
    assert!(not_json.is_empty(), "lines in the JSON log that are not JSON: {not_json:?}");
}

// ---------------------------------------------------------------------------------------------
// Stopping

/// Issue 4, test 6, in the foreground (for the exit status): SIGTERM, SIGINT and SIGQUIT each
/// stop gracefully within `shutdown_timeout` and exit 0.
#[test]
fn sigterm_sigint_and_sigquit_stop_gracefully_with_exit_0() {
    for (name, signal) in
        [("SIGTERM", libc::SIGTERM), ("SIGINT", libc::SIGINT), ("SIGQUIT", libc::SIGQUIT)]
    {
        // Debug logs every connection and request: still never what people write.
        let mut server = Fg::start("shutdown_timeout = \"3s\"\nlog_level = \"debug\"");
        let (mut a, mut b) = pair(server.addr);
        let secret = format!("private words before {name}");
        a.say(&secret);
        b.expect(message(&secret));
        server.signal(signal);
        expect_shutdown_goodbye(a, b);
        let (status, took) = server.wait_exit(Duration::from_secs(4));
        assert!(status.success(), "{name}: exit {status:?}");
        assert!(took < Duration::from_millis(3500), "{name}: took {took:?}");
        let log = server.log();
        assert!(log.contains("stopping") && log.contains("exiting"), "{name}: {log}");
        // The shutdown line says how many connections were closed.
        let stopped = log.lines().find(|l| l.contains("stopped")).expect("a `stopped` line");
        assert!(stopped.contains("closed_websockets: 2"), "{name}: {stopped}");
        assert!(!log.contains("private words"), "{name}: message text in the log:\n{log}");
    }
}

/// Issue 4, test 6, in daemon mode: the same goodbye, then the pid file is gone.
#[test]
fn sigterm_in_daemon_mode_says_goodbye_and_removes_the_pid_file() {
    let d = Daemon::start("127.0.0.1:0", "shutdown_timeout = \"3s\"");
    let (a, b) = pair(d.addr);
    d.signal(libc::SIGTERM);
    expect_shutdown_goodbye(a, b);
    let took = wait_gone(d.pid, Duration::from_secs(4));
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    assert!(!d.pid_file.exists(), "the pid file is still there");
}

/// A peer that never answers the close frame holds the stop up for `shutdown_timeout` at most.
#[test]
fn a_silent_peer_is_cut_off_at_shutdown_timeout() {
    let mut server = Fg::start("shutdown_timeout = \"500ms\"");
    // Opened, then never read again: it will not answer the close.
    let silent = Chat::connect(server.addr);
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait_exit(Duration::from_secs(3));
    let took = start.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(450), "did not wait for the peer: {took:?}");
    assert!(took < Duration::from_millis(1500), "not cut off at shutdown_timeout: {took:?}");
    assert!(server.log().contains("cut_off_connections: 1"), "{}", server.log());
    drop(silent);
}

/// A second SIGINT stops at once, without waiting for peers.
#[test]
fn a_second_sigint_stops_at_once() {
    let mut server = Fg::start("shutdown_timeout = \"10s\"");
    let silent = Chat::connect(server.addr);
    let start = Instant::now();
    server.signal(libc::SIGINT);
    server.wait_log("stopping", 1);
    server.signal(libc::SIGINT);
    let (_, _) = server.wait_exit(Duration::from_secs(3));
    // The peer alone would have held the stop for 2 s (the close linger) or 10 s.
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert!(server.log().contains("second interrupt"), "{}", server.log());
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// Health and metrics

/// Issue 4, test 7: `/healthz`, and `/metrics` values moving as a chat happens and as reloads
/// succeed and fail.
#[test]
fn healthz_and_metrics_follow_a_chat_and_reloads() {
    let server = Fg::start("");
    let h = get(server.addr, "/healthz");
    assert_eq!((h.status, h.text()), (200, "ok\n"), "{h:?}");

    let m0 = metrics(server.addr);
    for (k, v) in [
        ("chatd_up", 1.0),
        ("chatd_pairs", 0.0),
        ("chatd_websockets_open", 0.0),
        ("chatd_people_online", 0.0),
        ("chatd_matches_total", 0.0),
        ("chatd_messages_relayed_total", 0.0),
        ("chatd_reloads_total{result=\"ok\"}", 0.0),
        ("chatd_reloads_total{result=\"failed\"}", 0.0),
    ] {
        assert_eq!(m0.get(k), Some(&v), "{k} at start");
    }

    let mut a = Chat::connect(server.addr);
    a.say("nobody to talk to");
    a.expect_error("not_in_chat");
    let mut b = Chat::connect(server.addr);
    a.send(json!({"type": "search"}));
    a.expect(json!({"type": "searching"}));
    b.send(json!({"type": "search"}));
    b.expect(json!({"type": "searching"}));
    a.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
    a.say("one");
    b.expect(message("one"));
    b.say("two");
    a.expect(message("two"));
    a.say("three");
    b.expect(message("three"));

    let m1 = metrics(server.addr);
    let delta = |k: &str| m1[k] - m0.get(k).copied().unwrap_or(0.0);
    assert_eq!((m0["chatd_pairs"], m1["chatd_pairs"]), (0.0, 1.0));
    assert_eq!(delta("chatd_messages_relayed_total"), 3.0);
    assert_eq!(delta("chatd_matches_total"), 1.0);
    assert_eq!(delta("chatd_match_wait_seconds_count"), 2.0, "one wait per matched person");
    assert_eq!((m0["chatd_websockets_open"], m1["chatd_websockets_open"]), (0.0, 2.0));
    assert_eq!(m1["chatd_people_online"], 2.0);
    assert_eq!(m1["chatd_people_searching"], 0.0);
    // Two WebSockets and this second /metrics request.
    assert_eq!(delta("chatd_connections_total"), 3.0);
    assert_eq!(delta("chatd_websockets_total"), 2.0);
    assert_eq!(delta("chatd_errors_total{code=\"not_in_chat\"}"), 1.0);
    assert!(delta("chatd_received_bytes_total") > 0.0 && delta("chatd_sent_bytes_total") > 0.0);

    // The chat ends (both tabs closed: close frames, no resume): the gauges come back down.
    for mut c in [a, b] {
        c.ws.close(None).expect("send a close frame");
        let _ = c.ws.flush();
    }
    eventually("the gauges to drop", || {
        let m = metrics(server.addr);
        m["chatd_pairs"] == 0.0 && m["chatd_websockets_open"] == 0.0
    });

    // Reloads, by result.
    server.signal(libc::SIGHUP);
    server.wait_log("reloaded", 1);
    let m = metrics(server.addr);
    assert_eq!(m["chatd_reloads_total{result=\"ok\"}"], 1.0);
    assert_eq!(m["chatd_reloads_total{result=\"failed\"}"], 0.0);
    server.rewrite("no_such_key = true");
    server.signal(libc::SIGHUP);
    server.wait_log("reload failed", 1);
    let m = metrics(server.addr);
    assert_eq!(m["chatd_reloads_total{result=\"ok\"}"], 1.0);
    assert_eq!(m["chatd_reloads_total{result=\"failed\"}"], 1.0);

    // Only loopback may read the metrics by default.
    let localhost = Ipv4Addr::new(127, 0, 0, 1);
    let other = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(status_from(other, server.addr, "/metrics"), 403);
    assert_eq!(status_from(other, server.addr, "/healthz"), 200);
    assert_eq!(status_from(localhost, server.addr, "/metrics"), 200);
}

/// `metrics_allow` replaces the default: the listed address may read, loopback may not.
#[test]
fn metrics_allow_lists_the_readers() {
    let server = Fg::start("metrics_allow = [\"127.0.0.2\"]");
    assert_eq!(status_from(Ipv4Addr::new(127, 0, 0, 2), server.addr, "/metrics"), 200);
    assert_eq!(status_from(Ipv4Addr::new(127, 0, 0, 1), server.addr, "/metrics"), 403);
}

// ---------------------------------------------------------------------------------------------
// systemd

/// CLOCK_MONOTONIC in microseconds, as systemd's MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `ts`.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The next datagram on the notify socket, as its `KEY=value` lines.
fn notification(sock: &UnixDatagram) -> Vec<String> {
    let mut buf = [0u8; 4096];
    let n =
        sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification within {TIMEOUT:?}: {e}"));
    String::from_utf8(buf[..n].to_vec()).expect("UTF-8").lines().map(str::to_owned).collect()
}

/// Issue 4, test 8: READY=1 at start, RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP,
/// STOPPING=1 on SIGTERM, read from a notify socket the test creates.
#[test]
fn systemd_notify_ready_reloading_stopping() {
    let dir = service_dir("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    // The service user sends to it, as to systemd's world-writable /run/systemd/notify.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();

    let mut server = Fg::start_env("", &[("NOTIFY_SOCKET", path_str(&path))]);
    let ready = notification(&sock);
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    assert_eq!(get(server.addr, "/healthz").status, 200, "READY=1 while not serving");

    let before = monotonic_usec();
    server.signal(libc::SIGHUP);
    let reloading = notification(&sock);
    let after = monotonic_usec();
    assert!(reloading.iter().any(|l| l == "RELOADING=1"), "{reloading:?}");
    let usec: u64 = reloading
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC=<digits> in {reloading:?}"))
        .parse()
        .unwrap();
    assert!((before..=after).contains(&usec), "MONOTONIC_USEC={usec} not in [{before}, {after}]");
    let ready = notification(&sock);
    assert!(ready.iter().any(|l| l == "READY=1"), "after the reload: {ready:?}");

    server.signal(libc::SIGTERM);
    let stopping = notification(&sock);
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (status, _) = server.wait_exit(TIMEOUT);
    assert!(status.success(), "{status:?}");
    util::assert_no_more_notifications(&sock);
}

/// `NOTIFY_SOCKET=@name` (an abstract socket, as systemd may pass) works too.
#[test]
fn systemd_notify_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("chatd-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _server = Fg::start_env("", &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    let ready = notification(&sock);
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
}
