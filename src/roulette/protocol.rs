//! The roulette's wire protocol: JSON text frames parsed into [`ClientMessage`] and built from
//! [`ServerMessage`], the validated [`Interests`] list, and the one error enum of this layer,
//! [`RequestError`], whose variants map onto the wire's error codes ([`ErrorCode`]).
//!
//! Parsing is two-step so that each failure gets the right code: first the envelope (the input
//! must be a JSON object whose `"type"` is a string, else `invalid_json`), then the body of the
//! known type (`unknown_type` for a type we do not know). Unknown fields are ignored, so that a
//! newer client can talk to an older server. Outbound messages are always serialised by
//! `serde_json`; user text is never spliced into JSON by hand.
//!
//! Owns: the JSON wire messages and the product's error enum. May not touch: state.
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use crate::safety::Reason;

/// Most interests a search may carry (after normalisation and de-duplication).
pub const MAX_INTERESTS: usize = 5;

/// Longest interest, in Unicode scalar values after normalisation.
pub const MAX_INTEREST_CHARS: usize = 32;

/// Everything a client can do wrong at the protocol level. None of them closes the connection;
/// each is answered with an `error` message carrying [`RequestError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The frame is not valid JSON (syntax, nesting deeper than serde_json's limit, ...).
    #[error("the message is not valid JSON")]
    Malformed,
    /// The frame is JSON but not an object.
    #[error("the message must be a JSON object")]
    NotAnObject,
    /// The object has no `"type"` or its `"type"` is not a string.
    #[error("the message has no string \"type\"")]
    MissingType,
    /// A known type lacks a required field or has it with the wrong JSON type.
    #[error("field \"{field}\" is missing or has the wrong type")]
    BadField {
        /// The field, as named on the wire.
        field: &'static str,
    },
    /// The `"type"` is a string this server does not know.
    #[error("unknown message type")]
    UnknownType,
    /// A chat message or typing event arrived while not in a chat.
    #[error("you are not in a chat")]
    NotInChat,
    /// A chat message has more Unicode scalar values than `max_message_chars`.
    #[error("the message is longer than {max} characters")]
    MessageTooLong {
        /// The limit in force.
        max: usize,
    },
    /// A chat message is empty or only whitespace.
    #[error("the message is empty")]
    EmptyMessage,
    /// The peer sent faster than its token bucket allows; the request was dropped.
    #[error("too many messages, slow down")]
    RateLimited,
    /// `"interests"` is not an array of strings (or `null`).
    #[error("interests must be an array of strings")]
    InterestsNotStrings,
    /// More than [`MAX_INTERESTS`] distinct interests.
    #[error("at most {MAX_INTERESTS} interests")]
    TooManyInterests,
    /// An interest is empty or longer than [`MAX_INTEREST_CHARS`] after trimming.
    #[error("each interest must be 1 to {MAX_INTEREST_CHARS} characters")]
    InterestLength,
    /// An interest contains a control character.
    #[error("interests may not contain control characters")]
    InterestControlChar,
    /// `resume` came after another message, or its token is unknown, used or expired.
    #[error("that session cannot be resumed")]
    ResumeFailed,
    /// `report` or `block` outside a chat and the minute after it.
    #[error("there is no stranger to report or block")]
    NobodyToReport,
    /// `search` without `pow` while proof of work is on.
    #[error("this search needs a proof of work")]
    PowRequired,
    /// `search` with a `pow` that does not solve the challenge.
    #[error("the proof of work is wrong")]
    PowInvalid,
}

/// Result type of this module.
pub type Result<T, E = RequestError> = std::result::Result<T, E>;

