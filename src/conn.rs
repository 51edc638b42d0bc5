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

    /// Reads once into `buf`, turning `WouldBlock` and EOF into values. `Interrupted` is retried.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => Ok(ReadOutcome::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }
}

impl Transport for Socket {
    /// Writes as much of `buf` as the socket takes, in as few calls as possible: everything
    /// queued since the last flush goes out in one `write` unless the socket is full.
    fn send(&mut self, buf: &[u8]) -> Sent {
        let mut written = 0;
        while written < buf.len() {
            match self.stream.write(&buf[written..]) {
                Ok(0) => return Sent::Failed,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Sent::Failed,
            }
        }
        Sent::Bytes(written)
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn shutdown_write(&mut self) {
        // ENOTCONN (the peer reset meanwhile) changes nothing: the read side will say so.
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}
