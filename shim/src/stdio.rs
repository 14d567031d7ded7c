//! Stdio of container processes: the host-side ends the client chose (a FIFO, a file,
//! /dev/null, or FIFOs the shim makes), the pipes the process gets, and the relays
//! between them. A relay moves bytes with splice(2) (no copy through user space);
//! where splice cannot work (a PTY master) it falls back to read/write with a small
//! buffer allocated only then.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The pipe and FIFO capacity the shim asks for: a daemon that is away for a moment
/// does not stall a chatty container at once (pages are only used when filled).
const PIPE_CAPACITY: i32 = 1 << 20;
/// Bytes one splice call may move.
const SPLICE_CHUNK: usize = 1 << 20;
/// The read/write fallback's buffer (PTY relays only).
const COPY_BUFFER: usize = 32 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdin => "stdin",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The host side of one stream, opened from what the client asked for.
pub enum HostEnd {
    /// `/dev/null`: the process gets /dev/null itself, nothing is relayed.
    Null,
    Open {
        fd: OwnedFd,
        /// For an output FIFO: a read end the shim holds so that what the container
        /// wrote survives while no reader has the FIFO open.
        keepalive: Option<OwnedFd>,
        path: String,
    },
}

/// Opens the host end of `stream`: `spec` is the client's absolute path, or `None`
/// for a FIFO the shim makes at `own_fifo`.
pub fn open_host_end(stream: Stream, spec: Option<&str>, own_fifo: &Path) -> Result<HostEnd, String> {
    let path = match spec {
        Some("/dev/null") => return Ok(HostEnd::Null),
        Some(p) if !p.starts_with('/') => {
            return Err(format!("{} path {p:?} is not absolute", stream.name()))
        }
        Some(p) => p.to_string(),
        None => {
            make_fifo(own_fifo)
                .map_err(|e| format!("cannot make {} FIFO {}: {e}", stream.name(), own_fifo.display()))?;
            own_fifo.display().to_string()
        }
    };
    let what = |e: &dyn std::fmt::Display| format!("cannot open {} {path}: {e}", stream.name());
    let file_type = std::fs::metadata(&path).map(|m| m.file_type());
    let is_fifo = matches!(&file_type, Ok(t) if t.is_fifo());
    let input = stream == Stream::Stdin;
    match (&file_type, is_fifo) {
        (_, true) if input => {
            // Read and write: the shim's own writer means a daemon that goes away
            // never makes the container see EOF; close_stdin does that.
            let fd = open(&path, OFlag::O_RDWR | OFlag::O_NONBLOCK).map_err(|e| what(&e))?;
            set_pipe_capacity(&fd);
            Ok(HostEnd::Open {
                fd,
                keepalive: None,
                path,
            })
        }
        (_, true) => {
            let keepalive = open(&path, OFlag::O_RDONLY | OFlag::O_NONBLOCK).map_err(|e| what(&e))?;
            let fd = open(&path, OFlag::O_WRONLY | OFlag::O_NONBLOCK).map_err(|e| what(&e))?;
            set_pipe_capacity(&fd);
            Ok(HostEnd::Open {
                fd,
                keepalive: Some(keepalive),
                path,
            })
        }
        (Ok(t), false) if t.is_dir() || t.is_socket() => {
            Err(what(&"it is a directory or socket, not a FIFO or file"))
        }
        (_, false) if input => {
            let fd = open(&path, OFlag::O_RDONLY).map_err(|e| what(&e))?;
            Ok(HostEnd::Open {
                fd,
                keepalive: None,
                path,
            })
        }
        (_, false) => {
            // Not O_APPEND: splice(2) refuses append-mode files. Writing starts at the
            // end instead (stdout and stderr naming one file share this descriptor,
            // and so its offset).
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o640)
                .open(&path)
                .map_err(|e| what(&e))?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(|e| what(&e))?;
            Ok(HostEnd::Open {
                fd: file.into(),
                keepalive: None,
                path,
            })
        }
    }
}

fn open(path: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn make_fifo(path: &Path) -> Result<(), Errno> {
    match nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)) {
        Err(Errno::EEXIST) => {
            let is_fifo = nix::sys::stat::stat(path)
                .map(|s| SFlag::from_bits_truncate(s.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO)
                .unwrap_or(false);
            if is_fifo {
                Ok(())
            } else {
                Err(Errno::EEXIST)
            }
        }
        other => other,
    }
}

pub fn is_regular_file(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_raw_fd())
        .map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG)
        .unwrap_or(false)
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    set_pipe_capacity(&w);
    Ok((r, w))
}

