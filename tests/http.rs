//! The HTTP side of the real binary: the page, its headers, keep-alive and pipelining, every
//! error status of issue 2 ("HTTP" and "Tests"), path escapes, `web_root`, the request timeout,
//! `max_connections`, and the command line. After each bad input, another client is still served.
mod util;

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use util::{run_chatd, Client, Response, Server, TempDir, TIMEOUT};

/// A file of the embedded page, as it is in the source tree.
fn web_file(name: &str) -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("web").join(name)).expect("web/ file")
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// The headers every response carries (issue 2, "Security headers on every response").
fn assert_security_headers(r: &Response) {
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("no CSP: {r:?}"));
    for directive in ["connect-src 'self'", "script-src 'self'"] {
        assert!(csp.split(';').any(|d| d.trim() == directive), "CSP lacks {directive}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains('*'),
        "{csp}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{r:?}");
    assert!(r.header("cache-control").is_some(), "no Cache-Control: {r:?}");
    assert_eq!(r.header_count("content-length"), 1, "{r:?}");
}

/// Sends `raw` on a fresh connection and checks that the answer is `status`, with the security
/// headers and `Connection: close`, and that the server then closes the connection.
fn assert_refused(server: &Server, raw: &[u8], status: u16) -> Response {
    let mut c = server.connect();
    c.send(raw);
    let r = c.read_response();
    assert_eq!(
        r.status,
        status,
        "for {:?}: {r:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(80)])
    );
    assert_security_headers(&r);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_eq!(r.content_length(), Some(r.body.len()));
    c.expect_eof();
    r
}

#[test]
fn get_root_serves_the_page_with_its_headers() {
    let server = Server::start("");
    let r = server.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "OK");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.content_length(), Some(r.body.len()));
    assert_eq!(r.body, web_file("index.html"), "/ serves web/index.html");
    assert_security_headers(&r);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.header("etag").is_some_and(|e| e.starts_with('"') && e.ends_with('"')), "{r:?}");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // The same file under its own name.
    let named = server.get("/index.html");
    assert_eq!((named.status, named.body), (200, r.body));
}

