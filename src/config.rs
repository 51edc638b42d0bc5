//! Configuration: `chatd.toml` -> [`FileConfig`] (serde, every key optional, unknown keys refused)
//! -> [`Config`] (defaults applied, values checked). The rest of the program sees only `Config`.
//!
//! Owns: reading, checking and defaulting the configuration file. May not touch: anything
//! that runs (it is read at start, by `-t` and on reload).
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};

pub use crate::roulette::ChatConfig;
use crate::{
    cluster::RedisTarget,
    http::Cidr,
    safety::{ledger::MAX_BITS, AddressKey, BanList, Pow, Rules},
};

/// Most entries `trusted_proxies` may list: each request from a proxy is checked against every
/// one, for each `X-Forwarded-For` entry examined.
pub const MAX_TRUSTED_PROXIES: usize = 256;

/// Everything that can go wrong while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A key has a value outside its allowed range.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// The key, dotted for tables (`chat.max_message_chars`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A duration written as `"250ms"`, `"5s"`, `"2m"`, `"1h"` or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\", \"2m\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| ConfigDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Duration::try_from_secs_f64(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` (an integer and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("`{s}` is not a duration such as \"500ms\" or \"5s\""))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    };
    Ok(d)
}

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen`
    pub listen: Option<SocketAddr>,
    /// `log_level`
    pub log_level: Option<LogLevel>,
    /// `web_root`
    pub web_root: Option<PathBuf>,
    /// `allowed_origins`
    pub allowed_origins: Option<Vec<String>>,
    /// `max_connections`
    pub max_connections: Option<usize>,
    /// `max_message_bytes`
    pub max_message_bytes: Option<usize>,
    /// `max_outbound_bytes`
    pub max_outbound_bytes: Option<usize>,
    /// `handshake_timeout`
    pub handshake_timeout: Option<ConfigDuration>,
    /// `idle_timeout`
    pub idle_timeout: Option<ConfigDuration>,
    /// `ping_timeout`
    pub ping_timeout: Option<ConfigDuration>,
    /// `shutdown_timeout`
    pub shutdown_timeout: Option<ConfigDuration>,
    /// `metrics_allow`
    pub metrics_allow: Option<Vec<IpAddr>>,
    /// `trusted_proxies`: addresses or networks, parsed into [`Cidr`]s by [`Config::from_file`].
    pub trusted_proxies: Option<Vec<String>>,
    /// `daemon`
    pub daemon: Option<bool>,
    /// `pid_file`
    pub pid_file: Option<PathBuf>,
    /// `user`
    pub user: Option<String>,
    /// `group`
    pub group: Option<String>,
    /// `log_file`
    pub log_file: Option<PathBuf>,
    /// `log_format`
    pub log_format: Option<LogFormat>,
    /// The `[chat]` table.
    pub chat: Option<FileChatConfig>,
    /// `workers`: a number or `"auto"`.
    pub workers: Option<FileWorkers>,
    /// The `[cluster]` table.
    pub cluster: Option<FileClusterConfig>,
    /// The `[safety]` table.
    pub safety: Option<FileSafetyConfig>,
}

/// The `[safety]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSafetyConfig {
    /// `safety.max_connections_per_address`
    pub max_connections_per_address: Option<usize>,
    /// `safety.ban_file`
    pub ban_file: Option<PathBuf>,
    /// `safety.address_key_file`
    pub address_key_file: Option<PathBuf>,
    /// `safety.address_search_burst`
    pub address_search_burst: Option<u32>,
    /// `safety.address_searches_per_second`
    pub address_searches_per_second: Option<f64>,
    /// `safety.report_threshold`
    pub report_threshold: Option<u32>,
    /// `safety.report_window`
    pub report_window: Option<ConfigDuration>,
    /// `safety.ban_duration`
    pub ban_duration: Option<ConfigDuration>,
    /// `safety.block_duration`
    pub block_duration: Option<ConfigDuration>,
    /// `safety.spam_partners`
    pub spam_partners: Option<u32>,
    /// `safety.spam_window`
    pub spam_window: Option<ConfigDuration>,
    /// `safety.spam_min_chars`
    pub spam_min_chars: Option<usize>,
    /// `safety.pow_bits`: a number or `"auto"`.
    pub pow_bits: Option<FilePowBits>,
    /// `safety.pow_auto_rate`
    pub pow_auto_rate: Option<f64>,
    /// `safety.pardon`
    pub pardon: Option<Vec<String>>,
}

