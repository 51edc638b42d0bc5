//! A real `redis-server` (Debian's package) for the tests, on a free `127.0.0.1` port, with no
//! persistence, killed on drop. `./scripts/test` installs the package when it is missing; a test
//! that finds no `redis-server` panics with a message saying so, it never skips.
//!
//! ```ignore
//! let mut redis = util::redis::RedisServer::start();
//! let target = chatd::cluster::RedisTarget::parse(&redis.url()).unwrap();
//! redis.stop();    // kill -9: connections drop as if the host died
//! redis.restart(); // the same port, an empty database
//! ```
use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{TempDir, TIMEOUT};

/// A `redis-server` child process. Every instance has its own port and working folder.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    password: Option<String>,
    dir: TempDir,
    /// Starts so far, to name each log file.
    starts: usize,
}

impl RedisServer {
    /// Starts a server with no password, waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, such as `["--requirepass", "pw"]`
    /// or an ACL user: `["--user", "chatd", "on", ">secret", "~*", "&*", "+@all"]` (each word is
    /// its own argument; the `default` user stays open unless `--requirepass` is given).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let password =
            args.iter().position(|a| a == "--requirepass").and_then(|i| args.get(i + 1)).cloned();
        let mut last_log = String::new();
        // The port is found by binding port 0 and released before redis-server binds it, so
        // another process may take it in between: then try another.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                args: args.clone(),
                password: password.clone(),
                dir: TempDir::new("redis"),
                starts: 0,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start in 5 tries; its last log:\n{last_log}");
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:port` (no credentials: add them for an auth test).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it: its clients see their connections drop, as
    /// if its host had died. The port is free afterwards. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts a new, empty one on the same port and waits
    /// until it answers `PING`.
    pub fn restart(&mut self) {
        self.stop();
        // The listening port is freed by the kill; redis-server binds with SO_REUSEADDR, so the
        // old connections in TIME_WAIT do not block it. Retry briefly all the same.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(log) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}:\n{log}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as with a
    /// hung Redis. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Runs one command with `redis-cli` (as the `default` user) and returns its output with the
    /// final newline removed. Panics if `redis-cli` fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): install Debian's redis-server (./scripts/test does)"
            )
        });
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        s
    }

    /// The server's log so far (of its latest start).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }

    /// Starts redis-server on `self.port` and waits for `PING`; on failure returns its log.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("create the redis log file");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--loglevel", "notice"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not installed: the Redis tests need it \
                 (apt-get install redis-server, which ./scripts/test does)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            // Our own server's log must say it listens: another test's server may have taken
            // the same free port a moment earlier, and it would answer the PING for ours.
            if answers_ping(self.port) && self.log().contains("Ready to accept connections") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("no answer to PING within {TIMEOUT:?}:\n{}", self.log()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server still dies of SIGKILL.
        self.stop();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// Whether a server on `port` answers `PING` with a complete line (`+PONG`, or `-NOAUTH` when
/// a password is required: either way it serves).
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let mut chunk = [0; 256];
    while !buf.ends_with(b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // `-LOADING` means it is not ready yet; an empty server does not load, but be exact.
    buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")
}
