//! Signals as a mio event source (signal-hook-mio): the handler only records the signal; the
//! loop reads what arrived and acts on it.
//!
//! Owns: turning signals into values. May not touch: what they cause (the loop acts).
use std::io;

use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

/// What a signal asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM, SIGQUIT: stop gracefully.
    Terminate,
    /// SIGINT: stop gracefully; a second one stops at once.
    Interrupt,
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR1: reopen the log file.
    Reopen,
}

/// The registered signal source.
pub(crate) struct SignalSource(Signals);

impl std::fmt::Debug for SignalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalSource")
    }
}

impl SignalSource {
    /// Installs the handlers and registers the source under `token`.
    pub(crate) fn register(registry: &Registry, token: Token) -> io::Result<SignalSource> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1])?;
        registry.register(&mut signals, token, Interest::READABLE)?;
        Ok(SignalSource(signals))
    }

    /// The signals that arrived since the last call, in order.
    pub(crate) fn pending(&mut self) -> impl Iterator<Item = Signal> + '_ {
        self.0.pending().filter_map(|s| match s {
            SIGTERM | SIGQUIT => Some(Signal::Terminate),
            SIGINT => Some(Signal::Interrupt),
            SIGHUP => Some(Signal::Reload),
            SIGUSR1 => Some(Signal::Reopen),
            _ => None,
        })
    }
}
