//! The container core: the lifecycle of one container and its processes, driven by
//! calls from a front, by reaped children and by stdio readiness. It publishes
//! events in the order containerd's users depend on:
//! - a process's start event precedes its exit event, even if it exits at once;
//! - a process's exit is published only after its output has been relayed (or after
//!   a grace period, if something else holds its output pipe open);
//! - init's exit is published only after the exit of every exec.
//!
//! Every runtime call is a child in flight; its answer goes out when it is reaped.

use crate::cgroup::{Cgroup, OomNotifier};
use crate::console::{self, ConsoleSocket};
use crate::core::{err, Answer, Call, CallResult, Empty, Output, Ticket};
use crate::events::EventLog;
use crate::process::Process;
use crate::reaper::ChildExit;
use crate::runtime::{failure_message, Runtime, RuntimeStdio};
use crate::state_dir::{self, StateDir};
use crate::stdio::{self, HostEnd, Relay, Stream};
use mio::{Registry, Token};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tether_protocol::*;

/// How long an exit waits for its output pipes to reach EOF: past it, something that
/// outlived the process holds them, and the exit goes out without waiting further.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Tokens below this belong to the front.
pub const FIRST_CORE_TOKEN: usize = 1 << 24;

enum OpKind {
    /// `runc create`, or `runc restore` when restoring from a checkpoint.
    Create {
        restore: bool,
    },
    Start,
    Pause,
    Resume,
    Update,
    Checkpoint(String),
    Exec(String),
    KillAll,
    Delete,
    Ps(PathBuf),
}

/// A runtime invocation in flight, keyed by its pid.
struct Op {
    kind: OpKind,
    ticket: Ticket,
    /// `runc create`, for messages.
    what: String,
    log: PathBuf,
}

/// Hands out loop tokens for the core's fds.
struct Tokens(usize);

impl Tokens {
    fn next(&mut self) -> Token {
        self.0 += 1;
        Token(self.0)
    }
}

/// Where events and answers go: the event log first, then the front.
struct Outbox {
    dir: StateDir,
    events: EventLog,
    outputs: Vec<Output>,
}

impl Outbox {
    fn publish(&mut self, body: EventBody) {
        let published = self.events.append(body);
        self.outputs.push(Output::Event(published));
    }

    fn reply(&mut self, ticket: Ticket, result: CallResult) {
        self.outputs.push(Output::Reply(ticket, Box::new(result)));
    }

    /// Writes the exit record (atomically, before the event), publishes the exit and
    /// answers the process's waiters.
    fn publish_exit(&mut self, process: &mut Process) {
        let Some(record) = process.exit.clone() else {
            return;
        };
        match serde_json::to_vec(&record) {
            Ok(json) => {
                let path = self.dir.exit_record(&process.name);
                let written = match process.exit_file.take() {
                    Some(prepared) => prepared.commit(&json),
                    None => state_dir::write_atomic(&path, &json),
                };
                if let Err(e) = written {
                    crate::log!("cannot write exit record {}: {e}", path.display());
                }
            }
            Err(e) => crate::log!("cannot encode exit record: {e}"),
        }
        self.publish(EventBody::Exit(record.clone()));
        for ticket in process.waiters.drain(..) {
            self.outputs
                .push(Output::Reply(ticket, Box::new(Ok(Answer::Exit(record.clone())))));
        }
        process.exit_published = true;
    }
}

pub struct Container {
    id: String,
    bundle: PathBuf,
    runtime: Runtime,
    dir: StateDir,
    /// config.json's `process`, the base an exec's spec is laid over.
    base_process: Value,
    init: Option<Process>,
    execs: BTreeMap<String, Process>,
    ops: HashMap<i32, Op>,
    /// Exits of pids not yet known: a process may end before the runtime call that
    /// made it returns and its pid file is read.
    unclaimed: HashMap<i32, ChildExit>,
    pending_delete: Option<Ticket>,
    deleted: bool,
    paused: bool,
    /// Found from init's /proc/PID/cgroup once it exists.
    cgroup: Option<Cgroup>,
    oom: Option<(OomNotifier, Token)>,
    /// The cgroup file with the OOM kill count, held open: it is read at every exit.
    oom_counter: Option<fs::File>,
    /// The cgroup's OOM kill count as last published.
    oom_kills_seen: u64,
    /// OOM kills not yet tied to an exit (a SIGKILLed process's record gets one).
    oom_kills_unclaimed: u64,
    closing: bool,
    tokens: Tokens,
    out: Outbox,
}

impl Container {
    pub fn new(id: String, bundle: PathBuf, runtime: Runtime, dir: StateDir) -> std::io::Result<Container> {
        let events = EventLog::create(dir.events())?;
        fs::create_dir_all(dir.exits_dir())?;
        Ok(Container {
            id,
            bundle,
            runtime,
            base_process: Value::Null,
            init: None,
            execs: BTreeMap::new(),
            ops: HashMap::new(),
            unclaimed: HashMap::new(),
            pending_delete: None,
            deleted: false,
            paused: false,
            cgroup: None,
            oom: None,
            oom_counter: None,
            oom_kills_seen: 0,
            oom_kills_unclaimed: 0,
            closing: false,
            tokens: Tokens(FIRST_CORE_TOKEN),
            out: Outbox {
                dir: dir.clone(),
                events,
                outputs: Vec::new(),
            },
            dir,
        })
    }

