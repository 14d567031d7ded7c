//! One output stream to several sinks at once: each chunk is read once and handed to
//! the CRI log, the attach clients, a capture buffer, and the plain target (a FIFO
//! or file). With exactly one plain sink the stream is a splice relay instead (see
//! `relay`); a fan-out copies, once.
//!
//! Who may hold the stream back: a FIFO (its reader away: back-pressure, as with a
//! relay) and an attach client past its queue's bound (until it stalls: see
//! `attach`). The log never blocks (a full disk drops and counts), a capture keeps
//! what its limit allows and drains the rest.

use super::attach::AttachHub;
use super::cri_log::CriLog;
use super::drops::{refuses_bytes, DropReport, Drops};
use super::host_end::set_nonblocking;
use super::relay::RelayParts;
use super::Stream;
use crate::registry::{Io, Owner};
use mio::{Interest, Token};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

/// Bytes read at once: fewer, larger reads keep the shim's share of a busy stream
/// small (the pipe holds up to 1 MiB).
const CHUNK: usize = 256 << 10;
/// A read buffer unused this long is given back (a busy stream keeps its own).
const IDLE_BUFFER: std::time::Duration = std::time::Duration::from_secs(1);

/// Output kept in memory for an `exec` with `capture`.
#[derive(Debug, Default)]
pub struct Capture {
    pub bytes: Vec<u8>,
    pub limit: usize,
    pub truncated: bool,
}

impl Capture {
    fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }
}

/// The plain target: a FIFO or a file.
struct Plain {
    fd: OwnedFd,
    /// An output FIFO's read end the shim holds (see `host_end`).
    keepalive: Option<OwnedFd>,
    token: Option<Token>,
    /// Bytes the target has not taken yet: while any wait, nothing more is read.
    pending: Vec<u8>,
    drops: Drops,
}

pub struct Fanout {
    pub stream: Stream,
    src: Option<OwnedFd>,
    src_token: Option<Token>,
    src_is_tty: bool,
    plain: Option<Plain>,
    pub capture: Option<Capture>,
    /// Allocated while output flows; given back once idle (see IDLE_BUFFER).
    buf: Vec<u8>,
    buf_used: Option<Instant>,
    /// The source has ended (pending bytes may still be on their way).
    eof: bool,
}

impl Fanout {
    pub fn new(stream: Stream, src: OwnedFd, src_is_tty: bool) -> Result<Fanout, String> {
        set_nonblocking(&src)?;
        Ok(Fanout {
            stream,
            src: Some(src),
            src_token: None,
            src_is_tty,
            plain: None,
            capture: None,
            buf: Vec::new(),
            buf_used: None,
            eof: false,
        })
    }

    pub fn with_plain(mut self, fd: OwnedFd, keepalive: Option<OwnedFd>) -> Result<Fanout, String> {
        set_nonblocking(&fd)?;
        self.plain = Some(Plain {
            fd,
            keepalive,
            token: None,
            pending: Vec::new(),
            drops: Drops::default(),
        });
        Ok(self)
    }

    pub fn with_capture(mut self, limit: usize) -> Fanout {
        self.capture = Some(Capture {
            limit,
            ..Default::default()
        });
        self
    }

    /// A splice relay becomes a fan-out (an attach client came): same fds, same
    /// counts, nothing lost in between.
    pub fn from_relay(stream: Stream, parts: RelayParts) -> Result<Fanout, String> {
        let mut f =
            Fanout::new(stream, parts.src, parts.src_is_tty)?.with_plain(parts.dst, parts.keepalive)?;
        if let Some(plain) = f.plain.as_mut() {
            plain.pending = parts.pending;
            plain.drops = parts.drops;
        }
        Ok(f)
    }

    pub fn register(&mut self, io: &mut Io<'_>) {
        if let Some(src) = &self.src {
            self.src_token = io.watch_fd(Owner::Core, src.as_raw_fd(), Interest::READABLE).ok();
        }
        if let Some(plain) = self.plain.as_mut() {
            // A file is always writable and epoll refuses it: no token.
            plain.token = io
                .watch_fd(Owner::Core, plain.fd.as_raw_fd(), Interest::WRITABLE)
                .ok();
        }
    }

    /// Its source, while it has one.
    pub fn source(&self) -> Option<&OwnedFd> {
        self.src.as_ref()
    }

    pub fn owns(&self, token: Token) -> bool {
        self.src_token == Some(token) || self.plain.as_ref().is_some_and(|p| p.token == Some(token))
    }

