//! Ways into the core. Each front lives in its own folder, turns its own messages
//! into core [`Call`](crate::core::Call)s and the core's outputs back into its own
//! messages, and registers its fds with the loop through [`Io`]. Adding one touches
//! neither the core nor the other fronts: only the launch that lists them.

pub mod conmon;
pub mod containerd;
pub mod jsonrpc;
pub mod listener;
pub mod out_queue;

use crate::core::{Core, Output};
use crate::registry::{Io, Readiness};
use mio::Token;
use std::time::Instant;

pub trait Front {
    /// Readiness of one of the front's own tokens.
    fn on_ready(&mut self, token: Token, ready: Readiness, core: &mut Core, io: &mut Io<'_>);

    /// The core's outputs of this turn: replies (a front ignores tickets it did not
    /// issue), events, the shim's exit.
    fn deliver(&mut self, outputs: &[Output], core: &mut Core, io: &mut Io<'_>);

    /// Work a front put off to stay fair (bounded work per readiness), and timers.
    fn on_tick(&mut self, _core: &mut Core, _io: &mut Io<'_>) {}

    /// A signal the shim caught (not SIGCHLD); true if this front acted on it.
    fn on_signal(&mut self, _signal: i32, _core: &mut Core, _io: &mut Io<'_>) -> bool {
        false
    }

    /// When the loop must wake up for this front at the latest.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// The shim is exiting: accept no new clients.
    fn stop_accepting(&mut self, _io: &mut Io<'_>) {}

    /// Nothing queued for any client.
    fn is_flushed(&self) -> bool;

    /// The shim is exiting: this front has done what it still owes (by default,
    /// written what was queued). The loop waits for every front, for a bounded time.
    fn ready_to_exit(&self) -> bool {
        self.is_flushed()
    }
}

/// Only the shim's own user (or root) may drive it, through any front.
pub fn peer_allowed(stream: &mio::net::UnixStream) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::fd::AsFd;
    let creds = getsockopt(&stream.as_fd(), PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if creds.uid() == me || creds.uid() == 0 {
        Ok(())
    } else {
        Err(format!("peer uid {} is neither {me} nor root", creds.uid()))
    }
}
