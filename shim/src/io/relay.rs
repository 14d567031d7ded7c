//! Moves the bytes of one stream from its source to its destination. splice(2)
//! moves them without a copy through user space; where splice cannot work (a PTY
//! master) it falls back to read/write with a small buffer allocated only then.
//!
//! A destination that refuses bytes for want of space (ENOSPC, EDQUOT, EFBIG) or by
//! failing (EIO) never blocks or kills the process: its output is drained and
//! dropped, counted and reported (see `drops`), and the destination takes output
//! again once it can.

use super::drops::{refuses_bytes, DropReport, Drops};
use super::host_end::set_nonblocking;
use super::Stream;
use crate::registry::{Io, Owner};
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::fcntl::SpliceFFlags;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// Bytes one splice call may move.
const SPLICE_CHUNK: usize = 1 << 20;
/// The read/write fallback's buffer (PTY relays only).
const COPY_BUFFER: usize = 32 << 10;
/// What a dropping relay reads into (allocated only while dropping).
const DROP_BUFFER: usize = 64 << 10;

pub struct Relay {
    pub stream: Stream,
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    keepalive: Option<OwnedFd>,
    tokens: Vec<(RawFd, Token)>,
    /// Set when splice is refused (a PTY): bytes read but not yet written.
    copy: Option<CopyBuffer>,
    /// `src` is a PTY master: EIO means "no slave open", which is only an end once the
    /// process has exited.
    src_is_tty: bool,
    done: bool,
    drops: Drops,
    /// Where dropped bytes are read into, while dropping.
    sink: Vec<u8>,
    /// A stdin FIFO read without a writer of the shim's own yet: its path, for the
    /// writer opened when the process starts. Until then, a read of 0 is the end
    /// only once every writer has come and gone.
    late_writer: Option<String>,
    /// The shim's own writer on a stdin FIFO (see `late_writer`).
    own_writer: Option<OwnedFd>,
}

/// Allocated while it holds bytes only: an idle terminal costs no buffer.
struct CopyBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a relay hands over when it becomes part of a fan-out (an attach client came).
pub struct RelayParts {
    pub src: OwnedFd,
    pub dst: OwnedFd,
    pub keepalive: Option<OwnedFd>,
    pub src_is_tty: bool,
    /// Bytes read but not yet written (PTY relays).
    pub pending: Vec<u8>,
    pub drops: Drops,
}

impl Relay {
    pub fn new(
        stream: Stream,
        src: OwnedFd,
        dst: OwnedFd,
        keepalive: Option<OwnedFd>,
        src_is_tty: bool,
    ) -> Result<Relay, String> {
        set_nonblocking(&src)?;
        set_nonblocking(&dst)?;
        Ok(Relay {
            stream,
            src: Some(src),
            dst: Some(dst),
            keepalive,
            tokens: Vec::new(),
            copy: None,
            src_is_tty,
            done: false,
            drops: Drops::default(),
            sink: Vec::new(),
            late_writer: None,
            own_writer: None,
        })
    }

    /// A stdin relay from a FIFO opened for reading only (see `late_writer`).
    pub fn with_late_writer(mut self, fifo: Option<String>) -> Relay {
        self.late_writer = fifo;
        self
    }

