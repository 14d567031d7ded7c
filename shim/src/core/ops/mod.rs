//! Operations. Each runtime invocation is an [`Op`] in flight, keyed by its pid; its
//! `finish_*` runs when the reaper collects it. Each file holds one family's begin
//! and finish side by side. Every invocation gets its own scratch files (its log,
//! and any input or output file), removed when it ends, so concurrent calls never
//! share one.

mod control;
mod create;
mod delete;
pub(super) mod exec;
mod query;
mod start;

use super::api::{Answer, CoreError, Deferred, Empty, ErrorKind, Ticket};
use super::{err, Core};
use crate::reaper::ChildExit;
use crate::registry::Io;
use crate::runtime::{failure_message, failure_message_with, RuntimeCall, RuntimeStdio};
use std::path::PathBuf;

pub enum OpKind {
    /// `runtime create`, or `runtime restore` when restoring from a checkpoint.
    Create {
        restore: bool,
    },
    /// `runtime delete --force` after a create failed, so that nothing it made is
    /// left in the runtime's state; then the create is answered with `error`.
    CreateCleanup {
        error: CoreError,
    },
    Start,
    Exec(String),
    /// `runtime kill --all` with this signal.
    KillAll(i32),
    Pause,
    Resume,
    Update,
    Checkpoint(String),
    Delete,
    /// `runtime ps`, its stdout in this file.
    Ps(PathBuf),
}

/// A runtime invocation in flight.
pub struct Op {
    pub kind: OpKind,
    ticket: Ticket,
    /// `runc create`, for messages.
    what: String,
    log: PathBuf,
    /// Where its stderr went, when the shim captured it (not for create, restore and
    /// exec): a runtime that fails before its logger is set up says why only there.
    stderr: Option<PathBuf>,
    /// Files made for this invocation alone (its log among them), removed at its end.
    scratch: Vec<PathBuf>,
}

impl Op {
    /// `runc exec`, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Core {
    /// A number for one invocation's scratch files.
    fn scratch_id(&mut self) -> u64 {
        let n = self.next_scratch;
        self.next_scratch += 1;
        n
    }

    /// Starts `call`; its answer goes to `ticket` when it ends. `scratch` are files
    /// made for it, removed when it ends (or now, if it cannot start).
    fn spawn_op(
        &mut self,
        kind: OpKind,
        ticket: Ticket,
        call: RuntimeCall,
        mut stdio: RuntimeStdio,
        n: u64,
        mut scratch: Vec<PathBuf>,
    ) -> Result<Deferred, CoreError> {
        let sub = call.subcommand();
        let what = format!("{} {sub}", self.runtime.name());
        let log = self.dir.scratch(n, sub, "log");
        scratch.push(log.clone());
        let mut stderr = None;
        if stdio.stderr.is_none() && !call.hands_stdio_to_process() {
            let path = self.dir.scratch(n, sub, "err");
            // Without the file the runtime's stderr is /dev/null, as before.
            if let Ok(file) = std::fs::File::create(&path) {
                stdio.stderr = Some(file.into());
                scratch.push(path.clone());
                stderr = Some(path);
            }
        }
        let spawned = self
            .runtime
            .spawn(self.spawner.as_mut(), &log, &call, &self.id, stdio);
        match spawned {
            Ok(pid) => {
                self.ops.insert(
                    pid,
                    Op {
                        kind,
                        ticket,
                        what,
                        log,
                        stderr,
                        scratch,
                    },
                );
                Ok(Deferred::stored(ticket))
            }
            Err(e) => {
                remove_files(&scratch);
                Err(err(ErrorKind::RuntimeFailed, format!("{what} failed: {e}")))
            }
        }
    }

    /// A runtime invocation ended.
    pub(super) fn finish_op(&mut self, op: Op, exit: ChildExit, io: &mut Io<'_>) {
        // Read the runtime's own account before its log goes.
        let failure = (exit.status != 0).then(|| {
            let how = exit.describe();
            let message = match self.runtime_words(&op.kind) {
                Some(words) => failure_message_with(&op.what, &op.log, Some(&words), &how),
                None => failure_message(&op.what, &op.log, op.stderr.as_deref(), &how),
            };
            crate::log!("{message}");
            err(ErrorKind::RuntimeFailed, message)
        });
        let ticket = op.ticket;
        match op.kind {
            OpKind::Create { restore } => self.finish_create(ticket, restore, failure, io),
            OpKind::CreateCleanup { error } => self.finish_create_cleanup(ticket, error, failure, io),
            OpKind::Start => self.finish_start(ticket, failure, io),
            OpKind::Exec(name) => self.finish_exec(ticket, name, failure, io),
            OpKind::KillAll(signal) => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                    self.thaw_if_killed_while_paused(sig);
                }
                self.answer(ticket, failure)
            }
            OpKind::Update => self.answer(ticket, failure),
            OpKind::Pause => self.finish_pause_or_resume(ticket, true, failure),
            OpKind::Resume => self.finish_pause_or_resume(ticket, false, failure),
            OpKind::Checkpoint(image_path) => self.finish_checkpoint(ticket, image_path, failure),
            OpKind::Delete => self.finish_delete(ticket, failure),
            OpKind::Ps(ref out) => self.finish_ps(ticket, out, failure),
        }
        remove_files(&op.scratch);
    }

    /// What a failed create or exec printed: its stdout and stderr are the process's
    /// pipes, held until the call succeeds (see `ProcessIo::take_runtime_words`).
    fn runtime_words(&mut self, kind: &OpKind) -> Option<String> {
        let proc = match kind {
            OpKind::Create { .. } => self.init.as_mut(),
            OpKind::Exec(name) => self.execs.get_mut(name),
            _ => None,
        };
        proc?.io.take_runtime_words()
    }

    /// `{}` on success, else the failure.
    fn answer(&mut self, ticket: Ticket, failure: Option<CoreError>) {
        let result = match failure {
            None => Ok(Answer::Empty(Empty {})),
            Some(e) => Err(e),
        };
        self.out.reply(ticket, result);
    }
}

fn remove_files(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// `Reply` from a begin function's result.
fn later(r: Result<Deferred, CoreError>) -> super::Reply {
    match r {
        Ok(d) => super::Reply::Later(d),
        Err(e) => super::Reply::Now(Err(e)),
    }
}
