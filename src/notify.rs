//! systemd's readiness protocol (sd_notify): datagrams such as `READY=1` sent to the socket named
//! by `$NOTIFY_SOCKET`. Without that variable every call does nothing.
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
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the time into `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// `STOPPING=1`: a graceful stop began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}
