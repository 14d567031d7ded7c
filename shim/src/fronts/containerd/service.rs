//! The task service (containerd.task.v2.Task; v3 has the same messages): each
//! method's request turned into a core call, the core's answer into the method's
//! response, core error kinds into gRPC codes. Lifecycle methods (Create, Start,
//! Exec, Delete, Shutdown) are in `lifecycle.rs`.
//!
//! containerd's Exec only registers a process and its Start runs it; the core's
//! `exec` does both at once, so an exec is kept here from Exec to Start (its Waits,
//! which containerd sends before Start, wait with it).

use super::events::{exit_status, TaskInfo};
use super::metrics;
use super::proto::{self, Any, TaskStatus};
use super::stdio::Logger;
use super::ttrpc::code;
use crate::core::{Answer, Call, CallResult, Core, CoreError, ErrorKind, Reply, Ticket};
use crate::registry::Io;
use mio::Token;
use prost::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use tether_protocol::*;

pub type Status = proto::Status;

/// Who asked: the connection and the ttrpc stream to answer on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    pub token: Token,
    pub stream: u32,
}

/// What a method's answer needs once the core's answer comes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Then {
    Create,
    Start,
    /// Start of an exec: the core's `exec`.
    StartExec,
    Delete {
        init: bool,
    },
    Wait,
    Pids,
    Empty,
}

pub enum Handled {
    Now(Result<Vec<u8>, Status>),
    Later(Ticket, Then),
    /// Answered when its exec starts (a Wait before Start).
    Parked,
}

/// An exec between containerd's Exec and its Start.
pub struct PendingExec {
    pub spec: serde_json::Value,
    pub io: proto::TaskIo,
    pub waits: Vec<Asker>,
}

pub struct Service {
    pub namespace: String,
    pub bundle: PathBuf,
    pub info: TaskInfo,
    /// BUNDLE/rootfs holds containerd's mounts.
    pub mounted: bool,
    pub loggers: Vec<Logger>,
    pub pending_execs: HashMap<String, PendingExec>,
    /// The stdio containerd gave each started exec, for State.
    pub exec_io: HashMap<String, proto::TaskIo>,
    /// Shutdown was called with no container left: the shim may go.
    pub shutdown: bool,
    /// Answers that fall due besides the call's own (parked Waits).
    pub side: Vec<(Asker, Handled)>,
}

/// Pending execs a shim keeps at most (containerd starts them right away).
pub const MAX_PENDING_EXECS: usize = 1024;

pub fn status(code: i32, message: impl Into<String>) -> Status {
    Status {
        code,
        message: message.into(),
    }
}

/// The core's error kinds as the gRPC codes containerd's errdefs understand.
pub fn core_status(e: &CoreError) -> Status {
    let c = match e.kind {
        ErrorKind::InvalidParams | ErrorKind::InvalidBundle => code::INVALID_ARGUMENT,
        ErrorKind::NotFound => code::NOT_FOUND,
        ErrorKind::AlreadyExists => code::ALREADY_EXISTS,
        ErrorKind::WrongState => code::FAILED_PRECONDITION,
        ErrorKind::LimitExceeded => code::RESOURCE_EXHAUSTED,
        ErrorKind::ShuttingDown => code::UNAVAILABLE,
        ErrorKind::RuntimeFailed | ErrorKind::StdioFailed => code::UNKNOWN,
        ErrorKind::EventsCompacted | ErrorKind::EventsMissing | ErrorKind::Internal => code::INTERNAL,
    };
    status(c, e.message.clone())
}

pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, Status> {
    M::decode(payload).map_err(|e| status(code::INVALID_ARGUMENT, format!("cannot decode the request: {e}")))
}

fn empty() -> Result<Vec<u8>, Status> {
    Ok(Vec::new())
}

/// containerd names init "" (exec_id) or by the container id; the core calls it init.
pub fn process_name(exec_id: &str) -> String {
    if exec_id.is_empty() {
        INIT_PROCESS.to_string()
    } else {
        exec_id.to_string()
    }
}

