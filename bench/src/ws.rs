//! The client half of RFC 6455, just enough to load a server: the upgrade request and its
//! answer, masked client frames out (chatd's `ws::encode_masked`), unmasked server frames in. Sans-IO like chatd's own codec:
//! bytes in, `Ok(None)` while incomplete.

/// The key of RFC 6455 §1.3; every connection may use it (the server only hashes it).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Client frames are encoded by chatd's own encoder, the one its tests use.
pub use chatd::ws::{encode_masked, OpCode};

/// Opcodes this client handles, as parsed.
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Largest upgrade answer accepted.
const MAX_HEAD: usize = 4096;

/// Appends the upgrade request for `path` on `host`.
pub fn write_upgrade(out: &mut Vec<u8>, host: &str, path: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    out.extend_from_slice(KEY.as_bytes());
    out.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n\r\n");
}

/// Checks the answer to the upgrade: `Ok(Some(head length))` for a 101 with the right accept
/// key, `Ok(None)` while the head is incomplete.
pub fn parse_upgrade(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Err("upgrade answer too long") } else { Ok(None) };
    };
    let head = &buf[..end];
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err("upgrade refused (not 101)");
    }
    let accepted = head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                line[..colon].eq_ignore_ascii_case(b"sec-websocket-accept")
                    && line[colon + 1..].trim_ascii() == ACCEPT.as_bytes()
            }
            None => false,
        }
    });
    if !accepted {
        return Err("bad Sec-WebSocket-Accept");
    }
    Ok(Some(end + 4))
}

/// Largest payload [`write_frame_parts`] assembles: a JSON envelope around a 256-byte stamp.
const MAX_PARTS: usize = 512;

/// Appends one final, masked client frame whose payload is the concatenation of `parts` (a
/// JSON envelope and its text), assembled on the stack: no allocation per message. Panics past
/// [`MAX_PARTS`] bytes.
pub fn write_frame_parts(out: &mut Vec<u8>, opcode: OpCode, parts: &[&[u8]], mask: [u8; 4]) {
    let mut payload = [0u8; MAX_PARTS];
    let mut len = 0;
    for part in parts {
        payload[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    encode_masked(out, opcode, &payload[..len], mask);
}

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// Parses one server frame from the start of `buf`: `Ok(Some((frame, consumed)))`, or
/// `Ok(None)` while incomplete. Server frames must not be masked.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("masked server frame");
    }
    let (len, at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u16::from_be_bytes([b[0], b[1]]) as usize, 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_be_bytes(a);
            if len > (1 << 31) {
                return Err("server frame too long");
            }
            (len as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    let Some(payload) = buf.get(at..at + len) else { return Ok(None) };
    Ok(Some((Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload }, at + len)))
}

/// A small xorshift generator for masking keys: cheap, and different for every frame.
#[derive(Debug, Clone)]
pub struct MaskGen(u64);

impl MaskGen {
    pub fn new(seed: u64) -> MaskGen {
        MaskGen(seed | 1)
    }

    pub fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_ne_bytes()
    }
}

/// Writes `ns` as 16 lowercase hex digits, then pads with `x` up to `size` bytes (at least 16).
pub fn stamp(ns: u64, size: usize, out: &mut [u8; 256]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let size = size.clamp(16, out.len());
    for i in 0..16 {
        out[i] = HEX[((ns >> (60 - 4 * i)) & 0xf) as usize];
    }
    out[16..size].fill(b'x');
    &out[..size]
}

/// Reads the time stamp written by [`stamp`].
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let digits = payload.get(..16)?;
    let mut ns = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        ns = ns << 4 | u64::from(v);
    }
    Some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let mut buf = [0u8; 256];
        for ns in [0u64, 1, 0xdead_beef, u64::MAX] {
            let s = stamp(ns, 20, &mut buf).to_vec();
            assert_eq!(s.len(), 20);
            assert_eq!(read_stamp(&s), Some(ns));
        }
    }

    #[test]
    fn frames_round_trip_after_unmasking() {
        for len in [0usize, 20, 125, 126, 70_000] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            let mask = [1, 2, 3, 4];
            encode_masked(&mut out, OpCode::Text, &payload, mask);
            // Unmask as a server would and parse as a server frame.
            let at = out.len() - len - 4;
            let mut server = vec![out[0], out[1] & 0x7f];
            server.extend_from_slice(&out[2..at]);
            server.extend(out[at + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
            let (f, n) = parse_frame(&server).unwrap().unwrap();
            assert_eq!((f.fin, f.opcode, f.payload, n), (true, TEXT, &payload[..], server.len()));
            for i in 0..server.len().min(200) {
                assert_eq!(parse_frame(&server[..i]), Ok(None));
            }
        }
    }

    #[test]
    fn parts_make_one_frame() {
        let mask = [9, 8, 7, 6];
        let mut parts = Vec::new();
        write_frame_parts(&mut parts, OpCode::Text, &[b"{\"a\":\"", b"xyz", b"\"}"], mask);
        let mut whole = Vec::new();
        encode_masked(&mut whole, OpCode::Text, b"{\"a\":\"xyz\"}", mask);
        assert_eq!(parts, whole);
    }

    #[test]
    fn upgrade_answer() {
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             sec-websocket-accept: {ACCEPT}\r\n\r\nrest"
        );
        assert_eq!(parse_upgrade(ok.as_bytes()), Ok(Some(ok.len() - 4)));
        assert_eq!(parse_upgrade(&ok.as_bytes()[..20]), Ok(None));
        assert!(parse_upgrade(b"HTTP/1.1 503 Busy\r\n\r\n").is_err());
    }
}
