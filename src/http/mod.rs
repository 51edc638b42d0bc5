//! HTTP/1.1, just enough to serve the page and upgrade `/ws`: a request-head parser on top of
//! httparse, canned responses with `Date`, the table of files, and the client's address behind
//! a proxy. Sans-IO: bytes in, bytes out.
//!
//! Owns: the HTTP layer's error enum and its re-exports. May not touch: sockets, the clock,
//! connection state.
mod date;
mod files;
pub(crate) mod forwarded;
mod request;
mod response;

pub use date::{HttpDate, DATE_LEN};
pub use files::{content_type, resolve_path, Asset, LoadError, Site};
pub use forwarded::{client_ip, is_trusted, Cidr, CidrError, MAX_FORWARDED_ENTRIES};
pub use request::{parse, Method, Request, MAX_HEADERS, MAX_HEAD_LEN};
pub use response::{write_error, write_response, write_upgrade, Status, SECURITY_HEADERS};

/// Why a request was refused. Each variant maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The bytes are not an HTTP/1.x request (garbage, a TLS hello, a bad token): 400.
    #[error("malformed request")]
    Malformed,
    /// The request line alone is longer than the head limit: 414.
    #[error("request line too long")]
    UriTooLong,
    /// The head (line plus headers) is longer than the limit, or has too many headers: 431.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The request carries a body (Content-Length > 0 or Transfer-Encoding): 413.
    #[error("request bodies are not accepted")]
    BodyNotAllowed,
    /// The path is not a clean absolute path (`..`, encoded `/`, NUL, `//`, bad escapes): 400.
    #[error("bad path")]
    BadPath,
    /// Not HTTP/1.0 or 1.1: 505.
    #[error("HTTP version not supported")]
    Version,
}

impl HttpError {
    /// The status this error is answered with.
    pub fn status(self) -> Status {
        match self {
            HttpError::Malformed | HttpError::BadPath => Status::BadRequest,
            HttpError::UriTooLong => Status::UriTooLong,
            HttpError::HeadTooLarge => Status::HeaderFieldsTooLarge,
            HttpError::BodyNotAllowed => Status::PayloadTooLarge,
            HttpError::Version => Status::VersionNotSupported,
        }
    }
}

/// Result type of this module.
pub type Result<T, E = HttpError> = std::result::Result<T, E>;
