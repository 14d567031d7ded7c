//! The conmon front (`tether-conmon`): conmon 2.1.6's command line and files, so
//! that Podman (and CRI-O) run containers on tether. The engine owns the lifecycle
//! here: it runs `runtime start`, `kill`, `pause` and `delete` itself, so this front
//! only has the core create the container (`runtime create`), tells the engine its
//! pid over the sync pipe, and when the container's exit is out (its output all in
//! the log and sent to attach clients) closes the fds it held for the engine, writes
//! conmon's exit file (and `oom`), lets attach clients drain, and ends the loop; the
//! launcher's hook then runs the engine's exit command and the process exits.
//! docs/CONMON.md describes what is supported; the contract is
//! shared/research/podman-conmon-contract.md.

pub mod args;
mod ctl;
pub(crate) mod files;

use crate::core::{Answer, Call, Core, Output, Reply, Ticket};
use crate::fronts::Front;
use crate::registry::{Io, Owner, Readiness};
use mio::Token;
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tether_protocol::{
    CreateParams, CriuOptions, EventBody, ExecParams, ExitRecord, LogParams, ShutdownParams, INIT_PROCESS,
};

/// How long attach clients may take to read what is queued for them once the
/// container's output is over, before the monitor ends anyway.
const ATTACH_DRAIN: Duration = Duration::from_secs(5);
/// How often draining attach clients are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// conmon's message for a `-T` timeout.
const TIMED_OUT: &str = "command timed out";

/// The signals conmon forwards (and the monitor catches for that).
pub const FORWARDED: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// What the command line decided, for the front in the shim.
pub struct Settings {
    pub cid: String,
    pub bundle: PathBuf,
    /// `-p`: the runtime's pid file in conmon; here a copy of the pid.
    pub container_pidfile: PathBuf,
    pub exit_dir: Option<PathBuf>,
    pub persist_dir: Option<PathBuf>,
    pub log: LogParams,
    /// `-i`: the container gets a stdin pipe, fed by attach clients, closed when
    /// one of them stops writing.
    pub stdin: bool,
    /// conmon's rule: an attach client that stops writing closes stdin (`-i`
    /// without `--leave-stdin-open`).
    pub eof_closes_stdin: bool,
    /// `-t`: the process has a terminal (the runtime's console socket).
    pub terminal: bool,
    /// Without `--api-version` the sync key is `pid` (CRI-O), else `data`.
    pub api_version: bool,
    /// Where the engine looks for the attach socket (`<bundle>/attach`); with the
    /// `ctl` and `winsz` FIFOs, only when there is a bundle (an exec without `-b`,
    /// CRI-O's exec sync, has none).
    pub attach_link: Option<PathBuf>,
    /// The core's attach socket for the process (the link points at it).
    pub attach_socket: PathBuf,
    /// `-e`: one exec session instead of a container.
    pub exec: Option<ExecSession>,
    /// `-T`/`--timeout`: the process's group is killed this long after the runtime
    /// call returned, and its status is -1 ("command timed out").
    pub timeout: Option<Duration>,
    /// `--restore PATH`: the container is restored from this checkpoint image
    /// (`runtime restore`, CRIU's work files in the bundle) instead of created.
    pub restore: Option<PathBuf>,
}

/// conmon's `-e --exec-attach` (podman exec, healthcheck run).
pub struct ExecSession {
    /// `-u`: the session id, the process's name in the core.
    pub id: String,
    /// `--exec-process-spec`: the OCI process podman wrote.
    pub spec: PathBuf,
    /// `_OCI_ATTACHPIPE`: told `{"data": 0}` once the attach socket listens.
    pub attach_pipe: Option<OwnedFd>,
    /// The start pipe, held open: the runtime call waits on it for podman's second
    /// byte (sent once podman is attached) before it runs `runtime exec` (conmon_cli::gate).
    pub start_pipe: Option<OwnedFd>,
}

