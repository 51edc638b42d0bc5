//! RFC 6455 WebSocket, server side, sans-IO: the opening handshake, the frame codec and the
//! session that assembles messages and answers control frames.
//!
//! Owns: RFC 6455 rules, the close codes. May not touch: sockets, the clock, the application.
mod frame;
mod handshake;
mod mask;
mod session;

pub use frame::{encode_close, encode_frame, encode_masked, parse_header, FrameHeader, OpCode};
pub use handshake::{accept_key, validate_upgrade, HandshakeError, WS_GUID};
pub use mask::apply_mask;
pub use session::{Close, IdleOutcome, Incoming, Session, WsState};

/// A broken rule of RFC 6455. Each variant closes the connection with the code of
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// §5.1: a client frame without a mask.
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// §5.2: RSV1-3 set with no extension negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// §5.2: opcodes 3-7 and 11-15.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// §5.5: a control frame payload over 125 bytes.
    #[error("control frame longer than 125 bytes")]
    ControlFrameTooBig,
    /// §5.5: a control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// §5.4: a continuation frame with no message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// §5.4: a new text or binary frame while a fragmented message is in progress.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// §5.2: a 64-bit length with its most significant bit set.
    #[error("payload length with the most significant bit set")]
    BadLength,
    /// §5.5.1: a close payload of exactly one byte.
    #[error("close frame payload of one byte")]
    CloseTooShort,
    /// §7.4: a close code that may not be sent.
    #[error("invalid close code {0}")]
    BadCloseCode(u16),
    /// §8.1: text (or a close reason) that is not UTF-8.
    #[error("invalid UTF-8 in text")]
    BadUtf8,
    /// A frame or message over `max_message_bytes`.
    #[error("message too big")]
    MessageTooBig,
}

/// Close status codes (RFC 6455 §7.4.1), and the one place chatd defines them: the endpoint, the
/// roulette and the tests all use these.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is shutting down or the peer stayed silent.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (a binary frame where text is expected).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (bad UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (abuse).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (the server could not keep the peer, e.g. it stopped reading).
    pub const INTERNAL: u16 = 1011;
    /// Try again later (the server is full).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The reasons sent with the close codes that chatd itself starts.
pub mod close_reason {
    /// 1001 after an unanswered ping.
    pub const IDLE_TIMEOUT: &str = "idle timeout";
    /// 1001 on a graceful stop.
    pub const SHUTDOWN: &str = "server shutting down";
}

impl ProtocolError {
    /// The short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        use ProtocolError as P;
        match self {
            P::UnmaskedFrame => "client frames must be masked",
            P::ReservedBits => "reserved bits set",
            P::ReservedOpcode(_) => "reserved opcode",
            P::ControlFrameTooBig => "control frame too long",
            P::FragmentedControl => "fragmented control frame",
            P::UnexpectedContinuation => "unexpected continuation frame",
            P::ExpectedContinuation => "expected a continuation frame",
            P::BadLength => "bad payload length",
            P::CloseTooShort => "bad close payload",
            P::BadCloseCode(_) => "invalid close code",
            P::BadUtf8 => "invalid UTF-8",
            P::MessageTooBig => "message too big",
        }
    }

    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::BadUtf8 => close_code::INVALID_PAYLOAD,
            ProtocolError::MessageTooBig => close_code::TOO_BIG,
            _ => close_code::PROTOCOL,
        }
    }
}

/// Whether a peer may send `code` in a close frame (§7.4): the defined codes except the ones
/// reserved for local use (1005, 1006, 1015), and 3000-4999 for libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Result type of this module.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
