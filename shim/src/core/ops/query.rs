//! Calls answered at once from what the shim holds: hello, state, stats, wait (or
//! later, at the exit), close_stdin, resize.

use super::super::{err, Answer, CallResult, Deferred, Empty, ErrorKind, Reply, Ticket};
use super::Core;
use crate::registry::Io;
use tether_protocol::*;

impl Core {
    pub(in crate::core) fn hello(&self) -> HelloResult {
        let events = self.out.events();
        HelloResult {
            protocol: PROTOCOL_VERSION,
            version: crate::handover::version(),
            shim_pid: std::process::id(),
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            runtime: self.runtime.path.clone(),
            status: self.status(),
            last_seq: events.last_seq(),
            first_seq: events.first_seq(),
            state_dir: self.out.health(),
        }
    }

    pub(in crate::core) fn wait(&mut self, ticket: Ticket, p: ProcessParams) -> Reply {
        let proc = match self.process_mut(p.process.as_deref()) {
            Ok(proc) => proc,
            Err(e) => return Reply::Now(Err(e)),
        };
        if let Some(record) = proc.published_exit() {
            return Reply::Now(Ok(Answer::Exit(record.clone())));
        }
        if proc.add_waiter(ticket) {
            Reply::Later(Deferred::stored(ticket))
        } else {
            Reply::Now(Err(err(ErrorKind::Internal, "wait could not be stored")))
        }
    }

    pub(in crate::core) fn state(&self, p: ProcessParams) -> CallResult {
        if p.process.is_some() {
            return self
                .process(p.process.as_deref())
                .map(|proc| Answer::Process(proc.state()));
        }
        Ok(Answer::Container(ContainerState {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            status: self.status(),
            pid: self.init.as_ref().and_then(|i| i.pid()),
            processes: self.processes().map(|p| p.state()).collect(),
            state_dir: self.out.health(),
        }))
    }

    pub(in crate::core) fn stats(&self) -> CallResult {
        match &self.oom.cgroup {
            Some(cg) if !self.deleted => {
                let mut stats = cg.stats();
                stats.output_dropped_bytes = self.processes().map(|p| p.io.dropped_total()).sum();
                Ok(Answer::Stats(stats))
            }
            _ => Err(err(
                ErrorKind::WrongState,
                format!("container {} has no cgroup yet", self.id),
            )),
        }
    }

    pub(in crate::core) fn close_stdin(&mut self, p: ProcessParams, io: &mut Io<'_>) -> CallResult {
        let proc = self.process_mut(p.process.as_deref())?;
        let exited = proc.has_exited();
        proc.io.close_stdin(io, exited);
        Ok(Answer::Empty(Empty {}))
    }

    /// kubelet renamed the log away: write to a file at its path again. Answered once
    /// the new file exists.
    pub(in crate::core) fn reopen_log(&mut self, p: ProcessParams) -> CallResult {
        let proc = self.process_mut(p.process.as_deref())?;
        if !proc.is_alive() {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot reopen the log of {}: it is not running", proc.name),
            ));
        }
        proc.io.reopen_log().map_err(|m| {
            let kind = if proc.io.log.is_some() {
                ErrorKind::StdioFailed
            } else {
                ErrorKind::WrongState
            };
            err(kind, format!("cannot reopen the log of {}: {m}", proc.name))
        })?;
        Ok(Answer::Empty(Empty {}))
    }

    /// Where to attach to a process (its socket made now if it has none yet).
    pub(in crate::core) fn attach(&mut self, p: ProcessParams, io: &mut Io<'_>) -> CallResult {
        let name = p.process.clone().unwrap_or_else(|| INIT_PROCESS.to_string());
        let path = self.dir.attach_socket(&name);
        let proc = self.process_mut(Some(&name))?;
        if proc.has_exited() {
            return Err(err(
                ErrorKind::WrongState,
                format!("cannot attach to {name}: it has exited"),
            ));
        }
        let path = proc
            .io
            .ensure_attach(&path, io)
            .map_err(|m| err(ErrorKind::StdioFailed, m))?;
        Ok(Answer::Attach(AttachResult { path }))
    }

    pub(in crate::core) fn resize(&mut self, p: ResizeParams) -> CallResult {
        let proc = self.process_mut(p.process.as_deref())?;
        if !proc.terminal {
            return Err(err(
                ErrorKind::WrongState,
                format!("process {} has no terminal", proc.name),
            ));
        }
        proc.io
            .resize(p.rows, p.cols)
            .map_err(|m| err(ErrorKind::Internal, m))?;
        Ok(Answer::Empty(Empty {}))
    }
}
