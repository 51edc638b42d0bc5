//! RESP, the Redis serialization protocol, sans-IO: [`parse`] one reply out of a buffer and
//! [`encode_command`] into one. RESP2 is what chatd speaks (it never sends `HELLO 3`); the
//! RESP3 types a server might still send are read and mapped onto their RESP2 shapes, so the
//! caller sees one [`Value`] type:
//!
//! | RESP3               | read as                                   |
//! |---------------------|-------------------------------------------|
//! | `_` null            | `Bulk(None)`                              |
//! | `#t` / `#f` boolean | `Integer(1)` / `Integer(0)`               |
//! | `,` double, `(` big number | `Bulk(Some(digits))` (as RESP2 sends them) |
//! | `!` blob error      | `Error` (CR and LF become spaces)         |
//! | `=` verbatim string | `Bulk(Some(text))` without its `txt:` tag |
//! | `~` set, `>` push   | `Array`                                   |
//! | `%` map             | `Array` of keys and values, alternating   |
//!
//! Attributes (`|`) are refused: they only come after `HELLO 3` with client tracking.
//!
//! Every size is checked against its cap when its header is read, before anything waits for
//! or allocates the body: [`MAX_LINE_LEN`], [`MAX_BULK_LEN`], [`MAX_ARRAY_LEN`], [`MAX_DEPTH`].
//! An array's declared length is also checked against the bytes at hand (each element takes at
//! least 3), so a value never allocates more than a small multiple of the input it came from.
use std::io::Write as _;

/// Longest line of a simple string, error, double or big number, without its CRLF: 64 KiB.
/// Redis's own status and error lines are short; a Lua error with its stack is the long case.
pub const MAX_LINE_LEN: usize = 64 * 1024;
/// Longest line holding a length or an integer, without its CRLF: `-9223372036854775808` is
/// 20 bytes.
pub const MAX_NUMBER_LEN: usize = 20;
/// Largest bulk string: 16 MiB. chatd stores nothing big in Redis: chat lines pass through in
/// batches of a loop turn, and everything else is ids and counts. Redis's own limit is 512 MiB.
pub const MAX_BULK_LEN: usize = 16 * 1024 * 1024;
/// Most elements in one array (a map counts its keys and values): 1,048,576.
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
/// Deepest nesting of arrays: 32. Redis's replies nest two or three levels; a Lua script's
/// tables are converted with a depth limit of their own.
pub const MAX_DEPTH: usize = 32;

/// Smallest encoding of any value (`_\r\n`): bounds how many elements the bytes at hand can hold.
const MIN_VALUE_LEN: usize = 3;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a status line. Read as UTF-8, invalid bytes replaced; never holds CR or LF.
    Simple(String),
    /// `-ERR message`: an error reply, the whole line (its first word is the error code, such
    /// as `WRONGPASS`). Read as UTF-8, invalid bytes replaced; never holds CR or LF.
    Error(String),
    /// `:42`: an integer.
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string; `None` for the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`: an array; `None` for the null array (`*-1`).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a bulk or simple string, `None` for other values.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Appends the RESP2 encoding of this value to `out` (what a server would send). A
    /// `Simple` or `Error` holding CR or LF would break the framing; parsed values never do.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => line(out, b'-', s.as_bytes()),
            Value::Integer(n) => {
                let _ = write!(out, ":{n}\r\n");
            }
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => bulk(out, b),
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                let _ = write!(out, "*{}\r\n", items.len());
                items.iter().for_each(|v| v.encode(out));
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "${}\r\n", b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Why bytes from Redis are not RESP. Any of these ends the connection: the stream has lost its
/// framing, so nothing after it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The first byte of a value is not a type RESP2 or RESP3 defines (or is an attribute).
    #[error("unknown RESP type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A line longer than its cap ([`MAX_LINE_LEN`] or [`MAX_NUMBER_LEN`]).
    #[error("RESP line longer than its cap")]
    LineTooLong,
    /// A line holding a bare CR or LF, or a bulk string not followed by CRLF.
    #[error("RESP line not ended by CRLF")]
    BadLineEnd,
    /// An integer or length that is not a decimal number that fits in an `i64`.
    #[error("bad RESP integer")]
    BadInteger,
    /// A negative length other than -1 (null).
    #[error("negative RESP length")]
    NegativeLength,
    /// A bulk string longer than [`MAX_BULK_LEN`].
    #[error("RESP bulk string of {0} bytes is over the cap")]
    BulkTooLong(i64),
    /// An array with more than [`MAX_ARRAY_LEN`] elements.
    #[error("RESP array of {0} elements is over the cap")]
    ArrayTooLong(i64),
    /// Arrays nested deeper than [`MAX_DEPTH`].
    #[error("RESP arrays nested deeper than the cap")]
    TooDeep,
    /// A RESP3 boolean other than `#t` or `#f`, or a RESP3 null with something on its line.
    #[error("bad RESP3 boolean or null")]
    BadScalar,
}

