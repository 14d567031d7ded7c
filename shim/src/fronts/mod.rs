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
use crate::handover::Passing;
use crate::registry::{Io, Readiness};
use mio::Token;
use std::path::PathBuf;
use std::time::Instant;

/// A front in a hand-over record (upgrade in place).
#[derive(serde::Serialize, serde::Deserialize)]
pub enum FrontRecord {
    JsonRpc(jsonrpc::JsonRpcRecord),
    Containerd(Box<containerd::ContainerdRecord>),
}

/// An `upgrade` a client asked a front for; the loop carries it out.
pub struct UpgradeRequest {
    /// The new binary (default: the shim's own path, as it is on disk now).
    pub binary: Option<PathBuf>,
}

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

    /// An `upgrade` a client asked for since the last turn, for the loop to carry out.
    fn take_upgrade_request(&mut self) -> Option<UpgradeRequest> {
        None
    }

    /// The upgrade this front asked for did not happen: tell its client why.
    fn upgrade_refused(&mut self, _why: &str, _core: &mut Core, _io: &mut Io<'_>) {}

    /// While an upgrade waits for the core: serve no new requests (they wait, in the
    /// socket, for the new binary or for the upgrade's refusal).
    fn hold(&mut self, _on: bool) {}

    /// The front can be handed over (upgrade in place).
    fn can_hand_over(&self) -> bool {
        false
    }

    /// What the front still waits for before it can be handed over, if anything.
    fn hand_over_waits_for(&self) -> Option<String> {
        None
    }

    /// The new binary has taken over the upgrade this front asked for: answer it.
    fn upgrade_done(&mut self, _result: tether_protocol::UpgradeResult, _core: &mut Core, _io: &mut Io<'_>) {}

    /// This front's part of the hand-over record; Err if it cannot be handed over.
    fn hand_over(&self, _fds: &mut Passing) -> Result<FrontRecord, String> {
        Err("this front cannot hand over yet".to_string())
    }

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

/// A front again from its hand-over record, in the new binary.
pub fn take_over(
    r: FrontRecord,
    owner: crate::registry::Owner,
    fds: &mut crate::handover::Adopting,
    io: &mut Io<'_>,
) -> Result<Box<dyn Front>, String> {
    match r {
        FrontRecord::JsonRpc(r) => Ok(Box::new(jsonrpc::JsonRpc::take_over(r, owner, fds, io)?)),
        FrontRecord::Containerd(r) => Ok(Box::new(containerd::Containerd::take_over(*r, owner, fds, io)?)),
    }
}