impl RequestError {
    /// The machine-readable code sent in the `error` message.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Malformed
            | RequestError::NotAnObject
            | RequestError::MissingType
            | RequestError::BadField { .. } => ErrorCode::InvalidJson,
            RequestError::UnknownType => ErrorCode::UnknownType,
            RequestError::NotInChat => ErrorCode::NotInChat,
            RequestError::MessageTooLong { .. } => ErrorCode::MessageTooLong,
            RequestError::EmptyMessage => ErrorCode::EmptyMessage,
            RequestError::RateLimited => ErrorCode::RateLimited,
            RequestError::InterestsNotStrings
            | RequestError::TooManyInterests
            | RequestError::InterestLength
            | RequestError::InterestControlChar => ErrorCode::BadInterests,
            RequestError::ResumeFailed => ErrorCode::ResumeFailed,
            RequestError::NobodyToReport => ErrorCode::NotInChat,
            RequestError::PowRequired => ErrorCode::PowRequired,
            RequestError::PowInvalid => ErrorCode::PowInvalid,
        }
    }
}

/// The `code` of an `error` message: a closed list that clients can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object with a string `"type"`, or a known type with a missing/ill-typed field.
    InvalidJson,
    /// A `"type"` this server does not know.
    UnknownType,
    /// `message` or `typing` outside a chat.
    NotInChat,
    /// `message` longer than `max_message_chars`.
    MessageTooLong,
    /// `message` empty or only whitespace.
    EmptyMessage,
    /// Over the per-connection rate; the request was dropped.
    RateLimited,
    /// `interests` invalid.
    BadInterests,
    /// `resume` refused: not the first message, or a wrong, used or expired token.
    ResumeFailed,
    /// `search` without `pow` while proof of work is on (the error carries the challenge).
    PowRequired,
    /// `search` whose `pow` does not solve the challenge (the error carries a new one).
    PowInvalid,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and docs.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::NotInChat,
        ErrorCode::MessageTooLong,
        ErrorCode::EmptyMessage,
        ErrorCode::RateLimited,
        ErrorCode::BadInterests,
        ErrorCode::ResumeFailed,
        ErrorCode::PowRequired,
        ErrorCode::PowInvalid,
    ];

    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotInChat => "not_in_chat",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadInterests => "bad_interests",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::PowRequired => "pow_required",
            ErrorCode::PowInvalid => "pow_invalid",
        }
    }
}

/// A search's interests: normalised, de-duplicated and sorted by code point.
///
/// Invariants: at most [`MAX_INTERESTS`] entries, each 1..=[`MAX_INTEREST_CHARS`] Unicode scalar
/// values, lowercase, no leading/trailing whitespace, inner whitespace runs collapsed to one
/// space, no control characters, strictly increasing. Sorted order makes intersections a linear
/// merge and makes `common_interests` the same list for both partners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Interests(Box<[Box<str>]>);

impl Interests {
    /// No interests: the searcher takes anyone.
    pub fn none() -> Interests {
        Interests::default()
    }

    /// Normalises raw interests (trim, collapse inner whitespace, lowercase), checks each one and
    /// drops duplicates. Work is bounded: it stops at the first invalid entry or at the
    /// `MAX_INTERESTS + 1`-th distinct one.
    pub fn parse<I, S>(raw: I) -> Result<Interests>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Box<str>> = Vec::new();
        for s in raw {
            let s = s.as_ref();
            // Refuse as soon as the normalised text is certainly too long (more bytes than
            // MAX_INTEREST_CHARS four-byte characters), so an oversized entry costs one pass.
            let mut norm = String::new();
            for w in s.split_whitespace() {
                if !norm.is_empty() {
                    norm.push(' ');
                }
                norm.extend(w.chars().flat_map(char::to_lowercase));
                if norm.len() > MAX_INTEREST_CHARS * 4 {
                    return Err(RequestError::InterestLength);
                }
            }
            let chars = norm.chars().count();
            if chars == 0 || chars > MAX_INTEREST_CHARS {
                return Err(RequestError::InterestLength);
            }
            if norm.chars().any(char::is_control) {
                return Err(RequestError::InterestControlChar);
            }
            if out.iter().any(|o| **o == *norm) {
                continue;
            }
            if out.len() == MAX_INTERESTS {
                return Err(RequestError::TooManyInterests);
            }
            out.push(norm.into_boxed_str());
        }
        out.sort_unstable();
        Ok(Interests(out.into_boxed_slice()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are (at most [`MAX_INTERESTS`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The interests in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|s| &**s)
    }

    /// The interests both lists hold, sorted (a linear merge of the two sorted lists).
    pub fn intersection(&self, other: &Interests) -> Interests {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while let (Some(a), Some(b)) = (self.0.get(i), other.0.get(j)) {
            match a.cmp(b) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    out.push(a.clone());
                    i += 1;
                    j += 1;
                }
            }
        }
        Interests(out.into_boxed_slice())
    }
}

