//! Runtime calls on a running container: kill (`--all` through the runtime, else
//! the shim signals the pid itself), pause/resume, update, checkpoint, pids.

use super::super::{err, Answer, CallResult, CoreError, Empty, ErrorKind, Reply, Ticket};
use super::{later, Core, OpKind};
use crate::runtime::{RuntimeCall, RuntimeStdio};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use tether_protocol::{
    CheckpointParams, ContainerPid, ContainerStatus, EventBody, KillParams, UpdateParams, INIT_PROCESS,
};

impl Core {
    pub(in crate::core) fn kill(&mut self, ticket: Ticket, p: KillParams) -> Reply {
        match self.begin_kill(ticket, p) {
            Ok(reply) => reply,
            Err(e) => Reply::Now(Err(e)),
        }
    }

    fn begin_kill(&mut self, ticket: Ticket, p: KillParams) -> Result<Reply, CoreError> {
        let signal = p.signal.number().map_err(|m| err(ErrorKind::InvalidParams, m))?;
        let name = p.process.as_deref().unwrap_or(INIT_PROCESS);
        self.process(Some(name))?;
        if p.all {
            if name != INIT_PROCESS {
                return Err(err(
                    ErrorKind::InvalidParams,
                    "all: true applies to the container (init) only",
                ));
            }
            let n = self.scratch_id();
            let call = RuntimeCall::Kill { signal, all: true };
            return Ok(later(self.spawn_op(
                OpKind::KillAll(signal),
                ticket,
                call,
                RuntimeStdio::default(),
                n,
                Vec::new(),
            )));
        }
        let pid = self.signal_target(name)?;
        let sig = Signal::try_from(signal)
            .map_err(|e| err(ErrorKind::InvalidParams, format!("signal {signal}: {e}")))?;
        // The pid cannot have been reused: the shim has not reaped it yet.
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
            .map_err(|e| err(ErrorKind::Internal, format!("kill {name} (pid {pid}): {e}")))?;
        if name == INIT_PROCESS {
            self.thaw_if_killed_while_paused(sig);
        }
        Ok(Reply::Now(Ok(Answer::Empty(Empty {}))))
    }

    /// A SIGKILL to a paused container's init (or to all of it) ends it: its cgroup
    /// is thawed, as `runc kill` does, or the signal would wait for a `resume`. The
    /// container is no longer paused; no `resumed` event, its `exit` follows.
    pub(super) fn thaw_if_killed_while_paused(&mut self, sig: Signal) {
        if sig != Signal::SIGKILL || !self.paused {
            return;
        }
        let Some(pid) = self.init.as_ref().and_then(|i| i.pid()) else {
            return;
        };
        match crate::cgroup::Cgroup::of_pid(pid).and_then(|cg| cg.thaw()) {
            Ok(()) => self.paused = false,
            Err(m) => crate::log!("SIGKILL to a paused container: {m}"),
        }
    }

