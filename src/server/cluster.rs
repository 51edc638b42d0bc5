//! The loop's part of the cluster: a worker's two Redis connections (commands, and a
//! subscriber for its channel) as mio sources, each a sans-IO [`Link`] plus the socket the loop
//! drives it with, and the [`Node`] between them and the application.
//!
//! Owns: the Redis sockets, connecting and reconnecting, handing bytes and events across.
//! May not touch: protocol state (the link's, the node's, the roulette's).
use std::time::Instant;

use mio::Token;
use slog::{debug, warn, Logger};

use super::{REDIS_COMMANDS, REDIS_SUBSCRIBER};
use crate::{
    app::App,
    cluster::{Event as ClusterEvent, Link, LinkEvent, Node, Role, Tag},
    config::ClusterConfig,
    conn::{ReadOutcome, RedisSocket},
    endpoint::Endpoint,
};

/// One Redis connection: the sans-IO link and the socket the loop drives it with.
#[derive(Debug)]
pub(super) struct RedisConn<T> {
    link: Link<T>,
    socket: Option<RedisSocket>,
    token: Token,
}

/// A worker's part of the cluster: a command link, a subscriber link, and the node that
/// turns the roulette's operations into commands and channel messages into events.
#[derive(Debug)]
pub(super) struct ClusterIo {
    node: Node,
    commands: RedisConn<Tag>,
    subscriber: RedisConn<()>,
    /// When the link metrics were last rendered for `/metrics`.
    metrics_at: Option<Instant>,
}

impl<T: std::fmt::Debug> RedisConn<T> {
    /// Opens the socket when the link asks for it.
    fn connect(&mut self, now: Instant, registry: &mio::Registry, log: &Logger) {
        if self.socket.is_some() || !self.link.poll_connect(now) {
            return;
        }
        match RedisSocket::connect(&self.link.target().addr) {
            Ok(mut socket) => match socket.register(registry, self.token) {
                Ok(()) => self.socket = Some(socket),
                Err(e) => self.link.handle_closed(now, e.to_string()),
            },
            Err(e) => {
                debug!(log, "cannot connect to redis"; "error" => %e);
                self.link.handle_closed(now, e.to_string());
            }
        }
    }

    /// A readiness event: finish the connect, read what came.
    fn handle_ready(&mut self, now: Instant, scratch: &mut [u8], log: &Logger) {
        let Some(socket) = &mut self.socket else { return };
        if socket.connecting {
            match socket.finish_connect() {
                Ok(true) => self.link.handle_connected(now),
                Ok(false) => return,
                Err(e) => {
                    debug!(log, "redis connect failed"; "error" => %e);
                    self.socket = None;
                    self.link.handle_closed(now, e.to_string());
                    return;
                }
            }
        }
        let Some(socket) = &mut self.socket else { return };
        socket.writable = true;
        loop {
            match socket.fill(scratch) {
                Ok(ReadOutcome::Data(n)) => self.link.handle_input(now, &scratch[..n]),
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    self.socket = None;
                    self.link.handle_closed(now, "redis closed the connection");
                    return;
                }
                Err(e) => {
                    self.socket = None;
                    self.link.handle_closed(now, e.to_string());
                    return;
                }
            }
        }
    }

    /// Writes what the link has queued.
    fn transmit(&mut self, now: Instant) {
        let Some(socket) = &mut self.socket else { return };
        if socket.connecting || !socket.writable || self.link.transmit_buf().is_empty() {
            return;
        }
        match socket.send(self.link.transmit_buf()) {
            Ok(n) => self.link.handle_sent(n),
            Err(e) => {
                self.socket = None;
                self.link.handle_closed(now, e.to_string());
            }
        }
    }
}

