//! Wiring a process's stdio: from the client's three specs to the runtime's fds and
//! the shim's relays, and the PTY once its master arrives.

use super::console::{self, ConsoleSocket};
use super::host_end::{self, HostEnd};
use super::relay::Relay;
use super::{ProcessIo, Stream};
use crate::core::{err, CoreError, ErrorKind};
use crate::reactor::Io;
use crate::runtime::RuntimeStdio;
use crate::state_dir::StateDir;
use mio::Token;
use std::os::fd::OwnedFd;

/// Sets up a process's stdio from the client's three specs. Without a terminal: a
/// pipe per stream, relayed to or from the host end. With one: the console socket;
/// the relays are made when the master arrives.
pub fn setup(
    name: &str,
    terminal: bool,
    specs: [Option<String>; 3],
    dir: &StateDir,
    io: &mut Io<'_>,
) -> Result<(ProcessIo, RuntimeStdio), CoreError> {
    let mut pio = ProcessIo::default();
    match wire(&mut pio, name, terminal, specs, dir, io) {
        Ok(rt) => Ok((pio, rt)),
        Err(e) => {
            pio.release(io);
            Err(e)
        }
    }
}

fn wire(
    pio: &mut ProcessIo,
    name: &str,
    terminal: bool,
    specs: [Option<String>; 3],
    dir: &StateDir,
    io: &mut Io<'_>,
) -> Result<RuntimeStdio, CoreError> {
    let [stdin, stdout, stderr] = specs;
    let stdio_err = |m: String| err(ErrorKind::StdioFailed, m);
    let mut rt = RuntimeStdio::default();
    if terminal {
        if stderr.as_deref().is_some_and(|s| s != "/dev/null") {
            return Err(err(
                ErrorKind::InvalidParams,
                "a terminal process has no separate stderr: leave stderr out",
            ));
        }
        for (stream, spec) in [(Stream::Stdin, stdin), (Stream::Stdout, stdout)] {
            let end = host_end::open_host_end(stream, spec.as_deref(), &dir.fifo(name, stream.name()))
                .map_err(stdio_err)?;
            pio.set_path(stream, &end);
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
        let end = match (&stdout_file, stream) {
            // One file for both: one descriptor, so one offset, and no overwriting.
            (Some((path, fd)), Stream::Stderr) if spec.as_deref() == Some(path.as_str()) => HostEnd::Open {
                fd: fd
                    .try_clone()
                    .map_err(|e| stdio_err(format!("dup {path}: {e}")))?,
                keepalive: None,
                path: path.clone(),
            },
            _ => host_end::open_host_end(stream, spec.as_deref(), &dir.fifo(name, stream.name()))
                .map_err(stdio_err)?,
        };
        pio.set_path(stream, &end);
        let HostEnd::Open { fd, keepalive, path } = end else {
            continue;
        };
        if stream == Stream::Stdout && host_end::is_regular_file(&fd) {
            stdout_file = Some((path, fd.try_clone().map_err(|e| stdio_err(format!("dup: {e}")))?));
        }
        let (read, write) = host_end::pipe().map_err(stdio_err)?;
        let (relay, child_end) = match stream {
            Stream::Stdin => (Relay::new(stream, fd, write, None, false), read),
            _ => (Relay::new(stream, read, fd, keepalive, false), write),
        };
        let mut relay = relay.map_err(stdio_err)?;
        relay.register(io);
        relay.pump(io, false);
        pio.relays.push(relay);
        match stream {
            Stream::Stdin => rt.stdin = Some(child_end),
            Stream::Stdout => rt.stdout = Some(child_end),
            Stream::Stderr => rt.stderr = Some(child_end),
        }
    }
    Ok(rt)
}

impl ProcessIo {
    fn set_path(&mut self, stream: Stream, end: &HostEnd) {
        let path = match end {
            HostEnd::Null => Some("/dev/null".to_string()),
            HostEnd::Open { path, .. } => Some(path.clone()),
        };
        match stream {
            Stream::Stdin => self.paths.stdin = path,
            Stream::Stdout => self.paths.stdout = path,
            Stream::Stderr => self.paths.stderr = path,
        }
    }

    /// Readiness of one of this process's tokens: take the PTY master if it is the
    /// console socket's, else pump the relays.
    pub fn on_ready(&mut self, name: &str, token: Token, exited: bool, io: &mut Io<'_>) {
        if self.console.as_ref().is_some_and(|c| c.owns(token)) {
            self.attach_console(name, exited, io);
        } else {
            self.pump(io, exited);
        }
    }

    /// Pumps every relay (after readiness, or at exit to take the last bytes).
    pub fn pump(&mut self, io: &mut Io<'_>, exited: bool) {
        for relay in &mut self.relays {
            relay.pump(io, exited);
        }
    }

    /// The console socket is readable: take the master when it comes and relay it.
    fn attach_console(&mut self, name: &str, exited: bool, io: &mut Io<'_>) {
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
            let HostEnd::Open { fd, keepalive, .. } = end else {
                continue;
            };
            let dup = match master.try_clone() {
                Ok(d) => d,
                Err(e) => {
                    crate::log!("process {name}: cannot dup the console master: {e}");
                    continue;
                }
            };
            let relay = match stream {
                Stream::Stdin => Relay::new(stream, fd, dup, None, false),
                _ => Relay::new(stream, dup, fd, keepalive, true),
            };
            match relay {
                Ok(mut relay) => {
                    relay.register(io);
                    relay.pump(io, exited);
                    self.relays.push(relay);
                }
                Err(m) => crate::log!("process {name}: {m}"),
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

    /// Closes the process's stdin: the pipe's write end, or for a PTY, an EOF
    /// character so a canonical-mode reader sees end of input.
    pub fn close_stdin(&mut self, io: &mut Io<'_>, exited: bool) {
        for relay in self.relays.iter_mut().filter(|r| r.stream == Stream::Stdin) {
            // Hand over what the client already wrote before closing.
            relay.pump(io, exited);
            relay.release(io);
        }
        self.relays.retain(|r| r.stream != Stream::Stdin);
        if let Some(master) = &self.master {
            let _ = nix::unistd::write(master, &[console::eof_char(master)]);
        }
    }

    /// The process has exited and its exit is out: what it no longer needs goes (its
    /// stdin, the PTY master, FIFO keepalives with nothing unread behind them). Output
    /// still flowing (a child that outlived it holds the pipe) keeps its relay.
    pub fn release_after_exit(&mut self, io: &mut Io<'_>) {
        for relay in self.relays.iter_mut() {
            if relay.stream == Stream::Stdin {
                relay.release(io);
            } else {
                relay.release_keepalive_if_drained();
            }
        }
        self.relays.retain(|r| r.stream != Stream::Stdin);
        if let Some(console) = self.console.take() {
            console.close(io);
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
        self.pending_ends.clear();
        if let Some(console) = self.console.take() {
            console.close(io);
        }
        self.master = None;
    }
}
