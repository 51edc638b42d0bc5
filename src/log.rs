//! Logging: one root `slog::Logger` for the process, human-readable on the terminal, with a
//! level that a reload can change while running.
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use slog::{Drain, Level, Logger, OwnedKVList, Record};

/// A level shared between the logger and whoever may change it (a reload).
#[derive(Debug, Clone)]
pub struct LevelSwitch(Arc<AtomicUsize>);

impl LevelSwitch {
    /// A switch starting at `level`.
    pub fn new(level: Level) -> LevelSwitch {
        LevelSwitch(Arc::new(AtomicUsize::new(level.as_usize())))
    }

    /// Sets the level; records less severe than it are dropped from now on.
    pub fn set(&self, level: Level) {
        self.0.store(level.as_usize(), Ordering::Relaxed);
    }

    /// The current level.
    pub fn get(&self) -> Level {
        Level::from_usize(self.0.load(Ordering::Relaxed)).unwrap_or(Level::Info)
    }
}

/// A drain that passes on records at or above the switch's level.
#[derive(Debug)]
struct Filter<D> {
    drain: D,
    level: LevelSwitch,
}

impl<D: Drain> Drain for Filter<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<Self::Ok, Self::Err> {
        if record.level().as_usize() <= self.level.0.load(Ordering::Relaxed) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A logger writing human-readable lines to stderr, filtered by `level`.
pub fn terminal(level: &LevelSwitch) -> Logger {
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let format = slog_term::FullFormat::new(decorator).build();
    // A mutex keeps lines whole; logging is rare enough (never per message) not to contend.
    let drain = std::sync::Mutex::new(format).fuse();
    let drain = Filter { drain, level: level.clone() }.fuse();
    Logger::root(drain, slog::o!())
}
