//! Trust and safety: who is who without keeping anyone's address, and what the operator bans.
//!
//! - [`address`]: the keyed hash that stands for a client address everywhere past the socket
//!   (IPv6 grouped by /64), and its key.
//! - [`banlist`]: the operator's `ban_file`, parsed and matched.
//! - [`ledger`]: reports, shadow bans, blocks and spam by address, and the proof of work.
//!
//! Owns: address identity, the ban list and the per-address safety state. May not touch: sockets, the clock.
pub mod address;
pub mod banlist;
pub mod ledger;

pub use address::{AddrHash, AddressKey, KeyError};
pub use banlist::{BanError, BanList};
pub use ledger::{Ban, Ledger, Pow, Reason, Rules};
