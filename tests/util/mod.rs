//! Helpers for the black-box tests: start the real `chatd` binary on `127.0.0.1:0`, talk to it
//! over raw TCP (HTTP requests, WebSocket frames built and parsed here) or with tungstenite.
//!
//! Every socket has a read and a write timeout, so a server bug fails a test instead of hanging
//! it. Each module uses a different subset of the helpers.
#![allow(dead_code)]

use std::{
    fs,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use chatd::ws::{encode_frame, encode_masked, OpCode};
use serde_json::{json, Value};
use tungstenite::{protocol::CloseFrame, Message, WebSocket};

pub mod redis;

/// The longest any single read or write may take. Things that should happen within a configured
/// timeout of a few hundred milliseconds are waited for this long.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The key of RFC 6455 §1.3 and its accept value.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`RFC_KEY`].
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The path of the binary under test.
pub fn chatd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chatd")
}

/// A folder under the system temp dir, unique to this process and call, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, empty folder.
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("chatd-test-{}-{what}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` (relative, parents created) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether the tests run as root, as CI does.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `user = "nobody"` when running as root (chatd refuses to keep root: a deployment names the
/// account it drops to), nothing otherwise.
pub fn user_line() -> &'static str {
    if is_root() {
        "user = \"nobody\"\n"
    } else {
        ""
    }
}

/// For a test that needs root: says so and returns `true` (skip) when not root. CI runs as
/// root, so there a missing root fails the test instead: no test passes in CI by skipping.
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    assert!(std::env::var_os("CI").is_none(), "this test needs root, and CI runs as root");
    eprintln!("skipped: needs root (CI runs as root)");
    true
}

/// A child process, killed and reaped on drop so that a failing test leaves nothing running.
/// If the test is failing, the log file the process writes is printed first.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    log: PathBuf,
    /// Names the process in messages: `chatd (ADDR)`.
    name: String,
}

impl KillOnDrop {
    /// Takes charge of `child`, whose log (stderr) goes to the file `log`.
    pub fn new(child: Child, log: PathBuf, name: String) -> KillOnDrop {
        KillOnDrop { child, log, name }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) with the pid of our own child process has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// Waits up to `limit` for the process to exit; returns its status and how long that took.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for chatd") {
                return (status, start.elapsed());
            }
            assert!(start.elapsed() < limit, "{} did not exit within {limit:?}", self.name);
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- {} stderr ---\n{}--- end ---", self.name, self.log());
        }
    }
}

/// How a command that ran to its end ended, its output read as text.
#[derive(Debug)]
pub struct Exit {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Everything written to stderr (invalid UTF-8 replaced).
    pub stderr: String,
}

/// Runs `chatd args` to its end (at most [`TIMEOUT`]): the CLI, or a start in daemon mode whose
/// starting command exits. Output goes to files, not pipes, so that a daemon that kept a copy
/// of them cannot make this wait.
pub fn run_chatd(args: &[&str]) -> Exit {
    let out = TempDir::new("run");
    let stdout = fs::File::create(out.path().join("stdout")).expect("create stdout file");
    let stderr = fs::File::create(out.path().join("stderr")).expect("create stderr file");
    let child = Command::new(chatd_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn chatd");
    // Dropped (killed, its stderr shown if this panics) before `out` is removed.
    let mut process = KillOnDrop::new(child, out.path().join("stderr"), format!("chatd {args:?}"));
    let (status, _) = process.wait_exit(TIMEOUT);
    let read = |name| {
        String::from_utf8_lossy(&fs::read(out.path().join(name)).unwrap_or_default()).into_owned()
    };
    Exit { status, stdout: read("stdout"), stderr: read("stderr") }
}

/// Starts `chatd --config CONFIG` with its stderr in `dir/stderr.log` and `configure` applied
/// to the command, and waits for its address line. `name` labels it in failure messages.
pub fn spawn_chatd(
    dir: &TempDir,
    config: &Path,
    name: &str,
    configure: impl FnOnce(&mut Command),
) -> (KillOnDrop, SocketAddr, BufReader<ChildStdout>) {
    let log = dir.path().join("stderr.log");
    let stderr = fs::File::create(&log).expect("create stderr log");
    let mut command = Command::new(chatd_bin());
    command
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    configure(&mut command);
    let mut child = command.spawn().expect("spawn chatd");
    let (addr, stdout) = await_address(&mut child, dir);
    (KillOnDrop::new(child, log, format!("{name} ({addr})")), addr, stdout)
}

/// Waits for a just-spawned chatd's first stdout line, `chatd listening on http://ADDR/`, and
/// returns the address and the rest of stdout (kept open so chatd never writes to a closed pipe).
/// The line is read on a thread, so a server that never prints it fails the test within
/// `TIMEOUT`; on failure the child is killed and its stderr (`DIR/stderr.log`) is shown.
pub fn await_address(child: &mut Child, dir: &TempDir) -> (SocketAddr, BufReader<ChildStdout>) {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = tx.send((read.map(|_| line), reader));
    });
    let mut fail = |what: String| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        let log = fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        panic!("{what}; stderr:\n{log}");
    };
    let (line, reader) = match rx.recv_timeout(TIMEOUT) {
        Ok((Ok(line), reader)) => (line, reader),
        Ok((Err(e), _)) => fail(format!("reading chatd's stdout: {e}")),
        Err(_) => fail(format!("chatd printed no address within {TIMEOUT:?}")),
    };
    let addr = line
        .strip_prefix("chatd listening on http://")
        .and_then(|rest| rest.trim_end().strip_suffix('/'))
        .and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => (addr, reader),
        None => fail(format!("unexpected first stdout line {line:?}")),
    }
}

