//! Stdio of container processes: the host ends the client chose, the pipes or PTY
//! the process gets, and the relays between them.

pub mod console;
pub mod host_end;
pub mod relay;
mod wiring;

pub use wiring::setup;

use console::ConsoleSocket;
use host_end::HostEnd;
use mio::Token;
use relay::{DropReport, Relay};
use std::os::fd::OwnedFd;
use std::time::Instant;
use tether_protocol::StdioPaths;

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

/// Everything of one process's stdio the shim holds.
#[derive(Default)]
pub struct ProcessIo {
    pub paths: StdioPaths,
    pub relays: Vec<Relay>,
    /// Waiting for the runtime to send the PTY master.
    pub console: Option<ConsoleSocket>,
    /// A terminal's host ends, relayed once the master arrives.
    pub pending_ends: Vec<(Stream, HostEnd)>,
    /// The PTY master, kept for resize and close_stdin.
    pub master: Option<OwnedFd>,
    pub pending_resize: Option<(u16, u16)>,
}

impl ProcessIo {
    /// Every output relay has reached the end of its source: all the process wrote
    /// is in its destination (a terminal's master has arrived, too).
    pub fn output_drained(&self) -> bool {
        self.console.is_none()
            && self
                .relays
                .iter()
                .all(|r| r.stream == Stream::Stdin || r.is_done())
    }

    /// Output dropped since the last report, per stream (`force`: report now).
    pub fn take_drop_reports(&mut self, now: Instant, force: bool) -> Vec<DropReport> {
        self.relays
            .iter_mut()
            .filter_map(|r| r.take_drop_report(now, force))
            .collect()
    }

    pub fn report_due(&self) -> Option<Instant> {
        self.relays.iter().filter_map(|r| r.report_due()).min()
    }

    pub fn dropped_total(&self) -> u64 {
        self.relays.iter().map(|r| r.dropped_total()).sum()
    }

    pub fn owns(&self, token: Token) -> bool {
        self.relays.iter().any(|r| r.owns(token)) || self.console.as_ref().is_some_and(|c| c.owns(token))
    }
}
