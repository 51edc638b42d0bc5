//! The opening handshake, server side (RFC 6455 §4.2).
//!
//! Owns: judging an upgrade request and the accept key. May not touch: the response's delivery.
use base64::{engine::general_purpose::STANDARD, Engine};
use sha1::{Digest, Sha1};

use crate::http::{Method, Request, Status};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused. Each variant maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not GET: 405.
    #[error("the WebSocket handshake must be a GET")]
    NotGet,
    /// Not HTTP/1.1 or later: 400.
    #[error("the WebSocket handshake needs HTTP/1.1")]
    OldHttp,
    /// No `Upgrade: websocket` token: 400.
    #[error("missing `Upgrade: websocket`")]
    NoUpgrade,
    /// No `Connection: Upgrade` token: 400.
    #[error("missing `Connection: Upgrade`")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Key` missing or not 16 bytes of base64: 400.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` missing or not 13: 426 with `Sec-WebSocket-Version: 13`.
    #[error("unsupported Sec-WebSocket-Version")]
    BadVersion,
    /// `Origin` present, neither the request's host nor an allowed origin: 403.
    #[error("origin not allowed")]
    ForbiddenOrigin,
}

impl HandshakeError {
    /// The status and extra header lines this error is answered with.
    pub fn response(self) -> (Status, &'static str) {
        match self {
            HandshakeError::NotGet => (Status::MethodNotAllowed, "Allow: GET\r\n"),
            HandshakeError::BadVersion => {
                (Status::UpgradeRequired, "Sec-WebSocket-Version: 13\r\n")
            }
            HandshakeError::ForbiddenOrigin => (Status::Forbidden, ""),
            _ => (Status::BadRequest, ""),
        }
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// Checks an upgrade request and returns the `Sec-WebSocket-Accept` value to answer with.
///
/// `Origin` is optional (non-browser clients send none); when present it must name the same
/// host as `Host` or be one of `allowed_origins`.
pub fn validate_upgrade(
    req: &Request,
    allowed_origins: &[String],
) -> Result<String, HandshakeError> {
    if req.method != Method::Get {
        return Err(HandshakeError::NotGet);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::OldHttp);
    }
    if !req.has_token("upgrade", "websocket") {
        return Err(HandshakeError::NoUpgrade);
    }
    if !req.has_token("connection", "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    // §11.3.1: the key must not appear more than once.
    let mut keys = req.header_all("sec-websocket-key");
    let (Some(key), None) = (keys.next(), keys.next()) else { return Err(HandshakeError::BadKey) };
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if req.header_all("sec-websocket-version").collect::<Vec<_>>() != ["13"] {
        return Err(HandshakeError::BadVersion);
    }
    if let Some(origin) = req.header("origin") {
        if !origin_allowed(origin, req.header("host"), allowed_origins) {
            return Err(HandshakeError::ForbiddenOrigin);
        }
    }
    Ok(accept_key(key.as_bytes()))
}

fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let (default_port, authority) = if let Some(a) = origin.strip_prefix("http://") {
        (":80", a)
    } else if let Some(a) = origin.strip_prefix("https://") {
        (":443", a)
    } else {
        return false; // "null", file://, extensions
    };
    let Some(host) = host else { return false };
    let strip = |s: &'_ str| -> String {
        let s = s.to_ascii_lowercase();
        match s.strip_suffix(default_port) {
            Some(bare) => bare.to_owned(),
            None => s,
        }
    };
    !authority.is_empty() && strip(authority) == strip(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse;

    fn req(extra: &str) -> Request {
        let text = format!("GET /ws HTTP/1.1\r\nHost: chat.example:8080\r\n{extra}\r\n");
        parse(text.as_bytes()).unwrap().unwrap().1
    }

    const OK: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    #[test]
    fn rfc_accept_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_upgrade() {
        assert_eq!(validate_upgrade(&req(OK), &[]).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let lists = "Upgrade: foo, WebSocket\r\nConnection: keep-alive, UPGRADE\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
        assert!(validate_upgrade(&req(lists), &[]).is_ok());
    }

    #[test]
    fn each_missing_part_is_named() {
        let without = |line: &str| req(&OK.replace(line, ""));
        assert_eq!(
            validate_upgrade(&without("Upgrade: websocket\r\n"), &[]),
            Err(HandshakeError::NoUpgrade)
        );
        assert_eq!(
            validate_upgrade(&without("Connection: Upgrade\r\n"), &[]),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        assert_eq!(
            validate_upgrade(&without("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), &[]),
            Err(HandshakeError::BadKey)
        );
        assert_eq!(
            validate_upgrade(&without("Sec-WebSocket-Version: 13\r\n"), &[]),
            Err(HandshakeError::BadVersion)
        );
        let short_key = OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        assert_eq!(validate_upgrade(&req(&short_key), &[]), Err(HandshakeError::BadKey));
        let v8 = OK.replace("Version: 13", "Version: 8");
        assert_eq!(validate_upgrade(&req(&v8), &[]), Err(HandshakeError::BadVersion));
        assert_eq!(HandshakeError::BadVersion.response().0.code(), 426);
    }

    #[test]
    fn origins() {
        let with = |o: &str| req(&format!("{OK}Origin: {o}\r\n"));
        assert!(validate_upgrade(&with("http://chat.example:8080"), &[]).is_ok());
        assert!(
            validate_upgrade(&with("HTTP://Chat.Example:8080"), &[]).is_err(),
            "scheme is lowercase"
        );
        assert_eq!(
            validate_upgrade(&with("http://evil.example"), &[]),
            Err(HandshakeError::ForbiddenOrigin)
        );
        assert_eq!(validate_upgrade(&with("null"), &[]), Err(HandshakeError::ForbiddenOrigin));
        let allowed = vec!["https://evil.example".to_owned()];
        assert!(validate_upgrade(&with("https://evil.example"), &allowed).is_ok());
        let h = "GET /ws HTTP/1.1\r\nHost: chat.example\r\nOrigin: https://chat.example:443\r\n";
        let r = parse(format!("{h}{OK}\r\n").as_bytes()).unwrap().unwrap().1;
        assert!(validate_upgrade(&r, &[]).is_ok(), "default port");
    }
}
