//! One WebSocket peer's protocol state: frames in, messages and control events out, plus the
//! liveness (ping/pong) and close handshake states, so that every rule of RFC 6455 about one
//! connection lives here and the endpoint only decides *when* (deadlines, shutdown).
//!
//! `decode` works on the connection's read buffer: it unmasks a complete frame in place and
//! returns a borrowed view of the message, so a text message that fits in one frame is handed to
//! the application without a copy. Fragmented messages are assembled in a buffer of the
//! session's own, capped at `max_message` before each fragment is appended. Text is checked as
//! it arrives: a fragment, and even the received part of an incomplete frame, that cannot begin
//! valid UTF-8 fails the connection at once (RFC 6455 §8.1, "fail fast").
//!
//! Owns: one session's frames, messages, ping and close states. May not touch: deadlines (the
//! endpoint decides when), sockets, the application.
use super::{
    apply_mask, encode_close, encode_frame, is_valid_close_code, parse_header, OpCode,
    ProtocolError, Result,
};

/// The payload of the pings sent to silent peers.
const PING_PAYLOAD: &[u8] = b"chatd";

/// Where a session is in its life. Changes only forward, except `Pinged` -> `Open` when the
/// peer shows it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsState {
    /// Messages flow both ways.
    Open,
    /// The peer was silent: a ping is out and the peer must answer (anything counts).
    Pinged,
    /// A close frame is decided (it is written after what is already queued for the peer):
    /// input is ignored from now on.
    Closing,
}

/// What to do about a peer that was silent for a whole deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// A ping was written; wait for the ping timeout.
    Pinged,
    /// The ping went unanswered (or the session is closing): close with 1001.
    TimedOut,
}

/// The close frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The answer to the peer's close frame: its code echoed, or an empty payload if it sent
    /// none (RFC 6455 §5.5.1).
    Echo(Option<u16>),
    /// A close started here, with a code from [`close_code`](super::close_code) and a short
    /// reason (at most 123 bytes).
    Code(u16, &'static str),
}

/// A decoded event.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A complete text message, valid UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with its code (none if the payload was empty) and reason.
    Close(Option<u16>, &'a str),
}

/// Incremental UTF-8 check: remembers the (at most 3) bytes of a sequence cut by a boundary.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Scan {
    carry: [u8; 4],
    len: usize,
}

impl Utf8Scan {
    /// Checks `data`, unmasking a copy first if it is still masked (`mask` and the payload
    /// offset of `data[0]`). Fails as soon as no continuation could make the text valid.
    fn feed(&mut self, data: &[u8], mask: Option<([u8; 4], usize)>) -> Result<()> {
        const BLOCK: usize = 4096;
        let mut block = [0u8; BLOCK + 4];
        for (i, chunk) in data.chunks(BLOCK).enumerate() {
            let c = self.len;
            block[..c].copy_from_slice(&self.carry[..c]);
            block[c..c + chunk.len()].copy_from_slice(chunk);
            let end = c + chunk.len();
            if let Some((m, offset)) = mask {
                let o = offset + i * BLOCK;
                apply_mask(
                    &mut block[c..end],
                    [m[o % 4], m[(o + 1) % 4], m[(o + 2) % 4], m[(o + 3) % 4]],
                );
            }
            match std::str::from_utf8(&block[..end]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() => {
                    let rest = &block[e.valid_up_to()..end];
                    self.carry[..rest.len()].copy_from_slice(rest);
                    self.len = rest.len();
                }
                Err(_) => return Err(ProtocolError::BadUtf8),
            }
        }
        Ok(())
    }
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    buf: Vec<u8>,
    utf8: Utf8Scan,
}

/// One side of a WebSocket connection: the server's.
///
/// Kept small (16 bytes), because every open connection holds one: what only fragmented
/// messages and frames cut by a read need lives in a box that exists only while they do.
#[derive(Debug)]
pub struct Session {
    max_message: u32,
    state: WsState,
    rare: Option<Box<Assembly>>,
}