    pub fn events(&self) -> &EventLog {
        &self.out.events
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out.outputs)
    }

    pub fn status(&self) -> ContainerStatus {
        if self.deleted {
            return ContainerStatus::Deleted;
        }
        match &self.init {
            None if self.op_in_flight(|k| matches!(k, OpKind::Create { .. })) => ContainerStatus::Creating,
            None => ContainerStatus::New,
            Some(init) if init.exit_published => ContainerStatus::Stopped,
            Some(init) if init.started && self.paused => ContainerStatus::Paused,
            Some(init) if init.started => ContainerStatus::Running,
            Some(init) if init.created => ContainerStatus::Created,
            Some(_) => ContainerStatus::Creating,
        }
    }

    fn op_in_flight(&self, pred: impl Fn(&OpKind) -> bool) -> bool {
        self.ops.values().any(|op| pred(&op.kind))
    }

    /// Runs one call. `None`: the answer comes later, as an [`Output::Reply`].
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn call(&mut self, ticket: Ticket, call: Call, registry: &Registry) -> Option<CallResult> {
        if self.closing && !matches!(call, Call::Hello | Call::State(_)) {
            return Some(Err(err(ErrorKind::ShuttingDown, "the shim is shutting down")));
        }
        match call {
            Call::Hello => Some(Ok(Answer::Hello(self.hello()))),
            Call::Create(p) => self.create(ticket, p, registry).err().map(Err),
            Call::Start => self.start(ticket).err().map(Err),
            Call::Exec(p) => self.exec(ticket, p, registry).err().map(Err),
            Call::Kill(p) => self.kill(ticket, p),
            Call::Wait(p) => self.wait(ticket, p),
            Call::State(p) => Some(self.state(p)),
            Call::Pids => self.pids(ticket).err().map(Err),
            Call::CloseStdin(p) => Some(self.close_stdin(p, registry)),
            Call::Resize(p) => Some(self.resize(p)),
            Call::Delete(p) => self.delete(ticket, p, registry),
            Call::Shutdown(p) => Some(self.shutdown(p, registry)),
            Call::Pause => self.pause_or_resume(ticket, true).err().map(Err),
            Call::Resume => self.pause_or_resume(ticket, false).err().map(Err),
            Call::Stats => Some(self.stats()),
            Call::Update(p) => self.update(ticket, p).err().map(Err),
            Call::Checkpoint(p) => self.checkpoint(ticket, p).err().map(Err),
        }
    }

    fn hello(&self) -> HelloResult {
        HelloResult {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            shim_pid: std::process::id(),
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            runtime: self.runtime.path.clone(),
            status: self.status(),
            last_seq: self.out.events.last_seq(),
            first_seq: self.out.events.first_seq(),
        }
    }

    fn process(&self, name: Option<&str>) -> Result<&Process, RpcError> {
        let name = name.unwrap_or(INIT_PROCESS);
        let found = if name == INIT_PROCESS {
            self.init.as_ref()
        } else {
            self.execs.get(name)
        };
        found.ok_or_else(|| match name {
            INIT_PROCESS => err(
                ErrorKind::WrongState,
                format!("container {} is not created", self.id),
            ),
            _ => err(
                ErrorKind::NotFound,
                format!("no process {name:?} in container {}", self.id),
            ),
        })
    }

    fn process_mut(&mut self, name: Option<&str>) -> Result<&mut Process, RpcError> {
        self.process(name)?;
        let name = name.unwrap_or(INIT_PROCESS);
        let found = if name == INIT_PROCESS {
            self.init.as_mut()
        } else {
            self.execs.get_mut(name)
        };
        found.ok_or_else(|| err(ErrorKind::Internal, "process vanished"))
    }

    fn spawn_op(
        &mut self,
        kind: OpKind,
        ticket: Ticket,
        args: Vec<String>,
        io: RuntimeStdio,
    ) -> Result<(), RpcError> {
        let sub = args.first().cloned().unwrap_or_default();
        let what = format!("{} {sub}", runtime_name(&self.runtime.path));
        let log = self.dir.runtime_log(&op_file_tag(&kind, &sub));
        let pid = self
            .runtime
            .spawn(&log, &args, io)
            .map_err(|e| err(ErrorKind::RuntimeFailed, format!("{what} failed: {e}")))?;
        self.ops.insert(
            pid,
            Op {
                kind,
                ticket,
                what,
                log,
            },
        );
        Ok(())
    }

    fn create(&mut self, ticket: Ticket, p: CreateParams, registry: &Registry) -> Result<(), RpcError> {
        if self.op_in_flight(|k| matches!(k, OpKind::Create { .. })) {
            return Err(err(
                ErrorKind::WrongState,
                format!(
                    "container {} is being created: its create is still running",
                    self.id
                ),
            ));
        }
        if self.init.is_some() {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("container {} is already created", self.id),
            ));
        }
        let terminal = self.load_bundle()?;
        if let Some(asked) = p.terminal {
            if asked != terminal {
                return Err(err(
                    ErrorKind::InvalidParams,
                    format!("terminal {asked} contradicts process.terminal {terminal} in the bundle's config.json"),
                ));
            }
        }
        let mut init = Process::new(INIT_PROCESS, terminal);
        let io = setup_stdio(
            &mut init,
            [p.stdin, p.stdout, p.stderr],
            &self.dir,
            &mut self.tokens,
            registry,
        )?;
        let restore = p.checkpoint.is_some();
        let mut args = match &p.checkpoint {
            None => vec!["create".to_string()],
            Some(criu) => {
                let mut a = vec!["restore".to_string(), "--detach".to_string()];
                a.extend(criu_args(criu));
                a
            }
        };
        args.extend([
            "--bundle".to_string(),
            self.bundle.display().to_string(),
            "--pid-file".to_string(),
            self.dir.pid_file(INIT_PROCESS).display().to_string(),
        ]);
        if let Some(console) = &init.console {
            args.extend([
                "--console-socket".to_string(),
                console.path().display().to_string(),
            ]);
        }
        args.push(self.id.clone());
        if let Err(e) = self.spawn_op(OpKind::Create { restore }, ticket, args, io) {
            init.release(registry);
            return Err(e);
        }
        self.init = Some(init);
        Ok(())
    }

    /// Reads config.json: keeps its `process` for execs, checks the rootfs, and
    /// returns `process.terminal`. Errors name the file and the cause.
    fn load_bundle(&mut self) -> Result<bool, RpcError> {
        let config = self.bundle.join("config.json");
        let bad = |m: String| err(ErrorKind::InvalidBundle, m);
        let text =
            fs::read_to_string(&config).map_err(|e| bad(format!("cannot read {}: {e}", config.display())))?;
        let invalid =
            |e: serde_json::Error| bad(format!("{} is not a valid OCI spec: {e}", config.display()));
        // Parsed once: the typed view checks it, the raw one is kept for execs.
        let raw: Value = serde_json::from_str(&text).map_err(invalid)?;
        let spec = <crate::spec::Config as serde::Deserialize>::deserialize(&raw).map_err(invalid)?;
        let root = spec
            .root
            .as_ref()
            .ok_or_else(|| bad(format!("{} has no root", config.display())))?;
        let rootfs = self.bundle.join(&root.path);
        if !rootfs.is_dir() {
            return Err(bad(format!(
                "rootfs {} does not exist (root.path in {})",
                rootfs.display(),
                config.display()
            )));
        }
        self.base_process = raw.get("process").cloned().unwrap_or(Value::Null);
        Ok(spec.process.is_some_and(|p| p.terminal))
    }

    fn start(&mut self, ticket: Ticket) -> Result<(), RpcError> {
        let status = self.status();
        let init = self.process_mut(None)?;
        if status != ContainerStatus::Created || init.launching || init.exit.is_some() {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot start: container is {}", status_name(status)),
            ));
        }
        init.launching = true;
        let args = vec!["start".to_string(), self.id.clone()];
        self.spawn_op(OpKind::Start, ticket, args, RuntimeStdio::default())
            .inspect_err(|_| {
                if let Some(init) = self.init.as_mut() {
                    init.launching = false;
                }
            })
    }

    fn exec(&mut self, ticket: Ticket, p: ExecParams, registry: &Registry) -> Result<(), RpcError> {
        state_dir::validate_id("exec id", &p.exec_id).map_err(|m| err(ErrorKind::InvalidParams, m))?;
        if p.exec_id == INIT_PROCESS {
            return Err(err(
                ErrorKind::InvalidParams,
                "exec id \"init\" is reserved for the container's init",
            ));
        }
        if self.execs.contains_key(&p.exec_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("exec id {:?} is already in use", p.exec_id),
            ));
        }
        let status = self.status();
        let init_alive = self.init.as_ref().is_some_and(|i| i.started && i.exit.is_none());
        if status != ContainerStatus::Running || !init_alive {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot exec: container {} is {}", self.id, status_name(status)),
            ));
        }
        let spec = exec_spec(&self.base_process, &p.process)?;
        let terminal = spec.get("terminal").and_then(Value::as_bool).unwrap_or(false);
        let spec_path = self.dir.exec_spec(&p.exec_id);
        let json = serde_json::to_vec(&spec).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        fs::write(&spec_path, json).map_err(|e| {
            err(
                ErrorKind::Internal,
                format!("cannot write {}: {e}", spec_path.display()),
            )
        })?;
        let mut proc = Process::new(&p.exec_id, terminal);
        let io = setup_stdio(
            &mut proc,
            [p.stdin, p.stdout, p.stderr],
            &self.dir,
            &mut self.tokens,
            registry,
        )?;
        let mut args = vec![
            "exec".to_string(),
            "--detach".to_string(),
            "--pid-file".to_string(),
            self.dir.pid_file(&p.exec_id).display().to_string(),
            "--process".to_string(),
            spec_path.display().to_string(),
        ];
        if let Some(console) = &proc.console {
            args.extend([
                "--console-socket".to_string(),
                console.path().display().to_string(),
            ]);
        }
        args.push(self.id.clone());
        if let Err(e) = self.spawn_op(OpKind::Exec(p.exec_id.clone()), ticket, args, io) {
            proc.release(registry);
            return Err(e);
        }
        self.execs.insert(p.exec_id, proc);
        Ok(())
    }

    fn kill(&mut self, ticket: Ticket, p: KillParams) -> Option<CallResult> {
        let result = (|| {
            let signal = p.signal.number().map_err(|m| err(ErrorKind::InvalidParams, m))?;
            let name = p.process.as_deref().unwrap_or(INIT_PROCESS);
            let proc = self.process(Some(name))?;
            if p.all {
                if name != INIT_PROCESS {
                    return Err(err(
                        ErrorKind::InvalidParams,
                        "all: true applies to the container (init) only",
                    ));
                }
                let args = vec![
                    "kill".to_string(),
                    "--all".to_string(),
                    self.id.clone(),
                    signal.to_string(),
                ];
                self.spawn_op(OpKind::KillAll, ticket, args, RuntimeStdio::default())?;
                return Ok(None);
            }
            let Some(pid) = proc.pid.filter(|_| proc.exit.is_none()) else {
                let why = if proc.exit.is_some() {
                    "has already exited"
                } else {
                    "is not created yet"
                };
                return Err(err(ErrorKind::WrongState, format!("process {name} {why}")));
            };
            let sig = Signal::try_from(signal)
                .map_err(|e| err(ErrorKind::InvalidParams, format!("signal {signal}: {e}")))?;
            // The pid cannot have been reused: the shim has not reaped it yet.
            nix::sys::signal::kill(Pid::from_raw(pid), sig)
                .map_err(|e| err(ErrorKind::Internal, format!("kill {name} (pid {pid}): {e}")))?;
            Ok(Some(Ok(Answer::Empty(Empty {}))))
        })();
        result.unwrap_or_else(|e| Some(Err(e)))
    }

    fn wait(&mut self, ticket: Ticket, p: ProcessParams) -> Option<CallResult> {
        match self.process_mut(p.process.as_deref()) {
            Err(e) => Some(Err(e)),
            Ok(proc) if proc.exit_published => proc.exit.clone().map(|r| Ok(Answer::Exit(r))),
            Ok(proc) => {
                proc.waiters.push(ticket);
                None
            }
        }
    }

    fn state(&self, p: ProcessParams) -> CallResult {
        if p.process.is_some() {
            return self
                .process(p.process.as_deref())
                .map(|proc| Answer::Process(proc.state()));
        }
        let mut processes: Vec<ProcessState> = self.init.iter().map(Process::state).collect();
        processes.extend(self.execs.values().map(Process::state));
        Ok(Answer::Container(ContainerState {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            status: self.status(),
            pid: self.init.as_ref().and_then(|i| i.pid),
            processes,
        }))
    }

    fn pids(&mut self, ticket: Ticket) -> Result<(), RpcError> {
        self.process(None)?;
        let out = self.dir.runtime_stdout("ps");
        let file = fs::File::create(&out)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", out.display())))?;
        let io = RuntimeStdio {
            stdout: Some(file.into()),
            ..Default::default()
        };
        let args = vec![
            "ps".to_string(),
            "--format".to_string(),
            "json".to_string(),
            self.id.clone(),
        ];
        self.spawn_op(OpKind::Ps(out), ticket, args, io)
    }

    fn close_stdin(&mut self, p: ProcessParams, registry: &Registry) -> CallResult {
        let proc = self.process_mut(p.process.as_deref())?;
        proc.close_stdin(registry);
        Ok(Answer::Empty(Empty {}))
    }

    fn resize(&mut self, p: ResizeParams) -> CallResult {
        let proc = self.process_mut(p.process.as_deref())?;
        if !proc.terminal {
            return Err(err(
                ErrorKind::WrongState,
                format!("process {} has no terminal", proc.name),
            ));
        }
        match &proc.master {
            Some(master) => console::resize(master.as_raw_fd(), p.rows, p.cols)
                .map_err(|m| err(ErrorKind::Internal, m))?,
            None => proc.pending_resize = Some((p.rows, p.cols)),
        }
        Ok(Answer::Empty(Empty {}))
    }

    fn delete(&mut self, ticket: Ticket, p: DeleteParams, registry: &Registry) -> Option<CallResult> {
        if let Some(name) = p.process.as_deref().filter(|n| *n != INIT_PROCESS) {
            return Some(self.delete_exec(name, registry));
        }
        if self.pending_delete.is_some()
            || self.op_in_flight(|k| matches!(k, OpKind::Create { .. } | OpKind::Start | OpKind::Delete))
        {
            return Some(Err(err(
                ErrorKind::WrongState,
                "another lifecycle call is in progress",
            )));
        }
        let status = self.status();
        let force = match status {
            ContainerStatus::New => {
                self.deleted = true;
                self.out.outputs.push(Output::Exit {
                    remove_state_dir: true,
                });
                return Some(Ok(Answer::Deleted(None)));
            }
            ContainerStatus::Running | ContainerStatus::Paused if !p.force => {
                return Some(Err(err(
                    ErrorKind::WrongState,
                    format!(
                        "container {} is running: kill it first, or delete with force",
                        self.id
                    ),
                )))
            }
            ContainerStatus::Running | ContainerStatus::Paused => true,
            _ => p.force,
        };
        let mut args = vec!["delete".to_string()];
        if force {
            args.push("--force".to_string());
        }
        args.push(self.id.clone());
        self.spawn_op(OpKind::Delete, ticket, args, RuntimeStdio::default())
            .err()
            .map(Err)
    }

    fn delete_exec(&mut self, name: &str, registry: &Registry) -> CallResult {
        let proc = self.process(Some(name))?;
        if !proc.exit_published {
            return Err(err(
                ErrorKind::WrongState,
                format!("exec {name} has not exited: kill it first"),
            ));
        }
        let Some(mut proc) = self.execs.remove(name) else {
            return Err(err(ErrorKind::NotFound, format!("no process {name:?}")));
        };
        proc.release(registry);
        for path in [
            self.dir.pid_file(name),
            self.dir.exec_spec(name),
            self.dir.exit_record(name),
            self.dir.runtime_log(&format!("exec-{name}")),
            self.dir.fifo(name, "stdin"),
            self.dir.fifo(name, "stdout"),
            self.dir.fifo(name, "stderr"),
        ] {
            let _ = fs::remove_file(path);
        }
        Ok(Answer::Deleted(proc.exit))
    }

    fn shutdown(&mut self, p: ShutdownParams, registry: &Registry) -> CallResult {
        let alive =
            self.init.as_ref().is_some_and(Process::is_alive) || self.execs.values().any(Process::is_alive);
        if (alive || !self.ops.is_empty()) && !p.force {
            return Err(err(
                ErrorKind::WrongState,
                "container processes are alive: delete the container, or shutdown with force to leave them unsupervised",
            ));
        }
        self.closing = true;
        self.release_all(registry);
        let remove_state_dir = matches!(self.status(), ContainerStatus::New | ContainerStatus::Deleted);
        self.out.outputs.push(Output::Exit { remove_state_dir });
        Ok(Answer::Empty(Empty {}))
    }

    fn release_all(&mut self, registry: &Registry) {
        if let Some((notifier, _)) = self.oom.take() {
            let _ = registry.deregister(&mut mio::unix::SourceFd(&notifier.raw()));
        }
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            proc.release(registry);
        }
    }

    fn pause_or_resume(&mut self, ticket: Ticket, pause: bool) -> Result<(), RpcError> {
        let status = self.status();
        let (want, sub) = if pause {
            (ContainerStatus::Running, "pause")
        } else {
            (ContainerStatus::Paused, "resume")
        };
        if status != want || self.op_in_flight(|k| matches!(k, OpKind::Pause | OpKind::Resume)) {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot {sub}: container is {}", status_name(status)),
            ));
        }
        let kind = if pause { OpKind::Pause } else { OpKind::Resume };
        self.spawn_op(
            kind,
            ticket,
            vec![sub.to_string(), self.id.clone()],
            RuntimeStdio::default(),
        )
    }

    fn stats(&self) -> CallResult {
        match &self.cgroup {
            Some(cg) if !self.deleted => Ok(Answer::Stats(cg.stats())),
            _ => Err(err(
                ErrorKind::WrongState,
                format!("container {} has no cgroup yet", self.id),
            )),
        }
    }

    fn update(&mut self, ticket: Ticket, p: UpdateParams) -> Result<(), RpcError> {
        let status = self.status();
        if !matches!(
            status,
            ContainerStatus::Created | ContainerStatus::Running | ContainerStatus::Paused
        ) {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot update: container is {}", status_name(status)),
            ));
        }
        serde_json::from_value::<crate::spec::Resources>(p.resources.clone()).map_err(|e| {
            err(
                ErrorKind::InvalidParams,
                format!("resources is not an OCI linux.resources object: {e}"),
            )
        })?;
        let path = self.dir.root.join("update-resources.json");
        let json = serde_json::to_vec(&p.resources).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        fs::write(&path, json).map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
        let args = vec![
            "update".to_string(),
            "--resources".to_string(),
            path.display().to_string(),
            self.id.clone(),
        ];
        self.spawn_op(OpKind::Update, ticket, args, RuntimeStdio::default())
    }

    fn checkpoint(&mut self, ticket: Ticket, p: CheckpointParams) -> Result<(), RpcError> {
        let status = self.status();
        if !matches!(status, ContainerStatus::Running | ContainerStatus::Paused) {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot checkpoint: container is {}", status_name(status)),
            ));
        }
        if !p.image_path.starts_with('/') {
            return Err(err(
                ErrorKind::InvalidParams,
                format!("image_path {:?} is not absolute", p.image_path),
            ));
        }
        let mut args = vec!["checkpoint".to_string()];
        args.extend(criu_args(&p.criu()));
        if p.leave_running {
            args.push("--leave-running".to_string());
        }
        args.push(self.id.clone());
        self.spawn_op(
            OpKind::Checkpoint(p.image_path),
            ticket,
            args,
            RuntimeStdio::default(),
        )
    }

    /// Finds init's cgroup and starts watching it for OOM kills.
    fn watch_cgroup(&mut self, pid: i32, registry: &Registry) {
        let cgroup = match Cgroup::of_pid(pid) {
            Ok(cg) => cg,
            Err(e) => return crate::log!("no cgroup for init (stats and OOM watch off): {e}"),
        };
        self.oom_kills_seen = cgroup.oom_kills().unwrap_or(0);
        self.oom_counter = cgroup.oom_counter_file();
        match cgroup.oom_notifier() {
            Ok(notifier) => {
                let token = self.tokens.next();
                let raw = notifier.raw();
                match registry.register(&mut mio::unix::SourceFd(&raw), token, mio::Interest::READABLE) {
                    Ok(()) => self.oom = Some((notifier, token)),
                    Err(e) => crate::log!("cannot watch for OOM: {e}"),
                }
            }
            Err(e) => crate::log!("no OOM notifications (exits are still checked): {e}"),
        }
        self.cgroup = Some(cgroup);
    }

    /// Publishes an `oom` event if the cgroup's OOM kill count rose.
    fn check_oom(&mut self) {
        let kills = match &self.oom_counter {
            Some(file) => crate::cgroup::read_oom_kills(file),
            None => self.cgroup.as_ref().and_then(Cgroup::oom_kills),
        };
        let Some(kills) = kills else {
            return;
        };
        if kills > self.oom_kills_seen {
            self.oom_kills_unclaimed += kills - self.oom_kills_seen;
            self.oom_kills_seen = kills;
            self.out.publish(EventBody::Oom { oom_kills: kills });
        }
    }

    /// Children the reaper collected.
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_child_exits(&mut self, exits: Vec<ChildExit>, registry: &Registry) {
        for exit in exits {
            if let Some(op) = self.ops.remove(&exit.pid) {
                self.finish_op(op, exit, registry);
            } else if let Some(name) = self.process_by_pid(exit.pid) {
                self.process_exited(&name, &exit, registry);
            } else if self.op_in_flight(|k| matches!(k, OpKind::Create { .. } | OpKind::Exec(_))) {
                self.unclaimed.insert(exit.pid, exit);
            } else {
                crate::log!(
                    "reaped pid {} (not a process of the container), status {}",
                    exit.pid,
                    exit.status
                );
            }
        }
        if !self.op_in_flight(|k| matches!(k, OpKind::Create { .. } | OpKind::Exec(_))) {
            self.unclaimed.clear();
        }
        self.try_publish(registry);
    }

    fn process_by_pid(&self, pid: i32) -> Option<String> {
        self.init
            .iter()
            .chain(self.execs.values())
            .find(|p| p.pid == Some(pid) && p.exit.is_none())
            .map(|p| p.name.clone())
    }

    fn process_exited(&mut self, name: &str, exit: &ChildExit, registry: &Registry) {
        let Ok(proc) = self.process_mut(Some(name)) else {
            return;
        };
        proc.set_exited(exit);
        // Take what is already in the pipes now.
        proc.pump(registry);
        if name == INIT_PROCESS {
            // Execs that outlive init (shared pid namespace) are killed, so that
            // init's exit can follow theirs.
            for exec in self.execs.values().filter(|e| e.is_alive()) {
                if let Some(pid) = exec.pid {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Reads the pid file the runtime wrote and claims an exit that came first.
    fn adopt_pid(&mut self, name: &str, registry: &Registry) -> Result<i32, String> {
        let path = self.dir.pid_file(name);
        let text =
            fs::read_to_string(&path).map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|_| format!("pid file {} holds {:?}, not a pid", path.display(), text.trim()))?;
        let exit_file = state_dir::PreparedFile::create(&self.dir.exit_record(name))
            .map_err(|e| {
                crate::log!("cannot prepare the exit record of {name} (written at exit instead): {e}")
            })
            .ok();
        if let Ok(proc) = self.process_mut(Some(name)) {
            proc.pid = Some(pid);
            proc.exit_file = exit_file;
        }
        if let Some(exit) = self.unclaimed.remove(&pid) {
            self.process_exited(name, &exit, registry);
        }
        Ok(pid)
    }

    fn finish_op(&mut self, op: Op, exit: ChildExit, registry: &Registry) {
        let ok = exit.status == 0;
        let failure = || {
            err(
                ErrorKind::RuntimeFailed,
                failure_message(&op.what, &op.log, &exit.describe()),
            )
        };
        match op.kind {
            OpKind::Create { restore } => {
                if !ok {
                    if let Some(mut init) = self.init.take() {
                        init.release(registry);
                    }
                    return self.out.reply(op.ticket, Err(failure()));
                }
                match self.adopt_pid(INIT_PROCESS, registry) {
                    Ok(pid) => {
                        let Some(init) = self.init.as_mut() else {
                            return;
                        };
                        init.launching = false;
                        init.created = true;
                        // A restored container is running when the runtime returns.
                        init.started = restore;
                        let result = CreateResult {
                            pid,
                            stdio: init.paths.clone(),
                            terminal: init.terminal,
                        };
                        self.watch_cgroup(pid, registry);
                        self.out.publish(EventBody::Created { pid });
                        if restore {
                            self.out.publish(EventBody::Started { pid });
                        }
                        self.out.reply(op.ticket, Ok(Answer::Created(result)));
                    }
                    Err(m) => self.out.reply(op.ticket, Err(err(ErrorKind::RuntimeFailed, m))),
                }
            }
            OpKind::Start => {
                let Some(init) = self.init.as_mut() else {
                    return;
                };
                init.launching = false;
                if !ok {
                    return self.out.reply(op.ticket, Err(failure()));
                }
                init.started = true;
                let pid = init.pid.unwrap_or(0);
                self.out.publish(EventBody::Started { pid });
                self.out.reply(op.ticket, Ok(Answer::Pid(PidResult { pid })));
            }
            OpKind::Exec(name) => {
                if !ok {
                    if let Some(mut proc) = self.execs.remove(&name) {
                        proc.release(registry);
                    }
                    let _ = fs::remove_file(self.dir.exec_spec(&name));
                    return self.out.reply(op.ticket, Err(failure()));
                }
                match self.adopt_pid(&name, registry) {
                    Ok(pid) => {
                        let init_gone = self.init.as_ref().is_none_or(|i| i.exit.is_some());
                        let Some(proc) = self.execs.get_mut(&name) else {
                            return;
                        };
                        proc.launching = false;
                        proc.created = true;
                        proc.started = true;
                        let result = ExecResult {
                            exec_id: name.clone(),
                            pid,
                            stdio: proc.paths.clone(),
                            terminal: proc.terminal,
                        };
                        if init_gone && proc.exit.is_none() {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                        self.out.publish(EventBody::ExecAdded {
                            exec_id: name.clone(),
                        });
                        self.out.publish(EventBody::ExecStarted { exec_id: name, pid });
                        self.out.reply(op.ticket, Ok(Answer::Exec(result)));
                    }
                    Err(m) => {
                        if let Some(mut proc) = self.execs.remove(&name) {
                            proc.release(registry);
                        }
                        self.out.reply(op.ticket, Err(err(ErrorKind::RuntimeFailed, m)));
                    }
                }
            }
            OpKind::KillAll | OpKind::Update => {
                let result = if ok {
                    Ok(Answer::Empty(Empty {}))
                } else {
                    Err(failure())
                };
                self.out.reply(op.ticket, result);
            }
            OpKind::Pause | OpKind::Resume => {
                if !ok {
                    return self.out.reply(op.ticket, Err(failure()));
                }
                let pause = matches!(op.kind, OpKind::Pause);
                self.paused = pause;
                self.out.publish(if pause {
                    EventBody::Paused {}
                } else {
                    EventBody::Resumed {}
                });
                self.out.reply(op.ticket, Ok(Answer::Empty(Empty {})));
            }
            OpKind::Checkpoint(image_path) => {
                if !ok {
                    return self.out.reply(op.ticket, Err(failure()));
                }
                self.out.publish(EventBody::Checkpointed { image_path });
                self.out.reply(op.ticket, Ok(Answer::Empty(Empty {})));
            }
            OpKind::Delete => {
                if ok {
                    self.pending_delete = Some(op.ticket);
                } else {
                    self.out.reply(op.ticket, Err(failure()));
                }
            }
            OpKind::Ps(out) => {
                let result = if ok { self.parse_ps(&out) } else { Err(failure()) };
                let _ = fs::remove_file(&out);
                self.out.reply(op.ticket, result);
            }
        }
    }

    fn parse_ps(&self, out: &Path) -> CallResult {
        let text = fs::read_to_string(out)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", out.display())))?;
        let pids: Vec<i32> = serde_json::from_str(text.trim()).map_err(|e| {
            err(
                ErrorKind::RuntimeFailed,
                format!("runtime ps printed no pid list: {e}"),
            )
        })?;
        let names: HashMap<i32, &str> = self
            .init
            .iter()
            .chain(self.execs.values())
            .filter(|p| p.is_alive())
            .filter_map(|p| p.pid.map(|pid| (pid, p.name.as_str())))
            .collect();
        Ok(Answer::Pids(
            pids.into_iter()
                .map(|pid| ContainerPid {
                    pid,
                    process: names.get(&pid).map(|n| n.to_string()),
                })
                .collect(),
        ))
    }

    /// Readiness of one of the core's fds.
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_ready(&mut self, token: Token, registry: &Registry) {
        if let Some((notifier, _)) = self.oom.as_ref().filter(|(_, t)| *t == token) {
            notifier.drain();
            self.check_oom();
        }
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            if proc.console.as_ref().is_some_and(|c| c.tokens().contains(&token)) {
                attach_console(proc, &mut self.tokens, registry);
            } else if proc.owns_token(token) {
                proc.pump(registry);
            } else {
                continue;
            }
            break;
        }
        self.try_publish(registry);
    }

    /// When the loop must wake up next for the core: an exit waiting on its output.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.init
            .iter()
            .chain(self.execs.values())
            .filter(|p| p.exit.is_some() && !p.exit_published)
            .filter_map(|p| p.reaped_at.map(|t| t + OUTPUT_GRACE))
            .min()
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_tick(&mut self, registry: &Registry) {
        if self.next_deadline().is_some_and(|d| d <= Instant::now()) {
            self.try_publish(registry);
        }
    }

    /// Publishes every exit whose ordering rules are now met.
    fn try_publish(&mut self, registry: &Registry) {
        // An OOM kill is published before the exit it caused: look once more now, the
        // cgroup may be gone by the time its notification would be read.
        if self
            .init
            .iter()
            .chain(self.execs.values())
            .any(|p| p.exit.is_some() && !p.exit_published)
        {
            self.check_oom();
        }
        let now = Instant::now();
        for exec in self.execs.values_mut() {
            publish_exit_if_ready(exec, now, &mut self.oom_kills_unclaimed, &mut self.out);
        }
        let execs_done = self
            .execs
            .values()
            .all(|e| e.exit_published || (e.pid.is_none() && !e.launching));
        if let Some(init) = self.init.as_mut().filter(|_| execs_done) {
            publish_exit_if_ready(init, now, &mut self.oom_kills_unclaimed, &mut self.out);
        }
        self.maybe_finish_delete(registry);
    }

    fn maybe_finish_delete(&mut self, registry: &Registry) {
        let init_done = self
            .init
            .as_ref()
            .is_none_or(|i| i.exit_published || i.pid.is_none());
        if !init_done {
            return;
        }
        let Some(ticket) = self.pending_delete.take() else {
            return;
        };
        let record = self.init.as_ref().and_then(|i| i.exit.clone());
        self.out.publish(EventBody::Deleted {});
        self.deleted = true;
        self.closing = true;
        self.release_all(registry);
        self.out.reply(ticket, Ok(Answer::Deleted(record)));
        self.out.outputs.push(Output::Exit {
            remove_state_dir: true,
        });
    }
}

/// Sets up a process's stdio from the client's three specs. Without a terminal: a
/// pipe per stream, relayed to or from the host end. With one: the console socket;
/// the relays are made when the master arrives.
fn setup_stdio(
    proc: &mut Process,
    specs: [Option<String>; 3],
    dir: &StateDir,
    tokens: &mut Tokens,
    registry: &Registry,
) -> Result<RuntimeStdio, RpcError> {
    let [stdin, stdout, stderr] = specs;
    let stdio_err = |m: String| err(ErrorKind::StdioFailed, m);
    let mut io = RuntimeStdio::default();
    if proc.terminal {
        if stderr.as_deref().is_some_and(|s| s != "/dev/null") {
            return Err(err(
                ErrorKind::InvalidParams,
                "a terminal process has no separate stderr: leave stderr out",
            ));
        }
        for (stream, spec) in [(Stream::Stdin, stdin), (Stream::Stdout, stdout)] {
            let end = stdio::open_host_end(stream, spec.as_deref(), &dir.fifo(&proc.name, stream.name()))
                .map_err(stdio_err)?;
            set_path(proc, stream, &end);
            proc.pending_ends.push((stream, end));
        }
        let (a, b) = (tokens.next(), tokens.next());
        proc.console =
            Some(ConsoleSocket::bind(&dir.console_socket(&proc.name), registry, a, b).map_err(stdio_err)?);
        return Ok(io);
    }
    let mut stdout_file: Option<(String, std::os::fd::OwnedFd)> = None;
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
            _ => stdio::open_host_end(stream, spec.as_deref(), &dir.fifo(&proc.name, stream.name()))
                .map_err(stdio_err)?,
        };
        set_path(proc, stream, &end);
        let HostEnd::Open { fd, keepalive, path } = end else {
            continue;
        };
        if stream == Stream::Stdout && stdio::is_regular_file(&fd) {
            stdout_file = Some((path, fd.try_clone().map_err(|e| stdio_err(format!("dup: {e}")))?));
        }
        let (read, write) = stdio::pipe().map_err(stdio_err)?;
        let (relay, child_end) = match stream {
            Stream::Stdin => (Relay::new(stream, fd, write, None, false), read),
            _ => (Relay::new(stream, read, fd, keepalive, false), write),
        };
        let mut relay = relay.map_err(stdio_err)?;
        relay.register(registry, || tokens.next());
        relay.pump(registry, false);
        proc.relays.push(relay);
        match stream {
            Stream::Stdin => io.stdin = Some(child_end),
            Stream::Stdout => io.stdout = Some(child_end),
            Stream::Stderr => io.stderr = Some(child_end),
        }
    }
    Ok(io)
}

