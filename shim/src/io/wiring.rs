//! Wiring a process's stdio: from the client's specs to the runtime's fds and the
//! shim's relays and fan-outs, and the PTY once its master arrives.

use super::attach::AttachHub;
use super::console::{self, ConsoleSocket};
use super::cri_log::CriLog;
use super::fanout::Fanout;
use super::host_end::{self, HostEnd};
use super::relay::Relay;
use super::{ProcessIo, StdinClose, Stream};
use crate::error::{err, CoreError, ErrorKind};
use crate::registry::Io;
use crate::runtime::RuntimeStdio;
use crate::state_dir::StateDir;
use mio::Token;
use std::os::fd::OwnedFd;
use tether_protocol::{LogParams, StdinEof};

/// What the client asked for a process's stdio.
#[derive(Default)]
pub struct StdioSpec {
    pub stdin: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub log: Option<LogParams>,
    pub attach: bool,
    /// Keep the output in memory, up to this many bytes per stream.
    pub capture: Option<usize>,
    pub stdin_eof: StdinEof,
}

/// Sets up a process's stdio. Without a terminal: a pipe per stream, relayed (or
/// fanned out) to or from the host ends. With one: the console socket; the relays are
/// made when the master arrives.
pub fn setup(
    name: &str,
    terminal: bool,
    spec: StdioSpec,
    dir: &StateDir,
    io: &mut Io<'_>,
) -> Result<(ProcessIo, RuntimeStdio), CoreError> {
    let mut pio = ProcessIo {
        // Nothing moves until the runtime call succeeds (`start_relaying`).
        held: true,
        ..ProcessIo::default()
    };
    match wire(&mut pio, name, terminal, spec, dir, io) {
        Ok(rt) => Ok((pio, rt)),
        Err(e) => {
            pio.release(io);
            Err(e)
        }
    }
}

fn stdio_err(m: String) -> CoreError {
    err(ErrorKind::StdioFailed, m)
}