enum Phase {
    /// The create is to be issued (on the first turn of the loop).
    Start,
    Creating(Ticket),
    Running,
    /// The exit is written; attach clients read what is left until this deadline.
    Draining(Instant),
    Done,
}

pub struct Conmon {
    s: Settings,
    sync: Option<OwnedFd>,
    /// Inherited fds held until the container exits (published ports' sockets...).
    held: Vec<OwnedFd>,
    ctl: Option<ctl::Ctl>,
    phase: Phase,
    /// The monitor's exit code so far (1 once a create failed, then the process's
    /// status, as conmon's), for the launcher.
    outcome: Rc<Cell<i32>>,
    /// The process's pid once the runtime call returned.
    pid: Option<i32>,
    /// When `-T` kills it, and whether it did.
    timeout_at: Option<Instant>,
    timed_out: bool,
}

impl Conmon {
    pub fn new(
        s: Settings,
        sync: Option<OwnedFd>,
        held: Vec<OwnedFd>,
        outcome: Rc<Cell<i32>>,
        owner: Owner,
        io: &mut Io<'_>,
    ) -> std::io::Result<Conmon> {
        let process = s.exec.as_ref().map(|e| e.id.clone());
        let ctl = match s.attach_link {
            Some(_) => Some(ctl::Ctl::make(&s.bundle, process, owner, io)?),
            None => None,
        };
        Ok(Conmon {
            s,
            sync,
            held,
            ctl,
            phase: Phase::Start,
            outcome,
            pid: None,
            timeout_at: None,
            timed_out: false,
        })
    }

    /// The process this monitor watches: init, or the exec session.
    fn process_name(&self) -> &str {
        self.s.exec.as_ref().map_or(INIT_PROCESS, |e| e.id.as_str())
    }

    /// The process's stdin: /dev/null without `-i` (and without `-t`: a terminal's
    /// input comes from attach clients, through the PTY).
    fn no_stdin(&self) -> Option<String> {
        (!self.s.stdin && !self.s.terminal).then(|| "/dev/null".to_string())
    }

    fn link_attach(&self) {
        if let Some(link) = self
            .s
            .attach_link
            .as_ref()
            .filter(|l| **l != self.s.attach_socket)
        {
            let _ = std::fs::remove_file(link);
            if let Err(e) = std::os::unix::fs::symlink(&self.s.attach_socket, link) {
                crate::log!("cannot link {}: {e}", link.display());
            }
        }
    }

    fn unlink_attach(&self) {
        if let Some(link) = &self.s.attach_link {
            let _ = std::fs::remove_file(link);
        }
    }

