//! A client's address as chatd keeps it: HMAC-SHA256 under a key that lives in memory (or in
//! `address_key_file`, so that every node of a cluster agrees), cut to 128 bits. The address
//! itself is dropped after hashing; logs print a short prefix of the hash.
//!
//! IPv6 clients are grouped by their /64 (one subscriber's whole prefix is one person as far
//! as limits and bans go), and an IPv4-mapped IPv6 address counts as the IPv4 address.
//!
//! Owns: the key and the hash. May not touch: sockets, the configuration's other keys.
use std::{fmt, net::IpAddr, path::Path};

use sha2::{Digest, Sha256};

/// Shortest key file accepted, in bytes (128 bits of secret).
pub const MIN_KEY_BYTES: usize = 16;
/// Longest key file read.
const MAX_KEY_FILE: u64 = 4096;

/// The secret behind every address hash, with its HMAC state made once.
#[derive(Clone)]
pub struct AddressKey {
    secret: [u8; 32],
    hmac: Hmac,
}

impl PartialEq for AddressKey {
    fn eq(&self, other: &AddressKey) -> bool {
        self.secret == other.secret
    }
}

impl Eq for AddressKey {}

impl fmt::Debug for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressKey(..)")
    }
}

/// Why `address_key_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// It cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error("{0} must be readable only by its owner (chmod 600)")]
    Mode(String),
    /// Too short or too long.
    #[error("{0} must hold {MIN_KEY_BYTES} to 4096 bytes of secret (e.g. `head -c 32 /dev/urandom | base64`)")]
    Size(String),
}

impl AddressKey {
    /// A key of 256 random bits from the kernel: hashes are comparable within this process
    /// (and the workers it forks) only.
    pub fn random() -> AddressKey {
        let mut k = [0u8; 32];
        crate::roulette::os_random(&mut k);
        AddressKey::new(k)
    }

    fn new(secret: [u8; 32]) -> AddressKey {
        AddressKey { secret, hmac: Hmac::new(&secret) }
    }

    /// The key of `path`: whatever it holds (at least [`MIN_KEY_BYTES`], mode 600), hashed to
    /// 256 bits, so that every node given the same file makes the same hashes.
    pub fn from_file(path: &Path) -> Result<AddressKey, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let name = path.display().to_string();
        let read = |source| KeyError::Read { path: name.clone(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Mode(name));
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(KeyError::Size(name));
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Size(name));
        }
        Ok(AddressKey::new(Sha256::digest(secret).into()))
    }

    /// The hash that stands for `ip`.
    pub fn hash(&self, ip: IpAddr) -> AddrHash {
        let mut group = [0u8; 9];
        let len = match ip.to_canonical() {
            IpAddr::V4(v4) => {
                group[0] = 4;
                group[1..5].copy_from_slice(&v4.octets());
                5
            }
            IpAddr::V6(v6) => {
                group[0] = 6;
                group[1..9].copy_from_slice(&v6.octets()[..8]);
                9
            }
        };
        let mac = self.hmac.mac(&group[..len]);
        let mut h = [0u8; 16];
        h.copy_from_slice(&mac[..16]);
        AddrHash(h)
    }
}

/// A client address as chatd keeps it. `Display` writes the 32 hex digits; [`AddrHash::short`]
/// the first 8, for logs.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrHash([u8; 16]);

impl AddrHash {
    /// A hash from its bytes (tests, fuzzing, one made elsewhere).
    pub fn from_bytes(bytes: [u8; 16]) -> AddrHash {
        AddrHash(bytes)
    }

    /// A hash from its 32 hex digits (as `Display` writes it, and as the cluster carries it).
    pub fn parse(hex: &str) -> Option<AddrHash> {
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(AddrHash(out))
    }

    /// The first 32 bits in hex: enough to follow one client through a log, useless to find it.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for AddrHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for AddrHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AddrHash({})", self.short())
    }
}

/// HMAC-SHA256 (RFC 2104) for keys of at most one block (64 bytes). The two padded key blocks
/// are absorbed once, with the key: a MAC (one per connection) then costs two SHA-256
/// compressions and no allocation.
#[derive(Clone)]
struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl Hmac {
    fn new(key: &[u8]) -> Hmac {
        debug_assert!(key.len() <= 64);
        let mut pad = [0u8; 64];
        pad[..key.len()].copy_from_slice(key);
        let padded = |x: u8| pad.map(|b| b ^ x);
        Hmac {
            inner: Sha256::new().chain_update(padded(0x36)),
            outer: Sha256::new().chain_update(padded(0x5c)),
        }
    }

    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let inner = self.inner.clone().chain_update(message).finalize();
        self.outer.clone().chain_update(inner).finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex(&Hmac::new(b"Jefe").mac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 1.
        assert_eq!(
            hex(&Hmac::new(&[0x0b; 20]).mac(b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let k = AddressKey::new([7; 32]);
        let h = |s: &str| k.hash(s.parse().unwrap());
        assert_eq!(h("2001:db8:1:2::1"), h("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(h("2001:db8:1:2::1"), h("2001:db8:1:3::1"));
        assert_eq!(h("::ffff:192.0.2.1"), h("192.0.2.1"));
        assert_ne!(h("192.0.2.1"), h("192.0.2.2"));
        // Another key, other hashes; the short form is 8 hex digits of the full one.
        assert_ne!(AddressKey::new([8; 32]).hash("192.0.2.1".parse().unwrap()), h("192.0.2.1"));
        let full = h("192.0.2.1").to_string();
        assert_eq!(full.len(), 32);
        assert_eq!(h("192.0.2.1").short(), full[..8]);
        assert_eq!(format!("{k:?}"), "AddressKey(..)");
    }

    #[test]
    fn key_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("chatd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(AddressKey::from_file(&file), Err(KeyError::Mode(_))));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = AddressKey::from_file(&file).unwrap();
        // The same file on another node: the same key (the trailing newline does not count).
        std::fs::write(&file, "0123456789abcdef0123").unwrap();
        assert_eq!(AddressKey::from_file(&file).unwrap(), a);
        std::fs::write(&file, "short").unwrap();
        assert!(matches!(AddressKey::from_file(&file), Err(KeyError::Size(_))));
        assert!(matches!(AddressKey::from_file(&dir.join("none")), Err(KeyError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
