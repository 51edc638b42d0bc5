//! Any text, as a chat client's message (reports, blocks and proofs of work included), given to
//! the roulette: no panic, and every answer is valid JSON.
#![no_main]
use std::time::Instant;

use chatd::{
    app::{Action, App, Event, Message, PeerId},
    config::ChatConfig,
    roulette::Roulette,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = Instant::now();
    // Every third input with the proof of work on, so that `pow` fields are checked too.
    let mut config = ChatConfig::default();
    if data.len() % 3 == 0 {
        config.safety.pow = chatd::safety::Pow::Bits(4);
    }
    let mut app = Roulette::new(config);
    let (a, b) = (PeerId::new(0, 0, 1), PeerId::new(0, 0, 2));
    let mut out = Vec::new();
    // One address for both: its search budget is shared.
    let client = chatd::safety::AddrHash::from_bytes([1; 16]);
    app.handle_event(now, a, Event::Open { client }, &mut out);
    app.handle_event(now, b, Event::Open { client }, &mut out);
    app.handle_event(now, a, Event::Text(r#"{"type":"search"}"#), &mut out);
    app.handle_event(now, b, Event::Text(r#"{"type":"search"}"#), &mut out);
    for line in text.split('\n') {
        app.handle_event(now, a, Event::Text(line), &mut out);
    }
    // A drop (the session waits, then its window passes) or a close.
    app.handle_event(now, a, Event::Closed { dropped: data.len() % 2 == 0 }, &mut out);
    app.handle_timeout(now + std::time::Duration::from_secs(60), &mut out);
    for action in out {
        if let Action::Send { message: Message::Text(t), .. } | Action::Broadcast { text: t } = action {
            assert!(serde_json::from_str::<serde_json::Value>(&t).is_ok(), "{t}");
        }
    }
});
