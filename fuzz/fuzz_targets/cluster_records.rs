//! Any bytes as a message on a worker's Redis channel (what other workers publish: matches,
//! lines, leaves, resume requests, handovers with their JSON body): no panic, and the events
//! they make, given to a clustered roulette with people connected and a resume waiting, leave
//! it working through its timers.
#![no_main]
use std::time::{Duration, Instant};

use chatd::{
    app::{App, Event, PeerId},
    cluster::Node,
    roulette::{ChatConfig, Roulette},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let worker = String::from("a/0/1");
    let mut node = Node::new("chatd", worker.clone(), Duration::from_secs(5), Duration::ZERO);
    let mut r = Roulette::clustered(ChatConfig::default(), worker);
    let mut out = Vec::new();
    node.handle_up(now);
    while let Some(e) = node.poll_event() {
        r.handle_cluster_event(now, e, &mut out);
    }
    for slot in 0..4 {
        let client = chatd::safety::AddrHash::from_bytes([slot as u8; 16]);
        r.handle_event(now, PeerId::new(0, 0, slot), Event::Open { client }, &mut out);
    }
    let resume = r#"{"type":"resume","token":"000102030405060708090a0b0c0d0e0f"}"#;
    r.handle_event(now, PeerId::new(0, 0, 0), Event::Text(resume), &mut out);
    r.handle_event(now, PeerId::new(0, 0, 1), Event::Text(r#"{"type":"search"}"#), &mut out);
    node.handle_message(data);
    while let Some(e) = node.poll_event() {
        r.handle_cluster_event(now, e, &mut out);
    }
    for slot in 0..4 {
        r.handle_event(now, PeerId::new(0, 0, slot), Event::Closed { dropped: slot % 2 == 0 }, &mut out);
    }
    r.handle_timeout(now + Duration::from_secs(60), &mut out);
    while let Some(op) = r.poll_cluster_op() {
        node.handle_op(op);
    }
});
