//! Logging: one root `slog::Logger` for the process, with a level that a reload can change while
//! running. Lines go to the terminal (coloured), to stderr (plain, for journald) or to a log file
//! that SIGUSR1 and SIGHUP reopen after rotation; as text or as one JSON object per line.
//!
//! Owns: the logger and the log file. May not touch: what is logged (callers decide).
use std::{
    fs::{File, OpenOptions},
    io::{self, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use slog::{Drain, Level, Logger, OwnedKVList, Record};

use crate::config::LogFormat;

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

/// A log file that can be reopened (after logrotate moved it) while loggers keep writing to it.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl LogFile {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile { path: path.to_owned(), file: Arc::new(Mutex::new(open_append(path)?)) })
    }

    /// Opens the path anew and writes there from now on. On failure the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *file = new;
        Ok(())
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A second descriptor for the current file (to send a daemon's stdout and stderr there).
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).try_clone()
    }
}

/// Writes through to whatever file a [`LogFile`] holds now.
struct SharedWriter(Arc<Mutex<File>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

fn root<D>(drain: D, level: &LevelSwitch) -> Logger
where
    D: Drain<Ok = (), Err = slog::Never>
        + Send
        + Sync
        + std::panic::RefUnwindSafe
        + std::panic::UnwindSafe
        + 'static,
{
    Logger::root(Filter { drain, level: level.clone() }.fuse(), slog::o!())
}

/// Builds the process's logger: to `file` if given, else to stderr (coloured when it is a
/// terminal, plain otherwise, as journald wants it), in `format`, filtered by `level`.
///
/// Each record is formatted and written under a mutex, so lines stay whole; logging is never
/// done per message, so the lock does not contend.
pub fn build(format: LogFormat, level: &LevelSwitch, file: Option<&LogFile>) -> Logger {
    match (file, format) {
        (Some(f), LogFormat::Text) => {
            let decorator = slog_term::PlainSyncDecorator::new(SharedWriter(f.file.clone()));
            root(slog_term::FullFormat::new(decorator).build().fuse(), level)
        }
        (Some(f), LogFormat::Json) => {
            let json =
                slog_json::Json::new(SharedWriter(f.file.clone())).add_default_keys().build();
            root(Mutex::new(json).fuse(), level)
        }
        (None, LogFormat::Json) => {
            let json = slog_json::Json::new(io::stderr()).add_default_keys().build();
            root(Mutex::new(json).fuse(), level)
        }
        (None, LogFormat::Text) if io::stderr().is_terminal() => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            root(Mutex::new(slog_term::FullFormat::new(decorator).build()).fuse(), level)
        }
        (None, LogFormat::Text) => {
            let decorator = slog_term::PlainSyncDecorator::new(io::stderr());
            root(slog_term::FullFormat::new(decorator).build().fuse(), level)
        }
    }
}

/// A logger writing human-readable lines to stderr, filtered by `level`.
pub fn terminal(level: &LevelSwitch) -> Logger {
    build(LogFormat::Text, level, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_file_receives_the_next_lines() {
        let dir = std::env::temp_dir().join(format!("chatd-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chatd.log");
        let level = LevelSwitch::new(Level::Info);
        let file = LogFile::open(&path).unwrap();
        let log = build(LogFormat::Json, &level, Some(&file));
        slog::info!(log, "first"; "n" => 1);
        std::fs::rename(&path, dir.join("chatd.log.1")).unwrap();
        file.reopen().unwrap();
        slog::info!(log, "second");
        slog::debug!(log, "filtered out");
        level.set(Level::Debug);
        slog::debug!(log, "now in");
        let old = std::fs::read_to_string(dir.join("chatd.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("\"msg\":\"first\"") && old.contains("\"n\":1"), "{old}");
        assert!(new.contains("\"msg\":\"second\"") && new.contains("now in"), "{new}");
        assert!(!new.contains("filtered out") && !old.contains("second"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