    fn exec(&mut self, core: &mut Core, io: &mut Io<'_>) {
        let no_stdin = self.no_stdin();
        let Some(session) = self.s.exec.as_mut() else {
            return;
        };
        let process = match std::fs::read(&session.spec)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                let m = format!("exec process spec {}: {e}", session.spec.display());
                return self.create_failed(&m);
            }
        };
        let params = ExecParams {
            exec_id: session.id.clone(),
            process,
            stdin: no_stdin,
            log: Some(self.s.log.clone()),
            attach: true,
            ..Default::default()
        };
        match core.call(Call::Exec(params), io) {
            Reply::Later(d) => {
                self.phase = Phase::Creating(d.ticket());
                if self.s.eof_closes_stdin {
                    core.engine_launched(&session.id);
                }
                self.link_attach();
                // The attach socket listens: podman may connect, then sends the
                // second start byte that lets `runtime exec` run.
                if let Some(pipe) = session_attach_pipe(&mut self.s) {
                    if let Err(e) = files::sync_message(&pipe, "data", 0, None) {
                        crate::log!("cannot write to the attach pipe: {e}");
                    }
                }
            }
            Reply::Now(Err(e)) => self.create_failed(&e.message),
            Reply::Now(Ok(_)) => self.create_failed("exec answered without a pid"),
        }
    }

    fn create(&mut self, core: &mut Core, io: &mut Io<'_>) {
        let checkpoint = self.s.restore.as_ref().map(|image| CriuOptions {
            image_path: image.display().to_string(),
            work_path: Some(self.s.bundle.display().to_string()),
            ..Default::default()
        });
        let params = CreateParams {
            stdin: self.no_stdin(),
            log: Some(self.s.log.clone()),
            attach: true,
            checkpoint,
            ..Default::default()
        };
        match core.call(Call::Create(params), io) {
            Reply::Later(d) => {
                self.phase = Phase::Creating(d.ticket());
                if self.s.eof_closes_stdin {
                    core.engine_launched(INIT_PROCESS);
                }
                self.link_attach();
            }
            Reply::Now(Err(e)) => self.create_failed(&e.message),
            Reply::Now(Ok(_)) => self.create_failed("create answered without a pid"),
        }
    }

    fn created(&mut self, pid: i32) {
        crate::log!("{} of {} launched, pid {pid}", self.process_name(), self.s.cid);
        if let Err(e) = crate::state_dir::write_atomic(&self.s.container_pidfile, pid.to_string().as_bytes())
        {
            crate::log!("cannot write {}: {e}", self.s.container_pidfile.display());
        }
        // A legacy exec (CRI-O's exec sync) reports only its exit code.
        if self.s.api_version || self.s.exec.is_none() {
            self.send_sync(pid, None);
        }
        // `--preserve-fds`' fds are the process's now: later calls must not get them.
        for fd in &self.held {
            crate::sys::set_cloexec(fd);
        }
        self.pid = Some(pid);
        self.timeout_at = self.s.timeout.map(|t| Instant::now() + t);
        self.phase = Phase::Running;
    }

    fn create_failed(&mut self, message: &str) {
        crate::log!("create failed: {message}");
        self.send_sync(-1, Some(message));
        self.outcome.set(1);
        self.unlink_attach();
        self.held.clear();
        // Ended on the next tick: outputs made here (in `deliver`) would wait for
        // the loop's next wake-up.
        self.phase = Phase::Draining(Instant::now());
    }

    fn send_sync(&mut self, data: i32, message: Option<&str>) {
        let key = files::sync_key(self.s.api_version, self.s.exec.is_some());
        if let Some(fd) = &self.sync {
            if let Err(e) = files::sync_message(fd, key, data, message) {
                crate::log!("cannot write to the sync pipe: {e}");
            }
        }
        // One message per create; an exec session sends its exit status last.
        if self.s.exec.is_none() || data < 0 || message.is_some() {
            self.sync = None;
        }
    }

    /// Init's exit is out: conmon's order (fds, oom, exit files), then attach drains.
    fn exited(&mut self, record: &ExitRecord) {
        // Published ports must be free before the engine sees the exit (restart).
        self.held.clear();
        let status = if self.timed_out {
            -1
        } else {
            record.status.unwrap_or(-1)
        };
        // conmon's monitor exits with the process's status (-1 after a timeout).
        self.outcome.set(status);
        crate::log!("container {} exited with {status}", self.s.cid);
        if record.oom_killed {
            let mut dirs = vec![self.s.bundle.clone()];
            dirs.extend(self.s.persist_dir.clone());
            for dir in dirs {
                if let Err(e) = std::fs::write(dir.join("oom"), b"") {
                    crate::log!("cannot write {}/oom: {e}", dir.display());
                }
            }
        }
        let text = status.to_string();
        if let Some(dir) = &self.s.persist_dir {
            files::write_or_log(&dir.join("exit"), &text);
        }
        if let Some(dir) = &self.s.exit_dir {
            files::write_or_log(&dir.join(&self.s.cid), &text);
        }
        self.unlink_attach();
        if self.s.exec.is_some() {
            // podman has stopped reading by now (it takes the status from the exit
            // file): conmon's write fails with EPIPE too.
            let key = files::sync_key(self.s.api_version, true);
            let message = self.timed_out.then_some(TIMED_OUT);
            if let Some(fd) = self.sync.take() {
                let _ = files::sync_message(&fd, key, status, message);
            }
        }
        self.phase = Phase::Draining(Instant::now() + ATTACH_DRAIN);
    }

    /// `-T` ran out: conmon kills the process's group (the process alone if its group
    /// is the monitor's or init's) with SIGKILL; the exit is reported as -1.
    fn time_out(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::{getpgid, Pid};
        self.timeout_at = None;
        let Some(pid) = self.pid else { return };
        self.timed_out = true;
        crate::log!("{} timed out: killing it", self.process_name());
        let pid = Pid::from_raw(pid);
        let _ = match getpgid(Some(pid)) {
            Ok(group) if group.as_raw() > 1 => kill(Pid::from_raw(-group.as_raw()), Signal::SIGKILL),
            _ => kill(pid, Signal::SIGKILL),
        };
    }

    /// Ends the loop; the launcher's hook runs the exit command.
    fn finish(&mut self, core: &mut Core, io: &mut Io<'_>) {
        self.phase = Phase::Done;
        if let Some(ctl) = self.ctl.take() {
            ctl.close(io);
        }
        if let Reply::Now(Err(e)) = core.call(Call::Shutdown(ShutdownParams { force: true }), io) {
            crate::log!("cannot shut down: {e}");
        }
    }
}