/// `pow_bits = N` or `pow_bits = "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FilePowBits {
    /// Leading zero bits; 0 is off.
    Bits(u8),
    /// `"auto"`.
    Named(WorkersAuto),
}

/// The `[safety]` table, checked, with the ban file and the key file read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SafetyConfig {
    /// WebSockets one address (an IPv6 /64) may hold at once; one more gets 429. Default 8;
    /// 0: no limit.
    pub max_connections_per_address: usize,
    /// The ban list's file (re-read on reload). Default none.
    pub ban_file: Option<PathBuf>,
    /// The addresses and networks refused with 403 at the upgrade.
    pub bans: BanList,
    /// A file holding the secret that address hashes are keyed with, so that every node agrees.
    /// Default none: a random key per start.
    pub address_key_file: Option<PathBuf>,
    /// The key read from `address_key_file`.
    pub address_key: Option<AddressKey>,
}

/// `workers = N` or `workers = "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FileWorkers {
    /// A count.
    Count(u32),
    /// `"auto"`: one per core.
    Named(WorkersAuto),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkersAuto {
    /// One worker per core.
    Auto,
}

/// The `[cluster]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterConfig {
    /// `cluster.redis`
    pub redis: Option<String>,
    /// `cluster.node`
    pub node: Option<String>,
    /// `cluster.prefix`
    pub prefix: Option<String>,
    /// `cluster.password_file`
    pub password_file: Option<PathBuf>,
}

/// The `[chat]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChatConfig {
    /// `chat.max_message_chars`
    pub max_message_chars: Option<usize>,
    /// `chat.rate_per_second`
    pub rate_per_second: Option<f64>,
    /// `chat.rate_burst`
    pub rate_burst: Option<u32>,
    /// `chat.interest_timeout`
    pub interest_timeout: Option<ConfigDuration>,
    /// `chat.rematch_cooldown`
    pub rematch_cooldown: Option<ConfigDuration>,
    /// `chat.online_interval`
    pub online_interval: Option<ConfigDuration>,
    /// `chat.resume_window`
    pub resume_window: Option<ConfigDuration>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per record (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start, stop and notable events (the default).
    Info,
    /// Every connection and request.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The matching slog level.
    pub fn to_slog(self) -> slog::Level {
        match self {
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warn => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }
}

/// The validated configuration with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, absolute; `None` for built-in defaults.
    pub path: Option<PathBuf>,
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Log verbosity. Default `info`.
    pub log_level: LogLevel,
    /// A folder served instead of the page embedded in the binary. Default: none.
    pub web_root: Option<PathBuf>,
    /// Origins (`scheme://host[:port]`) allowed to open a WebSocket besides the request's own
    /// `Host`. Default: none.
    pub allowed_origins: Vec<String>,
    /// Open connections (HTTP and WebSocket) at most; more get 503. Default 10,000.
    pub max_connections: usize,
    /// Largest WebSocket frame or message accepted; larger ones close with 1009. Default 64 KiB.
    pub max_message_bytes: usize,
    /// Largest amount of unsent data kept for one peer; a peer that stops reading and exceeds
    /// it is disconnected. Default 1 MiB.
    pub max_outbound_bytes: usize,
    /// Time allowed for one HTTP request head (and between keep-alive requests). Default 10 s.
    pub handshake_timeout: Duration,
    /// Silence after which the server pings a WebSocket peer. Default 60 s.
    pub idle_timeout: Duration,
    /// Time a pinged peer has to answer (send anything) before it is closed. Default 20 s.
    pub ping_timeout: Duration,
    /// How long a graceful stop waits for peers to take their close frames. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Addresses allowed to read `/metrics`; others get 403. Default loopback only.
    pub metrics_allow: Vec<IpAddr>,
    /// Reverse proxies whose `X-Forwarded-For` names the client that `metrics_allow`, the logs
    /// and every per-address rule judge (see [`crate::http::client_ip`]). At most
    /// [`MAX_TRUSTED_PROXIES`]. Default none: the header is ignored.
    pub trusted_proxies: Vec<Cidr>,
    /// Detach from the terminal and run in the background. Default false.
    pub daemon: bool,
    /// A pid file, written and locked in daemon mode and removed at exit. Default none.
    pub pid_file: Option<PathBuf>,
    /// The user to run as after start-up when started as root. Default none.
    pub user: Option<String>,
    /// The group to run as (default: the user's primary group).
    pub group: Option<String>,
    /// Write logs to this file (reopened on SIGUSR1 and SIGHUP) instead of stderr. Default none.
    pub log_file: Option<PathBuf>,
    /// `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// The `[chat]` table.
    pub chat: ChatConfig,
    /// Worker processes on this host, all on `listen` (SO_REUSEPORT). Default 1.
    pub workers: usize,
    /// The shared crowd (`[cluster]`); none: one process, matching in memory.
    pub cluster: Option<ClusterConfig>,
    /// The `[safety]` table.
    pub safety: SafetyConfig,
}

