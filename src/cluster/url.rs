//! Where the cluster's Redis is: `redis://[user:password@]host:port[/db]` or
//! `redis+unix:///path[?db=N]`, parsed into a [`RedisTarget`]. The password never appears in
//! `Debug` or `Display` output, so a logged target cannot leak it.
use std::{fmt, path::PathBuf};

/// The default Redis port.
pub const DEFAULT_PORT: u16 = 6379;
/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Why a Redis URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `redis://` or `redis+unix://`.
    #[error("must start with redis:// or redis+unix://")]
    Scheme,
    /// Longer than 2048 bytes.
    #[error("longer than 2048 bytes")]
    TooLong,
    /// No host, or a bracketed IPv6 host not closed.
    #[error("no host")]
    Host,
    /// A port that is not a number from 1 to 65535.
    #[error("bad port")]
    Port,
    /// A database that is not a number.
    #[error("bad database number")]
    Db,
    /// A unix socket path that is not absolute.
    #[error("a unix socket path must be absolute")]
    Path,
    /// A percent escape that is not two hex digits or not UTF-8.
    #[error("bad percent escape")]
    Escape,
}

/// The address part of a target.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisAddr {
    /// A TCP host (name, IPv4 or IPv6 without brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket.
    Unix(PathBuf),
}

/// A parsed Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Where to connect.
    pub addr: RedisAddr,
    /// The ACL user (`AUTH user password`), if any.
    pub username: Option<String>,
    /// The password; kept out of every formatted output.
    pub password: Option<String>,
    /// The database to `SELECT` (0 is not selected explicitly).
    pub db: u32,
}

impl RedisTarget {
    /// Parses a URL.
    pub fn parse(url: &str) -> Result<RedisTarget, UrlError> {
        if url.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        if let Some(rest) = url.strip_prefix("redis+unix://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') {
                return Err(UrlError::Path);
            }
            let mut db = 0;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                if let Some(v) = pair.strip_prefix("db=") {
                    db = v.parse().map_err(|_| UrlError::Db)?;
                }
            }
            let path = decode(path)?;
            return Ok(RedisTarget {
                addr: RedisAddr::Unix(PathBuf::from(path)),
                username: None,
                password: None,
                db,
            });
        }
        let rest = url.strip_prefix("redis://").ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => {
                    let u = decode(u)?;
                    (if u.is_empty() { None } else { Some(u) }, Some(decode(p)?))
                }
                None => (Some(decode(info)?).filter(|u| !u.is_empty()), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(UrlError::Port),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), parse_port(p)?),
                None => (hostport.to_owned(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(UrlError::Host);
        }
        let db = if path.is_empty() { 0 } else { path.parse().map_err(|_| UrlError::Db)? };
        Ok(RedisTarget { addr: RedisAddr::Tcp { host, port }, username, password, db })
    }
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(UrlError::Port),
        Ok(n) => Ok(n),
    }
}

/// Percent-decodes a URL component.
fn decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(UrlError::Escape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::Escape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Escape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape)
}

impl fmt::Display for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            RedisAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            RedisAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Shows the target with the password replaced by `***`.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if matches!(self.addr, RedisAddr::Unix(_)) { "redis+unix" } else { "redis" };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        match &self.addr {
            RedisAddr::Unix(p) => write!(f, "{}", p.display())?,
            addr => write!(f, "{addr}")?,
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> RedisAddr {
        RedisAddr::Tcp { host: host.into(), port }
    }

    #[test]
    fn parses_the_documented_forms() {
        let t = RedisTarget::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((t.addr, t.username, t.password, t.db), (tcp("127.0.0.1", 6380), None, None, 0));
        let t = RedisTarget::parse("redis://chatd:s%40cret@redis.internal/2").unwrap();
        assert_eq!(t.addr, tcp("redis.internal", DEFAULT_PORT));
        assert_eq!(t.username.as_deref(), Some("chatd"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 2);
        let t = RedisTarget::parse("redis://:pw@[fd00::1]:7000").unwrap();
        assert_eq!(
            (t.addr, t.username, t.password.as_deref()),
            (tcp("fd00::1", 7000), None, Some("pw"))
        );
        let t = RedisTarget::parse("redis+unix:///run/redis/redis.sock?db=3").unwrap();
        assert_eq!(t.addr, RedisAddr::Unix("/run/redis/redis.sock".into()));
        assert_eq!(t.db, 3);
    }

    #[test]
    fn refuses_what_it_should() {
        for (url, e) in [
            ("http://x", UrlError::Scheme),
            ("redis://", UrlError::Host),
            ("redis://:6379", UrlError::Host),
            ("redis://h:0", UrlError::Port),
            ("redis://h:99999", UrlError::Port),
            ("redis://h:x", UrlError::Port),
            ("redis://[::1", UrlError::Host),
            ("redis://h/x", UrlError::Db),
            ("redis+unix://relative", UrlError::Path),
            ("redis://u:%zz@h", UrlError::Escape),
        ] {
            assert_eq!(RedisTarget::parse(url), Err(e), "{url}");
        }
        assert_eq!(RedisTarget::parse(&"x".repeat(3000)), Err(UrlError::TooLong));
    }

    #[test]
    fn the_password_is_never_shown() {
        let t = RedisTarget::parse("redis://chatd:hunter2@h:1/4").unwrap();
        assert_eq!(t.to_string(), "redis://chatd:***@h:1/4");
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
