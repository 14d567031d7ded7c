//! `delete` of the container (`runtime delete`, answered after init's exit and the
//! `deleted` event), `delete` of an exited exec, and `shutdown`.

use super::super::guards::DeleteHow;
use super::super::{Answer, CallResult, CoreError, Empty, Reply, Ticket};
use super::{later, Core, OpKind};
use crate::registry::Io;
use crate::runtime::{RuntimeCall, RuntimeStdio};
use tether_protocol::{ContainerStatus, DeleteParams, EventBody, ShutdownParams, INIT_PROCESS};

impl Core {
    pub(in crate::core) fn delete(&mut self, ticket: Ticket, p: DeleteParams, io: &mut Io<'_>) -> Reply {
        if let Some(name) = p.process.as_deref().filter(|n| *n != INIT_PROCESS) {
            return Reply::Now(self.delete_exec(name, io));
        }
        match self.can_delete(p.force) {
            Err(e) => Reply::Now(Err(e)),
            Ok(DeleteHow::Nothing) => {
                self.deleted = true;
                self.closing = true;
                self.out.exit_shim(true);
                Reply::Now(Ok(Answer::Deleted(None)))
            }
            Ok(DeleteHow::Runtime { force }) => {
                let n = self.scratch_id();
                let call = RuntimeCall::Delete { force };
                later(self.spawn_op(
                    OpKind::Delete,
                    ticket,
                    call,
                    RuntimeStdio::default(),
                    n,
                    Vec::new(),
                ))
            }
        }
    }

    pub(super) fn finish_delete(&mut self, ticket: Ticket, failure: Option<CoreError>) {
        match failure {
            // Answered once init's exit is out (`maybe_finish_delete`).
            None => self.pending_delete = Some(ticket),
            Some(e) => self.out.reply(ticket, Err(e)),
        }
    }

    /// After `runtime delete`: once init's exit is published (or it never ran), the
    /// `deleted` event, the answer, and the shim exits.
    pub(in crate::core) fn maybe_finish_delete(&mut self, io: &mut Io<'_>) {
        let init_done = self
            .init
            .as_ref()
            .is_none_or(|i| i.is_published() || i.pid().is_none());
        if !init_done {
            return;
        }
        let Some(ticket) = self.pending_delete.take() else {
            return;
        };
        let record = self.init.as_ref().and_then(|i| i.published_exit().cloned());
        self.out.publish(EventBody::Deleted {});
        self.deleted = true;
        self.closing = true;
        self.release_all(io);
        self.out.reply(ticket, Ok(Answer::Deleted(record)));
        self.out.exit_shim(true);
    }

    fn delete_exec(&mut self, name: &str, io: &mut Io<'_>) -> CallResult {
        self.can_delete_exec(name)?;
        let Some(mut proc) = self.execs.remove(name) else {
            return Err(self.no_such_process(name));
        };
        proc.io.release(io);
        self.out.forget_record(&self.dir.exit_record(name));
        self.remove_exec_files(name);
        Ok(Answer::Deleted(proc.published_exit().cloned()))
    }

    pub(in crate::core) fn shutdown(&mut self, p: ShutdownParams, io: &mut Io<'_>) -> CallResult {
        self.can_shutdown(p.force)?;
        self.closing = true;
        self.release_all(io);
        let remove_state_dir = matches!(self.status(), ContainerStatus::New | ContainerStatus::Deleted);
        self.out.exit_shim(remove_state_dir);
        Ok(Answer::Empty(Empty {}))
    }

    fn release_all(&mut self, io: &mut Io<'_>) {
        self.oom.release(io);
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            proc.io.release(io);
            if let Some(file) = proc.exit_file.take() {
                file.discard();
            }
        }
    }
}