/// Parses one value from the start of `buf`: `Ok(Some((consumed, value)))`, or `Ok(None)` when
/// `buf` is a proper prefix of a value (read more and call again with the same bytes first).
/// Caps are checked as soon as the header that declares a size is complete.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Value)>, RespError> {
    Ok(parse_at(buf, 0, 0)?.map(|(v, end)| (end, v)))
}

/// Parses the value at `buf[pos..]`; returns it and the position after it.
fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    let pos = pos + 1;
    let max = match kind {
        b'$' | b'*' | b':' | b'!' | b'=' | b'~' | b'>' | b'%' | b'_' | b'#' => MAX_NUMBER_LEN,
        b'+' | b'-' | b',' | b'(' => MAX_LINE_LEN,
        other => return Err(RespError::UnknownType(other)),
    };
    let Some((text, next)) = read_line(buf, pos, max)? else { return Ok(None) };
    let value = match kind {
        b'+' => Value::Simple(String::from_utf8_lossy(text).into_owned()),
        b'-' => Value::Error(String::from_utf8_lossy(text).into_owned()),
        b':' => Value::Integer(parse_int(text)?),
        b',' | b'(' => Value::Bulk(Some(text.to_vec())),
        b'_' if text.is_empty() => Value::Bulk(None),
        b'#' if text == b"t" => Value::Integer(1),
        b'#' if text == b"f" => Value::Integer(0),
        b'_' | b'#' => return Err(RespError::BadScalar),
        b'$' | b'!' | b'=' => {
            let Some(len) = parse_len(text, MAX_BULK_LEN, RespError::BulkTooLong)? else {
                return Ok(Some((Value::Bulk(None), next)));
            };
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::BadLineEnd);
            }
            let data = &buf[next..end];
            let value = match kind {
                b'!' => {
                    let text = String::from_utf8_lossy(data);
                    Value::Error(text.replace(['\r', '\n'], " "))
                }
                b'=' if data.len() >= 4 && data[3] == b':' => Value::Bulk(Some(data[4..].to_vec())),
                _ => Value::Bulk(Some(data.to_vec())),
            };
            return Ok(Some((value, end + 2)));
        }
        _ => {
            // '*', '~', '>', '%': an aggregate.
            let per = if kind == b'%' { 2 } else { 1 };
            let Some(n) = parse_len(text, MAX_ARRAY_LEN / per, RespError::ArrayTooLong)? else {
                return Ok(Some((Value::Array(None), next)));
            };
            let n = n * per;
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            // Each element needs at least MIN_VALUE_LEN bytes: fewer at hand means incomplete,
            // and so the capacity below is bounded by the input, whatever the header claims.
            if (buf.len() - next) / MIN_VALUE_LEN < n {
                return Ok(None);
            }
            let mut items = Vec::with_capacity(n);
            let mut at = next;
            for _ in 0..n {
                let Some((v, after)) = parse_at(buf, at, depth + 1)? else { return Ok(None) };
                items.push(v);
                at = after;
            }
            return Ok(Some((Value::Array(Some(items)), at)));
        }
    };
    Ok(Some((value, next)))
}

