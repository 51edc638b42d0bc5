//! One crowd across workers and hosts, through Redis: where Redis is (`url`).
//!
//! Owns: the Redis side of the roulette. May not touch: sockets (the loop drives the link).
mod url;

pub use url::{RedisAddr, RedisTarget, UrlError, DEFAULT_PORT};