fn wire(
    pio: &mut ProcessIo,
    name: &str,
    terminal: bool,
    spec: StdioSpec,
    dir: &StateDir,
    io: &mut Io<'_>,
) -> Result<RuntimeStdio, CoreError> {
    let StdioSpec {
        stdin,
        stdout,
        stderr,
        log,
        attach,
        capture,
        stdin_eof,
    } = spec;
    if capture.is_some() && (stdout.is_some() || stderr.is_some()) {
        return Err(err(
            ErrorKind::InvalidParams,
            "a captured exec's output is its answer: leave stdout and stderr out",
        ));
    }
    pio.fan_out = log.is_some() || capture.is_some();
    pio.capture_limit = capture;
    if let Some(lp) = &log {
        let log = CriLog::open(lp).map_err(stdio_err)?;
        pio.paths.log = Some(log.path().display().to_string());
        pio.log = Some(log);
    }
    if attach {
        let hub = AttachHub::bind(&dir.attach_socket(name), io).map_err(stdio_err)?;
        pio.paths.attach = Some(hub.path().display().to_string());
        pio.attach = Some(hub);
    }
    // A stream left out gets a FIFO the shim makes, unless something else takes the
    // output (a log, a capture): then it has no plain target. A captured exec's
    // stdin left out is /dev/null.
    let default_stdin = if capture.is_some() {
        Some("/dev/null".to_string())
    } else {
        None
    };
    let stdin = stdin.or(default_stdin);
    let plain = |stream: Stream, spec: Option<String>, fan_out: bool| -> Result<Option<HostEnd>, CoreError> {
        if spec.is_none() && fan_out {
            return Ok(None);
        }
        host_end::open_host_end(stream, spec.as_deref(), &dir.fifo(name, stream.name()), stdin_eof)
            .map(Some)
            .map_err(stdio_err)
    };
    let mut rt = RuntimeStdio::default();
    if terminal {
        if stderr.as_deref().is_some_and(|s| s != "/dev/null") {
            return Err(err(
                ErrorKind::InvalidParams,
                "a terminal process has no separate stderr: leave stderr out",
            ));
        }
        for (stream, spec) in [(Stream::Stdin, stdin), (Stream::Stdout, stdout)] {
            let fan_out = pio.fan_out && stream != Stream::Stdin;
            let end = plain(stream, spec, fan_out)?;
            pio.set_path(stream, end.as_ref());
            if stream == Stream::Stdin && matches!(end, Some(HostEnd::Open { .. })) {
                if let Some(hub) = pio.attach.as_mut() {
                    hub.expect_stdin();
                }
            }
            pio.pending_ends.push((stream, end));
        }
        pio.console = Some(ConsoleSocket::bind(&dir.console_socket(name), io).map_err(stdio_err)?);
        return Ok(rt);
    }
    let mut stdout_file: Option<(String, OwnedFd)> = None;
    for (stream, spec) in [
        (Stream::Stdin, stdin),
        (Stream::Stdout, stdout),
        (Stream::Stderr, stderr),
    ] {
        let fan_out = pio.fan_out && stream != Stream::Stdin;
        let end = match (&stdout_file, stream) {
            // One file for both: one descriptor, so one offset, and no overwriting.
            (Some((path, fd)), Stream::Stderr) if spec.as_deref() == Some(path.as_str()) => {
                Some(HostEnd::Open {
                    fd: fd
                        .try_clone()
                        .map_err(|e| stdio_err(format!("dup {path}: {e}")))?,
                    keepalive: None,
                    path: path.clone(),
                    writers_end_it: false,
                })
            }
            _ => plain(stream, spec, fan_out)?,
        };
        pio.set_path(stream, end.as_ref());
        if let Some(HostEnd::Open { fd, path, .. }) = &end {
            if stream == Stream::Stdout && host_end::is_regular_file(fd) {
                let dup = fd.try_clone().map_err(|e| stdio_err(format!("dup: {e}")))?;
                stdout_file = Some((path.clone(), dup));
            }
        }
        let child_end = match end {
            // /dev/null for the process itself, when nothing else wants the stream.
            Some(HostEnd::Null) if !fan_out => continue,
            None | Some(HostEnd::Null) => pio.fan_out_from_pipe(stream, None, io)?,
            Some(HostEnd::Open { fd, keepalive, .. }) if fan_out => {
                pio.fan_out_from_pipe(stream, Some((fd, keepalive)), io)?
            }
            Some(HostEnd::Open {
                fd,
                keepalive,
                path,
                writers_end_it,
            }) => {
                let late_writer = writers_end_it.then_some(path);
                pio.relay_pipe(stream, fd, keepalive, late_writer, io)?
            }
        };
        match stream {
            Stream::Stdin => rt.stdin = Some(child_end),
            Stream::Stdout => rt.stdout = Some(child_end),
            Stream::Stderr => rt.stderr = Some(child_end),
        }
    }
    Ok(rt)
}