/// The line at `buf[pos..]` without its CRLF, and the position after the CRLF. A line longer
/// than `max` is refused as soon as `max + 1` of its bytes are at hand.
fn read_line(buf: &[u8], pos: usize, max: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[pos..];
    // The longest line and its CR: a CR must turn up in there.
    let window = &rest[..rest.len().min(max + 1)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        None if window.len() > max => Err(RespError::LineTooLong),
        None => Ok(None),
        Some(i) if window[i] == b'\n' => Err(RespError::BadLineEnd),
        Some(i) => match rest.get(i + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&rest[..i], pos + i + 2))),
            Some(_) => Err(RespError::BadLineEnd),
        },
    }
}

/// A decimal `i64` with an optional sign, as RESP3 allows for integers.
fn parse_int(text: &[u8]) -> Result<i64, RespError> {
    let digits = text.strip_prefix(b"+").or_else(|| text.strip_prefix(b"-")).unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::BadInteger);
    }
    // ASCII digits and a sign are UTF-8; i64's parser catches overflow.
    std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or(RespError::BadInteger)
}

/// A length: `None` for -1 (null), else at most `cap`. No `+` sign here.
fn parse_len(
    text: &[u8],
    cap: usize,
    too_long: fn(i64) -> RespError,
) -> Result<Option<usize>, RespError> {
    if text.first() == Some(&b'+') {
        return Err(RespError::BadInteger);
    }
    match parse_int(text)? {
        -1 => Ok(None),
        n if n < 0 => Err(RespError::NegativeLength),
        n => match usize::try_from(n) {
            Ok(len) if len <= cap => Ok(Some(len)),
            _ => Err(too_long(n)),
        },
    }
}

/// Appends a command to `out`: an array of bulk strings, the form every Redis command takes.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.reserve(command_len(args));
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    args.iter().for_each(|a| bulk(out, a));
}