/// A running `chatd`, killed on drop. Its stderr (the log) is kept in a file and printed when
/// the test fails.
#[derive(Debug)]
pub struct Server {
    /// First, so that it is killed (and its log printed) before its folder is removed.
    process: KillOnDrop,
    addr: SocketAddr,
    /// The configuration and the log, removed once the process is gone.
    dir: TempDir,
    /// Kept open so that the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `chatd` with a config of `listen = "127.0.0.1:0"` followed by `extra_toml`, waits
    /// for its `chatd listening on http://ADDR/` line and returns it running.
    pub fn start(extra_toml: &str) -> Server {
        Server::start_on("127.0.0.1:0", extra_toml)
    }

    /// Like [`Server::start`], with `configure` applied to the command before it is spawned
    /// (limits, environment).
    pub fn start_with(extra_toml: &str, configure: impl FnOnce(&mut Command)) -> Server {
        Server::start_on_with("127.0.0.1:0", extra_toml, configure)
    }

    /// [`Server::start`] on another `listen` address, such as `[::]:0`.
    pub fn start_on(listen: &str, extra_toml: &str) -> Server {
        Server::start_on_with(listen, extra_toml, |_| {})
    }

    fn start_on_with(
        listen: &str,
        extra_toml: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let dir = TempDir::new("server");
        let config = dir.write("chatd.toml", &Server::config_text(listen, extra_toml));
        let (process, addr, stdout) = spawn_chatd(&dir, &config, "chatd", configure);
        Server { process, addr, dir, _stdout: stdout }
    }

    /// The configuration file for `listen` and `extra_toml`.
    fn config_text(listen: &str, extra_toml: &str) -> String {
        // chatd refuses to keep root (CI runs as root): run as `nobody`, as a deployment would.
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let user =
            if as_root && !extra_toml.contains("user =") { "user = \"nobody\"\n" } else { "" };
        format!("listen = {listen:?}\n{user}{extra_toml}\n")
    }

    /// Replaces the configuration file (same `listen`, then `extra_toml`); send SIGHUP to apply.
    pub fn rewrite_config(&self, extra_toml: &str) {
        let listen = self.addr.to_string();
        fs::write(self.dir.path().join("chatd.toml"), Server::config_text(&listen, extra_toml))
            .expect("rewrite the config");
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as a `Host` header value.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server process.
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Waits up to [`TIMEOUT`] for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.process.wait_exit(TIMEOUT).0
    }

    /// What the server has logged so far.
    pub fn stderr(&self) -> String {
        self.process.log()
    }

    /// A new raw connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One request on a fresh connection, the response read whole.
    pub fn request(&self, raw: &str) -> Response {
        let mut c = self.connect();
        c.send(raw.as_bytes());
        c.read_response()
    }