/// The state of a fragmented message or of a frame cut by a read.
#[derive(Debug, Default)]
struct Assembly {
    partial: Option<Partial>,
    /// For an incomplete text frame at the head of the buffer: payload bytes already checked.
    scanned: Option<(usize, Utf8Scan)>,
    /// The last assembled message, lent out by `decode` and freed by the next call.
    assembled: Vec<u8>,
}

impl Session {
    /// A session accepting frames and messages of at most `max_message` bytes (capped at
    /// 4 GiB - 1).
    pub fn new(max_message: usize) -> Session {
        Session { max_message: cap(max_message), state: WsState::Open, rare: None }
    }

    /// Changes the message limit (a reload); a message already being assembled keeps going
    /// under the new limit.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = cap(max_message);
    }

    /// Where the session is.
    pub fn state(&self) -> WsState {
        self.state
    }

    /// The peer sent something: it is alive, an outstanding ping is answered.
    pub fn handle_activity(&mut self) {
        if self.state == WsState::Pinged {
            self.state = WsState::Open;
        }
    }

    /// The peer was silent for a whole deadline: the first time, ping it (written to `out`);
    /// the second time, it is gone.
    pub fn handle_idle(&mut self, out: &mut Vec<u8>) -> IdleOutcome {
        match self.state {
            WsState::Open => {
                encode_frame(out, OpCode::Ping, PING_PAYLOAD);
                self.state = WsState::Pinged;
                IdleOutcome::Pinged
            }
            WsState::Pinged | WsState::Closing => IdleOutcome::TimedOut,
        }
    }

    /// Answers a ping with a pong carrying the same payload (§5.5.3). An associated function,
    /// because the payload is still borrowed from the session's `decode`.
    pub fn answer_ping(payload: &[u8], out: &mut Vec<u8>) {
        encode_frame(out, OpCode::Pong, payload);
    }

    /// Decides to close: from now on input is ignored. Returns false if a close was already
    /// decided (the connection must send only one close frame).
    pub fn start_closing(&mut self) -> bool {
        let was_open = self.state != WsState::Closing;
        self.state = WsState::Closing;
        was_open
    }

    /// Writes the close frame; the session ends here (the endpoint lingers for the peer's FIN).
    pub fn finish(self, close: Close, out: &mut Vec<u8>) {
        match close {
            Close::Echo(Some(code)) => encode_close(out, code, ""),
            Close::Echo(None) => encode_frame(out, OpCode::Close, &[]),
            Close::Code(code, reason) => encode_close(out, code, reason),
        }
    }

    /// Whether the session holds no buffered data.
    pub fn is_idle(&self) -> bool {
        self.rare.as_ref().is_none_or(|r| r.partial.is_none() && r.assembled.capacity() == 0)
    }

    /// Decodes one frame from the start of `buf`, unmasking it in place.
    ///
    /// Returns `Ok(None)` while the frame is incomplete (nothing consumed; call again with the
    /// same bytes and more), or the number of bytes consumed and the event, if the frame
    /// completed one (a non-final fragment completes none).
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(usize, Option<Incoming<'a>>)>> {
        // The message lent out by the last call is freed now; a session with nothing in
        // progress gives its box back.
        if let Some(rare) = &mut self.rare {
            if rare.partial.is_none() && rare.scanned.is_none() {
                self.rare = None;
            } else {
                rare.assembled = Vec::new();
            }
        }
        let Some((h, hlen)) = parse_header(buf)? else { return Ok(None) };
        let mask = h.mask.ok_or(ProtocolError::UnmaskedFrame)?;
        let partial = self.rare.as_ref().and_then(|r| r.partial.as_ref());
        let text = match (h.opcode, partial) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continuation, Some(p)) => p.text,
            (op, _) => op == OpCode::Text,
        };
        let so_far = partial.map_or(0, |p| p.buf.len());
        // The limit is checked against the declared length, before any byte of it is awaited.
        if h.len > (self.max_message as usize).saturating_sub(so_far) as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        let len = h.len as usize;
        let total = hlen + len;
        if buf.len() < total {
            if text {
                let rare = self.rare.get_or_insert_with(Box::default);
                let start = rare.partial.as_ref().map_or(Utf8Scan::default(), |p| p.utf8);
                let (done, scan) = rare.scanned.get_or_insert((0, start));
                let got = &buf[hlen..];
                scan.feed(&got[*done..], Some((mask, *done)))?;
                *done = got.len();
            }
            return Ok(None);
        }
        if let Some(rare) = &mut self.rare {
            rare.scanned = None;
        }
        let payload = &mut buf[hlen..total];
        apply_mask(payload, mask);
        let event = match h.opcode {
            OpCode::Text if h.fin => Some(Incoming::Text(
                std::str::from_utf8(payload).map_err(|_| ProtocolError::BadUtf8)?,
            )),
            OpCode::Binary if h.fin => Some(Incoming::Binary(payload)),
            OpCode::Text | OpCode::Binary => {
                let mut utf8 = Utf8Scan::default();
                if text {
                    utf8.feed(payload, None)?;
                }
                let rare = self.rare.get_or_insert_with(Box::default);
                rare.partial = Some(Partial { text, buf: payload.to_vec(), utf8 });
                None
            }
            OpCode::Continuation => {
                let rare = self.rare.as_mut().ok_or(ProtocolError::UnexpectedContinuation)?;
                let p = rare.partial.as_mut().ok_or(ProtocolError::UnexpectedContinuation)?;
                if p.text {
                    p.utf8.feed(payload, None)?;
                }
                p.buf.extend_from_slice(payload);
                if !h.fin {
                    None
                } else {
                    let p = rare.partial.take().ok_or(ProtocolError::UnexpectedContinuation)?;
                    rare.assembled = p.buf;
                    if p.text {
                        let s = std::str::from_utf8(&rare.assembled)
                            .map_err(|_| ProtocolError::BadUtf8)?;
                        Some(Incoming::Text(s))
                    } else {
                        Some(Incoming::Binary(&rare.assembled))
                    }
                }
            }
            OpCode::Ping => Some(Incoming::Ping(payload)),
            OpCode::Pong => Some(Incoming::Pong),
            OpCode::Close => Some(parse_close(payload)?),
        };
        Ok(Some((total, event)))
    }
}

