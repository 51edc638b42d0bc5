//! The frame codec (RFC 6455 §5.2): header parsing with every rule checked before the payload is
//! awaited, and server frame encoding.
//!
//! Owns: frame headers and encoding. May not touch: message assembly or connection state.
use super::{ProtocolError, Result};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl OpCode {
    /// Decodes the low nibble of the first byte.
    pub fn from_u8(b: u8) -> Result<OpCode> {
        Ok(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length as declared.
    pub len: u64,
}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` while the header is incomplete, or the header and its length in bytes.
/// Reserved bits and opcodes, fragmented or oversized control frames and over-long lengths are
/// refused as soon as the bytes that show them have arrived. The payload length is only
/// reported: the caller compares it to its limit before reserving anything.
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0f)?;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if b1 & 0x7f > 125 {
            return Err(ProtocolError::ControlFrameTooBig);
        }
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_be_bytes(a);
            if len >> 63 != 0 {
                return Err(ProtocolError::BadLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some((FrameHeader { fin, opcode, mask, len }, at)))
}

/// Appends one unmasked, final server frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    encode_header(out, opcode, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Appends one final client frame, masked with `mask` as RFC 6455 §5.3 requires of every
/// frame a client sends. The server never sends one: this is for clients (tests, the bench).
pub fn encode_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.reserve(payload.len() + 14);
    encode_header(out, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    super::apply_mask(&mut out[start..], mask);
}

/// The header of a final frame of `len` payload bytes: the shortest length encoding, then the
/// masking key if there is one.
#[inline]
fn encode_header(out: &mut Vec<u8>, opcode: OpCode, len: usize, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode.as_u8());
    if len < 126 {
        out.push(masked | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(masked | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(masked | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// Appends a close frame with `code` and a `reason` cut to fit the 125-byte control limit (at
/// a character boundary).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, OpCode::Close, &payload[..2 + end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut frame = Vec::new();
            encode_masked(&mut frame, OpCode::Text, &vec![b'a'; len], [1, 2, 3, 4]);
            let (h, n) = parse_header(&frame).unwrap().unwrap();
            assert_eq!(h.len, len as u64);
            assert_eq!(h.opcode, OpCode::Text);
            assert!(h.fin);
            assert_eq!(h.mask, Some([1, 2, 3, 4]));
            for i in 0..n {
                assert_eq!(parse_header(&frame[..i]), Ok(None), "len {len} prefix {i}");
            }
        }
    }

    #[test]
    fn rules_are_checked_on_the_first_bytes() {
        assert_eq!(parse_header(&[0xc1, 0x80]), Err(ProtocolError::ReservedBits));
        assert_eq!(parse_header(&[0x83, 0x80]), Err(ProtocolError::ReservedOpcode(3)));
        assert_eq!(parse_header(&[0x8b, 0x80]), Err(ProtocolError::ReservedOpcode(0xb)));
        assert_eq!(parse_header(&[0x09, 0x80]), Err(ProtocolError::FragmentedControl));
        assert_eq!(parse_header(&[0x89, 0xfe]), Err(ProtocolError::ControlFrameTooBig));
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge), Err(ProtocolError::BadLength));
    }

    #[test]
    fn encoding_uses_the_shortest_length() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            encode_frame(&mut out, OpCode::Binary, &vec![7; len]);
            assert_eq!(out.len(), header + len);
            let (h, n) = parse_header(&out).unwrap().unwrap();
            assert_eq!((h.len, n, h.mask, h.fin), (len as u64, header, None, true));
        }
    }

    #[test]
    fn masked_frames_round_trip_through_the_parser() {
        use OpCode::*;
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for opcode in [Continuation, Text, Binary, Close, Ping, Pong] {
            for (len, header) in
                [(0usize, 6usize), (1, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)]
            {
                if opcode.is_control() && len > 125 {
                    continue;
                }
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                // Appends: what is already in `out` stays.
                let mut out = vec![0xee];
                encode_masked(&mut out, opcode, &payload, mask);
                assert_eq!(out[0], 0xee);
                let frame = &out[1..];
                let (h, n) = parse_header(frame).unwrap().unwrap();
                let got = (h.fin, h.opcode, h.mask, h.len, n);
                assert_eq!(got, (true, opcode, Some(mask), len as u64, header), "{opcode:?} {len}");
                assert_eq!(frame.len(), header + len);
                let mut body = frame[n..].to_vec();
                if len > 0 {
                    assert_ne!(body, payload, "{opcode:?} {len}: the payload went out unmasked");
                }
                super::super::apply_mask(&mut body, mask);
                assert_eq!(body, payload, "{opcode:?} {len}");
                for i in 0..n {
                    assert_eq!(parse_header(&frame[..i]), Ok(None), "{opcode:?} {len} prefix {i}");
                }
            }
        }
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
