//! The request head: httparse, with every size capped before anything is allocated.
//!
//! Owns: parsing one request head. May not touch: anything but the bytes it is given.
use super::{HttpError, Result};

/// Longest request head (request line and headers) accepted, in bytes. Larger: 414 or 431.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most header fields accepted in one request. More: 431.
pub const MAX_HEADERS: usize = 32;

/// Request methods chatd distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// Anything else (answered with 405).
    Other,
}

/// A parsed request head. It borrows nothing: the few fields chatd needs are copied out (each
/// bounded by `MAX_HEAD_LEN`), so the connection can drop its read buffer right away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target exactly as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// All values of a header, joined as a comma list would be.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// True if any value of header `name` holds `token` in its comma-separated list
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The path part of the target (before any `?`).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

/// Parses one request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (read more and call again with the whole
/// buffer), `Ok(Some((consumed, request)))` once it is complete, and an error as soon as the
/// bytes cannot become a valid request: garbage and TLS hellos fail on their first bytes, and a
/// head that reaches `MAX_HEAD_LEN` without ending fails without waiting for more.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Request)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(MAX_HEAD_LEN)];
    match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => {
            let r = to_owned(&req)?;
            // Other methods are answered with 405 and the connection closed, body or not.
            if r.method != Method::Other {
                check_body(&r)?;
            }
            Ok(Some((n, r)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            Err(if window.contains(&b'\n') {
                HttpError::HeadTooLarge
            } else {
                HttpError::UriTooLong
            })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => {
            // httparse only knows HTTP/1.x. A well-formed line "METHOD TARGET HTTP/x.y" with
            // another version is a version problem (505); anything else is garbage (400).
            let line_end =
                window.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(window.len());
            let parts: Vec<&[u8]> = window[..line_end].split(|&b| b == b' ').collect();
            match parts.as_slice() {
                [m, t, v] if !m.is_empty() && !t.is_empty() && v.starts_with(b"HTTP/") => {
                    Err(HttpError::Version)
                }
                _ => Err(HttpError::Malformed),
            }
        }
        Err(_) => Err(HttpError::Malformed),
    }
}

fn to_owned(req: &httparse::Request<'_, '_>) -> Result<Request> {
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some(_) => Method::Other,
        None => return Err(HttpError::Malformed),
    };
    let target = req.path.ok_or(HttpError::Malformed)?.to_owned();
    let minor_version = req.version.ok_or(HttpError::Malformed)?;
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        // Header values must be text; obs-text (bytes >= 0x80) is refused rather than guessed at.
        let v = std::str::from_utf8(h.value).map_err(|_| HttpError::Malformed)?;
        headers.push((h.name.to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(Request { method, target, minor_version, headers })
}

fn check_body(r: &Request) -> Result<()> {
    if r.header("transfer-encoding").is_some() {
        return Err(HttpError::BodyNotAllowed);
    }
    let mut lengths = r.header_all("content-length");
    if let Some(first) = lengths.next() {
        let n: u64 = first.parse().map_err(|_| HttpError::Malformed)?;
        if lengths.any(|other| other != first) {
            return Err(HttpError::Malformed);
        }
        if n > 0 {
            return Err(HttpError::BodyNotAllowed);
        }
    }
    if r.minor_version == 1 && r.header("host").is_none() {
        // RFC 9112 §3.2: a 1.1 request without Host must get 400.
        return Err(HttpError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /ws?x=1 HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn parses_a_request() {
        let (n, r) = parse(GOOD).unwrap().unwrap();
        assert_eq!(n, GOOD.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path(), "/ws");
        assert_eq!(r.header("host"), Some("a.example"));
        assert!(r.has_token("connection", "upgrade"));
        assert!(r.has_token("upgrade", "WebSocket"));
        assert!(r.keep_alive());
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for i in 0..GOOD.len() {
            assert_eq!(parse(&GOOD[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn pipelined_requests_consume_one_at_a_time() {
        let two = [GOOD, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        let (n, _) = parse(&two).unwrap().unwrap();
        let (m, r) = parse(&two[n..]).unwrap().unwrap();
        assert_eq!(n + m, two.len());
        assert_eq!(r.method, Method::Head);
    }

    #[test]
    fn garbage_and_tls_fail_at_once() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Err(HttpError::Malformed)
        );
        assert_eq!(parse(b"\x00\x01\x02"), Err(HttpError::Malformed));
        assert_eq!(parse(b"GET / FOO/1.1\r\n\r\n"), Err(HttpError::Malformed));
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n"), Err(HttpError::Version));
        assert_eq!(parse(b"G E T / HTTP/1.1\r\n\r\n"), Err(HttpError::Malformed));
        assert_eq!(parse(b"GET /a b HTTP/1.1\r\n\r\n"), Err(HttpError::Malformed));
    }

    #[test]
    fn oversized_heads() {
        let long_line = [b"GET /".as_slice(), &[b'a'; MAX_HEAD_LEN]].concat();
        assert_eq!(parse(&long_line), Err(HttpError::UriTooLong));
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        while big.len() < MAX_HEAD_LEN {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(parse(&big), Err(HttpError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn bodies_and_missing_host() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(get), Err(HttpError::BodyNotAllowed));
        // Other methods are parsed whatever they carry: the answer is 405 and a close.
        let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(post).unwrap().unwrap().1.method, Method::Other);
        let chunked = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked), Err(HttpError::BodyNotAllowed));
        let zero = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        assert!(parse(zero).unwrap().is_some());
        let conflicting =
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(parse(conflicting), Err(HttpError::Malformed));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(HttpError::Malformed));
        let (_, r) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive());
    }
}
