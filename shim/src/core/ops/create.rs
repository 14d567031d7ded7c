//! `create` (and restore from a checkpoint): `runtime create|restore`, then init's pid
//! from its pid file. A create that fails in any way is cleaned up with
//! `runtime delete --force` before it is answered, so the container is back in
//! `new` with nothing left in the runtime's state, and a retry starts clean.

use super::super::bundle;
use super::super::process::Process;
use super::super::{err, Answer, CoreError, ErrorKind, Reply, Ticket};
use super::{later, Core, OpKind};
use crate::io::StdioSpec;
use crate::registry::Io;
use crate::runtime::{RuntimeCall, RuntimeStdio};
use std::fs;
use tether_protocol::{CreateParams, CreateResult, EventBody, INIT_PROCESS};

impl Core {
    pub(in crate::core) fn create(&mut self, ticket: Ticket, p: CreateParams, io: &mut Io<'_>) -> Reply {
        later(self.begin_create(ticket, p, io))
    }

    fn begin_create(
        &mut self,
        ticket: Ticket,
        p: CreateParams,
        io: &mut Io<'_>,
    ) -> Result<super::super::Deferred, CoreError> {
        self.can_create()?;
        let bundle = bundle::load(&self.bundle)?;
        if let Some(asked) = p.terminal {
            if asked != bundle.terminal {
                return Err(err(
                    ErrorKind::InvalidParams,
                    format!(
                        "terminal {asked} contradicts process.terminal {} in the bundle's config.json",
                        bundle.terminal
                    ),
                ));
            }
        }
        self.check_stdio_params(&p.stdin, &p.stdout, &p.stderr, p.log.as_ref())?;
        let spec = StdioSpec {
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
            log: p.log,
            attach: p.attach,
            stdin_eof: p.stdin_eof,
            capture: None,
        };
        let (pio, stdio) = crate::io::setup(INIT_PROCESS, bundle.terminal, spec, &self.dir, io)?;
        let mut init = Process::new(INIT_PROCESS, bundle.terminal);
        init.io = pio;
        let pid_file = self.dir.pid_file(INIT_PROCESS);
        // A pid file left by an earlier failed create must not be taken for this one's.
        let _ = fs::remove_file(&pid_file);
        let console_socket = init.io.console.as_ref().map(|c| c.path().to_path_buf());
        let restore = p.checkpoint.is_some();
        let call = match p.checkpoint {
            None => RuntimeCall::Create {
                bundle: self.bundle.clone(),
                pid_file,
                console_socket,
            },
            Some(criu) => RuntimeCall::Restore {
                bundle: self.bundle.clone(),
                pid_file,
                console_socket,
                criu,
            },
        };
        let n = self.scratch_id();
        match self.spawn_op(OpKind::Create { restore }, ticket, call, stdio, n, Vec::new()) {
            Ok(deferred) => {
                self.base_process = bundle.process.to_string().into_boxed_str();
                self.init = Some(init);
                Ok(deferred)
            }
            Err(e) => {
                init.io.release(io);
                Err(e)
            }
        }
    }

    pub(super) fn finish_create(
        &mut self,
        ticket: Ticket,
        restore: bool,
        failure: Option<CoreError>,
        io: &mut Io<'_>,
    ) {
        let pid = match failure.map_or_else(|| self.read_pid_file(INIT_PROCESS, "create"), Err) {
            Ok(pid) => pid,
            Err(e) => return self.clean_up_failed_create(ticket, e, io),
        };
        let Some(init) = self.init.as_mut() else {
            return;
        };
        // A restored container is running when the runtime returns.
        init.launched(pid, restore);
        init.io.start_relaying(io, restore);
        let result = CreateResult {
            pid,
            stdio: init.io.paths.clone(),
            terminal: init.terminal,
        };
        self.oom.watch(pid, io);
        if !restore {
            self.engine_created(pid);
        }
        self.out.publish(EventBody::Created { pid });
        if restore {
            self.out.publish(EventBody::Started { pid });
        }
        self.out.reply(ticket, Ok(Answer::Created(result)));
        self.claim_early_exit(INIT_PROCESS, pid, io);
    }

    /// The runtime may have left state behind (or even a container, if it died after
    /// making it): `runtime delete --force` first, then the create is answered.
    fn clean_up_failed_create(&mut self, ticket: Ticket, error: CoreError, io: &mut Io<'_>) {
        let n = self.scratch_id();
        let call = RuntimeCall::Delete { force: true };
        let kind = OpKind::CreateCleanup { error: error.clone() };
        if let Err(e) = self.spawn_op(kind, ticket, call, RuntimeStdio::default(), n, Vec::new()) {
            let error = with_cleanup_failure(error, &e, &self.id);
            self.abandon_init(ticket, error, io);
        }
    }

    pub(super) fn finish_create_cleanup(
        &mut self,
        ticket: Ticket,
        error: CoreError,
        failure: Option<CoreError>,
        io: &mut Io<'_>,
    ) {
        let error = match failure {
            // Nothing was left to delete: what we wanted.
            Some(f) if !f.message.contains("does not exist") => with_cleanup_failure(error, &f, &self.id),
            _ => error,
        };
        self.abandon_init(ticket, error, io);
    }

    /// The create failed: back to `new`. Everyone waiting on init hears why.
    fn abandon_init(&mut self, ticket: Ticket, error: CoreError, io: &mut Io<'_>) {
        if let Some(mut init) = self.init.take() {
            init.io.release(io);
            if let Some(file) = init.exit_file.take() {
                file.discard();
            }
            for waiter in init.take_waiters() {
                self.out.reply(waiter, Err(error.clone()));
            }
        }
        let _ = fs::remove_file(self.dir.pid_file(INIT_PROCESS));
        self.out.reply(ticket, Err(error));
    }

    /// Reads the pid file the runtime wrote for `name` and prepares its exit record.
    pub(super) fn read_pid_file(&mut self, name: &str, sub: &str) -> Result<i32, CoreError> {
        let path = self.dir.pid_file(name);
        let what = format!("{} {sub}", self.runtime.name());
        let text = fs::read_to_string(&path).map_err(|e| {
            err(
                ErrorKind::RuntimeFailed,
                format!(
                    "{what} succeeded but its pid file {} is unreadable: {e}",
                    path.display()
                ),
            )
        })?;
        let pid: i32 = text.trim().parse().map_err(|_| {
            err(
                ErrorKind::RuntimeFailed,
                format!(
                    "{what}: pid file {} holds {:?}, not a pid",
                    path.display(),
                    text.trim()
                ),
            )
        })?;
        let exit_file = crate::state_dir::PreparedFile::create(&self.dir.exit_record(name))
            .map_err(|e| {
                crate::log!("cannot prepare the exit record of {name} (written at exit instead): {e}")
            })
            .ok();
        if let Ok(proc) = self.process_mut(Some(name)) {
            proc.exit_file = exit_file;
        }
        Ok(pid)
    }

    /// An exit reaped before the pid was known is this process's: take it now.
    pub(super) fn claim_early_exit(&mut self, name: &str, pid: i32, io: &mut Io<'_>) {
        if let Some(exit) = self.unclaimed.remove(&pid) {
            self.process_exited(name, &exit, io);
        }
    }
}

fn with_cleanup_failure(mut error: CoreError, cleanup: &CoreError, id: &str) -> CoreError {
    error.message = format!(
        "{}; cleaning up after it failed too ({}): the runtime may still hold state for {id}",
        error.message, cleanup.message
    );
    error
}
