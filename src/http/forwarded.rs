//! The client behind a reverse proxy: `X-Forwarded-For` read from the right and believed only as
//! far as the chain of trusted proxies goes. Sans-IO: an address and header bytes in, one address
//! out, nothing allocated.
//!
//! Each proxy appends the address it was connected from, so the list reads
//! `client, proxy1, proxy2` and the TCP peer is the last proxy. Anything left of the first
//! address a trusted proxy vouches for was written by the client and may be forged, so the walk
//! goes from the right and stops at the first entry that is not itself a trusted proxy
//! (the approach of nginx's `real_ip_recursive` and Caddy's `trusted_proxies`).
//!
//! Owns: judging X-Forwarded-For against trusted proxies. May not touch: sockets, config files.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// Most `X-Forwarded-For` entries examined, counted from the right. A longer chain whose last
/// entries are all trusted proxies is not followed further: the request is judged by the TCP
/// peer. Real deployments have one to three proxies.
pub const MAX_FORWARDED_ENTRIES: usize = 32;

/// Longest entry parsed: `[` + 45 characters of IPv6 text + `]:65535` is 53 bytes.
const MAX_ENTRY_LEN: usize = 64;

/// Why a `trusted_proxies` entry is not a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before any `/` is not an IPv4 or IPv6 address.
    #[error("not an IP address or network such as \"10.0.0.0/8\" or \"fd00::/8\"")]
    BadAddress,
    /// The part after `/` is not a number from 0 to the family's width.
    #[error("the prefix length must be a number from 0 to {max}")]
    BadPrefix {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Bits below the prefix are set (`10.0.0.1/8`): a typo or a misunderstanding, refused
    /// rather than guessed at.
    #[error("host bits are set (the network is {0})")]
    HostBits(Cidr),
}

/// An IPv4 or IPv6 network: an address and a prefix length. A single address has the full
/// length (32 or 128).
///
/// Invariants: the bits below the prefix are zero, and an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as its IPv4 form (`10.0.0.0/8`), so that it matches the
/// normalised addresses [`Cidr::contains`] compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`. Fails if the prefix is longer than the family allows or host
    /// bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let max = width(addr);
        if prefix > max {
            return Err(CidrError::BadPrefix { max });
        }
        let net = Cidr { addr: network(addr, prefix), prefix };
        if net.addr != addr {
            return Err(CidrError::HostBits(net));
        }
        Ok(net)
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        width(ip) == width(self.addr) && network(ip, self.prefix) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `"10.1.2.3"`, `"10.0.0.0/8"`, `"::1"`, `"fd00::/8"`.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress)?;
        let max = width(addr);
        let prefix = match prefix {
            None => max,
            // Digits only: u8's parser would take "+8".
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| CidrError::BadPrefix { max })?
            }
            Some(_) => return Err(CidrError::BadPrefix { max }),
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    /// A single address without a prefix, a network as `addr/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == width(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// 32 or 128.
fn width(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with every bit below `prefix` cleared (`prefix` at most the family's width).
pub(crate) fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Whether `ip` belongs to one of the `trusted` networks.
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The address a request is judged by: the TCP `peer`, or, when the peer is a `trusted` proxy,
/// the client its `X-Forwarded-For` names.
///
/// `forwarded_for` yields the value of every `X-Forwarded-For` field of the request, in order;
/// they are read as one comma-separated list (RFC 9110 §5.3), empty elements skipped. Walking
/// from the right, trusted proxies are passed over and the first other address is the client.
/// Then:
/// - an untrusted peer: its header is ignored, whatever it says;
/// - a trusted peer without the header, or one whose entries are all trusted: the left-most
///   entry (a request the proxies made themselves), or the peer if there is none;
/// - an entry that is not an address (`unknown`, an obfuscated RFC 7239 name, garbage) reached
///   before any untrusted address: the request is judged as coming from the peer itself, the
///   proxy, since nobody vouches for a client (it is still served);
/// - more than [`MAX_FORWARDED_ENTRIES`] entries, the right-most of which are all trusted: the
///   peer as well.
///
/// Entries may be bare addresses, `[v6]`, `[v6]:port` or `v4:port`. Every address returned is
/// normalised: an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) becomes plain IPv4.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // One pass over the fields keeps the right-most entries as slices in a ring on the stack: the
    // fields come in order, the walk needs them backwards, and nothing is allocated.
    let mut last: [&[u8]; MAX_FORWARDED_ENTRIES] = [&[]; MAX_FORWARDED_ENTRIES];
    let mut seen = 0usize;
    for value in forwarded_for {
        for entry in value.split(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if !entry.is_empty() {
                last[seen % MAX_FORWARDED_ENTRIES] = entry;
                seen += 1;
            }
        }
    }
    let mut leftmost = peer;
    for back in 1..=seen.min(MAX_FORWARDED_ENTRIES) {
        match parse_entry(last[(seen - back) % MAX_FORWARDED_ENTRIES]) {
            None => return peer,
            Some(ip) if is_trusted(ip, trusted) => leftmost = ip,
            Some(ip) => return ip,
        }
    }
    if seen > MAX_FORWARDED_ENTRIES {
        return peer;
    }
    leftmost
}

/// One list element: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:80`, normalised. `None` for anything else.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    if entry.len() > MAX_ENTRY_LEN {
        return None;
    }
    let s = std::str::from_utf8(entry).ok()?;
    let ip = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = s.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(ip.to_canonical())
}

fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok_and(|p| p <= 65535)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// `client_ip` with the header fields given as strings.
    fn client(peer: &str, fields: &[&str], trusted: &[&str]) -> IpAddr {
        client_ip(ip(peer), fields.iter().map(|f| f.as_bytes()), &nets(trusted))
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!((c.addr(), c.prefix()), (ip("10.0.0.0"), 8));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!((c.prefix(), c.to_string().as_str()), (32, "127.0.0.1"));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert_eq!((c.prefix(), c.to_string().as_str()), (8, "fd00::/8"));
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix(), 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix(), 0);
        // IPv4-mapped networks are stored as IPv4.
        assert_eq!("::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("::ffff:127.0.0.1".parse::<Cidr>().unwrap().to_string(), "127.0.0.1");
    }

    #[test]
    fn cidr_errors() {
        for bad in ["", "localhost", "10.0.0", "10.0.0.0.0", "[::1]", "fe80::1%eth0"] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::BadAddress), "{bad:?}");
        }
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
        ] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::BadPrefix { max: 32 }), "{bad:?}");
        }
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::BadPrefix { max: 128 }));
        assert_eq!("::/0129".parse::<Cidr>(), Err(CidrError::BadPrefix { max: 128 }));
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(e, CidrError::HostBits("10.0.0.0/8".parse().unwrap()));
        assert_eq!(e.to_string(), "host bits are set (the network is 10.0.0.0/8)");
        assert!(matches!("fd00::1/8".parse::<Cidr>(), Err(CidrError::HostBits(_))));
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.0.0.0")) && c.contains(ip("10.255.255.255")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "mapped addresses are IPv4");
        assert!(!c.contains(ip("11.0.0.0")) && !c.contains(ip("9.255.255.255")));
        assert!(!c.contains(ip("::a01:203")), "IPv4-compatible is not mapped");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:ffff::1")) && !c.contains(ip("2001:db9::")));
        assert!(!c.contains(ip("32.1.13.184")), "no family confusion");
        let any4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any4.contains(ip("1.2.3.4")) && !any4.contains(ip("::1")));
        let any6: Cidr = "::/0".parse().unwrap();
        assert!(any6.contains(ip("::1")) && !any6.contains(ip("1.2.3.4")));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
    }

    /// Every prefix length of both families: the network of an address contains it, and the
    /// address just past the network does not.
    #[test]
    fn every_prefix_length() {
        let a4 = ip("203.0.113.77");
        for p in 0..=32u8 {
            let c = Cidr::new(network(a4, p), p).unwrap();
            assert!(c.contains(a4), "{c}");
            let IpAddr::V4(first) = c.addr() else { unreachable!() };
            let past = u64::from(u32::from(first)) + (1u64 << (32 - p));
            if let Ok(past) = u32::try_from(past) {
                assert!(!c.contains(IpAddr::V4(past.into())), "{c} {past}");
            }
            if let Some(before) = u32::from(first).checked_sub(1) {
                assert!(!c.contains(IpAddr::V4(before.into())), "{c} {before}");
            }
        }
        let a6 = ip("2001:db8:1234:5678:9abc:def0:1357:2468");
        for p in 0..=128u8 {
            let c = Cidr::new(network(a6, p), p).unwrap();
            assert!(c.contains(a6), "{c}");
            assert_eq!(c.to_string().parse::<Cidr>(), Ok(c), "round trip");
        }
    }

    #[test]
    fn untrusted_peer_is_judged_by_itself() {
        // Spoofing: a client connecting directly says it is somebody else.
        assert_eq!(client("203.0.113.9", &["10.1.2.3"], &[]), ip("203.0.113.9"));
        assert_eq!(client("203.0.113.9", &["127.0.0.1"], &["127.0.0.1"]), ip("203.0.113.9"));
        assert_eq!(client("203.0.113.9", &["10.1.2.3"], &["10.0.0.0/8"]), ip("203.0.113.9"));
        assert_eq!(client("203.0.113.9", &[], &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_names_the_client() {
        let t = &["127.0.0.1"];
        assert_eq!(client("127.0.0.1", &["10.1.2.3"], t), ip("10.1.2.3"));
        assert_eq!(client("127.0.0.1", &[" 10.1.2.3 "], t), ip("10.1.2.3"));
        // Without the header the proxy made the request itself.
        assert_eq!(client("127.0.0.1", &[], t), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", &[""], t), ip("127.0.0.1"));
        assert_eq!(client("127.0.0.1", &[" , ,"], t), ip("127.0.0.1"));
    }

    #[test]
    fn forged_entries_left_of_the_client_are_ignored() {
        // The client sent `X-Forwarded-For: 127.0.0.1, 10.0.0.1`; the proxy appended its address.
        let t = &["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(
            client("127.0.0.1", &["127.0.0.1, 10.0.0.1, 198.51.100.7"], t),
            ip("198.51.100.7")
        );
        assert_eq!(client("127.0.0.1", &["garbage, 198.51.100.7"], t), ip("198.51.100.7"));
        // A proxy that adds a field of its own instead of appending.
        assert_eq!(client("127.0.0.1", &["127.0.0.1", "198.51.100.7"], t), ip("198.51.100.7"));
    }

    #[test]
    fn chains_of_proxies() {
        let t = &["127.0.0.1", "10.0.0.0/8", "fd00::/8"];
        // client -> CDN (10.9.9.9) -> load balancer (10.0.0.2) -> Caddy (127.0.0.1) -> chatd
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, 10.9.9.9, 10.0.0.2"], t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7", "10.9.9.9", "10.0.0.2"], t),
            ip("198.51.100.7"),
            "several fields are one list, in order"
        );
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7,10.9.9.9", "fd00::5"], t),
            ip("198.51.100.7")
        );
        // The right-most untrusted address wins, not the left-most.
        assert_eq!(client("127.0.0.1", &["1.1.1.1, 2.2.2.2, 10.0.0.2"], t), ip("2.2.2.2"));
        // Every entry trusted: the left-most is where the request started.
        assert_eq!(client("127.0.0.1", &["10.0.0.7, 10.0.0.2"], t), ip("10.0.0.7"));
        // A proxy in the chain that is not trusted is the client, as far as we can tell.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, 203.0.113.1, 10.0.0.2"], t),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let t = &["::1", "127.0.0.1", "2001:db8::/64"];
        assert_eq!(client("::1", &["2001:db8:1::1"], t), ip("2001:db8:1::1"));
        assert_eq!(client("::1", &["[2001:db8:1::1]:4711"], t), ip("2001:db8:1::1"));
        assert_eq!(client("::1", &["[2001:db8:1::1]"], t), ip("2001:db8:1::1"));
        assert_eq!(client("::1", &["2001:db8:1::1, 2001:db8::9"], t), ip("2001:db8:1::1"));
        assert_eq!(client("2001:db8::2", &["198.51.100.7"], t), ip("198.51.100.7"));
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; entries may be written so.
        assert_eq!(client("::ffff:127.0.0.1", &["10.1.2.3"], t), ip("10.1.2.3"));
        assert_eq!(client("::ffff:127.0.0.1", &["::ffff:10.1.2.3"], t), ip("10.1.2.3"));
        assert_eq!(client("::ffff:203.0.113.9", &["10.1.2.3"], t), ip("203.0.113.9"));
        assert_eq!(client("::ffff:203.0.113.9", &[], &[]), ip("203.0.113.9"));
        assert_eq!(client("127.0.0.1", &["::ffff:127.0.0.1, 198.51.100.7"], t), ip("198.51.100.7"));
        assert_eq!(client("127.0.0.1", &["198.51.100.7:5000"], t), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_is_judged_as_the_proxy() {
        let t = &["127.0.0.1", "10.0.0.0/8"];
        for bad in [
            "unknown",
            "_hidden",
            "for=198.51.100.7",
            "198.51.100.7 198.51.100.8",
            "198.51.100",
            "198.51.100.7:",
            "198.51.100.7:65536",
            "198.51.100.7:+80",
            "198.51.100.7:80:80",
            "[198.51.100.7]",
            "2001:db8::1:80]",
            "[2001:db8::1",
            "[2001:db8::1]80",
            "[2001:db8::1]:",
            "fe80::1%eth0",
            "\u{e9}",
            "\"198.51.100.7\"",
        ] {
            assert_eq!(client("127.0.0.1", &[bad], t), ip("127.0.0.1"), "{bad:?}");
            // ... also behind a trusted hop, and whatever is left of it.
            let chain = format!("198.51.100.9, {bad}, 10.0.0.2");
            assert_eq!(client("127.0.0.1", &[&chain], t), ip("127.0.0.1"), "{chain:?}");
        }
        assert_eq!(client("127.0.0.1", &[&"1".repeat(MAX_ENTRY_LEN + 1)], t), ip("127.0.0.1"));
        let bytes: &[&[u8]] = &[b"\xff\xfe, 10.0.0.2"];
        assert_eq!(client_ip(ip("127.0.0.1"), bytes.iter().copied(), &nets(t)), ip("127.0.0.1"));
    }

    #[test]
    fn at_most_max_entries_are_examined() {
        let t = &["10.0.0.0/8"];
        let trusted_hops =
            |n: usize| (0..n).map(|i| format!("10.0.0.{}", i % 250)).collect::<Vec<_>>().join(",");
        // Exactly the limit: the client just left of it is found.
        let at = format!("198.51.100.7,{}", trusted_hops(MAX_FORWARDED_ENTRIES - 1));
        assert_eq!(client("10.0.0.1", &[&at], t), ip("198.51.100.7"));
        // One trusted hop more and the client is beyond the limit: judged as the peer.
        let past = format!("198.51.100.7,{}", trusted_hops(MAX_FORWARDED_ENTRIES));
        assert_eq!(client("10.0.0.1", &[&past], t), ip("10.0.0.1"));
        // Spread over fields, the ring buffer still sees the right-most entries.
        let fields: Vec<String> = (0..100).map(|i| format!("10.0.1.{i}")).collect();
        let mut refs: Vec<&str> = vec!["198.51.100.7"];
        refs.extend(fields.iter().map(String::as_str));
        assert_eq!(client("10.0.0.1", &refs, t), ip("10.0.0.1"));
        let refs = [&refs[..50], &["203.0.113.5"], &refs[50..70]].concat();
        assert_eq!(client("10.0.0.1", &refs, t), ip("203.0.113.5"));
        // Thousands of empty elements cost nothing and count for nothing.
        let commas = ",".repeat(10_000) + "198.51.100.7" + &",".repeat(10_000);
        assert_eq!(client("10.0.0.1", &[&commas], t), ip("198.51.100.7"));
    }
}