#[test]
fn head_root_has_the_same_headers_and_no_body() {
    let server = Server::start("");
    let mut c = server.connect();
    let host = server.host();
    c.send(format!("HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let head = c.read_head_response();
    // A body after the HEAD answer would be read as the start of the next response.
    c.send(get(&host, "/").as_bytes());
    let full = c.read_response();
    assert_eq!(head.status, 200);
    assert_eq!(full.status, 200);
    assert_eq!(head.headers, full.headers, "HEAD and GET answer with the same headers");
    assert_eq!(head.content_length(), Some(full.body.len()));
    assert_security_headers(&head);
}

#[test]
fn assets_have_their_content_types() {
    let server = Server::start("");
    for (path, file, ctype) in [
        ("/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "favicon.svg", "image/svg+xml"),
    ] {
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.body, web_file(file), "{path}");
        assert_eq!(r.content_length(), Some(r.body.len()), "{path}");
        assert_security_headers(&r);
    }
}

#[test]
fn etag_and_if_none_match_give_304() {
    let server = Server::start("");
    let host = server.host();
    let first = server.get("/app.js");
    let etag = first.header("etag").expect("ETag").to_owned();
    let mut c = server.connect();
    for (inm, status) in [
        (etag.clone(), 304),
        (format!("W/{etag}"), 304),
        (format!("\"nope\", {etag}"), 304),
        ("*".to_owned(), 304),
        ("\"0000000000000000\"".to_owned(), 200),
    ] {
        c.send(
            format!("GET /app.js HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: {inm}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, status, "If-None-Match: {inm}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_security_headers(&r);
        if status == 304 {
            assert_eq!(r.reason, "Not Modified");
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.body, first.body);
        }
    }
    // The 304s carried no body: the connection is still in step.
    c.send(get(&host, "/healthz").as_bytes());
    assert_eq!(c.read_response().text(), "ok\n");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let server = Server::start("");
    let host = server.host();
    let mut c = server.connect();
    c.send(get(&host, "/").as_bytes());
    let a = c.read_response();
    c.send(get(&host, "/style.css").as_bytes());
    let b = c.read_response();
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.header("connection"), Some("keep-alive"));
    assert_eq!(b.header("content-type"), Some("text/css; charset=utf-8"));
    // `Connection: close` is honoured: the answer says so and the server closes.
    c.send(
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let r = c.read_response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    c.expect_eof();
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked() {
    let server = Server::start("");
    let mut c = server.connect();
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    c.expect_eof();
    let mut c = server.connect();
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("keep-alive"));
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.expect_eof();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start("");
    let host = server.host();
    let mut c = server.connect();
    let batch = [
        get(&host, "/style.css"),
        format!("HEAD /app.js HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        get(&host, "/healthz"),
        get(&host, "/missing.txt"),
        get(&host, "/"),
    ]
    .concat();
    c.send(batch.as_bytes());
    let css = c.read_response();
    let js = c.read_head_response();
    let health = c.read_response();
    let missing = c.read_response();
    let index = c.read_response();
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(css.body, web_file("style.css"));
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(js.content_length(), Some(web_file("app.js").len()));
    assert_eq!((health.status, health.text()), (200, "ok\n"));
    assert_eq!(missing.status, 404);
    assert_eq!(index.body, web_file("index.html"));
    // Nothing else was sent, and the connection stays open.
    c.assert_quiet(Duration::from_millis(100));
}

/// The rest of a pipelined batch must not be lost when the client half-closes after sending it
/// (as `printf ... | nc -N` does): the server reads EOF right after the requests.
#[test]
fn a_client_that_half_closes_after_its_requests_still_gets_the_answers() {
    let server = Server::start("");
    let host = server.host();
    let mut c = server.connect();
    c.send([get(&host, "/healthz"), get(&host, "/healthz")].concat().as_bytes());
    c.shutdown_write();
    assert_eq!(c.read_response().text(), "ok\n");
    assert_eq!(c.read_response().text(), "ok\n");
    c.expect_eof();
}

#[test]
fn healthz() {
    let server = Server::start("");
    let r = server.get("/healthz");
    assert_eq!((r.status, r.text()), (200, "ok\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_security_headers(&r);
}

#[test]
fn unknown_path_is_404_and_the_connection_stays_usable() {
    let server = Server::start("");
    let host = server.host();
    let mut c = server.connect();
    for path in
        ["/nope", "/nope.html", "/web/index.html", "/index.html/", "/index", "/app.js.map", "/ws/x"]
    {
        c.send(get(&host, path).as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 404, "{path}");
        assert_security_headers(&r);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    c.send(format!("HEAD /nope HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let r = c.read_head_response();
    assert_eq!(r.status, 404);
    c.send(get(&host, "/").as_bytes());
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = Server::start("");
    let host = server.host();
    for raw in [
        format!("POST / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello"),
        format!("POST /ws HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"),
        format!("PUT /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc"),
        format!("PUT /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("DELETE /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("DELETE /app.js HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n\r\nbody"),
        format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("PATCH / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let r = assert_refused(&server, raw.as_bytes(), 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{raw}");
        assert_eq!(r.reason, "Method Not Allowed");
        server.assert_serving();
    }
}

#[test]
fn binary_garbage_is_400_at_once() {
    let server = Server::start("handshake_timeout = \"30s\"");
    for raw in [
        b"\x00\x01\x02\x03\xff\xfe\xfd".as_slice(),
        b"\x80\x81\x82\r\n\r\n",
        b"GET\x00/ HTTP/1.1\r\n\r\n",
        b"GET / FOO/1.1\r\nHost: x\r\n\r\n",
    ] {
        let t0 = Instant::now();
        assert_refused(&server, raw, 400);
        assert!(t0.elapsed() < Duration::from_secs(3), "answered after {:?}", t0.elapsed());
        server.assert_serving();
    }
}

/// A request line that is not `METHOD SP TARGET SP HTTP-version` is malformed (RFC 9112 §3):
/// 400. 505 is for a well-formed request line naming a version other than 1.x, so the mere
/// presence of `HTTP/` somewhere in the line must not turn garbage into a 505.
#[test]
fn malformed_request_line_mentioning_http_is_400_not_505() {
    let server = Server::start("");
    let host = server.host();
    for raw in [
        format!("G E T / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET /a b HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET / HTTP/1.1 extra\r\nHost: {host}\r\n\r\n"),
    ] {
        assert_refused(&server, raw.as_bytes(), 400);
    }
    server.assert_serving();
}

#[test]
fn malformed_header_fields_are_400() {
    let server = Server::start("");
    let host = server.host();
    for headers in [
        "Bad Header: y\r\n",
        "NoColon\r\n",
        ": empty-name\r\n",
        "X-Bin: \u{7f}\r\n",
        "Content-Length: five\r\n",
        "Content-Length: 0\r\nContent-Length: 1\r\n",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
        assert_refused(&server, raw.as_bytes(), 400);
    }
    // A header value that is not text (obs-text) is refused rather than guessed at.
    let raw =
        [format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Latin1: caf").as_bytes(), b"\xe9\r\n\r\n"]
            .concat();
    assert_refused(&server, &raw, 400);
    server.assert_serving();
}

/// A TLS ClientHello (TLS 1.2 record, as `curl https://` sends first): not HTTP, so 400, and at
/// once rather than after the 30 s handshake timeout.
#[test]
fn tls_client_hello_is_400_at_once() {
    let server = Server::start("handshake_timeout = \"30s\"");
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f, 0x01, 0x00, 0x00, 0x00]);
    for len in [hello.len(), 5, 1] {
        let t0 = Instant::now();
        assert_refused(&server, &hello[..len], 400);
        assert!(t0.elapsed() < Duration::from_secs(3), "answered after {:?}", t0.elapsed());
    }
    server.assert_serving();
}

#[test]
fn over_long_request_line_is_414() {
    let server = Server::start("");
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let r = assert_refused(&server, long.as_bytes(), 414);
    assert_eq!(r.reason, "URI Too Long");
    // Also when the line has not ended yet: the head limit is reached without a newline.
    let unfinished = format!("GET /{}", "b".repeat(20_000));
    assert_refused(&server, unfinished.as_bytes(), 414);
    server.assert_serving();
}

#[test]
fn oversized_or_too_many_headers_are_431() {
    let server = Server::start("");
    let host = server.host();
    let big = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n", "x".repeat(10_000));
    assert_refused(&server, big.as_bytes(), 431);
    server.assert_serving();
    let mut many = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = assert_refused(&server, many.as_bytes(), 431);
    assert_eq!(r.reason, "Request Header Fields Too Large");
    server.assert_serving();
    // 31 headers with Host are fine.
    let mut ok = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for i in 0..30 {
        ok.push_str(&format!("X-H{i}: v\r\n"));
    }
    ok.push_str("\r\n");
    assert_eq!(server.request(&ok).status, 200);
}

#[test]
fn get_with_a_body_is_413() {
    let server = Server::start("");
    let host = server.host();
    for raw in [
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello"),
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        format!("HEAD / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n\r\nx"),
    ] {
        let r = assert_refused(&server, raw.as_bytes(), 413);
        assert!(r.text().starts_with("413 "), "{r:?}");
        server.assert_serving();
    }
    // An explicit empty body is no body.
    let zero = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(server.request(&zero).status, 200);
}

#[test]
fn http_2_request_line_is_505() {
    let server = Server::start("");
    let host = server.host();
    for version in ["HTTP/2.0", "HTTP/2", "HTTP/3.0", "HTTP/1.2"] {
        let raw = format!("GET / {version}\r\nHost: {host}\r\n\r\n");
        let r = assert_refused(&server, raw.as_bytes(), 505);
        assert_eq!(r.reason, "HTTP Version Not Supported", "{version}");
    }
    server.assert_serving();
}

#[test]
fn missing_host_on_http_1_1_is_400() {
    let server = Server::start("");
    assert_refused(&server, b"GET / HTTP/1.1\r\n\r\n", 400);
    server.assert_serving();
}

#[test]
fn path_escapes_are_400() {
    let server = Server::start("");
    let host = server.host();
    for path in [
        "/../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/..%2fetc%2fpasswd",
        "/a%2fb",
        "/a%5cb",
        "/..\\etc\\passwd",
        "//etc/passwd",
        "/a//index.html",
        "/index.html%00",
        "/index.html%00.js",
        "/..",
        "/a/..",
        "/a/../index.html",
        "/./index.html",
        "/.",
        "/.git/config",
        "/%",
        "/%zz",
        "/%c3",
        "etc/passwd",
    ] {
        let r = assert_refused(&server, get(&host, path).as_bytes(), 400);
        assert_eq!(r.reason, "Bad Request", "{path}");
        server.assert_serving();
    }
    // A query string is not part of the path.
    assert_eq!(server.get("/app.js?v=../../etc/passwd").status, 200);
}

#[test]
fn web_root_serves_its_files_and_refuses_symlinks_out() {
    let tmp = TempDir::new("webroot");
    let root = tmp.path().join("root");
    tmp.write("root/index.html", "<!doctype html><p>from disk</p>");
    tmp.write("root/sub/page.txt", "a page");
    tmp.write("secret.txt", "top secret");
    tmp.write("outside/inner.txt", "also secret");
    std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/page.txt"), root.join("alias.txt")).unwrap();
    let server = Server::start(&format!("web_root = {:?}", root.display().to_string()));
    let index = server.get("/");
    assert_eq!((index.status, index.text()), (200, "<!doctype html><p>from disk</p>"));
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    let page = server.get("/sub/page.txt");
    assert_eq!((page.status, page.text()), (200, "a page"));
    assert_eq!(page.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_security_headers(&page);
    assert_eq!(server.get("/alias.txt").text(), "a page", "a symlink inside the root is served");
    for path in ["/leak.txt", "/linkdir/inner.txt", "/secret.txt", "/app.js", "/outside/inner.txt"]
    {
        let r = server.get(path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("secret"));
    }
    assert_refused(&server, get(&server.host(), "/../secret.txt").as_bytes(), 400);
    assert_refused(&server, get(&server.host(), "/sub/%2e%2e/%2e%2e/secret.txt").as_bytes(), 400);
    server.assert_serving();
}

#[test]
fn unfinished_request_gets_408_and_silent_connection_is_closed() {
    let server = Server::start("handshake_timeout = \"300ms\"");
    let host = server.host();
    let t0 = Instant::now();
    let mut partial = server.connect();
    partial.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    let mut silent = server.connect();
    let r = partial.read_response();
    assert_eq!(r.status, 408);
    assert_eq!(r.reason, "Request Timeout");
    assert_eq!(r.header("connection"), Some("close"));
    assert_security_headers(&r);
    partial.expect_eof();
    assert!(t0.elapsed() >= Duration::from_millis(250), "408 after only {:?}", t0.elapsed());
    assert!(silent.closed_within(TIMEOUT), "a connection that sent nothing is closed");
    // Between keep-alive requests the same limit applies.
    let mut idle = server.connect();
    idle.send(get(&host, "/healthz").as_bytes());
    assert_eq!(idle.read_response().status, 200);
    assert!(idle.closed_within(TIMEOUT), "an idle keep-alive connection is closed");
    server.assert_serving();
}

/// A request trickled in slowly, each piece before the timeout, is cut at the timeout: the limit
/// is on the whole head, not between reads.
#[test]
fn slow_request_head_is_cut_at_the_timeout() {
    let server = Server::start("handshake_timeout = \"300ms\"");
    let mut c = server.connect();
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n");
    let mut n = 0;
    while t0.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        if c.try_send(format!("X-{n}: y\r\n").as_bytes()).is_err() {
            break;
        }
        n += 1;
        if n >= 30 {
            break;
        }
    }
    let r = c.read_response();
    assert_eq!(r.status, 408, "{r:?}");
}

#[test]
fn max_connections_refuses_the_next_with_503() {
    let server = Server::start("max_connections = 3\nhandshake_timeout = \"30s\"");
    let host = server.host();
    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = server.connect();
            c.send(get(&host, "/healthz").as_bytes());
            assert_eq!(c.read_response().status, 200);
            c
        })
        .collect();
    let mut fourth = server.connect();
    let r = fourth.read_response();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.reason, "Service Unavailable");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_security_headers(&r);
    fourth.expect_eof();
    // The held connections are still served.
    for c in &mut held {
        c.send(get(&host, "/healthz").as_bytes());
        assert_eq!(c.read_response().status, 200);
    }
    // Once one goes, a new client gets in.
    drop(held.pop());
    util::eventually("a free slot", || {
        let mut c = server.connect();
        c.send(get(&host, "/").as_bytes());
        c.read_response().status == 200
    });
}

/// A client that pipelines requests and never reads its answers cannot make the server buffer
/// without bound: past `max_outbound_bytes` of unsent output it is disconnected.
#[test]
fn client_that_never_reads_its_answers_is_disconnected() {
    let server = Server::start("max_outbound_bytes = 65536");
    let mut c = server.connect();
    let batch = get(&server.host(), "/").repeat(200);
    c.send_until_refused(batch.as_bytes());
    server.assert_serving();
}

#[test]
fn cli_version_and_help() {
    let out = run_chatd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, format!("chatd {}\n", env!("CARGO_PKG_VERSION")));
    let out = run_chatd(&["-V"]);
    assert!(out.status.success());
    for flag in ["--help", "-h"] {
        let out = run_chatd(&[flag]);
        assert!(out.status.success(), "{flag}");
        let help = &out.stdout;
        for word in ["Usage: chatd", "--config", "--check-config", "--version", "--help"] {
            assert!(help.contains(word), "{flag} output lacks {word}: {help}");
        }
    }
    let out = run_chatd(&["--frobnicate"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--frobnicate"));
}

#[test]
fn cli_check_config_accepts_a_good_file() {
    let tmp = TempDir::new("cli");
    let good = tmp.write(
        "good.toml",
        "listen = \"127.0.0.1:0\"\nlog_level = \"debug\"\nmax_connections = 10\n\
idle_timeout = \"5s\"\n[chat]\nrate_burst = 3\n",
    );
    let out = run_chatd(&["-t", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = run_chatd(&["--check-config", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // The documented example is valid too.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chatd.toml");
    let out = run_chatd(&["-t", "-c", example.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// Runs `-t` on `text` and returns stderr, checking the exit status is a failure and the message
/// names the file.
fn check_config_fails(tmp: &TempDir, name: &str, text: &str) -> String {
    let path = tmp.write(name, text);
    let out = run_chatd(&["-t", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{name} passed the check: {out:?}");
    assert!(out.stderr.contains(name), "the message names the file {name}: {}", out.stderr);
    out.stderr
}

#[test]
fn cli_check_config_names_file_line_and_unknown_key() {
    let tmp = TempDir::new("cli");
    let e = check_config_fails(&tmp, "unknown.toml", "listen = \"127.0.0.1:0\"\n\nlisen = 3\n");
    assert!(e.contains("unknown.toml:3:"), "line 3: {e}");
    assert!(e.contains("lisen"), "the key: {e}");
    let e =
        check_config_fails(&tmp, "unknown_chat.toml", "[chat]\nrate_burst = 2\nmax_chars = 3\n");
    assert!(e.contains("unknown_chat.toml:3:"), "line 3: {e}");
    assert!(e.contains("max_chars"), "the key: {e}");
}

#[test]
fn cli_check_config_names_file_line_and_key_of_a_wrong_type() {
    let tmp = TempDir::new("cli");
    let e =
        check_config_fails(&tmp, "type.toml", "log_level = \"info\"\nmax_connections = \"many\"\n");
    assert!(e.contains("type.toml:2:"), "line 2: {e}");
    assert!(e.contains("max_connections"), "the key: {e}");
    let e = check_config_fails(&tmp, "duration.toml", "\n\nidle_timeout = \"5 parsecs\"\n");
    assert!(e.contains("duration.toml:3:"), "line 3: {e}");
    assert!(e.contains("idle_timeout"), "the key: {e}");
}

#[test]
fn cli_check_config_names_a_value_out_of_range_and_a_missing_file() {
    let tmp = TempDir::new("cli");
    let e = check_config_fails(&tmp, "range.toml", "max_connections = 0\n");
    assert!(e.contains("max_connections"), "{e}");
    let e = check_config_fails(&tmp, "root.toml", "web_root = \"/nonexistent/chatd\"\n");
    assert!(e.contains("web_root"), "{e}");
    let missing = tmp.path().join("missing.toml");
    let out = run_chatd(&["-t", "--config", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("missing.toml"), "{out:?}");
}