fn cap(max_message: usize) -> u32 {
    u32::try_from(max_message).unwrap_or(u32::MAX)
}

fn parse_close(payload: &[u8]) -> Result<Incoming<'_>> {
    match payload {
        [] => Ok(Incoming::Close(None, "")),
        [_] => Err(ProtocolError::CloseTooShort),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::BadCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::BadUtf8)?;
            Ok(Incoming::Close(Some(code), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0xa1, 0x02, 0xf3, 0x44];
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        apply_mask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    /// Feeds `input` in pieces of `step` bytes, like a socket would, and collects the events.
    fn run(s: &mut Session, input: &[u8], step: usize) -> Result<Vec<String>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match s.decode(&mut buf)? {
                    None => break,
                    Some((n, ev)) => {
                        if let Some(ev) = ev {
                            out.push(format!("{ev:?}"));
                        }
                        buf.drain(..n);
                    }
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn a_text_frame_in_every_split() {
        let f = frame(0x81, "héllo wörld".as_bytes());
        for step in 1..=f.len() {
            let mut s = Session::new(1000);
            assert_eq!(run(&mut s, &f, step).unwrap(), ["Text(\"héllo wörld\")"], "step {step}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let f = frame(0x82, &[9; 300]);
        for i in 0..f.len() {
            let mut s = Session::new(1000);
            let mut b = f[..i].to_vec();
            assert_eq!(s.decode(&mut b), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut input = frame(0x01, b"Hel");
        input.extend(frame(0x89, b"p1"));
        input.extend(frame(0x00, b"lo, "));
        input.extend(frame(0x8a, b""));
        input.extend(frame(0x80, b"world"));
        input.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        let mut s = Session::new(1000);
        assert_eq!(
            run(&mut s, &input, 3).unwrap(),
            ["Ping([112, 49])", "Pong", "Text(\"Hello, world\")", "Close(Some(1000), \"bye\")"]
        );
        assert!(s.is_idle());
    }

    #[test]
    fn rule_violations() {
        let err = |input: Vec<u8>| run(&mut Session::new(100), &input, 1000).unwrap_err();
        let mut unmasked = frame(0x81, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(err(unmasked), ProtocolError::UnmaskedFrame);
        assert_eq!(err(frame(0x80, b"x")), ProtocolError::UnexpectedContinuation);
        assert_eq!(
            err([frame(0x01, b"a"), frame(0x81, b"b")].concat()),
            ProtocolError::ExpectedContinuation
        );
        assert_eq!(err(frame(0x88, &[3])), ProtocolError::CloseTooShort);
        assert_eq!(err(frame(0x88, &[0x03, 0xed])), ProtocolError::BadCloseCode(1005));
        assert_eq!(err(frame(0x88, &[0x03, 0xe8, 0xff])), ProtocolError::BadUtf8);
        assert_eq!(err(frame(0x81, &[0xc0, 0x80])), ProtocolError::BadUtf8);
        assert_eq!(err(frame(0x82, &[0; 101])), ProtocolError::MessageTooBig);
        assert_eq!(
            err([frame(0x02, &[0; 60]), frame(0x80, &[0; 41])].concat()),
            ProtocolError::MessageTooBig
        );
        assert_eq!(ProtocolError::MessageTooBig.close_code(), 1009);
        assert_eq!(ProtocolError::BadUtf8.close_code(), 1007);
        assert_eq!(ProtocolError::ReservedBits.close_code(), 1002);
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut s = Session::new(1000);
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(s.decode(&mut header), Err(ProtocolError::MessageTooBig));
    }

    #[test]
    fn bad_utf8_fails_before_the_frame_is_complete() {
        // The second byte cannot follow 0xce; only the first 8 bytes of a 100-byte frame arrived.
        let mut text = vec![b'a'; 100];
        text[3] = 0xce;
        text[4] = b'a';
        let f = frame(0x81, &text);
        let mut s = Session::new(1000);
        let mut head = f[..11].to_vec();
        assert_eq!(s.decode(&mut head), Err(ProtocolError::BadUtf8));
        // And inside a continuation frame, given what the first fragment left open.
        let mut input = frame(0x01, &[b'x', 0xf0, 0x9f]);
        input.extend_from_slice(&frame(0x80, &[b'!'; 50])[..8]);
        assert_eq!(run(&mut Session::new(1000), &input, 1000), Err(ProtocolError::BadUtf8));
    }

    #[test]
    fn a_code_point_split_across_fragments_is_fine() {
        let mut input = frame(0x01, &[b'x', 0xf0, 0x9f]);
        input.extend(frame(0x80, &[0x98, 0x80]));
        for step in 1..input.len() {
            let mut s = Session::new(1000);
            assert_eq!(run(&mut s, &input, step).unwrap(), ["Text(\"x😀\")"], "step {step}");
        }
        let open = frame(0x81, &[b'x', 0xf0, 0x9f]);
        assert_eq!(run(&mut Session::new(1000), &open, 1000), Err(ProtocolError::BadUtf8));
    }

    #[test]
    fn an_idle_session_is_small() {
        // Every open connection holds a Session (issue 6: at most 0.5 KiB per idle connection).
        assert!(std::mem::size_of::<Session>() <= 16, "{}", std::mem::size_of::<Session>());
        // Fragments and cut frames borrow a box only while they are in progress.
        let mut s = Session::new(1000);
        let mut input = frame(0x01, b"ab");
        input.extend(frame(0x80, b"c"));
        assert_eq!(run(&mut s, &input, 1).unwrap(), ["Text(\"abc\")"]);
        assert!(s.decode(&mut []).unwrap().is_none());
        assert!(s.is_idle() && s.rare.is_none());
    }

    #[test]
    fn close_codes() {
        for code in
            [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
        {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!is_valid_close_code(code), "{code}");
        }
    }
}
