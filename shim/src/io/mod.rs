//! Stdio of container processes: the host ends the client chose, the pipes or PTY
//! the process gets, and what moves the bytes between them: a splice relay when an
//! output has exactly one plain target (a FIFO or a file), a fan-out when it goes to
//! several sinks (the CRI log, attach clients, a capture, the plain target).

pub mod attach;
pub mod console;
pub mod cri_log;
pub mod drops;
pub mod fanout;
pub mod host_end;
pub mod relay;
mod wiring;

pub use wiring::{setup, StdioSpec};

use crate::registry::Io;
use attach::AttachHub;
use console::ConsoleSocket;
use cri_log::CriLog;
use drops::DropReport;
use fanout::{Capture, Fanout};
use host_end::HostEnd;
use mio::Token;
use relay::Relay;
use std::os::fd::OwnedFd;
use std::time::Instant;
use tether_protocol::StdioPaths;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The stdin relay, and outputs with one plain target (splice).
    pub relays: Vec<Relay>,
    /// Outputs with several sinks.
    pub fanouts: Vec<Fanout>,
    pub log: Option<CriLog>,
    pub attach: Option<AttachHub>,
    /// Output goes through fan-outs (a log or a capture), a terminal's too.
    fan_out: bool,
    capture_limit: Option<usize>,
    /// Waiting for the runtime to send the PTY master.
    pub console: Option<ConsoleSocket>,
    /// A terminal's host ends, wired once the master arrives (None: no plain target).
    pub pending_ends: Vec<(Stream, Option<HostEnd>)>,
    /// The PTY master, kept for resize and close_stdin.
    pub master: Option<OwnedFd>,
    pub pending_resize: Option<(u16, u16)>,
    stdin_close: StdinClose,
    /// Until the runtime call that makes the process succeeds, nothing is relayed:
    /// what its pipes hold then is the runtime's own words (see `take_runtime_words`).
    held: bool,
}

/// Where `close_stdin` is for one process.
#[derive(Default, PartialEq, Eq, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum StdinClose {
    #[default]
    Open,
    /// Asked: stdin closes once what its source holds has reached the process.
    Draining,
    Closed,
}

impl ProcessIo {
    /// Every output has reached the end of its source and every byte is where it
    /// goes (a terminal's master has arrived, too).
    pub fn output_drained(&self) -> bool {
        self.sources_drained() && !self.attach.as_ref().is_some_and(AttachHub::output_queued)
    }

    /// Every output has reached the end of its source (attach clients may still have
    /// some of it queued).
    fn sources_drained(&self) -> bool {
        self.console.is_none()
            && self
                .relays
                .iter()
                .all(|r| r.stream == Stream::Stdin || r.is_done())
            && self.fanouts.iter().all(Fanout::is_done)
    }

    /// Output bytes are waiting on their way: in a source pipe or PTY, or taken by
    /// the shim and not yet written (a slow reader holds them back).
    pub fn output_waiting(&self) -> bool {
        self.relays
            .iter()
            .any(|r| r.stream != Stream::Stdin && r.output_waiting())
            || self.fanouts.iter().any(Fanout::output_waiting)
            || self.attach.as_ref().is_some_and(AttachHub::output_queued)
    }

    /// Output dropped since the last report: (stream, sink, report).
    pub fn take_drop_reports(
        &mut self,
        now: Instant,
        force: bool,
    ) -> Vec<(Stream, &'static str, DropReport)> {
        let mut reports = Vec::new();
        for r in &mut self.relays {
            if let Some(d) = r.take_drop_report(now, force) {
                reports.push((r.stream, "file", d));
            }
        }
        for f in &mut self.fanouts {
            if let Some(d) = f.take_drop_report(now, force) {
                reports.push((f.stream, "file", d));
            }
        }
        if let Some(log) = self.log.as_mut() {
            for (stream, d) in log.take_drop_reports(now, force) {
                reports.push((stream, "log", d));
            }
        }
        reports
    }

    /// When this process's stdio must be looked at again: a drop report, an idle
    /// read buffer to give back.
    pub fn due(&self) -> Option<Instant> {
        let relays = self.relays.iter().filter_map(|r| r.report_due());
        let fanouts = self.fanouts.iter().filter_map(|f| f.due());
        let ended = self.sources_drained();
        relays
            .chain(fanouts)
            .chain(self.log.as_ref().and_then(CriLog::report_due))
            .chain(self.attach.as_ref().and_then(|h| h.stall_deadline(ended)))
            .min()
    }

