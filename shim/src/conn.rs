//! One client connection: bytes in, complete lines out; answers and events queued out
//! with a bound, so a client that stops reading cannot grow the shim without limit.

use mio::net::UnixStream;
use std::collections::VecDeque;
use std::io::{self, Write};
use tether_protocol::frame::{Line, LineBuffer};
use tether_protocol::MAX_LINE;

/// Bytes queued for one client before it counts as stuck and is disconnected.
pub const MAX_QUEUED: usize = 8 << 20;

pub struct Conn {
    pub stream: UnixStream,
    input: LineBuffer,
    out: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already written.
    written: usize,
    queued: usize,
    /// Receives events (after `subscribe`).
    pub subscribed: bool,
    /// The client shut down its sending side (`socat` at the end of its input): no
    /// more requests, but answers still due are sent.
    pub read_closed: bool,
}

/// What a read found besides lines.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Nothing more for now.
    Open,
    /// The client hung up.
    Closed,
    /// A line over [`MAX_LINE`]: the connection must be closed.
    TooLong,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            input: LineBuffer::new(MAX_LINE),
            out: VecDeque::new(),
            written: 0,
            queued: 0,
            subscribed: false,
            read_closed: false,
        }
    }

    /// Reads what is available; returns the complete lines.
    pub fn read_lines(&mut self) -> (Vec<Vec<u8>>, ReadEnd) {
        let mut lines = Vec::new();
        if self.read_closed {
            return (lines, ReadEnd::Closed);
        }
        loop {
            match self.input.read_from(&mut self.stream) {
                Ok(0) => return (lines, ReadEnd::Closed),
                Ok(_) => loop {
                    match self.input.next_line() {
                        Line::Complete(l) => lines.push(l),
                        Line::Incomplete => break,
                        Line::TooLong => return (lines, ReadEnd::TooLong),
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (lines, ReadEnd::Open),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return (lines, ReadEnd::Closed),
            }
        }
    }

    /// Queues one line; false when the bound is passed (the caller disconnects).
    pub fn queue(&mut self, line: Vec<u8>) -> bool {
        self.queued += line.len();
        self.out.push_back(line);
        self.queued <= MAX_QUEUED
    }

    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what the socket takes. Err: the client is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(front) = self.out.front() {
            match self.stream.write(&front[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.queued -= front.len();
                        self.written = 0;
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A last word before closing (best effort, never blocks).
    pub fn say_goodbye(&mut self, reason: &str) {
        if self.written != 0 {
            // Mid-line: anything more would garble the line being written.
            return;
        }
        let line = serde_json::json!({"jsonrpc": "2.0", "method": "closing", "params": {"reason": reason}});
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let _ = self.stream.write(&bytes);
    }
}