/// Up to `max` bytes readable now from a non-blocking descriptor.
fn read_some(fd: &OwnedFd, max: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < max {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out.truncate(max);
    out
}

impl ProcessIo {
    fn set_path(&mut self, stream: Stream, end: Option<&HostEnd>) {
        let path = match end {
            Some(HostEnd::Null) => Some("/dev/null".to_string()),
            Some(HostEnd::Open { path, .. }) => Some(path.clone()),
            None => None,
        };
        match stream {
            Stream::Stdin => self.paths.stdin = path,
            Stream::Stdout => self.paths.stdout = path,
            Stream::Stderr => self.paths.stderr = path,
        }
    }

    /// A pipe relayed to (stdin: from) a plain target; returns the process's end.
    fn relay_pipe(
        &mut self,
        stream: Stream,
        fd: OwnedFd,
        keepalive: Option<OwnedFd>,
        late_writer: Option<String>,
        io: &mut Io<'_>,
    ) -> Result<OwnedFd, CoreError> {
        let (read, write) = host_end::pipe().map_err(stdio_err)?;
        let (relay, child_end) = match stream {
            Stream::Stdin => {
                // Attach input goes into the same pipe.
                if let Some(hub) = self.attach.as_mut() {
                    hub.set_stdin(write.try_clone().ok());
                }
                let relay = Relay::new(stream, fd, write, None, false);
                (relay.map(|r| r.with_late_writer(late_writer)), read)
            }
            _ => (Relay::new(stream, read, fd, keepalive, false), write),
        };
        let mut relay = relay.map_err(stdio_err)?;
        relay.register(io);
        self.relays.push(relay);
        Ok(child_end)
    }

    /// A pipe whose output fans out to the log, attach, a capture, and `plain`;
    /// returns the process's end.
    fn fan_out_from_pipe(
        &mut self,
        stream: Stream,
        plain: Option<(OwnedFd, Option<OwnedFd>)>,
        io: &mut Io<'_>,
    ) -> Result<OwnedFd, CoreError> {
        let (read, write) = host_end::pipe().map_err(stdio_err)?;
        self.add_fanout(stream, read, false, plain, io)?;
        Ok(write)
    }

    fn add_fanout(
        &mut self,
        stream: Stream,
        src: OwnedFd,
        src_is_tty: bool,
        plain: Option<(OwnedFd, Option<OwnedFd>)>,
        io: &mut Io<'_>,
    ) -> Result<(), CoreError> {
        let mut fanout = Fanout::new(stream, src, src_is_tty).map_err(stdio_err)?;
        if let Some((fd, keepalive)) = plain {
            fanout = fanout.with_plain(fd, keepalive).map_err(stdio_err)?;
        }
        if let Some(limit) = self.capture_limit {
            fanout = fanout.with_capture(limit);
        }
        fanout.register(io);
        self.fanouts.push(fanout);
        Ok(())
    }

    /// Readiness of one of this process's tokens.
    pub fn on_ready(&mut self, name: &str, token: Token, exited: bool, io: &mut Io<'_>) {
        if self.console.as_ref().is_some_and(|c| c.owns(token)) {
            self.attach_console(name, io);
        } else if let Some(hub) = self.attach.as_mut().filter(|h| h.owns(token)) {
            hub.on_ready(token, io);
            let stdin_eof = hub.take_stdin_eof();
            if hub.has_clients() {
                self.fan_out_relays(io);
            }
            if stdin_eof {
                self.close_stdin(io, exited);
            }
        }
        self.pump(io, exited);
    }

    /// Attach clients came: outputs on a splice relay move to fan-outs (the same fds,
    /// nothing lost in between) so the clients see them too.
    fn fan_out_relays(&mut self, io: &mut Io<'_>) {
        let (outputs, rest): (Vec<Relay>, Vec<Relay>) = std::mem::take(&mut self.relays)
            .into_iter()
            .partition(|r| r.stream != Stream::Stdin && !r.is_done());
        self.relays = rest;
        for relay in outputs {
            let stream = relay.stream;
            let Some(parts) = relay.into_parts(io) else {
                continue;
            };
            match Fanout::from_relay(stream, parts) {
                Ok(mut fanout) => {
                    fanout.register(io);
                    self.fanouts.push(fanout);
                }
                Err(m) => crate::log!("{} cannot fan out: {m}", stream.name()),
            }
        }
    }

    /// The runtime call that made the process succeeded: its stdio starts moving.
    /// `running`: the call also started it (an exec, a restore), as
    /// [`process_started`](Self::process_started) says.
    pub fn start_relaying(&mut self, io: &mut Io<'_>, running: bool) {
        self.held = false;
        if running {
            self.stdin_started();
        }
        self.pump(io, false);
    }

    /// The process has started (init: `start`): see [`Relay::process_started`].
    pub fn process_started(&mut self, io: &mut Io<'_>, exited: bool) {
        self.stdin_started();
        self.pump(io, exited);
    }

    fn stdin_started(&mut self) {
        for relay in self.relays.iter_mut().filter(|r| r.stream == Stream::Stdin) {
            relay.process_started();
        }
    }

    /// What a runtime that failed to make the process printed on its stdout and
    /// stderr, which are the process's own pipes (the process never ran, so it is
    /// all the runtime's): read, up to 64 KiB a stream, and not relayed.
    pub fn take_runtime_words(&mut self) -> Option<String> {
        let mut words = Vec::new();
        for stream in [Stream::Stderr, Stream::Stdout] {
            let relays = self.relays.iter().filter(|r| r.stream == stream);
            let fanouts = self.fanouts.iter().filter(|f| f.stream == stream);
            let sources = relays
                .filter_map(Relay::source)
                .chain(fanouts.filter_map(Fanout::source));
            for src in sources {
                words.extend(read_some(src, 64 << 10));
            }
        }
        let text = String::from_utf8_lossy(&words).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    /// Pumps every relay and fan-out (after readiness, or at exit for the last bytes).
    pub fn pump(&mut self, io: &mut Io<'_>, exited: bool) {
        if self.held {
            return;
        }
        for relay in &mut self.relays {
            relay.pump(io, exited);
        }
        for fanout in &mut self.fanouts {
            fanout.pump(io, exited, self.log.as_mut(), self.attach.as_mut());
        }
        self.finish_stdin_close(io);
    }

    /// The console socket is readable: take the master when it comes and wire it.
    fn attach_console(&mut self, name: &str, io: &mut Io<'_>) {
        let Some(socket) = self.console.as_mut() else {
            return;
        };
        let master = match socket.poll(io) {
            Ok(Some(master)) => master,
            Ok(None) => return,
            Err(m) => return crate::log!("process {name}: {m}"),
        };
        if let Some(socket) = self.console.take() {
            socket.close(io);
        }
        if let Some((rows, cols)) = self.pending_resize.take() {
            if let Err(m) = console::resize(&master, rows, cols) {
                crate::log!("process {name}: {m}");
            }
        }
        for (stream, end) in std::mem::take(&mut self.pending_ends) {
            let dup = match master.try_clone() {
                Ok(d) => d,
                Err(e) => {
                    crate::log!("process {name}: cannot dup the console master: {e}");
                    continue;
                }
            };
            let wired = match (stream, end) {
                (
                    Stream::Stdin,
                    Some(HostEnd::Open {
                        fd,
                        path,
                        writers_end_it,
                        ..
                    }),
                ) => {
                    if let Some(hub) = self.attach.as_mut() {
                        hub.set_stdin(dup.try_clone().ok());
                        hub.retry_input(io);
                    }
                    Relay::new(stream, fd, dup, None, false).map(|relay| {
                        let mut relay = relay.with_late_writer(writers_end_it.then_some(path));
                        relay.register(io);
                        self.relays.push(relay);
                    })
                }
                (Stream::Stdin, _) => Ok(()),
                (_, Some(HostEnd::Open { fd, keepalive, .. })) if !self.fan_out => {
                    Relay::new(stream, dup, fd, keepalive, true).map(|mut relay| {
                        relay.register(io);
                        self.relays.push(relay);
                    })
                }
                (_, Some(HostEnd::Open { fd, keepalive, .. })) => self
                    .add_fanout(stream, dup, true, Some((fd, keepalive)), io)
                    .map_err(|e| e.message),
                (_, _) if self.fan_out => self
                    .add_fanout(stream, dup, true, None, io)
                    .map_err(|e| e.message),
                (_, _) => Ok(()),
            };
            if let Err(m) = wired {
                crate::log!("process {name}: {m}");
            }
        }
        if let Some(hub) = self.attach.as_ref() {
            if hub.has_clients() {
                self.fan_out_relays(io);
            }
        }
        self.master = Some(master);
    }

    /// Resizes the terminal now, or when its master arrives.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), String> {
        match &self.master {
            Some(master) => console::resize(master, rows, cols),
            None => {
                self.pending_resize = Some((rows, cols));
                Ok(())
            }
        }
    }

    /// `close_stdin`: everything the client already wrote still reaches the process,
    /// however slowly it reads; then its stdin closes (the pipe's write end, or for a
    /// PTY an EOF character, so a canonical-mode reader sees end of input).
    pub fn close_stdin(&mut self, io: &mut Io<'_>, exited: bool) {
        if self.stdin_close != StdinClose::Open {
            return;
        }
        self.stdin_close = StdinClose::Draining;
        if let Some(hub) = self.attach.as_mut() {
            hub.close_stdin(io);
        }
        self.pump(io, exited);
    }

    /// After `close_stdin`: closes stdin once its relay has handed everything over
    /// (a terminal's, once its master has come and been wired).
    fn finish_stdin_close(&mut self, io: &mut Io<'_>) {
        if self.stdin_close != StdinClose::Draining || self.console.is_some() {
            return;
        }
        let is_stdin = |r: &Relay| r.stream == Stream::Stdin;
        if !self
            .relays
            .iter()
            .filter(|r| is_stdin(r))
            .all(Relay::input_drained)
        {
            return;
        }
        self.stdin_close = StdinClose::Closed;
        for relay in self.relays.iter_mut().filter(|r| is_stdin(r)) {
            relay.release(io);
        }
        self.relays.retain(|r| !is_stdin(r));
        if let Some(master) = &self.master {
            let _ = nix::unistd::write(master, &[console::eof_char(master)]);
        }
    }

    /// The attach socket, made now if the process has none yet (`attach` method).
    pub fn ensure_attach(&mut self, path: &std::path::Path, io: &mut Io<'_>) -> Result<String, String> {
        if let Some(hub) = &self.attach {
            return Ok(hub.path().display().to_string());
        }
        let mut hub = AttachHub::bind(path, io)?;
        let stdin = match &self.master {
            Some(master) => master.try_clone().ok(),
            None => self
                .relays
                .iter()
                .find(|r| r.stream == Stream::Stdin)
                .and_then(Relay::dst_dup),
        };
        hub.set_stdin(stdin);
        let shown = hub.path().display().to_string();
        self.paths.attach = Some(shown.clone());
        self.attach = Some(hub);
        Ok(shown)
    }

    /// `reopen_log`: write to a file at the log's path again.
    pub fn reopen_log(&mut self) -> Result<(), String> {
        match self.log.as_mut() {
            Some(log) => log.reopen(),
            None => Err("the process has no log".to_string()),
        }
    }

    /// The process has exited and its exit is out: what it no longer needs goes (its
    /// stdin, the PTY master, attach clients, FIFO read ends with nothing unread
    /// behind them). Output still flowing (a child that outlived it holds the pipe)
    /// keeps its relay.
    pub fn release_after_exit(&mut self, io: &mut Io<'_>) {
        for relay in self.relays.iter_mut() {
            if relay.stream == Stream::Stdin {
                relay.release(io);
            } else {
                relay.release_keepalive_if_drained();
            }
        }
        self.relays.retain(|r| r.stream != Stream::Stdin);
        for fanout in self.fanouts.iter_mut() {
            fanout.release_keepalive_if_drained();
        }
        if let Some(console) = self.console.take() {
            console.close(io);
        }
        if let Some(hub) = self.attach.as_mut() {
            hub.finish(io);
        }
        self.pending_ends.clear();
        self.master = None;
    }

    /// Frees every fd (the process is being deleted, or the shim exits).
    pub fn release(&mut self, io: &mut Io<'_>) {
        for relay in &mut self.relays {
            relay.release(io);
        }
        self.relays.clear();
        for fanout in &mut self.fanouts {
            fanout.release(io);
        }
        self.fanouts.clear();
        self.pending_ends.clear();
        if let Some(console) = self.console.take() {
            console.close(io);
        }
        if let Some(hub) = self.attach.take() {
            hub.close(io);
        }
        self.log = None;
        self.master = None;
    }
}
