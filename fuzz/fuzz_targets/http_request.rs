//! Any bytes given to the request parser: no panic, and a complete request never claims more
//! bytes than it was given or than the head limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((n, req))) = chatd::http::parse(data) {
        assert!(n <= data.len() && n <= chatd::http::MAX_HEAD_LEN);
        let _ = chatd::http::resolve_path(req.path());
        let _ = chatd::ws::validate_upgrade(&req, &[]);
    }
});
