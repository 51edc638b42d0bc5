//! One client connection: its socket, state, buffers and timeout, and the single place where
//! socket results become values (`ReadOutcome`, `WriteOutcome`).
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr},
    time::Instant,
};

use mio::net::TcpStream;

use crate::ws::Session;

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

/// What a flush of the output buffer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Everything queued was written.
    Drained,
    /// The socket is full; the rest waits for a writable event.
    WouldBlock,
}

/// The state of a connection. It changes by value: `Http` -> `WebSocket` on a good upgrade,
/// anything -> `Closing` when the server decides to end it.
#[derive(Debug)]
pub(crate) enum ConnState {
    /// Reading HTTP request heads (keep-alive, pipelined).
    Http,
    /// An open WebSocket.
    WebSocket(WsConn),
    /// The last bytes (an error response, a close frame) are being flushed; then the write side
    /// is shut and input is read and dropped until the peer closes or the deadline passes.
    Closing {
        /// The write side was shut.
        shut: bool,
        /// The peer already closed its side: drop the connection as soon as the output is out.
        peer_done: bool,
    },
}

/// The WebSocket part of a connection.
#[derive(Debug)]
pub(crate) struct WsConn {
    /// The incoming half.
    pub(crate) session: Session,
    /// A ping was sent because the peer was silent; it must answer before the deadline.
    pub(crate) pinged: bool,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Distinguishes successive occupants of the same slot (see `PeerId`).
    pub(crate) generation: u32,
    pub(crate) state: ConnState,
    /// Unconsumed input (a partial request head or frame); empty and unallocated when idle.
    pub(crate) rbuf: Vec<u8>,
    /// Unsent output; empty and unallocated when idle.
    pub(crate) wbuf: Vec<u8>,
    /// The last write did not hit `WouldBlock` (readiness kept in user space).
    pub(crate) writable: bool,
    /// Queued for a flush at the end of this loop turn.
    pub(crate) dirty: bool,
    /// When this connection next needs attention (request timeout, ping, close).
    pub(crate) deadline: Instant,
    /// The deadline of this connection's live timer entry, if it has one.
    pub(crate) armed: Option<Instant>,
}

impl Conn {
    /// A new connection in the HTTP state.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        generation: u32,
        deadline: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer,
            generation,
            state: ConnState::Http,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            writable: true,
            dirty: false,
            deadline,
            armed: None,
        }
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

    /// Writes as much of `wbuf` as the socket takes, in as few calls as possible: everything
    /// queued since the last flush goes out in one `write` unless the socket is full.
    pub(crate) fn flush(&mut self) -> io::Result<WriteOutcome> {
        let mut written = 0;
        let result = loop {
            if written == self.wbuf.len() {
                break Ok(WriteOutcome::Drained);
            }
            match self.stream.write(&self.wbuf[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break Ok(WriteOutcome::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if written == self.wbuf.len() {
            // Release the memory: an idle connection holds no buffer.
            self.wbuf = Vec::new();
        } else if written > 0 {
            self.wbuf.drain(..written);
        }
        result
    }

    /// Shuts the write side once the last bytes are out, so the peer sees our FIN (the server
    /// closes the TCP connection first, RFC 6455 §7.1.1).
    pub(crate) fn shutdown_write(&mut self) {
        if let ConnState::Closing { shut, .. } = &mut self.state {
            if !*shut {
                *shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
    }

    /// Whether the connection is an open WebSocket.
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self.state, ConnState::WebSocket(_))
    }
}
