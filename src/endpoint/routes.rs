//! HTTP routing: what each complete request head gets. `/ws` upgrades, `/healthz` says whether
//! this node serves, `/metrics` is for the addresses in `metrics_allow`, and every other path
//! is a file of the page (with `ETag` / `If-None-Match`).
//!
//! Owns: the choice of response and whether the connection stays open after it.
//! May not touch: connection state (it returns [`Next`]), sockets, the clock (the `Date` it
//! writes was formatted by the endpoint).
use std::{collections::HashMap, net::IpAddr, time::Instant};

use super::{Settings, Stats};
use crate::{
    app::App,
    http::{self, HttpDate, Method, Request, Site, Status},
    safety::{AddrHash, AddressKey},
    ws,
};

/// What the connection does after the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Wait for the next request (keep-alive); `why` is for the debug log when it was a
    /// refusal.
    KeepAlive {
        /// Why the request was refused, if it was.
        why: Option<String>,
    },
    /// Close after the response; `why` as above.
    Close {
        /// Why the request was refused, if it was.
        why: Option<String>,
    },
    /// The 101 was written: the connection is now a WebSocket of the client `client`.
    Upgrade {
        /// The client's address hash, which it counts against.
        client: AddrHash,
    },
    /// The upgrade was refused for who asked (written; the connection closes after it).
    Refused(Refusal),
}

/// Why a WebSocket was refused to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// On the ban list: 403.
    Banned,
    /// At `max_connections_per_address`: 429.
    TooMany,
}

/// What routing reads besides the request.
pub(super) struct RouteCx<'a, A> {
    pub(super) settings: &'a Settings,
    pub(super) site: &'a Site,
    pub(super) date: &'a HttpDate,
    pub(super) stats: &'a Stats,
    pub(super) app: &'a A,
    /// Open connections, for `/metrics`.
    pub(super) open: usize,
    /// A graceful stop is under way: `/healthz` says 503.
    pub(super) stopping: bool,
    /// The node cannot take new people (its cluster link is down): `/healthz` says 503.
    pub(super) unavailable: Option<&'static str>,
    /// Families the loop adds to `/metrics`.
    pub(super) extra_metrics: &'a str,
    /// Served as `/metrics` instead of this endpoint's own (every worker's, merged).
    pub(super) metrics_override: Option<&'a str>,
    /// Open WebSockets per client address.
    pub(super) per_address: &'a HashMap<AddrHash, u32>,
    /// Addresses at their cap across a cluster, until when.
    pub(super) crowded: &'a HashMap<AddrHash, Instant>,
    /// The loop's time.
    pub(super) now: Instant,
}

/// A request's client: its address, and the connection's own peer with the hash it was given
/// at accept (the client is that peer unless a trusted proxy named another).
#[derive(Debug, Clone, Copy)]
pub(super) struct Client {
    pub(super) ip: IpAddr,
    pub(super) peer: IpAddr,
    pub(super) peer_hash: AddrHash,
}

impl Client {
    /// The client's hash: the connection's, or (behind a proxy) hashed now.
    pub(super) fn hash(&self, key: &AddressKey) -> AddrHash {
        if self.ip == self.peer {
            self.peer_hash
        } else {
            key.hash(self.ip)
        }
    }
}

/// Answers one complete request from `who` into `out`.
pub(super) fn respond<A: App>(
    cx: &RouteCx<'_, A>,
    req: &Request,
    who: Client,
    out: &mut Vec<u8>,
) -> Next {
    let client = who.ip;
    let head_only = req.method == Method::Head;
    let keep_alive = req.keep_alive();
    let date = cx.date;
    let after = |why: Option<String>| {
        if keep_alive {
            Next::KeepAlive { why }
        } else {
            Next::Close { why }
        }
    };
    if req.method == Method::Other {
        let extra = "Allow: GET, HEAD\r\n";
        http::write_error(out, date, Status::MethodNotAllowed, extra, false, false);
        return Next::Close { why: Some("method not allowed".into()) };
    }
    match req.path() {
        // The ban list first, for any request to /ws: the page asks with a plain GET why its
        // WebSocket failed.
        "/ws" if cx.settings.bans.contains(client) => {
            http::write_error(out, date, Status::Forbidden, "", head_only, false);
            Next::Refused(Refusal::Banned)
        }
        "/ws" => match ws::validate_upgrade(req, &cx.settings.allowed_origins) {
            Ok(accept) => {
                let hash = who.hash(&cx.settings.address_key);
                let max = cx.settings.max_connections_per_address;
                let here = cx.per_address.get(&hash).is_some_and(|&n| n as usize >= max);
                let elsewhere = cx.crowded.get(&hash).is_some_and(|&until| cx.now < until);
                if max > 0 && (here || elsewhere) {
                    let extra = "Retry-After: 10\r\n";
                    http::write_error(out, date, Status::TooManyRequests, extra, head_only, false);
                    return Next::Refused(Refusal::TooMany);
                }
                http::write_upgrade(out, date, &accept);
                Next::Upgrade { client: hash }
            }
            Err(e) => {
                let (status, extra) = e.response();
                http::write_error(out, date, status, extra, head_only, false);
                Next::Close { why: Some(format!("upgrade refused: {e}")) }
            }
        },
        "/metrics" => {
            if cx.settings.metrics_allow.contains(&client) {
                let mut body = String::with_capacity(4096);
                if let Some(all) = cx.metrics_override {
                    body.push_str(all);
                } else {
                    super::write_metrics(
                        cx.stats,
                        cx.open,
                        cx.stopping,
                        cx.app,
                        cx.extra_metrics,
                        &mut body,
                    );
                }
                let extra = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                             Cache-Control: no-store\r\n";
                http::write_response(
                    out,
                    date,
                    Status::Ok,
                    extra,
                    body.as_bytes(),
                    head_only,
                    keep_alive,
                );
                after(None)
            } else {
                http::write_error(out, date, Status::Forbidden, "", head_only, keep_alive);
                after(Some("metrics refused".into()))
            }
        }
        "/healthz" => {
            let body;
            let (status, body) = match (cx.stopping, cx.unavailable) {
                (true, _) => (Status::ServiceUnavailable, "stopping\n"),
                (false, Some(why)) => {
                    body = format!("unavailable: {why}\n");
                    (Status::ServiceUnavailable, body.as_str())
                }
                (false, None) => (Status::Ok, "ok\n"),
            };
            let extra = "Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n";
            http::write_response(out, date, status, extra, body.as_bytes(), head_only, keep_alive);
            after(None)
        }
        path => match http::resolve_path(path) {
            Err(e) => {
                http::write_error(out, date, e.status(), "", head_only, false);
                Next::Close { why: Some(format!("bad path: {e}")) }
            }
            Ok(key) => match cx.site.get(&key) {
                Some(asset) => {
                    let fresh = req.header_all("if-none-match").any(|v| {
                        v.split(',').any(|t| {
                            t.trim().trim_start_matches("W/") == asset.etag || t.trim() == "*"
                        })
                    });
                    let (status, head_only) =
                        if fresh { (Status::NotModified, true) } else { (Status::Ok, head_only) };
                    http::write_response(
                        out,
                        date,
                        status,
                        &asset.headers,
                        &asset.body,
                        head_only,
                        keep_alive,
                    );
                    after(None)
                }
                None => {
                    http::write_error(out, date, Status::NotFound, "", head_only, keep_alive);
                    after(None)
                }
            },
        },
    }
}
