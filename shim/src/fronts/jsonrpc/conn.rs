//! One client connection: bytes in, complete lines out; answers and events queued
//! out with bounds, so a client cannot grow the shim without limit.

use crate::fronts::out_queue::OutQueue;
use mio::net::UnixStream;
use std::io::{self, Write};
use tether_protocol::frame::{Line, LineBuffer};
use tether_protocol::MAX_LINE;

pub use crate::fronts::out_queue::MAX_QUEUED;
/// While more than this is queued for a client, its requests are not read: a client
/// that sends without reading its answers is held back by its own socket.
pub const PAUSE_READING_AT: usize = 256 << 10;

pub struct Conn {
    pub stream: UnixStream,
    input: LineBuffer,
    out: OutQueue,
    /// Receives events (after `subscribe`).
    pub subscribed: bool,
    /// The client shut down its sending side (`socat` at the end of its input): no
    /// more requests, but answers still due are sent.
    pub read_closed: bool,
    /// Reading stopped until the queue drains (see PAUSE_READING_AT).
    pub paused: bool,
    /// Calls of this client whose answers are still to come.
    pub pending: usize,
}

/// What reading found.
pub enum Input {
    Line(Vec<u8>),
    /// Nothing more until the socket is readable again.
    Drained,
    Closed,
    TooLong,
}

impl Conn {
    pub fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            input: LineBuffer::new(MAX_LINE),
            out: OutQueue::default(),
            subscribed: false,
            read_closed: false,
            paused: false,
            pending: 0,
        }
    }

    /// The next complete line, reading the socket only when none is buffered.
    pub fn next_input(&mut self) -> Input {
        loop {
            match self.input.next_line() {
                Line::Complete(l) => return Input::Line(l),
                Line::TooLong => return Input::TooLong,
                Line::Incomplete => {}
            }
            if self.read_closed {
                return Input::Closed;
            }
            match self.input.read_from(&mut self.stream) {
                Ok(0) => self.read_closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.read_closed = true,
            }
        }
    }

    /// Queues one line; false when the bound is passed (the caller disconnects).
    pub fn queue(&mut self, line: Vec<u8>) -> bool {
        self.out.push(line)
    }

    pub fn queued(&self) -> usize {
        self.out.queued()
    }

    pub fn has_pending(&self) -> bool {
        self.out.has_pending()
    }

    /// Writes what the socket takes. Err: the client is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush(&mut self.stream)
    }

    /// A last word before closing (best effort, never blocks).
    pub fn say_goodbye(&mut self, reason: &str) {
        if self.out.mid_message() {
            // Mid-line: anything more would garble the line being written.
            return;
        }
        let line = serde_json::json!({"jsonrpc": "2.0", "method": "closing", "params": {"reason": reason}});
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let _ = self.stream.write(&bytes);
    }
}

/// A connection in a hand-over record: its socket by fd, the part of a request line
/// read so far, what is queued for it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ConnRecord {
    fd: std::os::fd::RawFd,
    #[serde(with = "crate::handover::hex")]
    input: Vec<u8>,
    #[serde(with = "crate::handover::hex_list")]
    out: Vec<Vec<u8>>,
    written: usize,
    subscribed: bool,
    read_closed: bool,
    paused: bool,
    pending: usize,
}

impl Conn {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<ConnRecord, String> {
        let (out, written) = self.out.parts();
        Ok(ConnRecord {
            fd: fds.pass(&self.stream)?,
            input: self.input.buffered().to_vec(),
            out,
            written,
            subscribed: self.subscribed,
            read_closed: self.read_closed,
            paused: self.paused,
            pending: self.pending,
        })
    }

    /// The connection again (not yet watched: the caller registers it).
    pub fn take_over(r: ConnRecord, fds: &mut crate::handover::Adopting) -> Result<Conn, String> {
        let stream = fds.take_stream(r.fd, "client connection")?;
        let mut input = LineBuffer::new(MAX_LINE);
        input.extend(&r.input);
        Ok(Conn {
            stream,
            input,
            out: OutQueue::from_parts(r.out, r.written),
            subscribed: r.subscribed,
            read_closed: r.read_closed,
            paused: r.paused,
            pending: r.pending,
        })
    }
}