/// A request from a client, parsed and validated at the syntax level.
///
/// State-dependent checks (in a chat? over the rate? too long?) belong to the roulette, because
/// they depend on the connection's state and the live configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// `{"type":"search","interests":[...]}`: start looking, or skip to someone new.
    Search {
        /// Normalised interests; empty when absent or `null`.
        interests: Interests,
        /// The proof of work's nonce, when one was sent.
        pow: Option<Cow<'a, str>>,
    },
    /// `{"type":"message","text":"..."}`: a chat line for the partner. Borrowed from the frame
    /// when it has no escapes.
    Message {
        /// The text, unchanged (not trimmed).
        text: Cow<'a, str>,
    },
    /// `{"type":"typing","active":true}`: the typing indicator.
    Typing {
        /// Typing or stopped.
        active: bool,
    },
    /// `{"type":"leave"}`: end the chat or cancel the search.
    Leave,
    /// `{"type":"resume","token":"..."}`: take over the session of a dropped connection (only
    /// as a connection's first message).
    Resume {
        /// The `resume_token` the old connection was given.
        token: Cow<'a, str>,
    },
    /// `{"type":"report","reason":"spam"}`: report the partner (in a chat or the minute after).
    Report {
        /// Why.
        reason: Reason,
    },
    /// `{"type":"block"}`: never meet the partner's address again (in a chat or the minute
    /// after).
    Block,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SearchBody<'a> {
    #[serde(default)]
    interests: Option<Vec<String>>,
    #[serde(default, borrow)]
    pow: Option<Cow<'a, str>>,
}

/// A search's `pow` alone: which field was wrong when a search does not parse (only read to
/// be checked).
#[derive(Deserialize)]
struct PowBody<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code)]
    pow: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ReportBody<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ResumeBody<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TypingBody {
    active: bool,
}

/// The common case, a chat line, read in one pass: `parse` tries it first and, on any failure
/// (or another type), falls back to the two-step parse that picks the right error.
#[derive(Deserialize)]
struct ChatLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

