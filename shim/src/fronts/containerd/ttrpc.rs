//! ttrpc framing on the shim's loop (github.com/containerd/ttrpc, PROTOCOL.md): a
//! 10-byte header (data length u32 BE, stream id u32 BE, message type, flags), then
//! the data; requests and responses are protobuf `Request`/`Response`. One [`Link`]
//! is one connection, served (containerd calling the task service) or dialled (the
//! shim forwarding events): bytes in, whole frames out, frames queued out with a bound.
//! An oversized frame is skipped, never buffered, and reported so that its stream can
//! be answered with an error.

use crate::fronts::out_queue::OutQueue;
use mio::net::UnixStream;
use std::io::{self, Read};

pub const HEADER: usize = 10;
/// The largest frame data ttrpc allows (4 MiB); longer frames are refused.
pub const MAX_DATA: usize = 4 << 20;
pub const REQUEST: u8 = 1;
pub const RESPONSE: u8 = 2;
/// The most one read takes in (a frame's data is read in pieces of at most this).
const READ_CHUNK: usize = 64 << 10;

/// gRPC status codes (google.golang.org/grpc/codes), as containerd's errdefs read them.
pub mod code {
    pub const OK: i32 = 0;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// What reading found.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Frame {
        stream: u32,
        kind: u8,
        flags: u8,
        data: Vec<u8>,
    },
    /// A frame longer than MAX_DATA: its data is being skipped.
    Oversized {
        stream: u32,
        kind: u8,
        len: u32,
    },
    /// Nothing more until the socket is readable again.
    Drained,
    Closed,
}

pub struct Link {
    pub stream: UnixStream,
    input: Vec<u8>,
    /// Data bytes of an oversized frame still to throw away.
    skip: usize,
    out: OutQueue,
    pub read_closed: bool,
}

impl Link {
    pub fn new(stream: UnixStream) -> Link {
        Link {
            stream,
            input: Vec::new(),
            skip: 0,
            out: OutQueue::default(),
            read_closed: false,
        }
    }

    /// The next whole frame, reading the socket only when none is buffered.
    pub fn next_input(&mut self) -> Input {
        loop {
            if let Some(input) = self.take_frame() {
                return input;
            }
            if self.read_closed {
                return Input::Closed;
            }
            match self.read_some() {
                Ok(0) => self.read_closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.input.is_empty() {
                        // An idle connection holds no buffer.
                        self.input = Vec::new();
                    }
                    return Input::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.read_closed = true,
            }
        }
    }

