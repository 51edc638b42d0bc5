//! Trust and safety: who is who without keeping anyone's address, and what the operator bans.
//!
//! - [`address`]: the keyed hash that stands for a client address everywhere past the socket
//!   (IPv6 grouped by /64), and its key.
//! - [`banlist`]: the operator's `ban_file`, parsed and matched.
//!
//! Owns: address identity and the ban list. May not touch: sockets, the clock.
pub mod address;
pub mod banlist;

pub use address::{AddrHash, AddressKey, KeyError};
pub use banlist::{BanError, BanList};