fn set_pipe_capacity(fd: &OwnedFd) {
    // Best effort: an unprivileged shim may be held to a smaller size.
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
}

pub fn set_nonblocking(fd: &OwnedFd) -> Result<(), String> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| format!("fcntl: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| format!("fcntl: {e}"))?;
    Ok(())
}

/// Moves the bytes of one stream from `src` to `dst` until `src` ends.
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
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Registers both ends with the loop (edge-triggered); an end epoll refuses (a
    /// regular file, /dev/null) is always ready and needs no registration. Returns the
    /// tokens used.
    pub fn register(&mut self, registry: &Registry, mut next_token: impl FnMut() -> Token) -> Vec<Token> {
        let mut used = Vec::new();
        let ends = [
            (self.src.as_ref().map(|f| f.as_raw_fd()), Interest::READABLE),
            (self.dst.as_ref().map(|f| f.as_raw_fd()), Interest::WRITABLE),
        ];
        for (fd, interest) in ends {
            let Some(fd) = fd else { continue };
            let token = next_token();
            if registry.register(&mut SourceFd(&fd), token, interest).is_ok() {
                self.tokens.push((fd, token));
                used.push(token);
            }
        }
        used
    }

    /// Moves what can be moved now. `process_exited` lets a PTY's EIO count as the end.
    /// Returns true when the relay has finished (source ended, or destination gone).
    pub fn pump(&mut self, registry: &Registry, process_exited: bool) -> bool {
        while !self.done {
            let (Some(src), Some(dst)) = (self.src.as_ref(), self.dst.as_ref()) else {
                break;
            };
            let (src, dst) = (src.as_raw_fd(), dst.as_raw_fd());
            let step = match self.copy.as_mut() {
                None => splice(src, dst),
                Some(buffer) => buffer.step(src, dst),
            };
            match step {
                Ok(0) => self.finish(registry),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINVAL) if self.copy.is_none() => {
                    self.copy = Some(CopyBuffer {
                        buf: Vec::new(),
                        start: 0,
                        end: 0,
                    });
                }
                Err(Errno::EIO) if self.src_is_tty && !process_exited => break,
                Err(Errno::EIO) if self.src_is_tty => self.finish(registry),
                Err(Errno::EPIPE) => self.finish(registry),
                Err(e) => {
                    crate::log!("{} relay stopped: {e}", self.stream.name());
                    self.finish(registry);
                }
            }
        }
        self.done
    }

    /// Stops relaying: both ends are closed (an output FIFO's keepalive stays, so its
    /// unread bytes survive until the process is deleted).
    pub fn finish(&mut self, registry: &Registry) {
        for (fd, _) in self.tokens.drain(..) {
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
        self.src = None;
        self.dst = None;
        self.copy = None;
        self.done = true;
    }

    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.tokens.iter().map(|(_, t)| *t)
    }

    /// Drops the keepalive too (the process record is going away).
    pub fn release(&mut self, registry: &Registry) {
        self.finish(registry);
        self.keepalive = None;
    }
}

fn splice(src: RawFd, dst: RawFd) -> Result<usize, Errno> {
    // SAFETY: plain syscall on descriptors this relay owns; null offsets mean "use
    // and advance the file positions".
    let n = unsafe {
        libc::splice(
            src,
            std::ptr::null_mut(),
            dst,
            std::ptr::null_mut(),
            SPLICE_CHUNK,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

impl CopyBuffer {
    /// Writes what is buffered, else reads more. Ok(0) only at the source's end.
    fn step(&mut self, src: RawFd, dst: RawFd) -> Result<usize, Errno> {
        if self.start == self.end {
            if self.buf.is_empty() {
                self.buf = vec![0; COPY_BUFFER];
            }
            // SAFETY: reading into our own buffer, within its length.
            let n = unsafe { libc::read(src, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n <= 0 {
                self.buf = Vec::new();
            }
            if n < 0 {
                return Err(Errno::last());
            }
            self.start = 0;
            self.end = n as usize;
            return Ok(n as usize);
        }
        let pending = &self.buf[self.start..self.end];
        // SAFETY: writing from our own initialized buffer, within its length.
        let n = unsafe { libc::write(dst, pending.as_ptr().cast(), pending.len()) };
        if n < 0 {
            return Err(Errno::last());
        }
        self.start += n as usize;
        if self.start == self.end {
            self.buf = Vec::new();
        }
        // A write of 0 bytes is not an end: report progress of at least one step.
        Ok(n.max(1) as usize)
    }
}