impl ClusterIo {
    /// Worker `worker_id`'s links to the cluster's Redis, not connected yet.
    pub(super) fn new(
        c: &ClusterConfig,
        worker_id: String,
        interest_timeout: std::time::Duration,
        rematch_cooldown: std::time::Duration,
    ) -> ClusterIo {
        let node = Node::new(&c.prefix, worker_id.clone(), interest_timeout, rematch_cooldown);
        let channel = node.channel().as_bytes().to_vec();
        let name = format!("chatd-{}", worker_id.replace(['/', '#'], "-"));
        ClusterIo {
            commands: RedisConn {
                link: Link::new(c.redis.clone(), name.clone(), Role::Commands),
                socket: None,
                token: REDIS_COMMANDS,
            },
            subscriber: RedisConn {
                link: Link::new(
                    c.redis.clone(),
                    name,
                    Role::Subscriber { channels: vec![channel] },
                ),
                socket: None,
                token: REDIS_SUBSCRIBER,
            },
            node,
            metrics_at: None,
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.commands.link.poll_timeout(),
            self.subscriber.link.poll_timeout(),
            self.node.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn handle_ready(
        &mut self,
        now: Instant,
        token: Token,
        scratch: &mut [u8],
        log: &Logger,
    ) {
        if token == REDIS_COMMANDS {
            self.commands.handle_ready(now, scratch, log);
        } else {
            self.subscriber.handle_ready(now, scratch, log);
        }
    }

    /// Reconnects, and expires what waits for Redis (a connect or a reply past its time
    /// takes the link down; an idle link is pinged).
    pub(super) fn handle_timeout(&mut self, now: Instant, registry: &mio::Registry, log: &Logger) {
        self.commands.link.handle_timeout(now);
        self.subscriber.link.handle_timeout(now);
        self.commands.connect(now, registry, log);
        self.subscriber.connect(now, registry, log);
    }

    /// Hands the links' events to the node, and the node's events to the application.
    pub(super) fn deliver_events<A: App, S: crate::endpoint::Transport>(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint<A, S>,
        log: &Logger,
    ) {
        let was_up = self.node.is_up();
        while let Some(event) = self.commands.link.poll_event() {
            match event {
                LinkEvent::Reply { tag, value, rtt } => self.node.handle_reply(tag, value, rtt),
                LinkEvent::Up => {
                    if self.subscriber.link.is_ready() && !self.node.is_up() {
                        self.node.handle_up(now);
                    }
                }
                LinkEvent::Down { failed, reason } => {
                    self.commands.socket = None;
                    warn!(log, "redis link down"; "link" => "commands", "reason" => %reason);
                    self.node.handle_down(failed);
                }
                LinkEvent::Message { .. } | LinkEvent::Subscribed { .. } => {}
            }
        }
        while let Some(event) = self.subscriber.link.poll_event() {
            match event {
                LinkEvent::Message { payload, .. } => self.node.handle_message(&payload),
                LinkEvent::Up => {
                    if self.commands.link.is_ready() && !self.node.is_up() {
                        self.node.handle_up(now);
                    }
                }
                // Without the channel, matches and lines from elsewhere would be lost.
                LinkEvent::Down { reason, .. } => {
                    self.subscriber.socket = None;
                    warn!(log, "redis link down"; "link" => "subscriber", "reason" => %reason);
                    self.node.handle_down([]);
                }
                LinkEvent::Reply { .. } | LinkEvent::Subscribed { .. } => {}
            }
        }
        if self.node.is_up() != was_up {
            endpoint.set_unavailable((!self.node.is_up()).then_some("redis link down"));
        }
        while let Some(event) = self.node.poll_event() {
            endpoint.with_app(|app, out| app.handle_cluster_event(now, event, out));
        }
        if self.metrics_at.is_none_or(|t| now >= t + crate::cluster::BEAT_INTERVAL) {
            self.metrics_at = Some(now);
            let mut text = String::new();
            self.node.write_metrics(&mut text);
            endpoint.set_extra_metrics(text);
        }
    }

    /// Takes the application's operations (and the heartbeat) into commands for the link.
    pub(super) fn take_operations<A: App, S: crate::endpoint::Transport>(
        &mut self,
        now: Instant,
        endpoint: &mut Endpoint<A, S>,
    ) {
        while let Some(op) = endpoint.app_mut().poll_cluster_op() {
            self.node.handle_op(op);
        }
        self.node.flush_batches();
        if self.node.is_beat_due(now) {
            // Walks every person here: once a second, not once a turn.
            let mut pairs = Vec::new();
            let online = endpoint.app().cluster_state(&mut pairs);
            self.node.handle_timeout(now, online, &pairs);
        }
        while let Some((tag, args)) = self.node.poll_command() {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            if self.commands.link.send(now, tag.clone(), &args).is_err() {
                self.node.handle_refused();
                if let Tag::Search(peer) = tag {
                    let event = ClusterEvent::SearchFailed { peer };
                    endpoint.with_app(|app, out| app.handle_cluster_event(now, event, out));
                }
            }
        }
    }

    pub(super) fn transmit(&mut self, now: Instant, _log: &Logger) {
        self.commands.transmit(now);
        self.subscriber.transmit(now);
    }
}