    /// Reads into the input buffer: what the frame being read (or skipped) still
    /// needs, at least a page and at most READ_CHUNK.
    fn read_some(&mut self) -> io::Result<usize> {
        let needed = if self.skip > 0 {
            self.skip
        } else {
            match parse_header(&self.input) {
                Some((len, ..)) => (HEADER + len as usize).saturating_sub(self.input.len()),
                None => HEADER - self.input.len(),
            }
        };
        let want = needed.clamp(4096, READ_CHUNK);
        let start = self.input.len();
        self.input.resize(start + want, 0);
        let read = self.stream.read(&mut self.input[start..]);
        self.input.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    fn take_frame(&mut self) -> Option<Input> {
        if self.skip > 0 {
            let n = self.skip.min(self.input.len());
            self.input.drain(..n);
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        let (len, stream, kind, flags) = parse_header(&self.input)?;
        let len = len as usize;
        if len > MAX_DATA {
            self.input.drain(..HEADER);
            self.skip = len;
            return Some(Input::Oversized {
                stream,
                kind,
                len: len as u32,
            });
        }
        if self.input.len() < HEADER + len {
            return None;
        }
        let rest = self.input.split_off(HEADER + len);
        let mut frame = std::mem::replace(&mut self.input, rest);
        frame.drain(..HEADER);
        Some(Input::Frame {
            stream,
            kind,
            flags,
            data: frame,
        })
    }

    /// Queues one frame; false when the peer is past the bound (drop it).
    pub fn queue(&mut self, stream: u32, kind: u8, data: &[u8]) -> bool {
        let mut frame = Vec::with_capacity(HEADER + data.len());
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.push(kind);
        frame.push(0);
        frame.extend_from_slice(data);
        self.out.push(frame)
    }

    pub fn has_pending(&self) -> bool {
        self.out.has_pending()
    }

    /// Writes what the socket takes. Err: the peer is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush(&mut self.stream)
    }
}

/// (data length, stream id, type, flags) once a whole header is buffered.
fn parse_header(b: &[u8]) -> Option<(u32, u32, u8, u8)> {
    let h = b.get(..HEADER)?;
    Some((
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        h[8],
        h[9],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (Link, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Link::new(UnixStream::from_std(a)), b)
    }

    fn frame(len: u32, stream: u32, kind: u8, data: &[u8]) -> Vec<u8> {
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn frames_split_and_joined() {
        let (mut link, mut peer) = pair();
        let mut bytes = frame(3, 1, REQUEST, b"abc");
        bytes.extend(frame(0, 3, REQUEST, b""));
        peer.write_all(&bytes[..5]).unwrap();
        assert_eq!(link.next_input(), Input::Drained);
        peer.write_all(&bytes[5..]).unwrap();
        assert_eq!(
            link.next_input(),
            Input::Frame {
                stream: 1,
                kind: REQUEST,
                flags: 0,
                data: b"abc".to_vec()
            }
        );
        assert_eq!(
            link.next_input(),
            Input::Frame {
                stream: 3,
                kind: REQUEST,
                flags: 0,
                data: vec![]
            }
        );
        assert_eq!(link.next_input(), Input::Drained);
        drop(peer);
        assert_eq!(link.next_input(), Input::Closed);
    }

    #[test]
    fn oversized_frames_are_skipped_not_buffered() {
        let (mut link, mut peer) = pair();
        let big = (MAX_DATA + 10) as u32;
        peer.write_all(&frame(big, 5, REQUEST, &[])).unwrap();
        assert_eq!(
            link.next_input(),
            Input::Oversized {
                stream: 5,
                kind: REQUEST,
                len: big
            }
        );
        let writer = std::thread::spawn(move || {
            peer.write_all(&vec![7u8; big as usize]).unwrap();
            peer.write_all(&frame(2, 7, REQUEST, b"ok")).unwrap();
            peer
        });
        let mut got = None;
        while got.is_none() {
            match link.next_input() {
                Input::Drained => {
                    assert!(link.input.len() <= READ_CHUNK + HEADER);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                other => got = Some(other),
            }
        }
        assert_eq!(
            got.unwrap(),
            Input::Frame {
                stream: 7,
                kind: REQUEST,
                flags: 0,
                data: b"ok".to_vec()
            }
        );
        drop(writer.join().unwrap());
    }

    #[test]
    fn queued_frames_carry_the_header() {
        let (mut link, mut peer) = pair();
        assert!(link.queue(9, RESPONSE, b"xy"));
        link.flush().unwrap();
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got.to_vec(), frame(2, 9, RESPONSE, b"xy"));
        assert!(!link.has_pending());
    }
}

/// A [`Link`] in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LinkRecord {
    fd: std::os::fd::RawFd,
    #[serde(with = "crate::handover::hex")]
    input: Vec<u8>,
    skip: usize,
    #[serde(with = "crate::handover::hex_list")]
    out: Vec<Vec<u8>>,
    written: usize,
    read_closed: bool,
}

impl Link {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<LinkRecord, String> {
        let (out, written) = self.out.parts();
        Ok(LinkRecord {
            fd: fds.pass(&self.stream)?,
            input: self.input.clone(),
            skip: self.skip,
            out,
            written,
            read_closed: self.read_closed,
        })
    }

    /// The link again (not yet watched: the caller registers its stream).
    pub fn take_over(r: LinkRecord, fds: &mut crate::handover::Adopting) -> Result<Link, String> {
        let stream = fds.take_stream(r.fd, "task API connection")?;
        Ok(Link {
            stream,
            input: r.input,
            skip: r.skip,
            out: OutQueue::from_parts(r.out, r.written),
            read_closed: r.read_closed,
        })
    }
}
