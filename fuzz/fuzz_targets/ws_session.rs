//! Any byte stream, cut at fuzzer-chosen points, given to a WebSocket session as a connection
//! would: no panic, text is always valid UTF-8, and no message exceeds the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut session = chatd::ws::Session::new(MAX);
    let mut buf = Vec::new();
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match session.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some((n, event))) => {
                    match event {
                        Some(chatd::ws::Incoming::Text(t)) => assert!(t.len() <= MAX),
                        Some(chatd::ws::Incoming::Binary(b)) => assert!(b.len() <= MAX),
                        _ => {}
                    }
                    assert!(n <= buf.len());
                    buf.drain(..n);
                }
                Err(_) => return,
            }
        }
    }
});