fn set_path(proc: &mut Process, stream: Stream, end: &HostEnd) {
    let path = match end {
        HostEnd::Null => Some("/dev/null".to_string()),
        HostEnd::Open { path, .. } => Some(path.clone()),
    };
    match stream {
        Stream::Stdin => proc.paths.stdin = path,
        Stream::Stdout => proc.paths.stdout = path,
        Stream::Stderr => proc.paths.stderr = path,
    }
}

/// The console socket is readable: take the master when it comes and relay it.
fn attach_console(proc: &mut Process, tokens: &mut Tokens, registry: &Registry) {
    let Some(socket) = proc.console.as_mut() else {
        return;
    };
    let master = match socket.poll(registry) {
        Ok(Some(master)) => master,
        Ok(None) => return,
        Err(m) => {
            crate::log!("process {}: {m}", proc.name);
            return;
        }
    };
    if let Some(socket) = proc.console.take() {
        socket.close(registry);
    }
    if let Some((rows, cols)) = proc.pending_resize.take() {
        if let Err(m) = console::resize(master.as_raw_fd(), rows, cols) {
            crate::log!("process {}: {m}", proc.name);
        }
    }
    for (stream, end) in std::mem::take(&mut proc.pending_ends) {
        let HostEnd::Open { fd, keepalive, .. } = end else {
            continue;
        };
        let dup = match master.try_clone() {
            Ok(d) => d,
            Err(e) => {
                crate::log!("process {}: cannot dup the console master: {e}", proc.name);
                continue;
            }
        };
        let relay = match stream {
            Stream::Stdin => Relay::new(stream, fd, dup, None, false),
            _ => Relay::new(stream, dup, fd, keepalive, true),
        };
        match relay {
            Ok(mut relay) => {
                relay.register(registry, || tokens.next());
                relay.pump(registry, proc.exit.is_some());
                proc.relays.push(relay);
            }
            Err(m) => crate::log!("process {}: {m}", proc.name),
        }
    }
    proc.master = Some(master);
}