/// The number of bytes [`encode_command`] appends for `args`, so that a caller can check a cap
/// before encoding.
pub fn command_len(args: &[&[u8]]) -> usize {
    fn digits(mut n: usize) -> usize {
        let mut d = 1;
        while n >= 10 {
            n /= 10;
            d += 1;
        }
        d
    }
    3 + digits(args.len()) + args.iter().map(|a| 5 + digits(a.len()) + a.len()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn ok(input: &[u8]) -> Value {
        match parse(input) {
            Ok(Some((n, v))) => {
                assert_eq!(n, input.len(), "{:?} consumed {n}", String::from_utf8_lossy(input));
                v
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    /// Every proper prefix of `input` is incomplete, and the whole parses to `expected`.
    fn check(input: &[u8], expected: Value) {
        for i in 0..input.len() {
            assert_eq!(
                parse(&input[..i]),
                Ok(None),
                "prefix {:?} of {:?}",
                String::from_utf8_lossy(&input[..i]),
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(ok(input), expected);
        // Trailing bytes are left for the next call.
        let mut more = input.to_vec();
        more.extend_from_slice(b"+NEXT\r\n");
        assert_eq!(parse(&more), Ok(Some((input.len(), expected))));
    }

    /// The examples of the Redis protocol specification (redis.io/docs/reference/protocol-spec).
    #[test]
    fn spec_vectors() {
        check(b"+OK\r\n", Value::Simple("OK".into()));
        check(b"-Error message\r\n", Value::Error("Error message".into()));
        check(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            Value::Error(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
            ),
        );
        check(b":0\r\n", Value::Integer(0));
        check(b":1000\r\n", Value::Integer(1000));
        check(b":-42\r\n", Value::Integer(-42));
        check(b":+7\r\n", Value::Integer(7));
        check(b"$5\r\nhello\r\n", bulk("hello"));
        check(b"$0\r\n\r\n", bulk(""));
        check(b"$-1\r\n", Value::Bulk(None));
        check(b"*0\r\n", Value::Array(Some(vec![])));
        check(
            b"*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n",
            Value::Array(Some(vec![bulk("hello"), bulk("world")])),
        );
        check(
            b"*3\r\n:1\r\n:2\r\n:3\r\n",
            Value::Array(Some(vec![Value::Integer(1), Value::Integer(2), Value::Integer(3)])),
        );
        check(
            b"*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n$5\r\nhello\r\n",
            Value::Array(Some(vec![
                Value::Integer(1),
                Value::Integer(2),
                Value::Integer(3),
                Value::Integer(4),
                bulk("hello"),
            ])),
        );
        check(b"*-1\r\n", Value::Array(None));
        check(
            b"*2\r\n*3\r\n:1\r\n:2\r\n:3\r\n*2\r\n+Hello\r\n-World\r\n",
            Value::Array(Some(vec![
                Value::Array(Some(vec![Value::Integer(1), Value::Integer(2), Value::Integer(3)])),
                Value::Array(Some(vec![
                    Value::Simple("Hello".into()),
                    Value::Error("World".into()),
                ])),
            ])),
        );
        check(
            b"*3\r\n$5\r\nhello\r\n$-1\r\n$5\r\nworld\r\n",
            Value::Array(Some(vec![bulk("hello"), Value::Bulk(None), bulk("world")])),
        );
        // A bulk string is binary-safe: CR, LF and NUL inside are data.
        check(b"$4\r\n\r\n\0\xff\r\n", Value::Bulk(Some(b"\r\n\0\xff".to_vec())));
    }

    /// The RESP3 examples of the same specification, read as their RESP2 shapes.
    #[test]
    fn resp3_vectors() {
        check(b"_\r\n", Value::Bulk(None));
        check(b"#t\r\n", Value::Integer(1));
        check(b"#f\r\n", Value::Integer(0));
        check(b",1.23\r\n", bulk("1.23"));
        check(b",inf\r\n", bulk("inf"));
        check(
            b"(3492890328409238509324850943850943825024385\r\n",
            bulk("3492890328409238509324850943850943825024385"),
        );
        check(b"!21\r\nSYNTAX invalid syntax\r\n", Value::Error("SYNTAX invalid syntax".into()));
        check(b"!4\r\na\r\nb\r\n", Value::Error("a  b".into()));
        check(b"=15\r\ntxt:Some string\r\n", bulk("Some string"));
        check(
            b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n",
            Value::Array(Some(vec![
                Value::Simple("first".into()),
                Value::Integer(1),
                Value::Simple("second".into()),
                Value::Integer(2),
            ])),
        );
        check(
            b"~2\r\n:1\r\n:2\r\n",
            Value::Array(Some(vec![Value::Integer(1), Value::Integer(2)])),
        );
        check(
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
            Value::Array(Some(vec![bulk("message"), bulk("c"), bulk("p")])),
        );
        assert_eq!(parse(b"|1\r\n+a\r\n+b\r\n+c\r\n"), Err(RespError::UnknownType(b'|')));
    }

    #[test]
    fn malformed_input_is_refused() {
        for (input, e) in [
            (&b"?\r\n"[..], RespError::UnknownType(b'?')),
            (b"+a\nb\r\n", RespError::BadLineEnd),
            (b"+a\rb\r\n", RespError::BadLineEnd),
            (b":\r\n", RespError::BadInteger),
            (b":-\r\n", RespError::BadInteger),
            (b":1a\r\n", RespError::BadInteger),
            (b": 1\r\n", RespError::BadInteger),
            (b":9223372036854775808\r\n", RespError::BadInteger),
            (b"$-2\r\n", RespError::NegativeLength),
            (b"*-2\r\n", RespError::NegativeLength),
            (b"$+1\r\na\r\n", RespError::BadInteger),
            (b"$3\r\nabcd\r\n", RespError::BadLineEnd),
            (b"$3\r\nabc\n\r", RespError::BadLineEnd),
            (b"#x\r\n", RespError::BadScalar),
            (b"_x\r\n", RespError::BadScalar),
            (b"*1\r\n?\r\n", RespError::UnknownType(b'?')),
        ] {
            assert_eq!(parse(input), Err(e), "{:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(parse(b":9223372036854775807\r\n"), Ok(Some((22, Value::Integer(i64::MAX)))));
        assert_eq!(parse(b":-9223372036854775808\r\n"), Ok(Some((23, Value::Integer(i64::MIN)))));
    }

    #[test]
    fn caps_are_checked_before_the_body_arrives() {
        let too_big = MAX_BULK_LEN + 1;
        assert_eq!(
            parse(format!("${too_big}\r\n").as_bytes()),
            Err(RespError::BulkTooLong(too_big as i64))
        );
        assert_eq!(parse(format!("${MAX_BULK_LEN}\r\n").as_bytes()), Ok(None));
        let too_many = MAX_ARRAY_LEN + 1;
        assert_eq!(
            parse(format!("*{too_many}\r\n").as_bytes()),
            Err(RespError::ArrayTooLong(too_many as i64))
        );
        assert_eq!(
            parse(format!("%{}\r\n", MAX_ARRAY_LEN / 2 + 1).as_bytes()),
            Err(RespError::ArrayTooLong(MAX_ARRAY_LEN as i64 / 2 + 1))
        );
        // A huge declared array with few bytes at hand allocates nothing: it is incomplete.
        assert_eq!(parse(format!("*{MAX_ARRAY_LEN}\r\n:1\r\n").as_bytes()), Ok(None));
        assert_eq!(parse(b"$99999999999999999999\r\n"), Err(RespError::BadInteger));
        // Lines: refused once longer than the cap, incomplete up to it.
        let mut line = vec![b'+'; 1 + MAX_LINE_LEN];
        assert_eq!(parse(&line), Ok(None));
        line.push(b'\r');
        assert_eq!(parse(&line), Ok(None));
        line.pop();
        line.push(b'x');
        assert_eq!(parse(&line), Err(RespError::LineTooLong));
        let mut longest = vec![b'+'; MAX_LINE_LEN + 1];
        longest.extend_from_slice(b"\r\n");
        assert!(
            matches!(parse(&longest), Ok(Some((_, Value::Simple(s)))) if s.len() == MAX_LINE_LEN)
        );
        longest.insert(1, b'+');
        assert_eq!(parse(&longest), Err(RespError::LineTooLong));
        // A length line is cut short at 20 bytes: an endless run of digits is refused early.
        assert_eq!(parse(b"$0000000000000000000000"), Err(RespError::LineTooLong));
        assert_eq!(parse(b"$00000000000000000005\r\nhello\r\n"), Ok(Some((30, bulk("hello")))));
    }

    #[test]
    fn nesting_is_capped() {
        let nested = |depth: usize| {
            let mut v = b"*1\r\n".repeat(depth);
            v.extend_from_slice(b":1\r\n");
            v
        };
        assert!(matches!(parse(&nested(MAX_DEPTH)), Ok(Some(_))));
        assert_eq!(parse(&nested(MAX_DEPTH + 1)), Err(RespError::TooDeep));
        assert_eq!(parse(&b"*1\r\n".repeat(MAX_DEPTH + 1)), Err(RespError::TooDeep));
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"key", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4\r\na\r\nb\r\n");
        assert_eq!(command_len(&[b"SET", b"key", b"a\r\nb"]), out.len());
        for args in [&[][..], &[&b""[..]], &[&[7u8; 10][..], &[1; 100], &[2; 1000], &[3; 9]]] {
            let mut out = Vec::new();
            encode_command(&mut out, args);
            assert_eq!(command_len(args), out.len());
            let expected = args.iter().map(|a| Value::Bulk(Some(a.to_vec()))).collect();
            assert_eq!(parse(&out), Ok(Some((out.len(), Value::Array(Some(expected))))));
        }
    }

    #[test]
    fn values_encode_to_what_parses_back() {
        let v = Value::Array(Some(vec![
            Value::Simple("OK".into()),
            Value::Error("ERR x".into()),
            Value::Integer(-5),
            Value::Bulk(None),
            Value::Array(None),
            Value::Array(Some(vec![bulk("a\r\nb"), Value::Array(Some(vec![]))])),
        ]));
        let mut out = Vec::new();
        v.encode(&mut out);
        check(&out, v);
    }

    #[test]
    fn pipelined_replies_parse_one_after_another() {
        let input = b"+OK\r\n:1\r\n$1\r\na\r\n*1\r\n:2\r\n-ERR no\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((n, v)) = parse(&input[at..]).unwrap() {
            at += n;
            got.push(v);
        }
        assert_eq!(at, input.len());
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], Value::Error("ERR no".into()));
    }
}
