//! Registration with the event loop: the table that says who owns each token (the
//! signal pipe, the core, or one of the fronts), and [`Io`], through which the core,
//! its stdio and the fronts watch their fds. It hands out tokens and records the
//! owner, so no part knows another's tokens. It sits below everything that registers
//! fds; the loop that drives them all is `reactor`.

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::RawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Signals,
    Core,
    /// The front at this index of the reactor's list.
    Front(usize),
}

/// Token -> owner. Tokens are reused once released.
#[derive(Default)]
pub struct Routes {
    owners: Vec<Option<Owner>>,
    free: Vec<usize>,
}

impl Routes {
    fn take(&mut self, owner: Owner) -> Token {
        match self.free.pop() {
            Some(i) => {
                self.owners[i] = Some(owner);
                Token(i)
            }
            None => {
                self.owners.push(Some(owner));
                Token(self.owners.len() - 1)
            }
        }
    }

    fn release(&mut self, token: Token) {
        if let Some(slot) = self.owners.get_mut(token.0) {
            if slot.take().is_some() {
                self.free.push(token.0);
            }
        }
    }

    pub fn owner(&self, token: Token) -> Option<Owner> {
        self.owners.get(token.0).copied().flatten()
    }
}

/// Registration with the loop, for the core and the fronts.
pub struct Io<'a> {
    registry: &'a Registry,
    routes: &'a mut Routes,
}

impl<'a> Io<'a> {
    pub fn new(registry: &'a Registry, routes: &'a mut Routes) -> Io<'a> {
        Io { registry, routes }
    }

    /// Watches `source` for `owner`; returns its token.
    pub fn watch<S: Source + ?Sized>(
        &mut self,
        owner: Owner,
        source: &mut S,
        interest: Interest,
    ) -> io::Result<Token> {
        let token = self.routes.take(owner);
        match self.registry.register(source, token, interest) {
            Ok(()) => Ok(token),
            Err(e) => {
                self.routes.release(token);
                Err(e)
            }
        }
    }

    pub fn watch_fd(&mut self, owner: Owner, fd: RawFd, interest: Interest) -> io::Result<Token> {
        self.watch(owner, &mut SourceFd(&fd), interest)
    }

    pub fn unwatch<S: Source + ?Sized>(&mut self, source: &mut S, token: Token) {
        let _ = self.registry.deregister(source);
        self.routes.release(token);
    }

    pub fn unwatch_fd(&mut self, fd: RawFd, token: Token) {
        self.unwatch(&mut SourceFd(&fd), token)
    }

    /// Who watches `token`, if anyone does.
    pub fn owner(&self, token: Token) -> Option<Owner> {
        self.routes.owner(token)
    }
}

/// What one readiness event said.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer closed both directions: nothing can reach it any more.
    pub gone: bool,
}
