//! One crowd across workers and hosts, through Redis.
//!
//! - `url`: where Redis is.
//! - [`resp`]: the Redis protocol, encoded and parsed on buffers.
//! - [`link`]: one Redis connection as a state machine (handshake, pipelining, pub/sub,
//!   backoff, caps); the loop owns the socket.
//! - `node`: one worker's side of the shared roulette: operations in, Redis commands out;
//!   replies and channel messages in, events out. `roulette.lua` is the script that keeps the
//!   queue, the pairs and the workers' liveness atomically in Redis.
//!
//! Owns: the Redis side of the roulette. May not touch: sockets, the clock (the loop drives
//! the links and passes `now`).
pub mod link;
mod node;
pub mod resp;
mod url;

pub use link::{Link, LinkConfig, LinkError, LinkEvent, LinkState, LinkStats, Role};
pub use node::{Event, Forwarded, Node, NodeStats, Op, Tag, BEAT_INTERVAL, RTT_BUCKETS, SCRIPT};
pub use resp::{RespError, Value};
pub use url::{RedisAddr, RedisTarget, UrlError, DEFAULT_PORT};