    /// `GET path` on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host()))
    }

    /// `/metrics` (from 127.0.0.1), as `series -> value`.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        parse_metrics(&self.get("/metrics"))
    }

    /// Opens a WebSocket on a fresh connection with a valid handshake, checks the 101 and reads
    /// the application's welcome message. The returned client is ready for frames.
    pub fn ws(&self) -> Client {
        let mut c = self.connect();
        c.send(handshake(&self.host(), RFC_KEY, "").as_bytes());
        let r = c.read_head_response();
        assert_eq!(r.status, 101, "handshake refused: {r:?}");
        assert_eq!(r.header("sec-websocket-accept"), Some(RFC_ACCEPT));
        c.expect_welcome();
        c
    }

    /// The server still serves other clients: the page, and a WebSocket with its welcome.
    pub fn assert_serving(&self) {
        let r = self.get("/");
        assert_eq!(r.status, 200, "GET / after the test: {r:?}");
        let mut ws = self.ws();
        ws.send(&frame(0x88, &close_payload(1000, "")));
        let f = ws.read_frame_skipping_text();
        assert_eq!(f.close_code(), Some(1000));
    }
}

/// A valid upgrade request for `/ws` with `key`, plus `extra` header lines (each ending in CRLF).
pub fn handshake(host: &str, key: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD, 101, 304).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// How many times header `name` occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is UTF-8")
    }

    /// `Content-Length` as a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| v.parse().expect("numeric Content-Length"))
    }
}

/// A server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN.
    pub fin: bool,
    /// RSV1-3 as the three bits 0x70.
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// Whether the server masked it (it must not).
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: its status code, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, 0x8, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// For a close frame: its reason.
    pub fn close_reason(&self) -> &str {
        std::str::from_utf8(self.payload.get(2..).unwrap_or_default())
            .expect("close reason is UTF-8")
    }

    /// The payload as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("payload is UTF-8")
    }
}

/// The masking key used by [`frame`] and [`header`].
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame as `chatd::ws::encode_masked` writes it, except for the first byte,
/// `b0` (FIN, RSV, opcode), which is sent as given: tests break rules no encoder would.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_masked(&mut v, OpCode::Binary, payload, MASK);
    v[0] = b0;
    v
}

/// An unmasked client frame (a protocol violation), first byte `b0`.
pub fn unmasked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, OpCode::Binary, payload);
    v[0] = b0;
    v
}

/// The header of a masked frame, first byte `b0`, that declares `len` payload bytes and sends
/// none: a frame cut short, or a length beyond any buffer.
pub fn header(b0: u8, len: u64) -> Vec<u8> {
    // A payload of up to 64 KiB picks the length encoding; a longer declared length then goes
    // into the 64-bit field (bytes 2..10, RFC 6455 §5.2), which no real payload could fill.
    let backed = len.min(1 << 16) as usize;
    let mut v = frame(b0, &vec![0; backed]);
    v.truncate(v.len() - backed);
    if len > backed as u64 {
        v[2..10].copy_from_slice(&len.to_be_bytes());
    }
    v
}

