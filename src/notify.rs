//! systemd's readiness protocol (sd_notify): datagrams such as `READY=1` sent to the socket named
//! by `$NOTIFY_SOCKET`. Without that variable every call does nothing.
//!
//! Owns: systemd's notify protocol. May not touch: anything else.
use std::{io, os::unix::net::UnixDatagram};

/// The notify socket, if systemd gave one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and removes it from the
    /// environment so that no child inherits it.
    pub fn from_env() -> io::Result<Notifier> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { target: None });
        };
        // Called at start-up, while the process has one thread.
        std::env::remove_var("NOTIFY_SOCKET");
        let name = name.to_string_lossy().into_owned();
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&name)?,
        };
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, addr)) })
    }

    /// Whether systemd listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            let _ = socket.send_to_addr(state.as_bytes(), addr);
        }
    }

    /// `READY=1`: serving (at start, and after a reload).
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// `RELOADING=1` with the monotonic time, as `Type=notify-reload` requires.
    pub fn reloading(&self) {
        self.send(&reloading_message(monotonic_usec()));
    }

    /// `STOPPING=1`: a graceful stop began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC` is read on.
fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the time into `ts` and reports failure through its return
    // value, in which case `ts` is not used.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (Ok(sec), Ok(nsec)) = (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) else {
        return Err(io::Error::other("CLOCK_MONOTONIC before its epoch"));
    };
    Ok(sec.saturating_mul(1_000_000).saturating_add(nsec / 1_000))
}

/// The reload notification. Without a clock reading it carries no `MONOTONIC_USEC` (a made-up
/// one would be a lie systemd cannot tell from the truth) and says why in `STATUS`, which
/// `systemctl status` shows.
fn reloading_message(usec: io::Result<u64>) -> String {
    match usec {
        Ok(usec) => format!("RELOADING=1\nMONOTONIC_USEC={usec}"),
        Err(e) => format!("RELOADING=1\nSTATUS=reloading; no MONOTONIC_USEC: clock_gettime: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_is_read_and_does_not_go_back() {
        let a = monotonic_usec().unwrap();
        let b = monotonic_usec().unwrap();
        assert!(a > 0 && b >= a, "{a} then {b}");
    }

    #[test]
    fn a_failed_clock_reading_sends_no_timestamp() {
        assert_eq!(reloading_message(Ok(42)), "RELOADING=1\nMONOTONIC_USEC=42");
        let failed = reloading_message(Err(io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(failed.starts_with("RELOADING=1\nSTATUS="), "{failed}");
        assert!(!failed.contains("MONOTONIC_USEC="), "{failed}");
        assert!(failed.contains("clock_gettime"), "{failed}");
    }
}
