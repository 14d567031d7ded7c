//! The container core: the lifecycle of one container and its processes, driven by
//! typed calls from the fronts, by reaped children and by the readiness of its own
//! fds (stdio relays, console sockets, the OOM watch). It knows no front: it answers
//! with [`Reply`], emits [`Output`]s, and registers fds through the loop's [`Io`].
//!
//! Where to find things: `guards` (what each state allows), `ordering` (when an exit
//! may be published), `ops/` (each operation's begin and finish side by side),
//! `process` (one process's life), `outbox` (events and replies), `oom`, `bundle`.

mod api;
mod bundle;
mod engine;
mod guards;
mod handover;
mod oom;
mod ops;
mod ordering;
mod outbox;
mod process;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use api::*;
pub use handover::CoreRecord;

use crate::events::{EventLog, ReplayError, Stored};
use crate::reaper::ChildExit;
use crate::registry::Io;
use crate::runtime::{Runtime, Spawn};
use crate::state_dir::StateDir;
use mio::Token;
use oom::OomWatch;
use ops::Op;
use outbox::Outbox;
use process::Process;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;
use tether_protocol::INIT_PROCESS;

pub struct Core {
    id: String,
    bundle: PathBuf,
    runtime: Runtime,
    spawner: Box<dyn Spawn>,
    dir: StateDir,
    /// config.json's `process`, the base an exec's spec is laid over, kept as its
    /// JSON text: one allocation for the shim's life instead of a tree of small
    /// ones (an idle shim's heap is made of what stays), parsed again per exec.
    base_process: Box<str>,
    init: Option<Process>,
    execs: BTreeMap<String, Process>,
    /// Runtime invocations in flight, by pid.
    ops: HashMap<i32, Op>,
    /// Exits of pids not yet known: a process may end before the runtime call that
    /// made it returns and its pid file is read.
    unclaimed: HashMap<i32, ChildExit>,
    /// `delete` whose runtime call succeeded, waiting for init's exit to publish.
    pending_delete: Option<Ticket>,
    deleted: bool,
    paused: bool,
    oom: OomWatch,
    /// After `delete` or `shutdown`: only hello and state are served.
    closing: bool,
    next_ticket: Ticket,
    /// Numbers each runtime invocation's scratch files.
    next_scratch: u64,
    out: Outbox,
    /// Set when the engine owns the lifecycle (tether-conmon): see `engine`.
    engine: Option<engine::EngineMode>,
}

impl Core {
    pub fn new(id: String, bundle: PathBuf, runtime: Runtime, dir: StateDir) -> std::io::Result<Core> {
        Self::with_spawner(id, bundle, runtime, dir, Box::new(crate::runtime::Exec))
    }

