//! `exec`: a process spec laid over the bundle's, `runtime exec --detach`, then the
//! process's pid from its pid file; `exec_added` and `exec_started` precede its exit.

use super::super::bundle;
use super::super::process::Process;
use super::super::{err, Answer, CoreError, Deferred, ErrorKind, Reply, Ticket};
use super::{later, remove_files, Core, OpKind};
use crate::reactor::Io;
use crate::runtime::RuntimeCall;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use std::fs;
use tether_protocol::{EventBody, ExecParams, ExecResult};

impl Core {
    pub(in crate::core) fn exec(&mut self, ticket: Ticket, p: ExecParams, io: &mut Io<'_>) -> Reply {
        later(self.begin_exec(ticket, p, io))
    }

    fn begin_exec(&mut self, ticket: Ticket, p: ExecParams, io: &mut Io<'_>) -> Result<Deferred, CoreError> {
        self.can_exec(&p.exec_id)?;
        let spec = bundle::exec_spec(&self.base_process, &p.process)?;
        let terminal = spec.get("terminal").and_then(Value::as_bool).unwrap_or(false);
        self.check_stdio_targets([&p.stdin, &p.stdout, &p.stderr])?;
        let n = self.scratch_id();
        let spec_path = self.dir.scratch(n, "exec", "json");
        let json = serde_json::to_vec(&spec).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        fs::write(&spec_path, json).map_err(|e| {
            err(
                ErrorKind::Internal,
                format!("cannot write {}: {e}", spec_path.display()),
            )
        })?;
        let name = p.exec_id;
        let (pio, stdio) =
            match crate::io::setup(&name, terminal, [p.stdin, p.stdout, p.stderr], &self.dir, io) {
                Ok(wired) => wired,
                Err(e) => {
                    let _ = fs::remove_file(&spec_path);
                    self.remove_exec_files(&name);
                    return Err(e);
                }
            };
        let mut proc = Process::new(&name, terminal);
        proc.io = pio;
        let pid_file = self.dir.pid_file(&name);
        let _ = fs::remove_file(&pid_file);
        let call = RuntimeCall::Exec {
            process: spec_path.clone(),
            pid_file,
            console_socket: proc.io.console.as_ref().map(|c| c.path().to_path_buf()),
        };
        match self.spawn_op(
            OpKind::Exec(name.clone()),
            ticket,
            call,
            stdio,
            n,
            vec![spec_path],
        ) {
            Ok(deferred) => {
                self.execs.insert(name, proc);
                Ok(deferred)
            }
            Err(e) => {
                proc.io.release(io);
                self.remove_exec_files(&name);
                Err(e)
            }
        }
    }

    pub(super) fn finish_exec(
        &mut self,
        ticket: Ticket,
        name: String,
        failure: Option<CoreError>,
        io: &mut Io<'_>,
    ) {
        let adopted = match failure {
            Some(e) => Err(e),
            None => self.read_pid_file(&name, "exec"),
        };
        let pid = match adopted {
            Ok(pid) => pid,
            Err(e) => {
                // Nothing of it is left: its fds, files and waiters go.
                if let Some(mut proc) = self.execs.remove(&name) {
                    proc.io.release(io);
                    if let Some(file) = proc.exit_file.take() {
                        file.discard();
                    }
                    for waiter in proc.take_waiters() {
                        self.out.reply(waiter, Err(e.clone()));
                    }
                }
                self.remove_exec_files(&name);
                return self.out.reply(ticket, Err(e));
            }
        };
        let init_gone = self.init.as_ref().is_none_or(|i| i.has_exited());
        let Some(proc) = self.execs.get_mut(&name) else {
            return;
        };
        proc.launched(pid, true);
        let result = ExecResult {
            exec_id: name.clone(),
            pid,
            stdio: proc.io.paths.clone(),
            terminal: proc.terminal,
        };
        self.out.publish(EventBody::ExecAdded {
            exec_id: name.clone(),
        });
        self.out.publish(EventBody::ExecStarted {
            exec_id: name.clone(),
            pid,
        });
        self.out.reply(ticket, Ok(Answer::Exec(result)));
        self.claim_early_exit(&name, pid, io);
        // Started after init died (shared pid namespace): it must not outlive init.
        if init_gone && self.execs.get(&name).is_some_and(|p| p.is_alive()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// An exec's own files in the state dir: pid file, exit record, shim-made FIFOs.
    pub(super) fn remove_exec_files(&self, name: &str) {
        remove_files(&[
            self.dir.pid_file(name),
            self.dir.exit_record(name),
            self.dir.fifo(name, "stdin"),
            self.dir.fifo(name, "stdout"),
            self.dir.fifo(name, "stderr"),
        ]);
    }
}