    /// Every byte of the source is where it goes.
    pub fn is_done(&self) -> bool {
        self.eof && self.plain.as_ref().is_none_or(|p| p.pending.is_empty())
    }

    /// Not finished, and bytes wait: taken but not yet written, or in the source.
    pub fn output_waiting(&self) -> bool {
        !self.is_done()
            && (self.plain.as_ref().is_some_and(|p| !p.pending.is_empty())
                || self.src.as_ref().is_some_and(|s| super::relay::queued(s) > 0))
    }

    /// Moves what can be moved now. `process_exited` lets a PTY's EIO count as the end.
    pub fn pump(
        &mut self,
        io: &mut Io<'_>,
        process_exited: bool,
        mut log: Option<&mut CriLog>,
        mut attach: Option<&mut AttachHub>,
    ) {
        loop {
            if let Some(plain) = self.plain.as_mut() {
                if !plain.write_pending(self.stream) {
                    return; // a FIFO's reader is behind: back-pressure
                }
            }
            if self.eof {
                return self.close_src(io);
            }
            if attach.as_deref().is_some_and(AttachHub::holding_back) {
                return; // an attach client is behind: back-pressure, up to a stall
            }
            let Some(src) = self.src.as_ref() else { return };
            if self.buf.is_empty() {
                self.buf = vec![0; CHUNK];
            }
            self.buf_used = Some(Instant::now());
            match nix::unistd::read(src.as_raw_fd(), &mut self.buf) {
                Ok(0) => self.end(io, log.as_deref_mut()),
                Ok(n) => {
                    let chunk = &self.buf[..n];
                    if let Some(log) = log.as_deref_mut() {
                        log.write(self.stream, chunk, &tether_protocol::time::now());
                    }
                    if let Some(hub) = attach.as_deref_mut() {
                        hub.broadcast(self.stream, chunk, io);
                    }
                    if let Some(capture) = self.capture.as_mut() {
                        capture.push(chunk);
                    }
                    if let Some(plain) = self.plain.as_mut() {
                        plain.pending.extend_from_slice(chunk);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EIO) if self.src_is_tty && !process_exited => return,
                Err(Errno::EIO) if self.src_is_tty => self.end(io, log.as_deref_mut()),
                Err(e) => {
                    crate::log!("{} fan-out: reading: {e}", self.stream.name());
                    self.end(io, log.as_deref_mut());
                }
            }
        }
    }

    /// The source ended: a log's unfinished line goes out, the source closes.
    fn end(&mut self, io: &mut Io<'_>, log: Option<&mut CriLog>) {
        if let Some(log) = log {
            log.finish(self.stream, &tether_protocol::time::now());
            // Made again if the other stream writes on.
            log.release_buffers();
        }
        self.eof = true;
        self.buf = Vec::new();
        self.close_src(io);
        crate::sys::malloc_trim();
    }

    fn close_src(&mut self, io: &mut Io<'_>) {
        if let (Some(src), Some(token)) = (self.src.take(), self.src_token.take()) {
            io.unwatch_fd(src.as_raw_fd(), token);
        }
        if self.is_done() {
            if let Some(plain) = self.plain.as_mut() {
                if let Some(token) = plain.token.take() {
                    io.unwatch_fd(plain.fd.as_raw_fd(), token);
                }
            }
        }
    }

    pub fn take_drop_report(&mut self, now: Instant, force: bool) -> Option<DropReport> {
        let done = self.is_done();
        self.plain.as_mut()?.drops.take_report(now, force, done)
    }

    /// When this fan-out must be looked at again: a drop report, or its read buffer
    /// to give back.
    pub fn due(&self) -> Option<Instant> {
        let report = self.plain.as_ref().and_then(|p| p.drops.report_due());
        let idle = self
            .buf_used
            .filter(|_| !self.buf.is_empty())
            .map(|t| t + IDLE_BUFFER);
        report.into_iter().chain(idle).min()
    }

    /// Gives the read buffer back if no output came for a while; true if it did.
    pub fn trim(&mut self, now: Instant) -> bool {
        if self.buf_used.is_some_and(|t| now >= t + IDLE_BUFFER) {
            self.buf = Vec::new();
            self.buf_used = None;
            return true;
        }
        false
    }

    pub fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn dropped_total(&self) -> u64 {
        self.plain.as_ref().map_or(0, |p| p.drops.total())
    }

    /// The process is gone and its exit out: a FIFO's read end goes once nothing
    /// unread is left behind it.
    pub fn release_keepalive_if_drained(&mut self) {
        if let Some(plain) = self.plain.as_mut().filter(|p| self.eof && p.pending.is_empty()) {
            super::host_end::release_keepalive_if_drained(&mut plain.keepalive);
        }
    }

    /// Frees everything (the process is being deleted, or the shim exits).
    pub fn release(&mut self, io: &mut Io<'_>) {
        self.eof = true;
        if let Some(plain) = self.plain.as_mut() {
            plain.pending.clear();
            if let Some(token) = plain.token.take() {
                io.unwatch_fd(plain.fd.as_raw_fd(), token);
            }
        }
        self.close_src(io);
        self.plain = None;
        self.buf = Vec::new();
    }
}

impl Plain {
    /// Writes what waits. False while a FIFO cannot take it (the caller stops
    /// reading); a target that refuses bytes (full disk) has them dropped instead.
    fn write_pending(&mut self, stream: Stream) -> bool {
        while !self.pending.is_empty() {
            if self.drops.dropping() {
                self.drops.count(self.pending.len());
                self.pending.clear();
                break;
            }
            match nix::unistd::write(&self.fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.drops.recovered(stream.name());
                }
                Err(Errno::EAGAIN) => return false,
                Err(Errno::EINTR) => {}
                Err(e) if refuses_bytes(e) => {
                    let n = self.pending.len();
                    self.pending.clear();
                    self.drops.refused(e, n, stream.name());
                }
                Err(e) => {
                    // EPIPE cannot come (the shim holds a read end); anything else
                    // ends this target, never the process.
                    crate::log!("{} output: {e}; its target takes no more", stream.name());
                    let n = self.pending.len();
                    self.pending.clear();
                    self.drops.refused(e, n, stream.name());
                }
            }
        }
        if self.pending.capacity() > CHUNK {
            self.pending = Vec::new();
        }
        true
    }
}