    /// A core whose runtime calls go through `spawner` (tests drive it without runc).
    pub fn with_spawner(
        id: String,
        bundle: PathBuf,
        runtime: Runtime,
        dir: StateDir,
        spawner: Box<dyn Spawn>,
    ) -> std::io::Result<Core> {
        let events = EventLog::create(dir.events())?;
        std::fs::create_dir_all(dir.exits_dir())?;
        Ok(Core {
            id,
            bundle,
            runtime,
            spawner,
            base_process: Box::from("null"),
            init: None,
            execs: BTreeMap::new(),
            ops: HashMap::new(),
            unclaimed: HashMap::new(),
            pending_delete: None,
            deleted: false,
            paused: false,
            oom: OomWatch::default(),
            closing: false,
            next_ticket: 1,
            next_scratch: 1,
            out: Outbox::new(dir.clone(), events),
            dir,
            engine: None,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.out.take()
    }

    /// Runs one call: answered now, or later as an [`Output::Reply`].
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn call(&mut self, call: Call, io: &mut Io<'_>) -> Reply {
        if self.closing && !matches!(call, Call::Hello | Call::State(_)) {
            return Reply::Now(Err(err(ErrorKind::ShuttingDown, "the shim is shutting down")));
        }
        self.notice_engine_start();
        if let Err(e) = self.engine_refuses(&call) {
            return Reply::Now(Err(e));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match call {
            Call::Hello => Reply::Now(Ok(Answer::Hello(self.hello()))),
            Call::Create(p) => self.create(ticket, p, io),
            Call::Start => self.start(ticket),
            Call::Exec(p) => self.exec(ticket, p, io),
            Call::Kill(p) => self.kill(ticket, p),
            Call::Wait(p) => self.wait(ticket, p),
            Call::State(p) => Reply::Now(self.state(p)),
            Call::Pids => self.pids(ticket),
            Call::CloseStdin(p) => Reply::Now(self.close_stdin(p, io)),
            Call::Resize(p) => Reply::Now(self.resize(p)),
            Call::Delete(p) => self.delete(ticket, p, io),
            Call::Shutdown(p) => Reply::Now(self.shutdown(p, io)),
            Call::Pause => self.pause_or_resume(ticket, true),
            Call::Resume => self.pause_or_resume(ticket, false),
            Call::Stats => Reply::Now(self.stats()),
            Call::Update(p) => self.update(ticket, p),
            Call::Checkpoint(p) => self.checkpoint(ticket, p),
            Call::ReopenLog(p) => Reply::Now(self.reopen_log(p)),
            Call::Attach(p) => Reply::Now(self.attach(p, io)),
        }
    }

    /// The client behind `ticket` is gone: forget what was kept only to answer it.
    /// A runtime call in flight runs on (its answer is dropped by the front).
    pub fn cancel(&mut self, ticket: Ticket) {
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            if let Some(capture) = proc.capture.as_mut().filter(|c| c.ticket == Some(ticket)) {
                capture.ticket = None;
                return;
            }
            if proc.cancel_waiter(ticket) {
                return;
            }
        }
    }

    /// The newest event's seq (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.out.events().last_seq()
    }

    /// The oldest seq the event log still holds (`last_seq() + 1` while it is empty).
    pub fn first_seq(&self) -> u64 {
        self.out.events().first_seq()
    }

    /// Events after `since`, from the event log, and the seq they go up to.
    pub fn replay(&self, since: u64) -> Result<(u64, Vec<Stored>), CoreError> {
        let log = self.out.events();
        match log.replay(since) {
            Ok(events) => Ok((log.last_seq(), events)),
            Err(ReplayError::Compacted { since, first_seq }) => Err(err(
                ErrorKind::EventsCompacted,
                format!(
                    "events after {since} are no longer all kept (oldest kept: {first_seq}); read `state` and STATE_DIR/exits, then subscribe since {}",
                    log.last_seq()
                ),
            )),
            Err(ReplayError::Gap { missing, detail }) => Err(err(
                ErrorKind::EventsMissing,
                format!("cannot replay after {since}: event {missing} is missing: {detail}"),
            )),
            Err(ReplayError::Io(e)) => Err(err(
                ErrorKind::Internal,
                format!("cannot read the event log: {e}"),
            )),
        }
    }

    fn process(&self, name: Option<&str>) -> Result<&Process, CoreError> {
        let name = name.unwrap_or(INIT_PROCESS);
        let found = if name == INIT_PROCESS {
            self.init.as_ref()
        } else {
            self.execs.get(name)
        };
        found.ok_or_else(|| self.no_such_process(name))
    }

    fn process_mut(&mut self, name: Option<&str>) -> Result<&mut Process, CoreError> {
        let name = name.unwrap_or(INIT_PROCESS);
        let missing = self.no_such_process(name);
        let found = if name == INIT_PROCESS {
            self.init.as_mut()
        } else {
            self.execs.get_mut(name)
        };
        found.ok_or(missing)
    }

    fn no_such_process(&self, name: &str) -> CoreError {
        match name {
            INIT_PROCESS => err(
                ErrorKind::WrongState,
                format!("container {} is not created", self.id),
            ),
            _ => err(
                ErrorKind::NotFound,
                format!("no process {name:?} in container {}", self.id),
            ),
        }
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        self.init.iter().chain(self.execs.values())
    }

    /// Readiness of one of the core's fds.
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_ready(&mut self, token: Token, io: &mut Io<'_>) {
        self.notice_engine_start();
        if self.oom.owns(token) {
            self.oom.drain();
            self.check_oom();
        }
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            if proc.io.owns(token) {
                let exited = proc.has_exited();
                proc.io.on_ready(&proc.name, token, exited, io);
                break;
            }
        }
        self.try_publish(io);
    }

    /// Children the reaper collected.
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_child_exits(&mut self, exits: Vec<ChildExit>, io: &mut Io<'_>) {
        for exit in exits {
            if let Some(op) = self.ops.remove(&exit.pid) {
                self.finish_op(op, exit, io);
            } else if let Some(name) = self.live_process_by_pid(exit.pid) {
                self.process_exited(&name, &exit, io);
            } else if self.launch_in_flight() {
                self.unclaimed.insert(exit.pid, exit);
            } else {
                crate::log!(
                    "reaped pid {} (not a process of the container), status {}",
                    exit.pid,
                    exit.status
                );
            }
        }
        if !self.launch_in_flight() {
            self.unclaimed.clear();
        }
        self.try_publish(io);
    }

    fn live_process_by_pid(&self, pid: i32) -> Option<String> {
        self.processes()
            .find(|p| p.is_alive() && p.pid() == Some(pid))
            .map(|p| p.name.clone())
    }

    /// A process of the container was reaped.
    fn process_exited(&mut self, name: &str, exit: &ChildExit, io: &mut Io<'_>) {
        let Ok(proc) = self.process_mut(Some(name)) else {
            return;
        };
        proc.reaped(exit);
        // Take what is already in the pipes now.
        proc.io.pump(io, true);
        if name == INIT_PROCESS {
            self.kill_execs_left_behind();
        }
    }

    /// When the loop must wake up next for the core: an exit's output grace, a drop
    /// report, a retry of writes the disk refused.
    pub fn next_deadline(&self) -> Option<Instant> {
        ordering::next_deadline(self.processes())
            .into_iter()
            .chain(self.out.next_retry())
            .chain(self.next_capture_deadline())
            .chain(self.engine_deadline())
            .min()
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_tick(&mut self, io: &mut Io<'_>) {
        let now = Instant::now();
        if self.engine_deadline().is_some_and(|d| d <= now) {
            self.notice_engine_start();
        }
        if self.out.next_retry().is_some_and(|d| d <= now) {
            self.out.retry();
        }
        if self.next_capture_deadline().is_some_and(|d| d <= now) {
            self.kill_overdue_captures(now);
        }
        if ordering::next_deadline(self.processes()).is_some_and(|d| d <= now) {
            self.try_publish(io);
        }
    }
}