/// An exec's process spec: config.json's `process` with the client's fields laid over
/// it (so `{"args":["sh"]}` is enough), checked against the OCI schema. `env` is
/// merged by variable name, so `{"env":["X=1"]}` keeps the bundle's PATH.
fn exec_spec(base: &Value, given: &Value) -> Result<Value, RpcError> {
    let bad = |m: String| err(ErrorKind::InvalidParams, m);
    let Value::Object(given) = given else {
        return Err(bad("process must be an OCI process object".to_string()));
    };
    let mut spec = match base {
        Value::Object(b) => b.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in given {
        let merged = match (k.as_str(), spec.get(k), v) {
            ("env", Some(Value::Array(base_env)), Value::Array(env)) => {
                Value::Array(merge_env(base_env, env))
            }
            _ => v.clone(),
        };
        spec.insert(k.clone(), merged);
    }
    let spec = Value::Object(spec);
    let parsed: crate::spec::Process = serde_json::from_value(spec.clone())
        .map_err(|e| bad(format!("process is not a valid OCI process: {e}")))?;
    if parsed.args.as_ref().is_none_or(|a| a.is_empty()) {
        return Err(bad("process.args must name a program".to_string()));
    }
    if !parsed.cwd.starts_with('/') {
        return Err(bad(format!("process.cwd {} is not absolute", parsed.cwd)));
    }
    Ok(spec)
}

/// `base` with `over` laid on it, variable by variable (`NAME=value`).
fn merge_env(base: &[Value], over: &[Value]) -> Vec<Value> {
    let name = |v: &Value| v.as_str().map(|s| s.split('=').next().unwrap_or(s).to_string());
    let overridden: std::collections::HashSet<String> = over.iter().filter_map(name).collect();
    base.iter()
        .filter(|v| name(v).is_none_or(|n| !overridden.contains(&n)))
        .chain(over.iter())
        .cloned()
        .collect()
}

/// The CRIU options as runtime flags (checkpoint and restore share them).
fn criu_args(o: &CriuOptions) -> Vec<String> {
    let mut a = vec!["--image-path".to_string(), o.image_path.clone()];
    if let Some(w) = &o.work_path {
        a.extend(["--work-path".to_string(), w.clone()]);
    }
    for (on, flag) in [
        (o.tcp_established, "--tcp-established"),
        (o.ext_unix_sk, "--ext-unix-sk"),
        (o.shell_job, "--shell-job"),
        (o.file_locks, "--file-locks"),
    ] {
        if on {
            a.push(flag.to_string());
        }
    }
    a
}

/// Publishes a reaped process's exit once nothing it must follow is outstanding: its
/// start (the runtime call that launches it has returned) and its output (relayed
/// to the end, or the grace period is over).
fn publish_exit_if_ready(proc: &mut Process, now: Instant, oom_unclaimed: &mut u64, out: &mut Outbox) {
    let grace_over = proc.reaped_at.is_some_and(|t| now >= t + OUTPUT_GRACE);
    if proc.exit.is_none() || proc.exit_published || proc.launching {
        return;
    }
    if !proc.output_drained() {
        if !grace_over {
            return;
        }
        crate::log!(
            "{}: output still open {OUTPUT_GRACE:?} after exit; publishing the exit",
            proc.name
        );
    }
    claim_oom_kill(proc, oom_unclaimed);
    out.publish_exit(proc);
}

/// A process killed by SIGKILL takes one unclaimed OOM kill: its record says so.
fn claim_oom_kill(proc: &mut Process, unclaimed: &mut u64) {
    if let Some(record) = proc.exit.as_mut() {
        if *unclaimed > 0 && record.status == Some(137) {
            record.oom_killed = true;
            *unclaimed -= 1;
        }
    }
}

fn runtime_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Log file names per op: execs get their own so concurrent ones do not share.
fn op_file_tag(kind: &OpKind, sub: &str) -> String {
    match kind {
        OpKind::Exec(name) => format!("exec-{name}"),
        _ => sub.to_string(),
    }
}

fn status_name(status: ContainerStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_spec_lays_fields_over_the_bundle_process() {
        let base = json!({"args":["sh"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}});
        let spec = exec_spec(&base, &json!({"args":["echo","hi"],"env":["X=42"]})).unwrap();
        assert_eq!(spec["args"], json!(["echo", "hi"]));
        assert_eq!(spec["env"], json!(["PATH=/bin", "X=42"]));
        let spec = exec_spec(&base, &json!({"env":["PATH=/x"]})).unwrap();
        assert_eq!(spec["env"], json!(["PATH=/x"]));
        assert_eq!(spec["cwd"], "/");
    }

    #[test]
    fn exec_spec_rejects_bad_processes() {
        let base = json!({"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}});
        assert!(exec_spec(&base, &json!([1])).is_err());
        assert!(exec_spec(&base, &json!({"args":[]})).is_err());
        assert!(exec_spec(&base, &json!({"cwd":"relative"})).is_err());
        assert!(exec_spec(&base, &json!({"args":"not a list"})).is_err());
    }
}