/// A [`Fanout`] in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct FanoutRecord {
    stream: Stream,
    src: Option<std::os::fd::RawFd>,
    src_is_tty: bool,
    plain: Option<PlainRecord>,
    capture: Option<CaptureRecord>,
    eof: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PlainRecord {
    fd: std::os::fd::RawFd,
    keepalive: Option<std::os::fd::RawFd>,
    #[serde(with = "crate::handover::hex")]
    pending: Vec<u8>,
    drops: super::drops::DropsRecord,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CaptureRecord {
    #[serde(with = "crate::handover::hex")]
    bytes: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Fanout {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<FanoutRecord, String> {
        let plain = match &self.plain {
            Some(p) => Some(PlainRecord {
                fd: fds.pass(&p.fd)?,
                keepalive: fds.pass_opt(p.keepalive.as_ref())?,
                pending: p.pending.clone(),
                drops: p.drops.hand_over(),
            }),
            None => None,
        };
        Ok(FanoutRecord {
            stream: self.stream,
            src: fds.pass_opt(self.src.as_ref())?,
            src_is_tty: self.src_is_tty,
            plain,
            capture: self.capture.as_ref().map(|c| CaptureRecord {
                bytes: c.bytes.clone(),
                limit: c.limit,
                truncated: c.truncated,
            }),
            eof: self.eof,
        })
    }

    /// The fan-out again, registered with the new loop.
    pub fn take_over(
        r: FanoutRecord,
        fds: &mut crate::handover::Adopting,
        io: &mut Io<'_>,
    ) -> Result<Fanout, String> {
        let plain = match r.plain {
            Some(p) => Some(Plain {
                fd: fds.take(p.fd)?,
                keepalive: fds.take_opt(p.keepalive)?,
                token: None,
                pending: p.pending,
                drops: Drops::take_over(p.drops),
            }),
            None => None,
        };
        let mut fanout = Fanout {
            stream: r.stream,
            src: fds.take_opt(r.src)?,
            src_token: None,
            src_is_tty: r.src_is_tty,
            plain,
            capture: r.capture.map(|c| Capture {
                bytes: c.bytes,
                limit: c.limit,
                truncated: c.truncated,
            }),
            buf: Vec::new(),
            buf_used: None,
            eof: r.eof,
        };
        // A finished fan-out's plain target is no longer watched (see close_src).
        if fanout.is_done() {
            if let Some(src) = &fanout.src {
                fanout.src_token = io.watch_fd(Owner::Core, src.as_raw_fd(), Interest::READABLE).ok();
            }
        } else {
            fanout.register(io);
        }
        Ok(fanout)
    }
}
