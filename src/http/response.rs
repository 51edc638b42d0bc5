//! Responses: a status line and headers written into the connection's output buffer. Every
//! response carries `Date` (RFC 9110 §6.6.1), formatted once per second by the caller's
//! [`HttpDate`].
//!
//! Owns: the bytes of a response. May not touch: connection state, the clock.
use super::HttpDate;

/// Headers sent with every response: no sniffing, a policy that lets the page load only its own
/// scripts, styles and images and connect only to its own origin (which, in CSP 3, includes
/// `ws:`/`wss:` to the same host), no referrer, no framing.
pub const SECURITY_HEADERS: &str = "X-Content-Type-Options: nosniff\r\n\
Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
Referrer-Policy: no-referrer\r\n\
X-Frame-Options: DENY\r\n";

/// The statuses chatd sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 101, the WebSocket upgrade.
    SwitchingProtocols,
    /// 200
    Ok,
    /// 304, for a matching `If-None-Match`.
    NotModified,
    /// 400
    BadRequest,
    /// 403, a WebSocket from a foreign origin or a banned address.
    Forbidden,
    /// 404
    NotFound,
    /// 405, with `Allow`.
    MethodNotAllowed,
    /// 408, a request head not finished in time.
    RequestTimeout,
    /// 413, a request with a body.
    PayloadTooLarge,
    /// 414
    UriTooLong,
    /// 426, with `Sec-WebSocket-Version: 13`.
    UpgradeRequired,
    /// 429, too many WebSockets from one address.
    TooManyRequests,
    /// 431
    HeaderFieldsTooLarge,
    /// 503, too many connections.
    ServiceUnavailable,
    /// 505
    VersionNotSupported,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::SwitchingProtocols => 101,
            Status::Ok => 200,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        match self {
            Status::SwitchingProtocols => "Switching Protocols",
            Status::Ok => "OK",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::PayloadTooLarge => "Content Too Large",
            Status::UriTooLong => "URI Too Long",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Writes a complete response. `extra` holds additional header lines, each ending in CRLF.
/// With `head_only` (a HEAD request, or a 304) the body is left out but `Content-Length`
/// still gives its size.
pub fn write_response(
    out: &mut Vec<u8>,
    date: &HttpDate,
    status: Status,
    extra: &str,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) {
    use std::io::Write;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: chatd\r\nDate: {}\r\n{SECURITY_HEADERS}{extra}Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        status.code(),
        status.reason(),
        date.as_str(),
        body.len(),
    );
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// Writes an error response with a one-line plain-text body naming the status.
pub fn write_error(
    out: &mut Vec<u8>,
    date: &HttpDate,
    status: Status,
    extra: &str,
    head_only: bool,
    keep_alive: bool,
) {
    let body = format!("{} {}\n", status.code(), status.reason());
    let headers =
        format!("Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n{extra}");
    write_response(out, date, status, &headers, body.as_bytes(), head_only, keep_alive);
}

/// Writes the `101 Switching Protocols` answer to a valid WebSocket upgrade (RFC 6455 §4.2.2)
/// with its `Sec-WebSocket-Accept` value.
pub fn write_upgrade(out: &mut Vec<u8>, date: &HttpDate, accept: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nServer: chatd\r\nDate: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
        date.as_str()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_has_security_headers_and_length() {
        let mut out = Vec::new();
        let date = HttpDate::new(784_111_777);
        write_error(&mut out, &date, Status::MethodNotAllowed, "Allow: GET, HEAD\r\n", false, true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{s}");
        assert!(s.contains("Allow: GET, HEAD\r\n"));
        assert!(s.contains("\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"), "{s}");
        assert!(s.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(s.contains("Content-Security-Policy: default-src 'none'"));
        assert!(s.contains("Content-Length: 23\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n405 Method Not Allowed\n"));
    }

    #[test]
    fn head_leaves_out_the_body() {
        let mut out = Vec::new();
        write_response(&mut out, &HttpDate::default(), Status::Ok, "", b"hello", true, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Content-Length: 5\r\nConnection: close\r\n\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upgrade_names_the_accept_key_and_the_date() {
        let mut out = Vec::new();
        write_upgrade(&mut out, &HttpDate::new(0), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(s.contains("\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
        assert!(s.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }
}
