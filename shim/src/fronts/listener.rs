//! A front's listening socket and its connections waiting for a turn: what both
//! fronts do alike. Only the shim's own user (or root) is let in; when `accept` runs
//! out of descriptors the clients already queued would wait for a readiness that only
//! another connection brings, so accepting is retried on a timer until it works.

use super::peer_allowed;
use crate::registry::{Io, Owner};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use std::io;
use std::time::{Duration, Instant};

/// After `accept` fails for want of descriptors: when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Listener {
    socket: Option<(UnixListener, Token)>,
    owner: Owner,
    /// Who the clients are, for messages ("client", "task API client").
    what: &'static str,
    retry_at: Option<Instant>,
}

impl Listener {
    pub fn watch(
        listener: std::os::unix::net::UnixListener,
        owner: Owner,
        what: &'static str,
        io: &mut Io<'_>,
    ) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        let token = io.watch(owner, &mut listener, Interest::READABLE)?;
        Ok(Listener {
            socket: Some((listener, token)),
            owner,
            what,
            retry_at: None,
        })
    }

    pub fn owns(&self, token: Token) -> bool {
        self.socket.as_ref().is_some_and(|(_, t)| *t == token)
    }

    /// Accepts every client waiting, watched for both directions; `add` takes each.
    pub fn accept(&mut self, io: &mut Io<'_>, mut add: impl FnMut(Token, UnixStream)) {
        let retrying = self.retry_at.take().is_some();
        let Some((listener, _)) = self.socket.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if let Err(why) = peer_allowed(&stream) {
                        crate::log!("refused a {}: {why}", self.what);
                        continue;
                    }
                    match io.watch(self.owner, &mut stream, Interest::READABLE | Interest::WRITABLE) {
                        Ok(token) => add(token, stream),
                        Err(e) => crate::log!("cannot watch a {}: {e}", self.what),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !retrying {
                        crate::log!(
                            "accept ({}s) failed: {e}; retrying every {ACCEPT_RETRY:?}",
                            self.what
                        );
                    }
                    self.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// When accepting must be tried again (it ran out of descriptors).
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub fn retry_due(&self) -> bool {
        self.retry_at.is_some_and(|at| at <= Instant::now())
    }

    /// Its socket for a hand-over record (None once closed).
    pub fn hand_over(
        &self,
        fds: &mut crate::handover::Passing,
    ) -> Result<Option<std::os::fd::RawFd>, String> {
        fds.pass_opt(self.socket.as_ref().map(|(l, _)| l))
    }

    /// The listener again, watched by the new loop.
    pub fn take_over(
        fd: Option<std::os::fd::RawFd>,
        owner: Owner,
        what: &'static str,
        fds: &mut crate::handover::Adopting,
        io: &mut Io<'_>,
    ) -> Result<Listener, String> {
        match fds.take_opt(fd)? {
            Some(fd) => Listener::watch(std::os::unix::net::UnixListener::from(fd), owner, what, io)
                .map_err(|e| format!("cannot watch the {what} socket: {e}")),
            None => Ok(Listener {
                socket: None,
                owner,
                what,
                retry_at: None,
            }),
        }
    }

    /// No more clients (the shim is exiting).
    pub fn close(&mut self, io: &mut Io<'_>) {
        if let Some((mut listener, token)) = self.socket.take() {
            io.unwatch(&mut listener, token);
        }
        self.retry_at = None;
    }
}

/// Connections with input left over from their turn (work per turn is bounded).
#[derive(Default)]
pub struct Backlog(Vec<Token>);

impl Backlog {
    pub fn push(&mut self, token: Token) {
        if !self.0.contains(&token) {
            self.0.push(token);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every connection waiting, once each; the backlog is empty after.
    pub fn take(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.0)
    }
}