fn session_attach_pipe(s: &mut Settings) -> Option<OwnedFd> {
    s.exec.as_mut().and_then(|e| e.attach_pipe.take())
}

impl Front for Conmon {
    fn on_ready(&mut self, token: Token, _ready: Readiness, core: &mut Core, io: &mut Io<'_>) {
        if let Some(ctl) = self.ctl.as_mut().filter(|c| c.owns(token)) {
            ctl.on_ready(token, core, io);
        }
    }

    /// conmon forwards SIGTERM, SIGINT and SIGQUIT to the container (or the exec
    /// session) and goes on watching it; to the runtime call while it runs.
    fn on_signal(&mut self, signal: i32, core: &mut Core, _io: &mut Io<'_>) -> bool {
        if !FORWARDED.contains(&signal) {
            return false;
        }
        match core.forward_signal(self.process_name(), signal) {
            Some(pid) => crate::log!("signal {signal} forwarded to pid {pid}"),
            None => crate::log!("signal {signal}: no process to forward it to"),
        }
        true
    }

    fn deliver(&mut self, outputs: &[Output], _core: &mut Core, _io: &mut Io<'_>) {
        for output in outputs {
            match output {
                Output::Reply(ticket, result) => {
                    if !matches!(self.phase, Phase::Creating(t) if t == *ticket) {
                        continue;
                    }
                    match result.as_ref() {
                        Ok(Answer::Created(r)) => self.created(r.pid),
                        Ok(Answer::Exec(r)) => self.created(r.pid),
                        Ok(_) => self.create_failed("create answered without a pid"),
                        Err(e) => self.create_failed(&e.message),
                    }
                }
                Output::Event(event, _) => {
                    if let EventBody::Exit(record) = &event.body {
                        if record.process == self.process_name() && matches!(self.phase, Phase::Running) {
                            self.exited(record);
                        }
                    }
                }
                Output::Exit { .. } => {}
            }
        }
    }

    fn on_tick(&mut self, core: &mut Core, io: &mut Io<'_>) {
        match self.phase {
            Phase::Start if self.s.exec.is_some() => self.exec(core, io),
            Phase::Start => self.create(core, io),
            Phase::Running if self.timeout_at.is_some_and(|t| Instant::now() >= t) => self.time_out(),
            Phase::Draining(deadline) if !core.attach_clients_remain() || Instant::now() >= deadline => {
                self.finish(core, io);
            }
            _ => {}
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Start => Some(Instant::now()),
            Phase::Draining(deadline) => Some((Instant::now() + DRAIN_POLL).min(deadline)),
            Phase::Running => self.timeout_at,
            _ => None,
        }
    }

    fn is_flushed(&self) -> bool {
        true
    }
}
