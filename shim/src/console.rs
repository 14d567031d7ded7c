//! Terminals: the runtime is given `--console-socket PATH`; it connects and sends the
//! PTY master over SCM_RIGHTS. The shim receives it without blocking the loop (the
//! listener and the accepted connection are both loop sources) and sizes it with
//! TIOCSWINSZ.

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
    conn: Option<UnixStream>,
    listener_token: Token,
    conn_token: Token,
}

impl ConsoleSocket {
    pub fn bind(
        path: &Path,
        registry: &Registry,
        listener_token: Token,
        conn_token: Token,
    ) -> Result<Self, String> {
        let _ = std::fs::remove_file(path);
        let mut listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot bind console socket {}: {e}", path.display()))?;
        registry
            .register(&mut listener, listener_token, Interest::READABLE)
            .map_err(|e| format!("cannot watch console socket: {e}"))?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener,
            conn: None,
            listener_token,
            conn_token,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokens(&self) -> [Token; 2] {
        [self.listener_token, self.conn_token]
    }

    /// Makes what progress it can; returns the master once it has arrived.
    pub fn poll(&mut self, registry: &Registry) -> Result<Option<OwnedFd>, String> {
        if self.conn.is_none() {
            match self.listener.accept() {
                Ok((mut conn, _)) => {
                    registry
                        .register(&mut conn, self.conn_token, Interest::READABLE)
                        .map_err(|e| format!("cannot watch console connection: {e}"))?;
                    self.conn = Some(conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(format!("console socket accept: {e}")),
            }
        }
        let Some(conn) = self.conn.as_ref() else {
            return Ok(None);
        };
        match receive_fd(conn.as_raw_fd()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(format!("receiving the console master: {e}")),
        }
    }

    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        if let Some(mut conn) = self.conn.take() {
            let _ = registry.deregister(&mut conn);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(sock: RawFd) -> Result<OwnedFd, Errno> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut received: Option<OwnedFd> = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    if msg.bytes == 0 && received.is_none() {
        return Err(Errno::ECONNRESET);
    }
    received.ok_or(Errno::EBADMSG)
}

/// Sets the terminal's size (TIOCSWINSZ on the master).
pub fn resize(master: RawFd, rows: u16, cols: u16) -> Result<(), String> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own.
    let r = unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &size) };
    if r < 0 {
        return Err(format!("TIOCSWINSZ: {}", Errno::last()));
    }
    Ok(())
}

/// The terminal's end-of-file character (VEOF, normally ^D): written to the master,
/// it ends a canonical-mode read with zero bytes, which is how a process on a PTY
/// learns its stdin is closed.
pub fn eof_char(master: RawFd) -> u8 {
    // SAFETY: tcgetattr fills a termios struct we own.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(master, &mut t) } == 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    }
}