    /// Timed work: read buffers idle for a while go back; attach clients stalled
    /// while holding output back are cut off, and the output moves on.
    pub fn on_tick(&mut self, now: Instant, exited: bool, io: &mut Io<'_>) {
        let mut trimmed = false;
        for f in &mut self.fanouts {
            trimmed |= f.trim(now);
        }
        if trimmed && !self.fanouts.iter().any(Fanout::holds_buffer) {
            // Output has stopped: the log's write buffers go too, and the heap they
            // and the read buffers came from is given back.
            if let Some(log) = self.log.as_mut() {
                log.release_buffers();
            }
            crate::sys::malloc_trim();
        }
        let ended = self.sources_drained();
        if self
            .attach
            .as_mut()
            .is_some_and(|h| h.cut_stalled(now, ended, io))
        {
            self.pump(io, exited);
        }
    }

    pub fn dropped_total(&self) -> u64 {
        self.relays.iter().map(|r| r.dropped_total()).sum::<u64>()
            + self.fanouts.iter().map(|f| f.dropped_total()).sum::<u64>()
            + self.log.as_ref().map_or(0, CriLog::dropped_total)
    }

    /// What a captured stream kept (an `exec` with `capture`).
    pub fn take_capture(&mut self, stream: Stream) -> Option<Capture> {
        self.fanouts
            .iter_mut()
            .find(|f| f.stream == stream)
            .and_then(|f| f.capture.take())
    }

    pub fn owns(&self, token: Token) -> bool {
        self.relays.iter().any(|r| r.owns(token))
            || self.fanouts.iter().any(|f| f.owns(token))
            || self.console.as_ref().is_some_and(|c| c.owns(token))
            || self.attach.as_ref().is_some_and(|a| a.owns(token))
    }
}

/// A process's stdio in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ProcessIoRecord {
    paths: StdioPaths,
    relays: Vec<relay::RelayRecord>,
    fanouts: Vec<fanout::FanoutRecord>,
    log: Option<cri_log::CriLogRecord>,
    attach: Option<attach::AttachRecord>,
    fan_out: bool,
    capture_limit: Option<usize>,
    master: Option<std::os::fd::RawFd>,
    pending_resize: Option<(u16, u16)>,
    stdin_close: StdinClose,
    held: bool,
}

impl ProcessIo {
    /// Why this stdio cannot be handed over yet (a terminal's master is on its way:
    /// the loop takes it first), if it cannot.
    pub fn not_ready_for_hand_over(&self) -> Option<&'static str> {
        self.console
            .is_some()
            .then_some("a terminal's console master has not arrived yet")
    }

    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<ProcessIoRecord, String> {
        if let Some(why) = self.not_ready_for_hand_over() {
            return Err(why.to_string());
        }
        Ok(ProcessIoRecord {
            paths: self.paths.clone(),
            relays: self
                .relays
                .iter()
                .map(|r| r.hand_over(fds))
                .collect::<Result<_, _>>()?,
            fanouts: self
                .fanouts
                .iter()
                .map(|f| f.hand_over(fds))
                .collect::<Result<_, _>>()?,
            log: self.log.as_ref().map(|l| l.hand_over(fds)).transpose()?,
            attach: self.attach.as_ref().map(|a| a.hand_over(fds)).transpose()?,
            fan_out: self.fan_out,
            capture_limit: self.capture_limit,
            master: fds.pass_opt(self.master.as_ref())?,
            pending_resize: self.pending_resize,
            stdin_close: self.stdin_close,
            held: self.held,
        })
    }

    pub fn take_over(
        r: ProcessIoRecord,
        fds: &mut crate::handover::Adopting,
        io: &mut Io<'_>,
    ) -> Result<ProcessIo, String> {
        let mut pio = ProcessIo {
            paths: r.paths,
            fan_out: r.fan_out,
            capture_limit: r.capture_limit,
            master: fds.take_opt(r.master)?,
            pending_resize: r.pending_resize,
            stdin_close: r.stdin_close,
            held: r.held,
            ..ProcessIo::default()
        };
        // Whatever was taken so far is released if a later part fails.
        let rebuilt = (|| -> Result<(), String> {
            for relay in r.relays {
                pio.relays.push(Relay::take_over(relay, fds, io)?);
            }
            for fanout in r.fanouts {
                pio.fanouts.push(Fanout::take_over(fanout, fds, io)?);
            }
            pio.log = r.log.map(|l| CriLog::take_over(l, fds)).transpose()?;
            pio.attach = r.attach.map(|a| AttachHub::take_over(a, fds, io)).transpose()?;
            Ok(())
        })();
        match rebuilt {
            Ok(()) => Ok(pio),
            Err(e) => {
                pio.release(io);
                Err(e)
            }
        }
    }
}