impl Service {
    pub fn new(namespace: String, bundle: PathBuf, id: String) -> Service {
        let info = TaskInfo::new(id, bundle.display().to_string());
        Service {
            namespace,
            bundle,
            info,
            mounted: false,
            loggers: Vec::new(),
            pending_execs: HashMap::new(),
            exec_io: HashMap::new(),
            shutdown: false,
            side: Vec::new(),
        }
    }

    /// One task-service method.
    pub fn call(
        &mut self,
        method: &str,
        payload: &[u8],
        who: Asker,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Handled {
        let handled = match method {
            "Connect" => self.connect(core, io),
            "Create" => decode(payload).and_then(|r| self.create(r, core, io)),
            "Start" => decode(payload).and_then(|r| self.start(r, core, io)),
            "State" => decode(payload).and_then(|r| self.state(r, core, io)),
            "Kill" => decode(payload).and_then(|r| self.kill(r, core, io)),
            "Exec" => decode(payload).and_then(|r| self.exec(r, core, io)),
            "Pids" => Ok(self.ask(core, io, Call::Pids, Then::Pids)),
            "ResizePty" => decode(payload).and_then(|r| self.resize(r, core, io)),
            "CloseIO" => decode(payload).and_then(|r| self.close_io(r, core, io)),
            "Pause" => Ok(self.ask(core, io, Call::Pause, Then::Empty)),
            "Resume" => Ok(self.ask(core, io, Call::Resume, Then::Empty)),
            "Checkpoint" => decode(payload).and_then(|r| self.checkpoint(r, core, io)),
            "Update" => decode(payload).and_then(|r| self.update(r, core, io)),
            "Wait" => decode(payload).and_then(|r| self.wait(r, who, core, io)),
            "Stats" => self.stats(core, io),
            "Delete" => decode(payload).and_then(|r| self.delete(r, core, io)),
            "Shutdown" => Ok(self.shutdown(core, io)),
            other => Err(status(code::UNIMPLEMENTED, format!("method {other}"))),
        };
        handled.unwrap_or_else(|e| Handled::Now(Err(e)))
    }

    /// Runs a core call; its answer is encoded by `then`, now or when it comes.
    pub fn ask(&mut self, core: &mut Core, io: &mut Io<'_>, call: Call, then: Then) -> Handled {
        match core.call(call, io) {
            Reply::Now(result) => Handled::Now(self.finish(then, result)),
            Reply::Later(deferred) => Handled::Later(deferred.ticket(), then),
        }
    }

    /// The response to a method whose core call answered `result`.
    pub fn finish(&mut self, then: Then, result: CallResult) -> Result<Vec<u8>, Status> {
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                if matches!(then, Then::Create) {
                    self.undo_create();
                }
                return Err(core_status(&e));
            }
        };
        let pid = |pid: i32| Ok(proto::PidResponse { pid: pid as u32 }.encode_to_vec());
        match (then, answer) {
            (Then::Create, Answer::Created(c)) => pid(c.pid),
            (Then::Start, Answer::Pid(p)) => pid(p.pid),
            (Then::StartExec, Answer::Exec(e)) => pid(e.pid),
            (Then::Delete { init }, Answer::Deleted(record)) => {
                if init {
                    self.unmount();
                }
                let r = record.as_ref();
                Ok(proto::DeleteResponse {
                    pid: r.map_or(0, |r| r.pid as u32),
                    exit_status: r.map_or(0, exit_status),
                    exited_at: r.and_then(|r| proto::timestamp(&r.exited_at)),
                }
                .encode_to_vec())
            }
            (Then::Wait, Answer::Exit(r)) => Ok(proto::WaitResponse {
                exit_status: exit_status(&r),
                exited_at: proto::timestamp(&r.exited_at),
            }
            .encode_to_vec()),
            (Then::Pids, Answer::Pids(pids)) => Ok(proto::PidsResponse {
                processes: pids.into_iter().map(process_info).collect(),
            }
            .encode_to_vec()),
            (Then::Empty, _) => empty(),
            (then, answer) => Err(status(
                code::INTERNAL,
                format!("the core answered {then:?} with {answer:?}"),
            )),
        }
    }

    /// The container's state from the core (any status, even while closing).
    pub fn container(&self, core: &mut Core, io: &mut Io<'_>) -> Result<ContainerState, Status> {
        match core.call(Call::State(ProcessParams::default()), io) {
            Reply::Now(Ok(Answer::Container(c))) => Ok(c),
            Reply::Now(Err(e)) => Err(core_status(&e)),
            _ => Err(status(
                code::INTERNAL,
                "the core's state answer is not a container state",
            )),
        }
    }

    fn connect(&mut self, core: &mut Core, io: &mut Io<'_>) -> Result<Handled, Status> {
        let c = self.container(core, io)?;
        Ok(Handled::Now(Ok(proto::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.pid.unwrap_or(0) as u32,
            version: String::new(),
        }
        .encode_to_vec())))
    }

    fn state(
        &mut self,
        r: proto::ProcessRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        let id = core.id().to_string();
        if let Some(exec) = self.pending_execs.get(&r.exec_id) {
            let m = proto::StateResponse {
                id: r.exec_id.clone(),
                bundle: self.info.bundle.clone(),
                status: TaskStatus::Created as i32,
                stdin: exec.io.stdin.clone(),
                stdout: exec.io.stdout.clone(),
                stderr: exec.io.stderr.clone(),
                terminal: exec.io.terminal,
                exec_id: r.exec_id,
                ..Default::default()
            };
            return Ok(Handled::Now(Ok(m.encode_to_vec())));
        }
        let c = self.container(core, io)?;
        if c.status == ContainerStatus::New {
            return Err(status(code::NOT_FOUND, format!("container {id} is not created")));
        }
        let name = process_name(&r.exec_id);
        let p = c
            .processes
            .iter()
            .find(|p| p.process == name)
            .ok_or_else(|| status(code::NOT_FOUND, format!("process {name} not found in {id}")))?;
        let st = match p.status {
            ProcessStatus::Creating => TaskStatus::Unknown,
            ProcessStatus::Created => TaskStatus::Created,
            // An exit is final once published (its output is all out): until then
            // the process still counts as running, as in containerd's own shims.
            ProcessStatus::Exited if p.exit.is_some() => TaskStatus::Stopped,
            ProcessStatus::Running | ProcessStatus::Exited if c.status == ContainerStatus::Paused => {
                TaskStatus::Paused
            }
            ProcessStatus::Running | ProcessStatus::Exited => TaskStatus::Running,
        };
        let tio = if r.exec_id.is_empty() {
            Some(&self.info.create.io)
        } else {
            self.exec_io.get(&r.exec_id)
        };
        let tio = tio.cloned().unwrap_or_default();
        let m = proto::StateResponse {
            id: if r.exec_id.is_empty() {
                id
            } else {
                r.exec_id.clone()
            },
            bundle: self.info.bundle.clone(),
            pid: p.pid.unwrap_or(0) as u32,
            status: st as i32,
            stdin: tio.stdin,
            stdout: tio.stdout,
            stderr: tio.stderr,
            terminal: p.terminal,
            exit_status: p.exit.as_ref().map_or(0, exit_status),
            exited_at: p.exit.as_ref().and_then(|e| proto::timestamp(&e.exited_at)),
            exec_id: r.exec_id,
        };
        Ok(Handled::Now(Ok(m.encode_to_vec())))
    }

    fn kill(&mut self, r: proto::KillRequest, core: &mut Core, io: &mut Io<'_>) -> Result<Handled, Status> {
        self.not_pending(&r.exec_id)?;
        let name = process_name(&r.exec_id);
        let c = self.container(core, io)?;
        // Signalling what has exited is NotFound, as containerd's own shims answer
        // and as its CRI plugin expects ("already stopped").
        let exited = c
            .processes
            .iter()
            .any(|p| p.process == name && p.status == ProcessStatus::Exited);
        if exited && !r.all {
            return Err(status(
                code::NOT_FOUND,
                format!("process {name} already finished"),
            ));
        }
        let call = Call::Kill(KillParams {
            process: Some(name),
            signal: SignalSpec::Number(r.signal as i32),
            all: r.all,
        });
        Ok(self.ask(core, io, call, Then::Empty))
    }

    fn resize(
        &mut self,
        r: proto::ResizePtyRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        self.not_pending(&r.exec_id)?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        let call = Call::Resize(ResizeParams {
            process: Some(process_name(&r.exec_id)),
            rows: clamp(r.height),
            cols: clamp(r.width),
        });
        Ok(self.ask(core, io, call, Then::Empty))
    }

    fn close_io(
        &mut self,
        r: proto::CloseIoRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        self.not_pending(&r.exec_id)?;
        if !r.stdin {
            return Ok(Handled::Now(empty()));
        }
        let call = Call::CloseStdin(ProcessParams {
            process: Some(process_name(&r.exec_id)),
        });
        Ok(self.ask(core, io, call, Then::Empty))
    }

    fn checkpoint(
        &mut self,
        r: proto::CheckpointTaskRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        let o = match &r.options {
            Some(a) if a.type_url.ends_with("CheckpointOptions") => {
                decode::<proto::CheckpointOptions>(&a.value)?
            }
            _ => proto::CheckpointOptions::default(),
        };
        let image_path = if r.path.is_empty() { o.image_path } else { r.path };
        let call = Call::Checkpoint(CheckpointParams {
            image_path,
            work_path: (!o.work_path.is_empty()).then_some(o.work_path),
            tcp_established: o.open_tcp,
            ext_unix_sk: o.external_unix_sockets,
            shell_job: o.terminal,
            file_locks: o.file_locks,
            leave_running: !o.exit,
        });
        Ok(self.ask(core, io, call, Then::Empty))
    }

    fn update(
        &mut self,
        r: proto::UpdateTaskRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        let resources = match &r.resources {
            Some(a) => serde_json::from_slice(&a.value).map_err(|e| {
                status(
                    code::INVALID_ARGUMENT,
                    format!("resources are not OCI linux.resources JSON: {e}"),
                )
            })?,
            None => serde_json::Value::Object(Default::default()),
        };
        Ok(self.ask(core, io, Call::Update(UpdateParams { resources }), Then::Empty))
    }

    fn wait(
        &mut self,
        r: proto::ProcessRequest,
        who: Asker,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        if let Some(exec) = self.pending_execs.get_mut(&r.exec_id) {
            exec.waits.push(who);
            return Ok(Handled::Parked);
        }
        let call = Call::Wait(ProcessParams {
            process: Some(process_name(&r.exec_id)),
        });
        Ok(self.ask(core, io, call, Then::Wait))
    }

    fn stats(&mut self, core: &mut Core, io: &mut Io<'_>) -> Result<Handled, Status> {
        match core.call(Call::Stats, io) {
            Reply::Now(Ok(Answer::Stats(s))) => Ok(Handled::Now(Ok(proto::StatsResponse {
                stats: Some(metrics::metrics(&s)),
            }
            .encode_to_vec()))),
            Reply::Now(Err(e)) => Err(core_status(&e)),
            _ => Err(status(code::INTERNAL, "the core's stats answer is not stats")),
        }
    }

    /// Calls other than Start, State, Wait and Delete need a started process.
    fn not_pending(&self, exec_id: &str) -> Result<(), Status> {
        if self.pending_execs.contains_key(exec_id) {
            return Err(status(
                code::FAILED_PRECONDITION,
                format!("exec {exec_id} is not started"),
            ));
        }
        Ok(())
    }

    /// Forgets the Waits of a connection that is gone.
    pub fn forget(&mut self, token: Token) {
        for exec in self.pending_execs.values_mut() {
            exec.waits.retain(|w| w.token != token);
        }
    }
}

/// One pid of `Pids`: an exec's carries its exec id (containerd.runc.v1.ProcessDetails).
fn process_info(p: ContainerPid) -> proto::ProcessInfo {
    let info = p.process.filter(|n| n != INIT_PROCESS).map(|exec_id| {
        Any::pack(
            "containerd.runc.v1.ProcessDetails",
            &proto::ProcessDetails { exec_id },
        )
    });
    proto::ProcessInfo {
        pid: p.pid as u32,
        info,
    }
}