    /// The process has started: a stdin FIFO whose writers have all come and gone
    /// ends once drained; otherwise the shim holds a writer of its own from now on,
    /// so only `close_stdin` ends it (containerd's rule: its daemon's restart does
    /// not close a running process's stdin).
    pub fn process_started(&mut self) {
        let (Some(path), Some(src)) = (self.late_writer.take(), self.src.as_ref()) else {
            return;
        };
        if super::host_end::writers_gone(src) {
            return;
        }
        match super::host_end::open_own_writer(&path) {
            Ok(fd) => self.own_writer = Some(fd),
            Err(e) => crate::log!("stdin {path}: cannot hold a writer of its own: {e}"),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// A stdin relay has handed over everything its source holds now (or finished).
    pub fn input_drained(&self) -> bool {
        self.done || !self.output_waiting()
    }

    /// Not finished, and bytes wait in its source or its copy buffer.
    pub fn output_waiting(&self) -> bool {
        !self.done
            && (self.copy.as_ref().is_some_and(|c| c.start < c.end)
                || self.src.as_ref().is_some_and(|s| queued(s) > 0))
    }

    /// Its source, while it has one.
    pub fn source(&self) -> Option<&OwnedFd> {
        self.src.as_ref()
    }

    /// A second descriptor on the destination (attach input into a stdin pipe).
    pub fn dst_dup(&self) -> Option<OwnedFd> {
        self.dst.as_ref()?.try_clone().ok()
    }

    /// Registers both ends with the loop (edge-triggered); an end epoll refuses (a
    /// regular file, /dev/null) is always ready and needs no registration.
    pub fn register(&mut self, io: &mut Io<'_>) {
        let ends = [
            (self.src.as_ref().map(|f| f.as_raw_fd()), Interest::READABLE),
            (self.dst.as_ref().map(|f| f.as_raw_fd()), Interest::WRITABLE),
        ];
        for (fd, interest) in ends {
            let Some(fd) = fd else { continue };
            if let Ok(token) = io.watch_fd(Owner::Core, fd, interest) {
                self.tokens.push((fd, token));
            }
        }
    }

    /// Moves what can be moved now. `process_exited` lets a PTY's EIO count as the end.
    /// Returns true when the relay has finished (source ended, or destination gone).
    pub fn pump(&mut self, io: &mut Io<'_>, process_exited: bool) -> bool {
        while !self.done {
            let (Some(src), Some(dst)) = (self.src.as_ref(), self.dst.as_ref()) else {
                break;
            };
            let dropping = self.drops.dropping();
            let step = match self.copy.as_mut() {
                _ if dropping => {
                    if self.sink.is_empty() {
                        self.sink = vec![0; DROP_BUFFER];
                    }
                    nix::unistd::read(src.as_raw_fd(), &mut self.sink)
                }
                None => nix::fcntl::splice(
                    src,
                    None,
                    dst,
                    None,
                    SPLICE_CHUNK,
                    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
                ),
                Some(buffer) => buffer.step(src, dst),
            };
            match step {
                // A FIFO with no writer yet reads as empty, not ended.
                Ok(0) if self.late_writer.is_some() && !super::host_end::writers_gone(src) => break,
                Ok(0) => self.finish(io),
                Ok(n) if dropping => self.drops.count(n),
                Ok(_) => {
                    self.drops.recovered(self.stream.name());
                    self.sink = Vec::new();
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINVAL) if self.copy.is_none() && !dropping => {
                    self.copy = Some(CopyBuffer {
                        buf: Vec::new(),
                        start: 0,
                        end: 0,
                    });
                }
                Err(Errno::EIO) if self.src_is_tty && !process_exited => break,
                Err(Errno::EIO) if self.src_is_tty => self.finish(io),
                Err(Errno::EPIPE) => self.finish(io),
                Err(e) if refuses_bytes(e) && !dropping => {
                    // What the PTY fallback had read goes with the rest.
                    let pending = self.copy.as_mut().map_or(0, CopyBuffer::discard);
                    self.drops.refused(e, pending, self.stream.name());
                }
                Err(e) => {
                    crate::log!("{} relay stopped: {e}", self.stream.name());
                    self.finish(io);
                }
            }
        }
        self.done
    }

    /// Bytes dropped since the last report, once a report is due (`force`: now).
    pub fn take_drop_report(&mut self, now: Instant, force: bool) -> Option<DropReport> {
        self.drops.take_report(now, force, self.done)
    }

    pub fn report_due(&self) -> Option<Instant> {
        self.drops.report_due()
    }

    pub fn dropped_total(&self) -> u64 {
        self.drops.total()
    }

    /// Takes the relay apart (its fds deregistered) for a fan-out to carry on with.
    /// None if it has finished.
    pub fn into_parts(mut self, io: &mut Io<'_>) -> Option<RelayParts> {
        for (fd, token) in self.tokens.drain(..) {
            io.unwatch_fd(fd, token);
        }
        let pending = self
            .copy
            .as_ref()
            .map(|c| c.buf[c.start..c.end].to_vec())
            .unwrap_or_default();
        Some(RelayParts {
            src: self.src.take()?,
            dst: self.dst.take()?,
            keepalive: self.keepalive.take(),
            src_is_tty: self.src_is_tty,
            pending,
            drops: std::mem::take(&mut self.drops),
        })
    }

    /// Stops relaying: both ends are closed (an output FIFO's keepalive stays, so its
    /// unread bytes survive until the process is deleted).
    pub fn finish(&mut self, io: &mut Io<'_>) {
        for (fd, token) in self.tokens.drain(..) {
            io.unwatch_fd(fd, token);
        }
        self.src = None;
        self.dst = None;
        self.own_writer = None;
        self.late_writer = None;
        self.copy = None;
        self.sink = Vec::new();
        self.done = true;
    }

    pub fn owns(&self, token: Token) -> bool {
        self.tokens.iter().any(|(_, t)| *t == token)
    }

    /// A finished output relay's FIFO keepalive, once nothing unread is left in the
    /// FIFO: then it guards nothing, and an exited process should hold no fds.
    pub fn release_keepalive_if_drained(&mut self) {
        if self.done {
            super::host_end::release_keepalive_if_drained(&mut self.keepalive);
        }
    }

    /// Drops the keepalive too (the process record is going away).
    pub fn release(&mut self, io: &mut Io<'_>) {
        self.finish(io);
        self.keepalive = None;
    }
}

/// Bytes readable now from a pipe, FIFO or PTY master (0 if it cannot tell).
pub fn queued(fd: &OwnedFd) -> usize {
    crate::sys::bytes_queued(fd.as_raw_fd()).unwrap_or(0)
}

impl CopyBuffer {
    /// Forgets what is buffered; returns how many bytes that was.
    fn discard(&mut self) -> usize {
        let n = self.end - self.start;
        self.start = self.end;
        self.buf = Vec::new();
        n
    }

    /// Writes what is buffered, else reads more. Ok(0) only at the source's end.
    fn step(&mut self, src: &OwnedFd, dst: &OwnedFd) -> Result<usize, Errno> {
        if self.start == self.end {
            if self.buf.is_empty() {
                self.buf = vec![0; COPY_BUFFER];
            }
            let read = nix::unistd::read(src.as_raw_fd(), &mut self.buf);
            if !matches!(read, Ok(n) if n > 0) {
                self.buf = Vec::new();
            }
            let n = read?;
            self.start = 0;
            self.end = n;
            return Ok(n);
        }
        let n = nix::unistd::write(dst, &self.buf[self.start..self.end])?;
        self.start += n;
        if self.start == self.end {
            self.buf = Vec::new();
        }
        // A write of 0 bytes is not an end: report progress of at least one step.
        Ok(n.max(1))
    }
}

/// A [`Relay`] in a hand-over record: its fds by number, what its copy buffer held.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RelayRecord {
    stream: Stream,
    src: Option<RawFd>,
    dst: Option<RawFd>,
    keepalive: Option<RawFd>,
    #[serde(with = "crate::handover::hex")]
    copied: Vec<u8>,
    /// The relay copies (a PTY refused splice).
    copying: bool,
    src_is_tty: bool,
    done: bool,
    drops: super::drops::DropsRecord,
    late_writer: Option<String>,
    own_writer: Option<RawFd>,
}

impl Relay {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<RelayRecord, String> {
        Ok(RelayRecord {
            stream: self.stream,
            src: fds.pass_opt(self.src.as_ref())?,
            dst: fds.pass_opt(self.dst.as_ref())?,
            keepalive: fds.pass_opt(self.keepalive.as_ref())?,
            copied: self
                .copy
                .as_ref()
                .map(|c| c.buf[c.start..c.end].to_vec())
                .unwrap_or_default(),
            copying: self.copy.is_some(),
            src_is_tty: self.src_is_tty,
            done: self.done,
            drops: self.drops.hand_over(),
            late_writer: self.late_writer.clone(),
            own_writer: fds.pass_opt(self.own_writer.as_ref())?,
        })
    }

    /// The relay again, registered with the new loop.
    pub fn take_over(
        r: RelayRecord,
        fds: &mut crate::handover::Adopting,
        io: &mut Io<'_>,
    ) -> Result<Relay, String> {
        let end = r.copied.len();
        let mut relay = Relay {
            stream: r.stream,
            src: fds.take_opt(r.src)?,
            dst: fds.take_opt(r.dst)?,
            keepalive: fds.take_opt(r.keepalive)?,
            tokens: Vec::new(),
            copy: r.copying.then_some(CopyBuffer {
                buf: r.copied,
                start: 0,
                end,
            }),
            src_is_tty: r.src_is_tty,
            done: r.done,
            drops: Drops::take_over(r.drops),
            sink: Vec::new(),
            late_writer: r.late_writer,
            own_writer: fds.take_opt(r.own_writer)?,
        };
        relay.register(io);
        Ok(relay)
    }
}
