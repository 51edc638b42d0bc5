//! Any bytes given to the frame header parser: no panic; a parsed header never claims more
//! header bytes than it was given, and control frames obey their limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, n))) = chatd::ws::parse_header(data) {
        assert!(n <= data.len() && n <= 14);
        if h.opcode.is_control() {
            assert!(h.fin && h.len <= 125);
        }
    }
});
