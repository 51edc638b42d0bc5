//! One crowd across workers and hosts, through Redis: where Redis is (`url`).
//!
//! Owns: the Redis side of the roulette. May not touch: sockets (the loop drives the link).
pub mod link;
pub mod resp;
mod url;

pub use link::{Link, LinkConfig, LinkError, LinkEvent, LinkState, LinkStats, Role};
pub use resp::{RespError, Value};
pub use url::{RedisAddr, RedisTarget, UrlError, DEFAULT_PORT};