/// The payload of a close frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A raw TCP connection with a read buffer, for HTTP requests and WebSocket frames.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with read and write timeouts of [`TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to chatd");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::new() }
    }

    /// The socket, for tests that need it.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to chatd");
    }

    /// Writes all of `bytes`, returning the error (the server may already have closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `batch` again and again without reading, until the server gives up on this client
    /// (reset or broken pipe); fails if it still accepts after 512 MiB.
    pub fn send_until_refused(&mut self, batch: &[u8]) {
        let mut sent = 0usize;
        let refused = loop {
            if let Err(e) = self.try_send(batch) {
                break e;
            }
            sent += batch.len();
            assert!(sent < 512 << 20, "still connected after {sent} bytes sent without reading");
        };
        assert!(
            matches!(
                refused.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{refused}"
        );
    }

    /// Shuts the write side (sends FIN).
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Reads more into the buffer. Returns the number of bytes, 0 at EOF; a connection reset
    /// counts as EOF. Panics after `TIMEOUT` without data.
    fn fill(&mut self, what: &str) -> usize {
        self.fill_timeout(what, TIMEOUT).unwrap_or_else(|| panic!("timed out waiting for {what}"))
    }

    /// Like `fill`, but `None` after `timeout` without data.
    fn fill_timeout(&mut self, what: &str, timeout: Duration) -> Option<usize> {
        self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        let result = loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    break Some(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break None
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break Some(0),
                Err(e) => panic!("reading {what}: {e}"),
            }
        };
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        result
    }

    /// Reads one response with a body of `Content-Length` bytes (none for 101, 204, 304).
    pub fn read_response(&mut self) -> Response {
        self.read_response_inner(false)
    }

    /// Reads one response without a body (the answer to a HEAD, or a 101).
    pub fn read_head_response(&mut self) -> Response {
        self.read_response_inner(true)
    }

    fn read_response_inner(&mut self, head_only: bool) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill("a response head") == 0 {
                panic!("connection closed before a complete response head; got {:?}", self.lossy());
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).expect("response head is UTF-8");
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {status_line:?}");
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("numeric status");
        let reason = parts.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
                (n.to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut r = Response { status, reason, headers, body: Vec::new() };
        if !head_only && !matches!(status, 101 | 204 | 304) {
            let len = r.content_length().expect("a response with a body has Content-Length");
            while self.buf.len() < len {
                if self.fill("a response body") == 0 {
                    panic!(
                        "connection closed inside a body of {len} bytes; got {}",
                        self.buf.len()
                    );
                }
            }
            r.body = self.buf.drain(..len).collect();
        }
        r
    }

    /// Reads until the server closes, and returns what arrived (after anything already parsed).
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill("the server to close the connection") > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// The server closes the connection without sending anything more.
    pub fn expect_eof(&mut self) {
        let rest = self.read_to_eof();
        assert!(rest.is_empty(), "expected EOF, got {:?}", String::from_utf8_lossy(&rest));
    }

    /// Whether the server closed within `timeout` (with nothing more sent); `false` if the
    /// connection is still open after `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.fill_timeout("EOF", left) {
                Some(0) => {
                    assert!(self.buf.is_empty(), "unexpected bytes before EOF: {:?}", self.lossy());
                    return true;
                }
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// Nothing arrives (and the connection stays open) for `quiet`.
    pub fn assert_quiet(&mut self, quiet: Duration) {
        match self.fill_timeout("silence", quiet) {
            None => assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.lossy()),
            Some(0) => panic!("the server closed the connection; buffered {:?}", self.lossy()),
            Some(_) => panic!("unexpected bytes: {:?}", self.lossy()),
        }
    }

    fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse_frame(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return None,
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            at += 4;
            Some([b[at - 4], b[at - 3], b[at - 2], b[at - 1]])
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits");
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            payload.iter_mut().enumerate().for_each(|(i, x)| *x ^= m[i % 4]);
        }
        let f =
            Frame { fin: b[0] & 0x80 != 0, rsv: b[0] & 0x70, opcode: b[0] & 0x0f, masked, payload };
        self.buf.drain(..at + len);
        Some(f)
    }

    /// Reads one server frame. Panics on EOF or after `TIMEOUT`.
    pub fn read_frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.parse_frame() {
                assert!(!f.masked, "server frames must not be masked: {f:?}");
                assert_eq!(f.rsv, 0, "server frame with RSV bits: {f:?}");
                return f;
            }
            if self.fill("a frame") == 0 {
                panic!("connection closed while waiting for a frame; buffered {:?}", self.buf);
            }
        }
    }

    /// Reads one frame within `timeout`, `None` if none arrived.
    pub fn try_read_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.parse_frame() {
                assert!(!f.masked, "server frames must not be masked: {f:?}");
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.fill_timeout("a frame", left) {
                Some(0) => panic!("connection closed while waiting for a frame"),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Reads frames, skipping application text messages (the roulette may send some at any
    /// time, such as online counts), and returns the first other frame.
    pub fn read_frame_skipping_text(&mut self) -> Frame {
        loop {
            let f = self.read_frame();
            if f.opcode != 0x1 {
                return f;
            }
        }
    }

    /// Reads the application's welcome message: a single text frame with a JSON object whose
    /// `type` is `welcome`.
    pub fn expect_welcome(&mut self) -> serde_json::Value {
        let f = self.read_frame();
        assert_eq!((f.fin, f.opcode), (true, 0x1), "the first frame is a final text frame: {f:?}");
        let v: serde_json::Value = serde_json::from_slice(&f.payload).expect("welcome is JSON");
        assert_eq!(v["type"], "welcome", "{v}");
        v
    }

    /// The server sends a close frame with `code` (skipping application text before it), then
    /// closes the TCP connection. Returns the close frame.
    pub fn expect_close(&mut self, code: u16) -> Frame {
        let f = self.read_frame_skipping_text();
        assert_eq!(f.opcode, 0x8, "expected a close frame with {code}, got {f:?}");
        assert_eq!(f.close_code(), Some(code), "close frame {f:?} (reason {:?})", f.close_reason());
        assert!(f.payload.len() <= 125);
        self.expect_eof();
        f
    }
}

/// Waits until `f` returns true, checking every 10 ms for at most [`TIMEOUT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A WebSocket client library (tungstenite) over a blocking `TcpStream` with timeouts.
pub fn tungstenite_connect(
    addr: SocketAddr,
) -> (tungstenite::WebSocket<TcpStream>, tungstenite::handshake::client::Response) {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    tungstenite::client(format!("ws://{addr}/ws"), stream).expect("tungstenite handshake")
}

/// A chat client (the roulette's JSON over tungstenite). Every read has a deadline, so nothing
/// hangs.
#[derive(Debug)]
pub struct Chat {
    /// The WebSocket, for tests that send what the methods do not (binary, raw frames).
    pub ws: WebSocket<TcpStream>,
    /// The `welcome` message the server sent on connect.
    pub welcome: Value,
}

impl Chat {
    /// Opens a WebSocket on `/ws` and reads the welcome.
    pub fn connect(addr: SocketAddr) -> Chat {
        let (ws, response) = tungstenite_connect(addr);
        assert_eq!(response.status(), 101);
        // Small frames go out at once (no Nagle delay waiting for a delayed ACK).
        ws.get_ref().set_nodelay(true).expect("set TCP_NODELAY");
        let mut c = Chat { ws, welcome: Value::Null };
        let welcome = c.recv_any();
        assert_eq!(welcome["type"], "welcome", "the first message is the welcome: {welcome}");
        c.welcome = welcome;
        c
    }

    /// Sends `v` as a text frame.
    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends raw text (for invalid JSON).
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned())).expect("send a text frame");
    }

    /// `{"type":"search"}` with these interests (none when empty).
    pub fn search(&mut self, interests: &[&str]) {
        if interests.is_empty() {
            self.send(json!({"type": "search"}));
        } else {
            self.send(json!({"type": "search", "interests": interests}));
        }
    }

    /// A chat message.
    pub fn say(&mut self, text: &str) {
        self.send(message(text));
    }

    /// The `resume_token` of this connection's welcome.
    pub fn token(&self) -> String {
        self.welcome["resume_token"].as_str().expect("welcome has a resume_token").to_owned()
    }

    /// `{"type":"resume","token":token}`.
    pub fn resume(&mut self, token: &str) {
        self.send(json!({"type": "resume", "token": token}));
    }

    /// Ends the connection with a TCP reset (no close frame, no FIN): a network drop as the
    /// server sees it.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a `linger` of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.ws.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        drop(self);
    }

    /// The next WebSocket message before `deadline`, skipping pings and pongs; `None` on timeout.
    /// Always looks at least once (for 1 ms), so a deadline of now checks what has arrived.
    /// Panics if the connection fails.
    pub fn read_until(&mut self, deadline: Instant) -> Option<Message> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let left = left.max(Duration::from_millis(1));
            self.ws.get_ref().set_read_timeout(Some(left)).expect("set read timeout");
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(m) => return Some(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("reading from chatd: {e}"),
            }
        }
    }

    /// The next JSON message before `deadline`, `online` included; `None` on timeout. A close
    /// frame is returned as `{"close": CODE}` (and answered at once, so that the server need
    /// not wait for the answer).
    pub fn next_json(&mut self, deadline: Instant) -> Option<Value> {
        match self.read_until(deadline)? {
            Message::Text(t) => {
                Some(serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t:?}")))
            }
            Message::Close(frame) => {
                let _ = self.ws.flush();
                Some(json!({"close": frame.map(|f| u16::from(f.code))}))
            }
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }

    /// The next JSON message, `online` included. Panics after [`TIMEOUT`].
    pub fn recv_any(&mut self) -> Value {
        self.next_json(Instant::now() + TIMEOUT)
            .unwrap_or_else(|| panic!("no message within {TIMEOUT:?}"))
    }

    /// The next JSON message that is not `online`. Panics after [`TIMEOUT`].
    pub fn recv(&mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v =
                self.next_json(deadline).unwrap_or_else(|| panic!("no message within {TIMEOUT:?}"));
            if v["type"] != "online" {
                return v;
            }
        }
    }

    /// The next (non-`online`) message equals `expected` exactly.
    pub fn expect(&mut self, expected: Value) {
        let got = self.recv();
        assert_eq!(got, expected);
    }

    /// The next (non-`online`) message has type `kind`; returns it.
    pub fn expect_type(&mut self, kind: &str) -> Value {
        let got = self.recv();
        assert_eq!(got["type"], kind, "expected a {kind:?} message, got {got}");
        got
    }

    /// The next message is `{"type":"error","code":code,"message":"..."}` with a non-empty
    /// human-readable message and no other field.
    pub fn expect_error(&mut self, code: &str) {
        let got = self.recv();
        assert_eq!(got["type"], "error", "expected error {code:?}, got {got}");
        assert_eq!(got["code"], code, "{got}");
        assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()), "{got}");
        assert_eq!(got.as_object().map(|o| o.len()), Some(3), "exactly type, code, message: {got}");
    }

    /// Nothing but `online` messages arrives for `ms` milliseconds, and the connection stays open.
    pub fn expect_silence(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while let Some(v) = self.next_json(deadline) {
            assert_eq!(v["type"], "online", "expected silence, got {v}");
        }
    }

    /// The server closes the WebSocket with `code` (application messages before the close frame
    /// are skipped and returned).
    pub fn expect_close(&mut self, code: u16) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        let mut before = Vec::new();
        loop {
            match self.read_until(deadline) {
                Some(Message::Text(t)) => before.push(serde_json::from_str(&t).expect("JSON")),
                Some(Message::Close(frame)) => {
                    let got = frame.as_ref().map(|f: &CloseFrame<'_>| u16::from(f.code));
                    assert_eq!(got, Some(code), "close frame {frame:?}");
                    return before;
                }
                Some(other) => panic!("expected close {code}, got {other:?}"),
                None => panic!("no close frame within {TIMEOUT:?}"),
            }
        }
    }
}