impl<'a> ClientMessage<'a> {
    /// Parses one text frame.
    ///
    /// `invalid_json`: not JSON, not an object, no string `"type"`, or a known type whose
    /// required field is missing or ill-typed. `unknown_type`: a type we do not know.
    /// `bad_interests`: see [`Interests::parse`]. Unknown fields are ignored.
    pub fn parse(text: &'a str) -> Result<ClientMessage<'a>> {
        // serde's derived structs also accept JSON arrays (`["message","hi"]`); the protocol is
        // objects only, so refuse anything else up front.
        let first = text.trim_start_matches([' ', '\t', '\n', '\r']).as_bytes().first();
        if first != Some(&b'{') {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(RequestError::NotAnObject),
                Err(_) => Err(RequestError::Malformed),
            };
        }
        // One pass instead of two for a chat line (most frames): when it succeeds, the
        // envelope and body parses below would have produced the same message.
        if let Ok(line) = serde_json::from_str::<ChatLine<'a>>(text) {
            if line.kind == "message" {
                return Ok(ClientMessage::Message { text: line.text });
            }
        }
        let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                RequestError::MissingType
            } else {
                RequestError::Malformed
            }
        })?;
        let Some(kind) = envelope.kind else {
            return Err(RequestError::MissingType);
        };
        // The envelope parse has already checked the whole frame's syntax, so a failure below
        // is always about the body's fields.
        match &*kind {
            "search" => {
                let body: SearchBody<'a> = serde_json::from_str(text).map_err(|_| {
                    match serde_json::from_str::<PowBody<'_>>(text) {
                        Ok(_) => RequestError::InterestsNotStrings,
                        Err(_) => RequestError::BadField { field: "pow" },
                    }
                })?;
                let interests = match body.interests {
                    Some(list) => Interests::parse(list)?,
                    None => Interests::none(),
                };
                Ok(ClientMessage::Search { interests, pow: body.pow })
            }
            "message" => {
                let body: MessageBody<'a> = serde_json::from_str(text)
                    .map_err(|_| RequestError::BadField { field: "text" })?;
                Ok(ClientMessage::Message { text: body.text })
            }
            "typing" => {
                let body: TypingBody = serde_json::from_str(text)
                    .map_err(|_| RequestError::BadField { field: "active" })?;
                Ok(ClientMessage::Typing { active: body.active })
            }
            "leave" => Ok(ClientMessage::Leave),
            "block" => Ok(ClientMessage::Block),
            "report" => {
                let body: ReportBody<'_> = serde_json::from_str(text)
                    .map_err(|_| RequestError::BadField { field: "reason" })?;
                let reason = Reason::parse(&body.reason)
                    .ok_or(RequestError::BadField { field: "reason" })?;
                Ok(ClientMessage::Report { reason })
            }
            "resume" => {
                let body: ResumeBody<'a> = serde_json::from_str(text)
                    .map_err(|_| RequestError::BadField { field: "token" })?;
                Ok(ClientMessage::Resume { token: body.token })
            }
            _ => Err(RequestError::UnknownType),
        }
    }
}

impl LeaveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Next => "next",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Shutdown => "shutdown",
        }
    }

    /// The reason for a wire name; anything unknown is a disconnect.
    pub fn from_wire(s: &str) -> LeaveReason {
        match s {
            "left" => LeaveReason::Left,
            "next" => LeaveReason::Next,
            "shutdown" => LeaveReason::Shutdown,
            _ => LeaveReason::Disconnected,
        }
    }
}

/// Why a chat ended, as told to the partner who stayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The partner sent `leave`.
    Left,
    /// The partner skipped (sent `search` during the chat).
    Next,
    /// The partner's connection closed, failed, or was closed by the server.
    Disconnected,
    /// The server is shutting down.
    Shutdown,
}

/// A message from the server to a client; [`ServerMessage::encode`] turns it into a text frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// Sent once, on connect.
    Welcome {
        /// Connected people, this one included.
        online: usize,
        /// The longest accepted chat message, in Unicode scalar values.
        max_message_chars: usize,
        /// The token a new connection sends in `resume` to take this one's place after a drop.
        resume_token: &'a str,
        /// The proof of work for the first search, when it is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        pow: Option<PowChallenge>,
    },
    /// The answer to a good `resume`: the session is back, in `state`; the lines and typing
    /// kept meanwhile follow.
    Resumed {
        /// The token for the next resume (the old one is used up).
        resume_token: &'a str,
        /// `chatting`, `searching` or `idle`.
        state: &'a str,
    },
    /// The partner's connection dropped; it may come back within the resume window.
    PartnerAway,
    /// The partner is back after a drop.
    PartnerBack,
    /// The answer to every `search`, in order, before any `matched` it leads to.
    Searching {
        /// The proof of work for the next search, when it is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        pow: Option<PowChallenge>,
    },
    /// The answer to `report`.
    Reported,
    /// The answer to `block`.
    Blocked,
    /// A partner was found.
    Matched {
        /// The interests both gave, sorted; empty for a random match.
        common_interests: &'a Interests,
    },
    /// A chat line from the partner.
    Message {
        /// The partner's text, unchanged.
        text: &'a str,
    },
    /// The partner's typing indicator.
    Typing {
        /// Typing or stopped.
        active: bool,
    },
    /// The chat is over; the client also clears the typing indicator.
    PartnerLeft {
        /// Why.
        reason: LeaveReason,
    },
    /// The number of connected people changed (coalesced).
    Online {
        /// Connected people.
        count: usize,
    },
    /// A request was refused; the connection stays open.
    Error {
        /// The machine-readable code.
        code: ErrorCode,
        /// A human-readable English sentence.
        message: &'a str,
        /// With `pow_required` and `pow_invalid`: the challenge to solve now.
        #[serde(skip_serializing_if = "Option::is_none")]
        pow: Option<PowChallenge>,
    },
    /// In a cluster: whether matching works. `false` while this server cannot reach the shared
    /// queue (searches keep their place and wait); `true` when it can again.
    Matching {
        /// Matching works.
        available: bool,
    },
}

