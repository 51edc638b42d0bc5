//! The chatd server with an echo application: every message comes back to its sender.
//! The target of the Autobahn conformance run: `cargo run --release --example echo -- 127.0.0.1:9001`.
use std::time::Instant;

use chatd::{
    app::{Action, App, Event, Message, PeerId},
    config::{Config, LogLevel},
    http::Site,
    log::{self, LevelSwitch},
    server::Server,
};

#[derive(Debug)]
struct Echo;

impl App for Echo {
    type Settings = ();

    fn handle_event(
        &mut self,
        _now: Instant,
        peer: PeerId,
        event: Event<'_>,
        out: &mut Vec<Action>,
    ) {
        let message = match event {
            Event::Text(t) => Message::Text(t.to_owned()),
            Event::Binary(b) => Message::Binary(b.to_vec()),
            Event::Open { .. } | Event::Closed { .. } => return,
        };
        out.push(Action::Send { to: peer, message });
    }
}

fn main() -> std::io::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let config = Config {
        listen: listen
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        log_level: LogLevel::Warn,
        // The conformance suite sends messages of up to 16 MiB.
        max_message_bytes: 32 << 20,
        max_outbound_bytes: 128 << 20,
        ..Config::default()
    };
    let level = LevelSwitch::new(config.log_level.to_slog());
    let log = log::terminal(&level);
    let mut server = Server::bind(config, Site::embedded(), Echo, log)?;
    let notifier = chatd::notify::Notifier::from_env()?;
    server.handle_signals(chatd::server::Control { level, log_file: None, notifier })?;
    println!("echo listening on ws://{}/ws", server.local_addr());
    server.run()
}
