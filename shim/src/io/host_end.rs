//! The host side of a process's stream, opened from what the client asked for: a
//! FIFO, a file, /dev/null, or a FIFO the shim makes.

use super::Stream;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use tether_protocol::StdinEof;

/// The capacity the shim asks for the process's pipes (and a stdin FIFO it holds a
/// writer on): a daemon that is away for a moment does not stall a chatty container
/// at once (pages are only used when filled).
const PIPE_CAPACITY: i32 = 1 << 20;

/// The host side of one stream.
pub enum HostEnd {
    /// `/dev/null`: the process gets /dev/null itself, nothing is relayed.
    Null,
    Open {
        fd: OwnedFd,
        /// For an output FIFO: a read end the shim holds so that what the container
        /// wrote survives while no reader has the FIFO open.
        keepalive: Option<OwnedFd>,
        path: String,
        /// A stdin FIFO opened for reading only: its writers going away before the
        /// process starts is its end (`StdinEof::WritersGoneBeforeStart`).
        writers_end_it: bool,
    },
}

/// Opens the host end of `stream`: `spec` is the client's absolute path, or `None`
/// for a FIFO the shim makes at `own_fifo`.
pub fn open_host_end(
    stream: Stream,
    spec: Option<&str>,
    own_fifo: &Path,
    stdin_eof: StdinEof,
) -> Result<HostEnd, String> {
    let shim_made = spec.is_none();
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
        (_, true) if input && stdin_eof == StdinEof::WritersGoneBeforeStart => {
            // Read only, at the FIFO's own size: until the process starts, its writers
            // leaving is the end of its input (see `Relay::open_own_writer`).
            let fd = open_nonblocking(&path, true, false).map_err(|e| what(&e))?;
            Ok(HostEnd::Open {
                fd,
                keepalive: None,
                path,
                writers_end_it: true,
            })
        }
        (_, true) if input => {
            // Read and write: the shim's own writer means a daemon that goes away
            // never makes the container see EOF; close_stdin does that.
            let fd = open_nonblocking(&path, true, true).map_err(|e| what(&e))?;
            set_pipe_capacity(&fd);
            Ok(HostEnd::Open {
                fd,
                keepalive: None,
                path,
                writers_end_it: false,
            })
        }
        (_, true) => {
            let keepalive = open_nonblocking(&path, true, false).map_err(|e| what(&e))?;
            let fd = open_nonblocking(&path, false, true).map_err(|e| what(&e))?;
            // A FIFO the shim made holds 1 MiB, so output written while nobody reads
            // is out of the process's pipe and its exit can go out. A client's FIFO
            // keeps the size the client gave it: what sits in it at the exit is what
            // the client must still read, and ctr 1.6 under load stops reading at its
            // task's exit before it has all of a 1 MiB FIFO (containerd's own shim
            // leaves its FIFOs at the kernel's 64 KiB too).
            if shim_made {
                set_pipe_capacity(&fd);
            }
            Ok(HostEnd::Open {
                fd,
                keepalive: Some(keepalive),
                path,
                writers_end_it: false,
            })
        }
        (Ok(t), false) if t.is_dir() || t.is_socket() => {
            Err(what(&"it is a directory or socket, not a FIFO or file"))
        }
        (_, false) if input => {
            let fd = OpenOptions::new().read(true).open(&path).map_err(|e| what(&e))?;
            Ok(HostEnd::Open {
                fd: fd.into(),
                keepalive: None,
                path,
                writers_end_it: false,
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
                writers_end_it: false,
            })
        }
    }
}

/// A writer of the shim's own on a stdin FIFO it reads (the shim is a reader, so
/// this does not block).
pub fn open_own_writer(path: &str) -> std::io::Result<OwnedFd> {
    open_nonblocking(path, false, true)
}

/// Every writer a FIFO had has gone (POLLHUP): a reader that opened it before any
/// writer sees no hang-up until one has come and left.
pub fn writers_gone(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

fn open_nonblocking(path: &str, read: bool, write: bool) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    Ok(file.into())
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

/// Lets an output FIFO's keepalive go once nothing unread is left in the FIFO: then
/// it guards nothing (see [`HostEnd::Open`]), and an exited process should hold no
/// fds. Bytes still unread keep it until they are read or the process is deleted.
pub fn release_keepalive_if_drained(keepalive: &mut Option<OwnedFd>) {
    use std::os::fd::AsRawFd;
    if keepalive
        .as_ref()
        .is_some_and(|k| crate::sys::bytes_queued(k.as_raw_fd()) == Some(0))
    {
        *keepalive = None;
    }
}

pub fn is_regular_file(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
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

fn set_pipe_capacity(fd: &impl AsFd) {
    use std::os::fd::AsRawFd;
    // Best effort: an unprivileged shim may be held to a smaller size.
    let _ = fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
}

pub fn set_nonblocking(fd: &impl AsFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let flags = fcntl(raw, FcntlArg::F_GETFL).map_err(|e| format!("fcntl: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(raw, FcntlArg::F_SETFL(flags)).map_err(|e| format!("fcntl: {e}"))?;
    Ok(())
}
