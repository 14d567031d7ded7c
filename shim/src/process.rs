//! One container process (init or an exec): its pid, stdio relays, terminal, and how
//! far its life has been told: started, exited (reaped), exit published.

use crate::console::ConsoleSocket;
use crate::core::Ticket;
use crate::reaper::ChildExit;
use crate::state_dir::PreparedFile;
use crate::stdio::{HostEnd, Relay, Stream};
use mio::{Registry, Token};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;
use tether_protocol::{signal_name, ExitRecord, ProcessState, ProcessStatus, StdioPaths};

pub struct Process {
    /// `init` or the exec id.
    pub name: String,
    pub pid: Option<i32>,
    pub terminal: bool,
    pub paths: StdioPaths,
    pub relays: Vec<Relay>,
    /// Waiting for the runtime to send the PTY master.
    pub console: Option<ConsoleSocket>,
    /// A terminal's host ends, relayed once the master arrives.
    pub pending_ends: Vec<(Stream, HostEnd)>,
    /// The PTY master, kept for resize and close_stdin.
    pub master: Option<OwnedFd>,
    pub pending_resize: Option<(u16, u16)>,
    /// The runtime call that creates or starts it is running.
    pub launching: bool,
    /// Init: `create` finished. Execs: always (they are created running).
    pub created: bool,
    /// Its start event (`started` / `exec_started`) has been published.
    pub started: bool,
    /// Reaped: how it ended, and when.
    pub exit: Option<ExitRecord>,
    pub reaped_at: Option<Instant>,
    pub exit_published: bool,
    /// `wait` calls to answer with the exit record.
    pub waiters: Vec<Ticket>,
    /// Where its exit record goes, prepared once its pid is known.
    pub exit_file: Option<PreparedFile>,
}

impl Process {
    pub fn new(name: &str, terminal: bool) -> Process {
        Process {
            name: name.to_string(),
            pid: None,
            terminal,
            paths: StdioPaths::default(),
            relays: Vec::new(),
            console: None,
            pending_ends: Vec::new(),
            master: None,
            pending_resize: None,
            launching: true,
            created: false,
            started: false,
            exit: None,
            reaped_at: None,
            exit_published: false,
            waiters: Vec::new(),
            exit_file: None,
        }
    }

    pub fn status(&self) -> ProcessStatus {
        if self.exit.is_some() {
            ProcessStatus::Exited
        } else if self.started {
            ProcessStatus::Running
        } else if self.created {
            ProcessStatus::Created
        } else {
            ProcessStatus::Creating
        }
    }

    /// Alive as far as the shim knows: it has a pid and has not been reaped.
    pub fn is_alive(&self) -> bool {
        self.pid.is_some() && self.exit.is_none()
    }

    pub fn state(&self) -> ProcessState {
        ProcessState {
            process: self.name.clone(),
            pid: self.pid,
            status: self.status(),
            terminal: self.terminal,
            stdio: self.paths.clone(),
            exit: self.exit.clone().filter(|_| self.exit_published),
        }
    }

    /// Records the reaped exit.
    pub fn set_exited(&mut self, exit: &ChildExit) {
        self.exit = Some(ExitRecord {
            process: self.name.clone(),
            pid: exit.pid,
            status: Some(exit.status),
            signal: exit.signal,
            signal_name: exit.signal.map(signal_name),
            exited_at: tether_protocol::time::now(),
            oom_killed: false,
            reason: None,
        });
        self.reaped_at = Some(Instant::now());
    }

    /// Every output relay has reached the end of its source: all the process wrote
    /// is in its destination.
    pub fn output_drained(&self) -> bool {
        let waiting_for_master = self.terminal && self.console.is_some();
        !waiting_for_master
            && self
                .relays
                .iter()
                .all(|r| r.stream == Stream::Stdin || r.is_done())
    }

    pub fn owns_token(&self, token: Token) -> bool {
        self.relays.iter().any(|r| r.tokens().any(|t| t == token))
            || self.console.as_ref().is_some_and(|c| c.tokens().contains(&token))
    }

    /// Pumps every relay (after readiness, or at exit to take the last bytes).
    pub fn pump(&mut self, registry: &Registry) {
        let exited = self.exit.is_some();
        for relay in &mut self.relays {
            relay.pump(registry, exited);
        }
    }

    /// Closes the process's stdin: the pipe's write end, or for a PTY, an EOF
    /// character so a canonical-mode reader sees end of input.
    pub fn close_stdin(&mut self, registry: &Registry) {
        let exited = self.exit.is_some();
        for relay in self.relays.iter_mut().filter(|r| r.stream == Stream::Stdin) {
            // Hand over what the client already wrote before closing.
            relay.pump(registry, exited);
            relay.release(registry);
        }
        self.relays.retain(|r| r.stream != Stream::Stdin);
        if let Some(master) = &self.master {
            let eof = [crate::console::eof_char(master.as_raw_fd())];
            // SAFETY: a one-byte write from a local array to the master we own.
            let _ = unsafe { libc::write(master.as_raw_fd(), eof.as_ptr().cast(), 1) };
        }
    }

    /// Frees every fd of the process (it is being deleted or the shim exits).
    pub fn release(&mut self, registry: &Registry) {
        for relay in &mut self.relays {
            relay.release(registry);
        }
        self.relays.clear();
        self.pending_ends.clear();
        if let Some(file) = self.exit_file.take() {
            file.discard();
        }
        if let Some(console) = self.console.take() {
            console.close(registry);
        }
        self.master = None;
    }
}