/// Connects two chat clients and pairs them (`a` searches first); both have seen `searching`
/// and `matched` with no common interests.
pub fn pair(addr: SocketAddr) -> (Chat, Chat) {
    let mut a = Chat::connect(addr);
    let mut b = Chat::connect(addr);
    a.search(&[]);
    a.expect(json!({"type": "searching"}));
    b.search(&[]);
    b.expect(json!({"type": "searching"}));
    a.expect(json!({"type": "matched", "common_interests": []}));
    b.expect(json!({"type": "matched", "common_interests": []}));
    (a, b)
}

/// The chat message carrying `text`, as sent and as relayed.
pub fn message(text: &str) -> Value {
    json!({"type": "message", "text": text})
}

/// Asserts that nothing more is waiting on a notify socket (systemd heard only what the test
/// already read).
pub fn assert_no_more_notifications(sock: &std::os::unix::net::UnixDatagram) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let extra = sock.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(extra.is_err(), "unexpected notification {extra:?}");
}

/// A `/metrics` response, checked and parsed into `series -> value`.
pub fn parse_metrics(r: &Response) -> std::collections::HashMap<String, f64> {
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{r:?}");
    r.text()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

/// A TCP connection to `to` from the local address `from` (port chosen by the kernel).
pub fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddrV4) -> TcpStream {
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket returns a new descriptor (owned at once by `fd`), bind and connect read a
    // sockaddr_in of the length passed.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd: std::os::fd::OwnedFd = std::os::fd::FromRawFd::from_raw_fd(raw);
        let src = sockaddr(std::net::SocketAddrV4::new(from, 0));
        let rc = libc::bind(raw, (&raw const src).cast(), len);
        assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
        let dst = sockaddr(to);
        let rc = libc::connect(raw, (&raw const dst).cast(), len);
        assert_eq!(rc, 0, "connect {to} from {from}: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }
}
