//! The operator's ban list (`ban_file`): one address or network per line (`192.0.2.7`,
//! `198.51.100.0/24`, `2001:db8::/48`), `#` starts a comment, blank lines are fine. A request
//! from a listed address is refused at the WebSocket upgrade with 403.
//!
//! Lookup costs one hash probe per distinct prefix length in the list (a few), however long the
//! list is. A line that is not an address or network is an error naming the file and the line,
//! and the whole file is refused (a reload then keeps the list it had).
//!
//! Owns: parsing and matching the list. May not touch: sockets.
use std::{
    collections::{BTreeSet, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use crate::http::{forwarded::network, Cidr};

/// Most entries a list may hold.
pub const MAX_BANS: usize = 1_000_000;
/// Largest file read.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A parsed ban list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanList {
    nets: HashSet<Cidr>,
    /// The prefix lengths in use, per family (`true`: IPv6).
    prefixes: BTreeSet<(bool, u8)>,
}

/// Why a ban file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanError {
    /// The file.
    pub file: String,
    /// The line (from 1), when one line is to blame.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for BanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{}:{n}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for BanError {}

impl BanList {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<BanList, BanError> {
        let file = path.display().to_string();
        let fail = |message: String| BanError { file: file.clone(), line: None, message };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        BanList::parse(&text, &file)
    }

    /// Parses the text of a ban file called `file` (for errors).
    pub fn parse(text: &str, file: &str) -> Result<BanList, BanError> {
        let mut list = BanList::default();
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let fail =
                |message: String| BanError { file: file.to_owned(), line: Some(i + 1), message };
            let net: Cidr = entry.parse().map_err(|e| fail(format!("`{entry}`: {e}")))?;
            if list.nets.len() == MAX_BANS {
                return Err(fail(format!("more than {MAX_BANS} entries")));
            }
            list.prefixes.insert((net.addr().is_ipv6(), net.prefix()));
            list.nets.insert(net);
        }
        Ok(list)
    }

    /// Whether `ip` is listed (itself or a network holding it). IPv4-mapped IPv6 addresses
    /// count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.prefixes.iter().filter(|&&(v6, _)| v6 == ip.is_ipv6()).any(|&(_, prefix)| {
            Cidr::new(network(ip, prefix), prefix).is_ok_and(|net| self.nets.contains(&net))
        })
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_networks_of_both_families_with_comments() {
        let list = BanList::parse(
            "# spammers\n192.0.2.7\n\n198.51.100.0/24   # a whole range\n2001:db8::/48\n  ::ffff:203.0.113.9  \n",
            "bans",
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        for banned in [
            "192.0.2.7",
            "198.51.100.0",
            "198.51.100.255",
            "2001:db8:0:ffff::1",
            "203.0.113.9",
            "::ffff:192.0.2.7",
        ] {
            assert!(list.contains(ip(banned)), "{banned}");
        }
        for free in ["192.0.2.8", "198.51.101.1", "2001:db8:1::1", "::1", "127.0.0.1"] {
            assert!(!list.contains(ip(free)), "{free}");
        }
        assert!(BanList::parse("# nothing\n\n", "bans").unwrap().is_empty());
    }

    #[test]
    fn a_bad_line_names_the_file_and_the_line() {
        let e = BanList::parse("192.0.2.7\nexample.com\n", "/etc/chatd/bans").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().starts_with("/etc/chatd/bans:2: `example.com`"), "{e}");
        let e = BanList::parse("10.0.0.1/8", "b").unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
        let e = BanList::load(Path::new("/nonexistent/bans")).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("/nonexistent/bans", None));
    }
}
