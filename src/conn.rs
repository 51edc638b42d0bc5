//! A client socket and its write readiness: the single place where socket results become
//! values (`ReadOutcome`, [`Sent`]). Reading is the loop's (it owns the one read buffer);
//! writing is the endpoint's, through [`Transport`].
//!
//! Owns: the `TcpStream`, the readiness flag. May not touch: protocol state.
use std::{
    io::{self, Read, Write},
    net::Shutdown,
};

use mio::net::TcpStream;

use crate::endpoint::{Sent, Transport};

/// What a read from the socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// `n` bytes were read into the buffer.
    Data(usize),
    /// Nothing more for now; wait for the next readable event.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// A client socket: 8 bytes, registered once for reading and writing (edge-triggered).
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    /// The last write did not hit `WouldBlock` (readiness kept in user space); set again by
    /// a writable event.
    pub(crate) writable: bool,
}

impl Socket {
    pub(crate) fn new(stream: TcpStream) -> Socket {
        Socket { stream, writable: true }
    }

    /// Reads once into `buf`, turning `WouldBlock` and EOF into values.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        read_once(&mut self.stream, buf)
    }
}

/// One `read`, with `WouldBlock` and EOF as values and `Interrupted` retried: the single place
/// where a read's result becomes a value, for client and Redis sockets alike.
fn read_once(r: &mut impl Read, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    loop {
        return match r.read(buf) {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// Writes as much of `buf` as `w` takes now, in as few calls as possible. Returns the bytes
/// written, and clears `writable` when the socket was full (readiness kept in user space).
fn write_now(w: &mut impl Write, buf: &[u8], writable: &mut bool) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match w.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *writable = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

impl Transport for Socket {
    /// Writes as much of `buf` as the socket takes, in as few calls as possible: everything
    /// queued since the last flush goes out in one `write` unless the socket is full.
    fn send(&mut self, buf: &[u8]) -> Sent {
        match write_now(&mut self.stream, buf, &mut self.writable) {
            Ok(n) => Sent::Bytes(n),
            Err(_) => Sent::Failed,
        }
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn shutdown_write(&mut self) {
        // ENOTCONN (the peer reset meanwhile) changes nothing: the read side will say so.
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// A socket to Redis: TCP or a unix socket, with its write readiness.
#[derive(Debug)]
pub(crate) struct RedisSocket {
    stream: RedisStream,
    pub(crate) writable: bool,
    /// The non-blocking connect has not been confirmed yet.
    pub(crate) connecting: bool,
}

#[derive(Debug)]
enum RedisStream {
    Tcp(TcpStream),
    Unix(mio::net::UnixStream),
}

impl RedisSocket {
    /// Starts a non-blocking connect to `addr`. Host names are resolved here, with the system
    /// resolver (blocking, but only once per connection attempt, at most every 100 ms).
    pub(crate) fn connect(addr: &crate::cluster::RedisAddr) -> io::Result<RedisSocket> {
        use std::net::ToSocketAddrs;
        let stream = match addr {
            crate::cluster::RedisAddr::Tcp { host, port } => {
                let to = (host.as_str(), *port)
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                let s = TcpStream::connect(to)?;
                let _ = s.set_nodelay(true);
                RedisStream::Tcp(s)
            }
            crate::cluster::RedisAddr::Unix(path) => {
                RedisStream::Unix(mio::net::UnixStream::connect(path)?)
            }
        };
        Ok(RedisSocket { stream, writable: false, connecting: true })
    }

    /// Registers the socket for reading and writing.
    pub(crate) fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> io::Result<()> {
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        match &mut self.stream {
            RedisStream::Tcp(s) => registry.register(s, token, interest),
            RedisStream::Unix(s) => registry.register(s, token, interest),
        }
    }

    /// After a writable event while connecting: whether the connect succeeded.
    pub(crate) fn finish_connect(&mut self) -> io::Result<bool> {
        let (err, peer) = match &self.stream {
            RedisStream::Tcp(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
            RedisStream::Unix(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err {
            return Err(e);
        }
        match peer {
            Ok(()) => {
                self.connecting = false;
                self.writable = true;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads once, as [`Socket::fill`] does.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        match &mut self.stream {
            RedisStream::Tcp(s) => read_once(s, buf),
            RedisStream::Unix(s) => read_once(s, buf),
        }
    }

    /// Writes as much of `buf` as the socket takes.
    pub(crate) fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            RedisStream::Tcp(s) => write_now(s, buf, &mut self.writable),
            RedisStream::Unix(s) => write_now(s, buf, &mut self.writable),
        }
    }
}
