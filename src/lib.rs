//! chatd: an anonymous text chat roulette served over HTTP/1.1 and RFC 6455 WebSocket.
//!
//! The protocol layers (`http`, `ws`, `roulette`) and the connection layer (`endpoint`) are
//! sans-IO: bytes and `now` in, bytes, events or actions out. Only `server`, `conn`, `signals`,
//! `master`, `board`, `daemon`, `notify` and `main.rs` touch sockets, mio, libc or the clock.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(test, deny(warnings))]
#![warn(unreachable_pub)]

pub mod app;
pub mod board;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod endpoint;
pub mod http;
pub mod log;
pub mod master;
pub mod metrics;
pub mod notify;
pub mod roulette;
pub mod safety;
pub mod server;
pub mod ws;

mod conn;
mod signals;
