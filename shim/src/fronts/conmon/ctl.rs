//! conmon's `ctl` and `winsz` FIFOs in the bundle. conmon always makes them, and the
//! engine opens `ctl` write-only and non-blocking (ENXIO without a reader), so both
//! are held open read+write for the container's whole life. `ctl` takes lines
//! `TYPE HEIGHT WIDTH`: 1 resizes the terminal, 2 reopens the log.

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
    read: File,
    token: Token,
    /// Write ends held so the reads never see EOF (and the engine's open succeeds).
    _keep: Vec<File>,
    buf: Vec<u8>,
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
        let (read, ctl_w) = fifo(&bundle.join("ctl"))?;
        let (winsz_r, winsz_w) = fifo(&bundle.join("winsz"))?;
        let token = io.watch_fd(owner, read.as_raw_fd(), Interest::READABLE)?;
        Ok(Ctl {
            process,
            read,
            token,
            _keep: vec![ctl_w, winsz_r, winsz_w],
            buf: Vec::new(),
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        self.token == token
    }

    pub fn on_ready(&mut self, core: &mut Core, io: &mut Io<'_>) {
        let mut chunk = [0u8; MAX_LINE];
        loop {
            match self.read.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            command(&String::from_utf8_lossy(&line), self.process.clone(), core, io);
        }
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
        }
    }

    pub fn close(self, io: &mut Io<'_>) {
        io.unwatch_fd(self.read.as_raw_fd(), self.token);
    }
}

fn command(line: &str, process: Option<String>, core: &mut Core, io: &mut Io<'_>) {
    let mut fields = line.split_whitespace().map(|f| f.parse::<u32>().ok());
    let (Some(Some(kind)), Some(Some(h)), Some(Some(w))) = (fields.next(), fields.next(), fields.next())
    else {
        return crate::log!("ctl: ignoring {:?}", line.trim_end());
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
        crate::log!("ctl: {}: {e}", line.trim_end());
    }
}
