//! Terminals: the runtime is given `--console-socket PATH`; it connects and sends the
//! PTY master over SCM_RIGHTS. The shim receives it without blocking the loop (the
//! listener and the accepted connection are both loop sources) and sizes it with
//! TIOCSWINSZ.

use crate::registry::{Io, Owner};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
    listener_token: Token,
    conn: Option<(UnixStream, Token)>,
}

impl ConsoleSocket {
    pub fn bind(path: &Path, io: &mut Io<'_>) -> Result<Self, String> {
        let _ = std::fs::remove_file(path);
        let mut listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot bind console socket {}: {e}", path.display()))?;
        let listener_token = io
            .watch(Owner::Core, &mut listener, Interest::READABLE)
            .map_err(|e| format!("cannot watch console socket: {e}"))?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener,
            listener_token,
            conn: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owns(&self, token: Token) -> bool {
        self.listener_token == token || self.conn.as_ref().is_some_and(|(_, t)| *t == token)
    }

    /// Makes what progress it can; returns the master once it has arrived.
    pub fn poll(&mut self, io: &mut Io<'_>) -> Result<Option<OwnedFd>, String> {
        if self.conn.is_none() {
            match self.listener.accept() {
                Ok((mut conn, _)) => {
                    let token = io
                        .watch(Owner::Core, &mut conn, Interest::READABLE)
                        .map_err(|e| format!("cannot watch console connection: {e}"))?;
                    self.conn = Some((conn, token));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(format!("console socket accept: {e}")),
            }
        }
        let Some((conn, _)) = self.conn.as_ref() else {
            return Ok(None);
        };
        match receive_fd(conn.as_raw_fd()) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(format!("receiving the console master: {e}")),
        }
    }

    pub fn close(mut self, io: &mut Io<'_>) {
        io.unwatch(&mut self.listener, self.listener_token);
        if let Some((mut conn, token)) = self.conn.take() {
            io.unwatch(&mut conn, token);
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
                // Owned at once so extra descriptors are closed, not leaked.
                let owned = crate::sys::own_received_fd(fd);
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
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), String> {
    crate::sys::set_window_size(master.as_raw_fd(), rows, cols).map_err(|e| format!("TIOCSWINSZ: {e}"))
}

/// The terminal's end-of-file character (VEOF, normally ^D): written to the master,
/// it ends a canonical-mode read with zero bytes, which is how a process on a PTY
/// learns its stdin is closed.
pub fn eof_char(master: &OwnedFd) -> u8 {
    nix::sys::termios::tcgetattr(master)
        .map(|t| t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize])
        .unwrap_or(4)
}
