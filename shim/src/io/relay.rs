//! Moves the bytes of one stream from its source to its destination. splice(2)
//! moves them without a copy through user space; where splice cannot work (a PTY
//! master) it falls back to read/write with a small buffer allocated only then.
//!
//! A destination that refuses bytes for want of space (ENOSPC, EDQUOT, EFBIG) or by
//! failing (EIO) never blocks or kills the process: its output is drained and
//! dropped, counted, and reported (see [`DropReport`]); the destination is tried
//! again every DROP_RETRY, and takes the output again once it can.

use super::host_end::set_nonblocking;
use super::Stream;
use crate::reactor::{Io, Owner};
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::fcntl::SpliceFFlags;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Bytes one splice call may move.
const SPLICE_CHUNK: usize = 1 << 20;
/// The read/write fallback's buffer (PTY relays only).
const COPY_BUFFER: usize = 32 << 10;
/// While dropping: how often the destination is tried again...
const DROP_RETRY: Duration = Duration::from_secs(1);
/// ...and how often the bytes dropped are reported.
pub const DROP_REPORT: Duration = Duration::from_secs(1);

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
    /// Set while the destination refuses bytes.
    dropping: Option<Dropping>,
    dropped_total: u64,
    dropped_unreported: u64,
    last_error: String,
    reported_at: Option<Instant>,
}

struct Dropping {
    retry_at: Instant,
    /// Where dropped bytes are read into (allocated only while dropping).
    sink: Vec<u8>,
}

/// Bytes dropped on one stream since the last report.
pub struct DropReport {
    pub stream: Stream,
    pub bytes: u64,
    pub total: u64,
    pub error: String,
}

/// A destination's failure that dropping can ride out: it is out of space or broken,
/// not gone.
fn refuses_bytes(e: Errno) -> bool {
    matches!(e, Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG | Errno::EIO)
}

/// Allocated while it holds bytes only: an idle terminal costs no buffer.
struct CopyBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
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
            dropping: None,
            dropped_total: 0,
            dropped_unreported: 0,
            last_error: String::new(),
            reported_at: None,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
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
            let now_dropping = self
                .dropping
                .as_ref()
                .is_some_and(|d| Instant::now() < d.retry_at);
            let step = match (&mut self.dropping, self.copy.as_mut()) {
                (Some(d), _) if now_dropping => nix::unistd::read(src.as_raw_fd(), &mut d.sink),
                (_, None) => nix::fcntl::splice(
                    src,
                    None,
                    dst,
                    None,
                    SPLICE_CHUNK,
                    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
                ),
                (_, Some(buffer)) => buffer.step(src, dst),
            };
            match step {
                Ok(0) => self.finish(io),
                Ok(n) if now_dropping => {
                    self.dropped_total += n as u64;
                    self.dropped_unreported += n as u64;
                }
                Ok(_) => {
                    if self.dropping.take().is_some() {
                        crate::log!("{} relay: the destination takes output again", self.stream.name());
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINVAL) if self.copy.is_none() && !now_dropping => {
                    self.copy = Some(CopyBuffer {
                        buf: Vec::new(),
                        start: 0,
                        end: 0,
                    });
                }
                Err(Errno::EIO) if self.src_is_tty && !process_exited => break,
                Err(Errno::EIO) if self.src_is_tty => self.finish(io),
                Err(Errno::EPIPE) => self.finish(io),
                Err(e) if refuses_bytes(e) && !now_dropping => self.start_dropping(e),
                Err(e) => {
                    crate::log!("{} relay stopped: {e}", self.stream.name());
                    self.finish(io);
                }
            }
        }
        self.done
    }

    /// The destination refused bytes: drop from now on (the PTY fallback's buffered
    /// bytes included), and try it again in a while.
    fn start_dropping(&mut self, e: Errno) {
        if let Some(buffer) = self.copy.as_mut() {
            let pending = (buffer.end - buffer.start) as u64;
            self.dropped_total += pending;
            self.dropped_unreported += pending;
            buffer.start = buffer.end;
            buffer.buf = Vec::new();
        }
        if self.last_error.is_empty() || self.dropping.is_none() {
            crate::log!(
                "{} relay: destination refuses output ({e}); dropping and counting",
                self.stream.name()
            );
        }
        self.last_error = e.desc().to_string();
        let sink = self
            .dropping
            .take()
            .map(|d| d.sink)
            .unwrap_or_else(|| vec![0; 64 << 10]);
        self.dropping = Some(Dropping {
            retry_at: Instant::now() + DROP_RETRY,
            sink,
        });
    }

    /// Bytes dropped since the last report, once a report is due (`force`: now).
    pub fn take_drop_report(&mut self, now: Instant, force: bool) -> Option<DropReport> {
        if self.dropped_unreported == 0 {
            return None;
        }
        let due = force
            || self.done
            || self.dropping.is_none()
            || self.reported_at.is_none_or(|t| now >= t + DROP_REPORT);
        if !due {
            return None;
        }
        self.reported_at = Some(now);
        let bytes = std::mem::take(&mut self.dropped_unreported);
        Some(DropReport {
            stream: self.stream,
            bytes,
            total: self.dropped_total,
            error: self.last_error.clone(),
        })
    }

    /// When a drop report is due (the destination's retry needs no timer: it is
    /// tried when output comes).
    pub fn report_due(&self) -> Option<Instant> {
        (self.dropped_unreported > 0).then(|| self.reported_at.map_or(Instant::now(), |t| t + DROP_REPORT))
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Stops relaying: both ends are closed (an output FIFO's keepalive stays, so its
    /// unread bytes survive until the process is deleted).
    pub fn finish(&mut self, io: &mut Io<'_>) {
        for (fd, token) in self.tokens.drain(..) {
            io.unwatch_fd(fd, token);
        }
        self.src = None;
        self.dst = None;
        self.copy = None;
        self.dropping = None;
        self.done = true;
    }

    pub fn owns(&self, token: Token) -> bool {
        self.tokens.iter().any(|(_, t)| *t == token)
    }

    /// A finished output relay's FIFO keepalive, once nothing unread is left in the
    /// FIFO: then it guards nothing, and an exited process should hold no fds.
    pub fn release_keepalive_if_drained(&mut self) {
        let drained = self
            .keepalive
            .as_ref()
            .is_some_and(|k| crate::sys::bytes_queued(k.as_raw_fd()) == Some(0));
        if self.done && drained {
            self.keepalive = None;
        }
    }

    /// Drops the keepalive too (the process record is going away).
    pub fn release(&mut self, io: &mut Io<'_>) {
        self.finish(io);
        self.keepalive = None;
    }
}

impl CopyBuffer {
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
