//! conmon's `ctl` and `winsz` FIFOs in the bundle. conmon always makes them, and the
//! engine opens `ctl` write-only and non-blocking (ENXIO without a reader), so both
//! are held open read+write for the container's whole life. `ctl` takes lines
//! `TYPE HEIGHT WIDTH`: 1 resizes the terminal, 2 reopens the log. `winsz` takes
//! `HEIGHT WIDTH` lines: conmon relays a `ctl` resize through it to its own reader;
//! here a `ctl` resize is done at once, and a line written to `winsz` directly
//! resizes too, as with conmon.

use crate::core::{Call, Core, Reply};
use crate::registry::{Io, Owner};
use mio::{Interest, Token};
use nix::sys::stat::Mode;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tether_protocol::{ProcessParams, ResizeParams};

/// A line longer than this is garbage: dropped.
const MAX_LINE: usize = 200;

pub struct Ctl {
    /// The process resizes and reopens are for (None: init).
    process: Option<String>,
    ctl: Reader,
    winsz: Reader,
    /// Write ends held so the reads never see EOF (and the engine's open succeeds).
    _keep: [File; 2],
}

/// A FIFO's read end, watched, and its partial line.
struct Reader {
    read: File,
    token: Token,
    buf: Vec<u8>,
}

impl Reader {
    fn watch(read: File, owner: Owner, io: &mut Io<'_>) -> std::io::Result<Reader> {
        let token = io.watch_fd(owner, read.as_raw_fd(), Interest::READABLE)?;
        Ok(Reader {
            read,
            token,
            buf: Vec::new(),
        })
    }

    /// The complete lines read so far.
    fn lines(&mut self) -> Vec<String> {
        let mut chunk = [0u8; MAX_LINE];
        loop {
            match self.read.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
        }
        lines
    }
}

fn fifo(path: &Path) -> std::io::Result<(File, File)> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o660))
        .map_err(|e| std::io::Error::other(format!("mkfifo {}: {e}", path.display())))?;
    let read = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let write = OpenOptions::new().write(true).open(path)?;
    Ok((read, write))
}

impl Ctl {
    pub fn make(
        bundle: &Path,
        process: Option<String>,
        owner: Owner,
        io: &mut Io<'_>,
    ) -> std::io::Result<Ctl> {
        let (ctl_r, ctl_w) = fifo(&bundle.join("ctl"))?;
        let (winsz_r, winsz_w) = fifo(&bundle.join("winsz"))?;
        let ctl = Reader::watch(ctl_r, owner, io)?;
        let winsz = match Reader::watch(winsz_r, owner, io) {
            Ok(w) => w,
            Err(e) => {
                io.unwatch_fd(ctl.read.as_raw_fd(), ctl.token);
                return Err(e);
            }
        };
        Ok(Ctl {
            process,
            ctl,
            winsz,
            _keep: [ctl_w, winsz_w],
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        self.ctl.token == token || self.winsz.token == token
    }

    pub fn on_ready(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        if token == self.ctl.token {
            for line in self.ctl.lines() {
                command(&line, self.process.clone(), core, io);
            }
        } else {
            for line in self.winsz.lines() {
                // `H W`: what conmon's own winsz reader takes.
                command(&format!("1 {line}"), self.process.clone(), core, io);
            }
        }
    }

    pub fn close(self, io: &mut Io<'_>) {
        for r in [&self.ctl, &self.winsz] {
            io.unwatch_fd(r.read.as_raw_fd(), r.token);
        }
    }
}

fn command(line: &str, process: Option<String>, core: &mut Core, io: &mut Io<'_>) {
    let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
    let (Some(Some(kind)), Some(Some(h)), Some(Some(w))) = (fields.next(), fields.next(), fields.next())
    else {
        return crate::log!("ctl: ignoring {line:?}");
    };
    let call = match kind {
        1 => Call::Resize(ResizeParams {
            process,
            rows: h.min(u16::MAX.into()) as u16,
            cols: w.min(u16::MAX.into()) as u16,
        }),
        2 => Call::ReopenLog(ProcessParams { process }),
        _ => return crate::log!("ctl: unknown message type {kind}"),
    };
    if let Reply::Now(Err(e)) = core.call(call, io) {
        crate::log!("ctl: {line}: {e}");
    }
}