/// Most worker processes (a `PeerId` keeps 8 bits for the worker).
pub const MAX_WORKERS: usize = 64;

/// The `[cluster]` table, checked; the password is read from `password_file` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where Redis is (the password, from the URL or the file, is never logged).
    pub redis: RedisTarget,
    /// This host's name in the cluster: unique per host. Default: the host name.
    pub node: String,
    /// Key and channel prefix, so that two deployments can share a Redis. Default `chatd`.
    pub prefix: String,
    /// The file the password was read from.
    pub password_file: Option<PathBuf>,
}

/// A part of the configuration that a component takes as its own settings (the application's
/// `App::Settings`), built again from every reloaded file.
pub trait FromConfig {
    /// Picks this part out of `config`.
    fn from_config(config: &Config) -> Self;
}

impl FromConfig for () {
    fn from_config(_: &Config) {}
}

impl FromConfig for ChatConfig {
    fn from_config(config: &Config) -> ChatConfig {
        config.chat.clone()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_level: LogLevel::Info,
            web_root: None,
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_message_bytes: 64 * 1024,
            max_outbound_bytes: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(10),
            metrics_allow: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            trusted_proxies: Vec::new(),
            daemon: false,
            pid_file: None,
            user: None,
            group: None,
            log_file: None,
            log_format: LogFormat::Text,
            chat: ChatConfig::default(),
            safety: SafetyConfig { max_connections_per_address: 8, ..SafetyConfig::default() },
            workers: 1,
            cluster: None,
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`. The stored path is made absolute so that a reload
    /// after a change of working directory still finds the file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Config::parse(&text, &abs)
    }

    /// Parses and validates TOML text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            let mut message = e.message().trim().to_owned();
            // serde names an unknown key itself, but not the key whose value has the wrong type
            // or is out of range: find it on the offending line.
            if let Some(key) = e.span().and_then(|s| key_at(text, s.start)) {
                if !message.contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) {
                    message = format!("key `{key}`: {message}");
                }
            }
            ConfigError::Parse { path: path.to_owned(), line, column, message }
        })?;
        Config::from_file(file, path)
    }

    /// Applies defaults to a parsed file and checks every value.
    pub fn from_file(f: FileConfig, path: &Path) -> Result<Config> {
        let d = Config::default();
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let trusted = f.trusted_proxies.unwrap_or_default();
        if trusted.len() > MAX_TRUSTED_PROXIES {
            return Err(invalid(
                "trusted_proxies",
                format!(
                    "lists {} entries, at most {MAX_TRUSTED_PROXIES} are allowed",
                    trusted.len()
                ),
            ));
        }
        let trusted_proxies = trusted
            .iter()
            .map(|t| t.parse().map_err(|e| invalid("trusted_proxies", format!("`{t}`: {e}"))))
            .collect::<Result<Vec<Cidr>>>()?;
        let chat = f.chat.unwrap_or_default();
        let safety = f.safety.unwrap_or_default();
        let dc = ChatConfig::default();
        let cfg = Config {
            path: Some(path.to_owned()),
            listen: f.listen.unwrap_or(d.listen),
            log_level: f.log_level.unwrap_or(d.log_level),
            web_root: f.web_root,
            allowed_origins: f.allowed_origins.unwrap_or_default(),
            max_connections: f.max_connections.unwrap_or(d.max_connections),
            max_message_bytes: f.max_message_bytes.unwrap_or(d.max_message_bytes),
            max_outbound_bytes: f.max_outbound_bytes.unwrap_or(d.max_outbound_bytes),
            handshake_timeout: f.handshake_timeout.map_or(d.handshake_timeout, |d| d.0),
            idle_timeout: f.idle_timeout.map_or(d.idle_timeout, |d| d.0),
            ping_timeout: f.ping_timeout.map_or(d.ping_timeout, |d| d.0),
            shutdown_timeout: f.shutdown_timeout.map_or(d.shutdown_timeout, |d| d.0),
            metrics_allow: f.metrics_allow.unwrap_or(d.metrics_allow),
            trusted_proxies,
            daemon: f.daemon.unwrap_or(d.daemon),
            pid_file: f.pid_file.map(|p| absolute(&p)),
            user: f.user,
            group: f.group,
            log_file: f.log_file.map(|p| absolute(&p)),
            log_format: f.log_format.unwrap_or(d.log_format),
            chat: ChatConfig {
                max_message_chars: chat.max_message_chars.unwrap_or(dc.max_message_chars),
                rate_per_second: chat.rate_per_second.unwrap_or(dc.rate_per_second),
                rate_burst: chat.rate_burst.unwrap_or(dc.rate_burst),
                interest_timeout: chat.interest_timeout.map_or(dc.interest_timeout, |d| d.0),
                rematch_cooldown: chat.rematch_cooldown.map_or(dc.rematch_cooldown, |d| d.0),
                online_interval: chat.online_interval.map_or(dc.online_interval, |d| d.0),
                resume_window: chat.resume_window.map_or(dc.resume_window, |d| d.0),
                address_search_burst: safety
                    .address_search_burst
                    .unwrap_or(dc.address_search_burst),
                address_searches_per_second: safety
                    .address_searches_per_second
                    .unwrap_or(dc.address_searches_per_second),
                max_connections_per_address: safety
                    .max_connections_per_address
                    .unwrap_or(d.safety.max_connections_per_address),
                safety: safety_rules(&safety).map_err(|(key, message)| invalid(key, message))?,
            },
            workers: match f.workers {
                None => d.workers,
                Some(FileWorkers::Count(n)) => n as usize,
                Some(FileWorkers::Named(WorkersAuto::Auto)) => {
                    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
                }
            },
            cluster: match f.cluster {
                None => None,
                Some(c) => Some(cluster_config(c).map_err(|(key, message)| invalid(key, message))?),
            },
            safety: {
                let s = safety;
                let ban_file = s.ban_file.map(|p| absolute(&p));
                let bans = match &ban_file {
                    Some(file) => BanList::load(file)
                        .map_err(|e| invalid("safety.ban_file", e.to_string()))?,
                    None => BanList::default(),
                };
                let address_key_file = s.address_key_file.map(|p| absolute(&p));
                let address_key = match &address_key_file {
                    Some(file) => Some(
                        AddressKey::from_file(file)
                            .map_err(|e| invalid("safety.address_key_file", e.to_string()))?,
                    ),
                    None => None,
                };
                SafetyConfig {
                    max_connections_per_address: s
                        .max_connections_per_address
                        .unwrap_or(d.safety.max_connections_per_address),
                    ban_file,
                    bans,
                    address_key_file,
                    address_key,
                }
            },
        };
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}, or \"auto\""),
            ));
        }
        if cfg.workers > 1 && cfg.cluster.is_none() {
            return Err(invalid(
                "workers",
                "more than one worker needs a [cluster] table (the workers share their crowd through Redis)".into(),
            ));
        }
        if cfg.max_connections == 0 || cfg.max_connections > 1_000_000 {
            return Err(invalid("max_connections", "must be between 1 and 1000000".into()));
        }
        if !(125..=1 << 30).contains(&cfg.max_message_bytes) {
            return Err(invalid("max_message_bytes", "must be between 125 and 1073741824".into()));
        }
        if cfg.max_outbound_bytes < cfg.max_message_bytes.min(64 * 1024) {
            return Err(invalid(
                "max_outbound_bytes",
                "must be at least max_message_bytes (or 64 KiB)".into(),
            ));
        }
        for (key, v) in [
            ("handshake_timeout", cfg.handshake_timeout),
            ("idle_timeout", cfg.idle_timeout),
            ("ping_timeout", cfg.ping_timeout),
            ("shutdown_timeout", cfg.shutdown_timeout),
            ("chat.online_interval", cfg.chat.online_interval),
            ("chat.interest_timeout", cfg.chat.interest_timeout.max(Duration::from_millis(10))),
            ("chat.rematch_cooldown", cfg.chat.rematch_cooldown.max(Duration::from_millis(10))),
        ] {
            if v < Duration::from_millis(10) || v > Duration::from_secs(24 * 3600) {
                return Err(invalid(key, "must be between 10ms and 24h".into()));
            }
        }
        let rate = cfg.chat.address_searches_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid("safety.address_searches_per_second", "must be above 0".into()));
        }
        if cfg.chat.resume_window > Duration::from_secs(600) {
            return Err(invalid("chat.resume_window", "must be between 0s (off) and 10m".into()));
        }
        if cfg.chat.max_message_chars == 0 || cfg.chat.max_message_chars > 100_000 {
            return Err(invalid("chat.max_message_chars", "must be between 1 and 100000".into()));
        }
        if cfg.chat.max_message_chars.saturating_mul(6) + 64 > cfg.max_message_bytes {
            return Err(invalid(
                "chat.max_message_chars",
                format!(
                    "a message of {} characters may need {} bytes of JSON; raise max_message_bytes",
                    cfg.chat.max_message_chars,
                    cfg.chat.max_message_chars * 6 + 64
                ),
            ));
        }
        if !(cfg.chat.rate_per_second.is_finite() && cfg.chat.rate_per_second > 0.0) {
            return Err(invalid("chat.rate_per_second", "must be a positive number".into()));
        }
        if cfg.chat.rate_burst == 0 {
            return Err(invalid("chat.rate_burst", "must be at least 1".into()));
        }
        for o in &cfg.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(invalid(
                    "allowed_origins",
                    format!("`{o}` is not an origin such as \"https://chat.example.com\""),
                ));
            }
        }
        for (key, name) in [("user", &cfg.user), ("group", &cfg.group)] {
            if let Some(n) = name {
                let ok = !n.is_empty()
                    && n.len() <= 32
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(invalid(key, format!("`{n}` is not a user or group name")));
                }
            }
        }
        if cfg.group.is_some() && cfg.user.is_none() {
            return Err(invalid("group", "needs `user` as well".into()));
        }
        if let Some(root) = &cfg.web_root {
            if !root.is_dir() {
                return Err(invalid(
                    "web_root",
                    format!("`{}` is not a readable directory", root.display()),
                ));
            }
        }
        Ok(cfg)
    }
}

impl Config {
    /// Keeps the running value of every setting that needs a restart (the listening socket,
    /// the account, the pid and log files) and returns the keys whose value the file changed.
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident),*) => {$(
                if self.$field != running.$field {
                    changed.push(stringify!($field));
                    self.$field = running.$field.clone();
                }
            )*};
        }
        keep!(listen, daemon, pid_file, user, group, log_file, log_format, workers, cluster);
        changed
    }

    /// The keys whose values differ between `self` and `new`, dotted for the `[chat]` table.
    pub fn changed_keys(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! diff {
            ($($($field:ident).+ => $key:literal),* $(,)?) => {$(
                if self.$($field).+ != new.$($field).+ {
                    changed.push($key);
                }
            )*};
        }
        diff!(
            listen => "listen", log_level => "log_level", web_root => "web_root",
            allowed_origins => "allowed_origins", max_connections => "max_connections",
            max_message_bytes => "max_message_bytes", max_outbound_bytes => "max_outbound_bytes",
            handshake_timeout => "handshake_timeout", idle_timeout => "idle_timeout",
            ping_timeout => "ping_timeout", shutdown_timeout => "shutdown_timeout",
            metrics_allow => "metrics_allow", trusted_proxies => "trusted_proxies",
            daemon => "daemon", pid_file => "pid_file",
            user => "user", group => "group", log_file => "log_file", log_format => "log_format",
            chat.max_message_chars => "chat.max_message_chars",
            chat.rate_per_second => "chat.rate_per_second", chat.rate_burst => "chat.rate_burst",
            chat.interest_timeout => "chat.interest_timeout",
            chat.rematch_cooldown => "chat.rematch_cooldown",
            chat.online_interval => "chat.online_interval",
            chat.resume_window => "chat.resume_window",
            workers => "workers", cluster => "cluster",
            safety.max_connections_per_address => "safety.max_connections_per_address",
            safety.ban_file => "safety.ban_file", safety.bans => "safety.ban_file (its entries)",
            safety.address_key_file => "safety.address_key_file",
            safety.address_key => "safety.address_key_file (its key)",
            chat.address_search_burst => "safety.address_search_burst",
            chat.address_searches_per_second => "safety.address_searches_per_second",
            chat.safety.report_threshold => "safety.report_threshold",
            chat.safety.report_window => "safety.report_window",
            chat.safety.ban_duration => "safety.ban_duration",
            chat.safety.block_duration => "safety.block_duration",
            chat.safety.spam_partners => "safety.spam_partners",
            chat.safety.spam_window => "safety.spam_window",
            chat.safety.spam_min_chars => "safety.spam_min_chars",
            chat.safety.pow => "safety.pow_bits (or pow_auto_rate)",
            chat.safety.pardon => "safety.pardon",
        );
        changed
    }
}

/// The `[safety]` rules of the roulette, checked; an error names its key.
fn safety_rules(s: &FileSafetyConfig) -> Result<Rules, (&'static str, String)> {
    let r = Rules::default();
    let duration = |key: &'static str, v: Option<ConfigDuration>, default: Duration| {
        let v = v.map_or(default, |d| d.0);
        if v < Duration::from_secs(1) || v > Duration::from_secs(30 * 86400) {
            return Err((key, "must be between 1s and 30 days (720h)".into()));
        }
        Ok(v)
    };
    let rate = s.pow_auto_rate.unwrap_or(50.0);
    let pow = match s.pow_bits {
        None | Some(FilePowBits::Bits(0)) => Pow::Off,
        Some(FilePowBits::Bits(n)) if n <= MAX_BITS => Pow::Bits(n),
        Some(FilePowBits::Bits(_)) => {
            return Err(("safety.pow_bits", format!("must be 0 (off) to {MAX_BITS}, or \"auto\"")))
        }
        Some(FilePowBits::Named(WorkersAuto::Auto)) => Pow::Auto { rate },
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(("safety.pow_auto_rate", "must be above 0".into()));
    }
    let threshold = s.report_threshold.unwrap_or(r.report_threshold);
    if !(1..=100).contains(&threshold) {
        return Err(("safety.report_threshold", "must be between 1 and 100".into()));
    }
    let spam_partners = s.spam_partners.unwrap_or(r.spam_partners);
    if spam_partners > 100 {
        return Err(("safety.spam_partners", "must be between 0 (off) and 100".into()));
    }
    let pardon = s.pardon.clone().unwrap_or_default();
    if let Some(bad) = pardon.iter().find(|p| {
        p.len() != 8 || !p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }) {
        return Err((
            "safety.pardon",
            format!("`{bad}` is not a short hash (8 lowercase hex digits, as logged)"),
        ));
    }
    Ok(Rules {
        report_threshold: threshold,
        report_window: duration("safety.report_window", s.report_window, r.report_window)?,
        ban_duration: duration("safety.ban_duration", s.ban_duration, r.ban_duration)?,
        block_duration: duration("safety.block_duration", s.block_duration, r.block_duration)?,
        spam_partners,
        spam_window: duration("safety.spam_window", s.spam_window, r.spam_window)?,
        spam_min_chars: s.spam_min_chars.unwrap_or(r.spam_min_chars).clamp(1, 10_000),
        pow,
        pardon,
    })
}

/// Checks the `[cluster]` table; an error names its key.
fn cluster_config(c: FileClusterConfig) -> Result<ClusterConfig, (&'static str, String)> {
    let url = c.redis.ok_or(("cluster.redis", "is required in a [cluster] table".to_owned()))?;
    let mut redis = RedisTarget::parse(&url).map_err(|e| ("cluster.redis", e.to_string()))?;
    let node = match c.node {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
    };
    let name_ok = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b) || extra.contains(&b))
    };
    if !name_ok(&node, b"") {
        return Err((
            "cluster.node",
            format!("`{node}` is not a node name (1-64 of A-Z a-z 0-9 _ - .)"),
        ));
    }
    let prefix = c.prefix.unwrap_or_else(|| "chatd".to_owned());
    if !name_ok(&prefix, b":") {
        return Err((
            "cluster.prefix",
            format!("`{prefix}` is not a prefix (1-64 of A-Z a-z 0-9 _ - . :)"),
        ));
    }
    let password_file = c.password_file.map(|p| absolute(&p));
    if let Some(file) = &password_file {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(file)
            .map_err(|e| ("cluster.password_file", format!("{}: {e}", file.display())))?;
        if meta.mode() & 0o077 != 0 {
            return Err((
                "cluster.password_file",
                format!("{} must be readable only by its owner (chmod 600)", file.display()),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| ("cluster.password_file", format!("{}: {e}", file.display())))?;
        let password = text.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() || password.len() > 512 {
            return Err((
                "cluster.password_file",
                format!("{}: empty or longer than 512 bytes", file.display()),
            ));
        }
        redis.password = Some(password);
    }
    Ok(ClusterConfig { redis, node, prefix, password_file })
}

/// `p` made absolute against the current directory, so that it still names the same file after
/// the daemon changes its directory to `/`.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// The dotted key assigned on the line holding byte `at` (`chat.max_message_chars`), if that
/// line is a `key = value` line.
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..at.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(Config { path: Some("test.toml".into()), ..Config::default() }, c);
    }

    #[test]
    fn the_documented_example_is_the_defaults() {
        let text = include_str!("../config/chatd.toml");
        let c = Config::parse(text, Path::new("chatd.toml")).unwrap();
        assert_eq!(Config { path: Some("chatd.toml".into()), ..Config::default() }, c);
    }

    #[test]
    fn safety_rules_are_read_and_checked() {
        let c = parse(
            "[safety]\nreport_threshold = 5\nreport_window = \"30m\"\nban_duration = \"2h\"\n\
             block_duration = \"1h\"\nspam_partners = 0\nspam_window = \"5m\"\n\
             spam_min_chars = 20\npow_bits = \"auto\"\npow_auto_rate = 10.0\n\
             pardon = [\"0a1b2c3d\"]\n",
        )
        .unwrap();
        let r = &c.chat.safety;
        assert_eq!((r.report_threshold, r.spam_partners, r.spam_min_chars), (5, 0, 20));
        assert_eq!(r.report_window, Duration::from_secs(1800));
        assert_eq!(
            (r.ban_duration, r.block_duration),
            (Duration::from_secs(7200), Duration::from_secs(3600))
        );
        assert_eq!(r.spam_window, Duration::from_secs(300));
        assert_eq!(r.pow, Pow::Auto { rate: 10.0 });
        assert_eq!(r.pardon, ["0a1b2c3d"]);
        assert_eq!(parse("[safety]\npow_bits = 12").unwrap().chat.safety.pow, Pow::Bits(12));
        assert_eq!(parse("[safety]\npow_bits = 0").unwrap().chat.safety.pow, Pow::Off);
        for (bad, key) in [
            ("pow_bits = 25", "safety.pow_bits"),
            ("pow_bits = \"always\"", "pow_bits"),
            ("pow_auto_rate = 0.0", "safety.pow_auto_rate"),
            ("report_threshold = 0", "safety.report_threshold"),
            ("spam_partners = 101", "safety.spam_partners"),
            ("ban_duration = \"0s\"", "safety.ban_duration"),
            ("block_duration = \"31d\"", "safety.block_duration"),
            ("pardon = [\"127.0.0.1\"]", "safety.pardon"),
            ("pardon = [\"0A1B2C3D\"]", "safety.pardon"),
        ] {
            let e = parse(&format!("[safety]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("listen = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:2:1: "), "{e}");
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let e = parse("[chat]\nmax_chars = 3\n").unwrap_err().to_string();
        assert!(e.contains("test.toml:2:") && e.contains("max_chars"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("max_connections = \"many\"\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml:1:"), "{e}");
        assert!(e.contains("key `max_connections`"), "{e}");
        let e = parse("listen = \"127.0.0.1:1\"\n[chat]\ninterest_timeout = \"5 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.toml:3:") && e.contains("key `chat.interest_timeout`"), "{e}");
    }

    #[test]
    fn reload_keeps_restart_only_settings_and_names_changes() {
        let running = parse("listen = \"127.0.0.1:1\"").unwrap();
        let mut new =
            parse("listen = \"127.0.0.1:2\"\nlog_level = \"debug\"\n[chat]\nrate_burst = 3")
                .unwrap();
        assert_eq!(running.changed_keys(&new), ["listen", "log_level", "chat.rate_burst"]);
        assert_eq!(new.keep_restart_only(&running), ["listen"]);
        assert_eq!(new.listen, running.listen);
        assert_eq!(running.changed_keys(&new), ["log_level", "chat.rate_burst"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        let c = parse("idle_timeout = 30\n[chat]\ninterest_timeout = \"1500ms\"\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.chat.interest_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn ranges_are_checked() {
        let e = parse("max_connections = 0").unwrap_err().to_string();
        assert!(e.contains("`max_connections`"), "{e}");
        let e = parse("allowed_origins = [\"example.com\"]").unwrap_err().to_string();
        assert!(e.contains("`allowed_origins`"), "{e}");
        let e = parse("web_root = \"/nonexistent/dir\"").unwrap_err().to_string();
        assert!(e.contains("`web_root`"), "{e}");
        // Resuming: off at "0s", at most 10 minutes.
        assert_eq!(
            parse("[chat]\nresume_window = \"0s\"").unwrap().chat.resume_window,
            Duration::ZERO
        );
        let e = parse("[chat]\nresume_window = \"11m\"").unwrap_err().to_string();
        assert!(e.contains("`chat.resume_window`"), "{e}");
        let e = parse("[safety]\naddress_searches_per_second = 0.0").unwrap_err().to_string();
        assert!(e.contains("`safety.address_searches_per_second`"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_networks() {
        let c = parse("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\", \"fd00::/8\"]")
            .unwrap();
        let shown: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]);
        assert!(parse("").unwrap().trusted_proxies.is_empty(), "default: none");
        for (bad, why) in [
            ("\"localhost\"", "`localhost`: not an IP address"),
            ("\"10.0.0.0/33\"", "`10.0.0.0/33`: the prefix length must be a number from 0 to 32"),
            ("\"10.0.0.1/8\"", "`10.0.0.1/8`: host bits are set (the network is 10.0.0.0/8)"),
        ] {
            let e = parse(&format!("trusted_proxies = [{bad}]")).unwrap_err().to_string();
            assert!(e.starts_with("test.toml: key `trusted_proxies`: "), "{e}");
            assert!(e.contains(why), "{e}");
        }
        let e = parse("trusted_proxies = \"127.0.0.1\"").unwrap_err().to_string();
        assert!(e.contains("trusted_proxies"), "{e}");
        let many: Vec<String> = (0..=MAX_TRUSTED_PROXIES)
            .map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256))
            .collect();
        let e = parse(&format!("trusted_proxies = [{}]", many.join(","))).unwrap_err().to_string();
        assert!(e.contains("`trusted_proxies`: lists 257 entries, at most 256"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_reloadable() {
        let running = parse("").unwrap();
        let mut new = parse("trusted_proxies = [\"127.0.0.1\"]").unwrap();
        assert_eq!(running.changed_keys(&new), ["trusted_proxies"]);
        assert!(new.keep_restart_only(&running).is_empty());
        assert_eq!(new.trusted_proxies.len(), 1);
    }
}