/// A proof-of-work challenge: find a `pow` nonce such that SHA-256(the 16 challenge bytes ‖
/// the nonce as UTF-8) starts with `bits` zero bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowChallenge {
    /// Random, one per search.
    pub challenge: [u8; 16],
    /// Leading zero bits asked for.
    pub bits: u8,
}

impl Serialize for PowChallenge {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let hex: String = self.challenge.iter().map(|b| format!("{b:02x}")).collect();
        let mut st = s.serialize_struct("PowChallenge", 2)?;
        st.serialize_field("challenge", &hex)?;
        st.serialize_field("bits", &self.bits)?;
        st.end()
    }
}

impl ServerMessage<'_> {
    /// The message as a JSON text frame.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: only strings, bools and integers, no maps and
        // no hand-written Serialize impls. The fallback keeps the no-panic promise anyway.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn err(s: &str) -> RequestError {
        ClientMessage::parse(s).unwrap_err()
    }

    fn interests(list: &[&str]) -> Interests {
        Interests::parse(list).unwrap()
    }

    #[test]
    fn parses_each_client_type() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"search"}"#),
            Ok(ClientMessage::Search { interests: Interests::none(), pow: None })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"search","interests":null}"#),
            Ok(ClientMessage::Search { interests: Interests::none(), pow: None })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"search","interests":["Music"," jazz "]}"#),
            Ok(ClientMessage::Search { interests: interests(&["jazz", "music"]), pow: None })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"message","text":"hi <b>"}"#),
            Ok(ClientMessage::Message { text: "hi <b>".into() })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"typing","active":false}"#),
            Ok(ClientMessage::Typing { active: false })
        );
        assert_eq!(ClientMessage::parse(r#"{"type":"leave"}"#), Ok(ClientMessage::Leave));
        assert_eq!(ClientMessage::parse(" \n{\"type\":\"leave\"}\r\n "), Ok(ClientMessage::Leave));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"resume","token":"00ff"}"#),
            Ok(ClientMessage::Resume { token: "00ff".into() })
        );
        assert_eq!(err(r#"{"type":"resume"}"#), RequestError::BadField { field: "token" });
        assert_eq!(
            ClientMessage::parse(r#"{"type":"search","pow":"123"}"#),
            Ok(ClientMessage::Search { interests: Interests::none(), pow: Some("123".into()) })
        );
        assert_eq!(err(r#"{"type":"search","pow":5}"#), RequestError::BadField { field: "pow" });
        assert_eq!(
            err(r#"{"type":"search","interests":[1],"pow":"5"}"#),
            RequestError::InterestsNotStrings
        );
        for r in Reason::ALL {
            let text = format!(r#"{{"type":"report","reason":"{}"}}"#, r.as_str());
            assert_eq!(ClientMessage::parse(&text), Ok(ClientMessage::Report { reason: r }));
        }
        for bad in [r#"{"type":"report"}"#, r#"{"type":"report","reason":"rude"}"#] {
            assert_eq!(err(bad), RequestError::BadField { field: "reason" });
        }
        assert_eq!(ClientMessage::parse(r#"{"type":"block"}"#), Ok(ClientMessage::Block));
        assert_eq!(
            err(r#"{"type":"resume","token":7}"#),
            RequestError::BadField { field: "token" }
        );
    }

    #[test]
    fn message_text_borrows_when_unescaped_and_decodes_escapes() {
        match ClientMessage::parse(r#"{"type":"message","text":"plain"}"#) {
            Ok(ClientMessage::Message { text: Cow::Borrowed("plain") }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ClientMessage::parse(r#"{"text":"a\"b\n\u00e9","type":"message"}"#),
            Ok(ClientMessage::Message { text: "a\"b\né".into() })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"leave","v":2,"extra":{"deep":[1,2,{"x":null}]}}"#),
            Ok(ClientMessage::Leave)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"typing","active":true,"text":5}"#),
            Ok(ClientMessage::Typing { active: true })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"message","text":"x","active":"no"}"#),
            Ok(ClientMessage::Message { text: "x".into() })
        );
    }

    #[test]
    fn invalid_json_cases() {
        for (input, want) in [
            ("", RequestError::Malformed),
            ("{", RequestError::Malformed),
            ("{\"type\":\"leave\"", RequestError::Malformed),
            ("{\"type\":\"leave\"} x", RequestError::Malformed),
            ("{'type':'leave'}", RequestError::Malformed),
            ("nonsense", RequestError::Malformed),
            ("[\"message\",\"hi\"]", RequestError::NotAnObject),
            ("\"leave\"", RequestError::NotAnObject),
            ("42", RequestError::NotAnObject),
            ("null", RequestError::NotAnObject),
            ("{}", RequestError::MissingType),
            ("{\"type\":null}", RequestError::MissingType),
            ("{\"type\":7}", RequestError::MissingType),
            ("{\"type\":[\"leave\"]}", RequestError::MissingType),
            ("{\"type\":\"leave\",\"type\":\"leave\"}", RequestError::MissingType),
            ("{\"type\":\"message\"}", RequestError::BadField { field: "text" }),
            ("{\"type\":\"message\",\"text\":5}", RequestError::BadField { field: "text" }),
            ("{\"type\":\"message\",\"text\":null}", RequestError::BadField { field: "text" }),
            ("{\"type\":\"typing\"}", RequestError::BadField { field: "active" }),
            (
                "{\"type\":\"typing\",\"active\":\"yes\"}",
                RequestError::BadField { field: "active" },
            ),
            ("{\"type\":\"typing\",\"active\":1}", RequestError::BadField { field: "active" }),
        ] {
            assert_eq!(err(input), want, "{input:?}");
            assert_eq!(want.code(), ErrorCode::InvalidJson);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep =
            format!("{{\"type\":\"leave\",\"x\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        // serde_json skips unknown values without recursing, so this may parse; it must not
        // overflow the stack. Inside a field we do read, the nesting is a type error.
        let _ = ClientMessage::parse(&deep);
        let deep = format!(
            "{{\"type\":\"search\",\"interests\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(err(&deep), RequestError::InterestsNotStrings);
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert!(ClientMessage::parse(&deep).is_err());
    }

    #[test]
    fn unknown_type() {
        for input in [
            r#"{"type":"hello"}"#,
            r#"{"type":""}"#,
            r#"{"type":"Search"}"#,
            r#"{"type":"search "}"#,
        ] {
            assert_eq!(err(input), RequestError::UnknownType, "{input}");
        }
        assert_eq!(RequestError::UnknownType.code(), ErrorCode::UnknownType);
    }

    #[test]
    fn interests_are_normalised_deduplicated_and_sorted() {
        let i = interests(&["  Hip   Hop ", "MUSIC", "music", "Émile", "hip hop"]);
        assert_eq!(i.iter().collect::<Vec<_>>(), ["hip hop", "music", "émile"]);
        assert_eq!(i.len(), 3);
        // Exactly 32 characters (multi-byte) is fine; 33 is not.
        assert!(Interests::parse(["é".repeat(32)]).is_ok());
        assert_eq!(Interests::parse(["é".repeat(33)]), Err(RequestError::InterestLength));
        // Whitespace around does not count.
        assert!(Interests::parse([format!("  {}\t", "a".repeat(32))]).is_ok());
        // Six entries that dedupe to five are fine.
        assert_eq!(interests(&["a", "b", "c", "d", "e", "A"]).len(), 5);
        assert!(interests(&[]).is_empty());
    }

    #[test]
    fn bad_interests() {
        for (input, want) in [
            (
                r#"{"type":"search","interests":["a","b","c","d","e","f"]}"#,
                RequestError::TooManyInterests,
            ),
            (r#"{"type":"search","interests":[""]}"#, RequestError::InterestLength),
            (r#"{"type":"search","interests":["   "]}"#, RequestError::InterestLength),
            (
                r#"{"type":"search","interests":["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}"#,
                RequestError::InterestLength,
            ),
            (r#"{"type":"search","interests":["a\u0000b"]}"#, RequestError::InterestControlChar),
            (r#"{"type":"search","interests":"music"}"#, RequestError::InterestsNotStrings),
            (r#"{"type":"search","interests":[1]}"#, RequestError::InterestsNotStrings),
            (r#"{"type":"search","interests":[null]}"#, RequestError::InterestsNotStrings),
            (r#"{"type":"search","interests":{"a":1}}"#, RequestError::InterestsNotStrings),
        ] {
            assert_eq!(err(input), want, "{input}");
            assert_eq!(want.code(), ErrorCode::BadInterests);
        }
    }

    #[test]
    fn huge_interest_lists_fail_fast() {
        let many: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        assert_eq!(Interests::parse(&many), Err(RequestError::TooManyInterests));
        let long = "x".repeat(1 << 20);
        assert_eq!(Interests::parse([long]), Err(RequestError::InterestLength));
        // Many duplicates of one valid interest are accepted as one.
        let dups = vec!["same"; 20_000];
        assert_eq!(Interests::parse(dups).map(|i| i.len()), Ok(1));
    }

    #[test]
    fn lowercasing_that_grows_is_measured_after() {
        // 'İ' lowercases to two scalar values ("i̇"), so 32 of them become 64.
        assert_eq!(Interests::parse(["İ".repeat(32)]), Err(RequestError::InterestLength));
        assert!(Interests::parse(["İ".repeat(16)]).is_ok());
    }

    #[test]
    fn intersection_is_sorted_and_symmetric() {
        let a = interests(&["music", "books", "chess", "art"]);
        let b = interests(&["chess", "zoo", "art", "film"]);
        let both = a.intersection(&b);
        assert_eq!(both.iter().collect::<Vec<_>>(), ["art", "chess"]);
        assert_eq!(both, b.intersection(&a));
        assert!(a.intersection(&Interests::none()).is_empty());
    }

    #[test]
    fn every_error_code_has_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), Value::from(code.as_str()));
        }
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            all,
            [
                "invalid_json",
                "unknown_type",
                "not_in_chat",
                "message_too_long",
                "empty_message",
                "rate_limited",
                "bad_interests",
                "resume_failed",
                "pow_required",
                "pow_invalid"
            ]
        );
        // Every code is reachable from some RequestError.
        let errors = [
            RequestError::Malformed,
            RequestError::UnknownType,
            RequestError::NotInChat,
            RequestError::MessageTooLong { max: 3 },
            RequestError::EmptyMessage,
            RequestError::RateLimited,
            RequestError::TooManyInterests,
            RequestError::ResumeFailed,
            RequestError::PowRequired,
            RequestError::PowInvalid,
        ];
        for (e, code) in errors.iter().zip(ErrorCode::ALL) {
            assert_eq!(e.code(), code);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn server_messages_encode_exactly() {
        let common = interests(&["music", "art"]);
        let none = Interests::none();
        let cases: Vec<(ServerMessage<'_>, Value)> = vec![
            (
                ServerMessage::Welcome {
                    online: 3,
                    max_message_chars: 2000,
                    resume_token: "ab",
                    pow: None,
                },
                json!({"type":"welcome","online":3,"max_message_chars":2000,"resume_token":"ab"}),
            ),
            (
                ServerMessage::Resumed { resume_token: "cd", state: "chatting" },
                json!({"type":"resumed","resume_token":"cd","state":"chatting"}),
            ),
            (ServerMessage::PartnerAway, json!({"type":"partner_away"})),
            (ServerMessage::PartnerBack, json!({"type":"partner_back"})),
            (ServerMessage::Searching { pow: None }, json!({"type":"searching"})),
            (
                ServerMessage::Searching {
                    pow: Some(PowChallenge { challenge: [0xab; 16], bits: 18 }),
                },
                json!({"type":"searching","pow":{"challenge":"ab".repeat(16),"bits":18}}),
            ),
            (ServerMessage::Reported, json!({"type":"reported"})),
            (ServerMessage::Blocked, json!({"type":"blocked"})),
            (
                ServerMessage::Matched { common_interests: &common },
                json!({"type":"matched","common_interests":["art","music"]}),
            ),
            (
                ServerMessage::Matched { common_interests: &none },
                json!({"type":"matched","common_interests":[]}),
            ),
            (ServerMessage::Message { text: "hi" }, json!({"type":"message","text":"hi"})),
            (ServerMessage::Typing { active: true }, json!({"type":"typing","active":true})),
            (
                ServerMessage::PartnerLeft { reason: LeaveReason::Left },
                json!({"type":"partner_left","reason":"left"}),
            ),
            (
                ServerMessage::PartnerLeft { reason: LeaveReason::Next },
                json!({"type":"partner_left","reason":"next"}),
            ),
            (
                ServerMessage::PartnerLeft { reason: LeaveReason::Disconnected },
                json!({"type":"partner_left","reason":"disconnected"}),
            ),
            (
                ServerMessage::PartnerLeft { reason: LeaveReason::Shutdown },
                json!({"type":"partner_left","reason":"shutdown"}),
            ),
            (ServerMessage::Online { count: 7 }, json!({"type":"online","count":7})),
            (
                ServerMessage::Error { code: ErrorCode::RateLimited, message: "slow", pow: None },
                json!({"type":"error","code":"rate_limited","message":"slow"}),
            ),
        ];
        for (msg, want) in cases {
            let text = msg.encode();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn user_text_is_escaped_on_the_way_out() {
        let nasty = "\"},{\"type\":\"leave\"}\u{0}\n</script><img src=x onerror=alert(1)>\u{2028}";
        let text = ServerMessage::Message { text: nasty }.encode();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, json!({"type":"message","text":nasty}));
        assert!(!text.contains('\u{0}') && !text.contains('\n'));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny deterministic generator (xorshift) over a JSON-ish alphabet.
        let alphabet: Vec<char> =
            "{}[]\":,\\ tuyepsarchmglvinf0123456789.-eE\u{e9}\u{1F600}".chars().collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = ClientMessage::parse(&s);
            let _ = ClientMessage::parse(&format!("{{\"type\":\"search\",\"interests\":[{s}]}}"));
            let _ = ClientMessage::parse(&format!("{{\"type\":\"message\",\"text\":{s}}}"));
        }
    }
}