    /// Init died: execs that outlive it (shared pid namespace) are killed, so that
    /// init's exit can follow theirs.
    pub(in crate::core) fn kill_execs_left_behind(&self) {
        for exec in self.execs.values().filter(|e| e.is_alive()) {
            if let Some(pid) = exec.pid() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    pub(in crate::core) fn pause_or_resume(&mut self, ticket: Ticket, pause: bool) -> Reply {
        if let Err(e) = self.can_pause_or_resume(pause) {
            return Reply::Now(Err(e));
        }
        let (kind, call) = if pause {
            (OpKind::Pause, RuntimeCall::Pause)
        } else {
            (OpKind::Resume, RuntimeCall::Resume)
        };
        let n = self.scratch_id();
        later(self.spawn_op(kind, ticket, call, RuntimeStdio::default(), n, Vec::new()))
    }

    pub(super) fn finish_pause_or_resume(&mut self, ticket: Ticket, pause: bool, failure: Option<CoreError>) {
        if failure.is_none() {
            self.paused = pause;
            self.out.publish(if pause {
                EventBody::Paused {}
            } else {
                EventBody::Resumed {}
            });
        }
        self.answer(ticket, failure);
    }

    pub(in crate::core) fn update(&mut self, ticket: Ticket, p: UpdateParams) -> Reply {
        later(self.begin_update(ticket, p))
    }

    fn begin_update(&mut self, ticket: Ticket, p: UpdateParams) -> Result<super::Deferred, CoreError> {
        self.can_update()?;
        serde_json::from_value::<crate::spec::Resources>(p.resources.clone()).map_err(|e| {
            err(
                ErrorKind::InvalidParams,
                format!("resources is not an OCI linux.resources object: {e}"),
            )
        })?;
        let n = self.scratch_id();
        let path = self.dir.scratch(n, "update", "json");
        let json = serde_json::to_vec(&p.resources).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        fs::write(&path, json).map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", path.display())))?;
        let call = RuntimeCall::Update {
            resources: path.clone(),
        };
        self.spawn_op(
            OpKind::Update,
            ticket,
            call,
            RuntimeStdio::default(),
            n,
            vec![path],
        )
    }

    pub(in crate::core) fn checkpoint(&mut self, ticket: Ticket, p: CheckpointParams) -> Reply {
        if let Err(e) = self.can_checkpoint() {
            return Reply::Now(Err(e));
        }
        if !p.image_path.starts_with('/') {
            return Reply::Now(Err(err(
                ErrorKind::InvalidParams,
                format!("image_path {:?} is not absolute", p.image_path),
            )));
        }
        let call = RuntimeCall::Checkpoint {
            criu: p.criu(),
            leave_running: p.leave_running,
        };
        let n = self.scratch_id();
        let kind = OpKind::Checkpoint(p.image_path);
        later(self.spawn_op(kind, ticket, call, RuntimeStdio::default(), n, Vec::new()))
    }

    pub(super) fn finish_checkpoint(
        &mut self,
        ticket: Ticket,
        image_path: String,
        failure: Option<CoreError>,
    ) {
        if failure.is_none() {
            self.out.publish(EventBody::Checkpointed { image_path });
        }
        self.answer(ticket, failure);
    }

    pub(in crate::core) fn pids(&mut self, ticket: Ticket) -> Reply {
        // Once init's exit is published the runtimes disagree about an empty
        // container (runc prints null, youki [], crun 1.8 crashes): the shim reads the
        // cgroup itself, which still lists what outlived init in a shared pid
        // namespace.
        if self.status() == ContainerStatus::Stopped {
            let pids = self.oom.cgroup.as_ref().map(|cg| cg.procs()).unwrap_or_default();
            return Reply::Now(Ok(self.named_pids(pids)));
        }
        later(self.begin_pids(ticket))
    }

    fn begin_pids(&mut self, ticket: Ticket) -> Result<super::Deferred, CoreError> {
        if self.process(None)?.pid().is_none() {
            return Err(err(
                ErrorKind::WrongState,
                format!("container {} is being created: it has no processes yet", self.id),
            ));
        }
        let n = self.scratch_id();
        let out = self.dir.scratch(n, "ps", "out");
        let file = fs::File::create(&out)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", out.display())))?;
        let stdio = RuntimeStdio {
            stdout: Some(file.into()),
            ..Default::default()
        };
        self.spawn_op(
            OpKind::Ps(out.clone()),
            ticket,
            RuntimeCall::Ps,
            stdio,
            n,
            vec![out],
        )
    }

    pub(super) fn finish_ps(&mut self, ticket: Ticket, out: &Path, failure: Option<CoreError>) {
        let result = match failure {
            None => self.parse_ps(out),
            Some(e) => Err(e),
        };
        self.out.reply(ticket, result);
    }

    fn parse_ps(&self, out: &Path) -> CallResult {
        let text = fs::read_to_string(out)
            .map_err(|e| err(ErrorKind::Internal, format!("{}: {e}", out.display())))?;
        // runc prints `null` for a container without processes.
        let pids: Option<Vec<i32>> = serde_json::from_str(text.trim()).map_err(|e| {
            err(
                ErrorKind::RuntimeFailed,
                format!("{} ps printed no pid list: {e}", self.runtime.name()),
            )
        })?;
        Ok(self.named_pids(pids.unwrap_or_default()))
    }

    /// `pids` with the process name of each pid that is one of the shim's.
    fn named_pids(&self, pids: Vec<i32>) -> Answer {
        let names: HashMap<i32, &str> = self
            .processes()
            .filter(|p| p.is_alive())
            .filter_map(|p| p.pid().map(|pid| (pid, p.name.as_str())))
            .collect();
        Answer::Pids(
            pids.into_iter()
                .map(|pid| ContainerPid {
                    pid,
                    process: names.get(&pid).map(|n| n.to_string()),
                })
                .collect(),
        )
    }
}
