//! Any bytes given to the RESP parser, consumed value after value as a link does: no panic;
//! each value consumes at least one byte and no more than it was given; every prefix of a
//! parsed value is incomplete; a parsed value encodes to RESP2 that parses back to itself.
#![no_main]
use chatd::cluster::resp::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((n, v))) = parse(&data[at..]) {
        assert!(n >= 3 && n <= data.len() - at);
        // Prefixes of small values only: checking them all is quadratic.
        if n <= 256 {
            for i in 0..n {
                assert_eq!(parse(&data[at..at + i]), Ok(None));
            }
        }
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(parse(&out), Ok(Some((out.len(), v))));
        at += n;
    }
});
