//! Any bytes as `X-Forwarded-For` fields (split at `\n`) and as a `trusted_proxies` entry: no
//! panic; an untrusted peer's header is ignored; the address returned is never IPv4-mapped; a
//! network that parses prints back to itself and contains its own address.
#![no_main]
use std::net::IpAddr;

use chatd::http::{client_ip, Cidr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    // The first byte picks the trusted networks and whether the peer is IPv4-mapped.
    let nets = ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "2001:db8::/32"];
    let trusted: Vec<Cidr> = nets
        .iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, n)| n.parse().unwrap())
        .collect();
    let peer: IpAddr =
        if pick & 0x80 != 0 { "::ffff:127.0.0.1" } else { "127.0.0.1" }.parse().unwrap();
    let fields = || rest.split(|&b| b == b'\n');
    let ip = client_ip(peer, fields(), &trusted);
    assert!(!matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()), "{ip}");
    let stranger: IpAddr = "203.0.113.1".parse().unwrap();
    assert_eq!(client_ip(stranger, fields(), &trusted), stranger);
    if let Some(Ok(c)) = std::str::from_utf8(rest).ok().map(str::parse::<Cidr>) {
        assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        assert!(c.contains(c.addr()));
    }
});
