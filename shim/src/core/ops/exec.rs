//! `exec`: a process spec laid over the bundle's, `runtime exec --detach`, then the
//! process's pid from its pid file; `exec_added` and `exec_started` precede its exit.
//! With `capture` (kubelet's exec probes): answered at the exit with the output, and
//! killed past its deadline.

use super::super::bundle;
use super::super::process::{CaptureWait, Process};
use super::super::{err, Answer, CoreError, Deferred, ErrorKind, Reply, Ticket};
use super::{later, remove_files, Core, OpKind};
use crate::io::{StdioSpec, Stream};
use crate::registry::Io;
use crate::runtime::RuntimeCall;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use std::fs;
use std::time::{Duration, Instant};
use tether_protocol::{CaptureResult, EventBody, ExecParams, ExecResult, ExitRecord};

impl Core {
    pub(in crate::core) fn exec(&mut self, ticket: Ticket, p: ExecParams, io: &mut Io<'_>) -> Reply {
        later(self.begin_exec(ticket, p, io))
    }

    fn begin_exec(&mut self, ticket: Ticket, p: ExecParams, io: &mut Io<'_>) -> Result<Deferred, CoreError> {
        self.can_exec(&p.exec_id)?;
        let base: Value = serde_json::from_str(&self.base_process).unwrap_or(Value::Null);
        let spec = bundle::exec_spec(&base, &p.process)?;
        let terminal = spec.get("terminal").and_then(Value::as_bool).unwrap_or(false);
        self.check_stdio_params(&p.stdin, &p.stdout, &p.stderr, p.log.as_ref())?;
        let n = self.scratch_id();
        let spec_path = self.dir.scratch(n, "exec", "json");
        let json = serde_json::to_vec(&spec).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        fs::write(&spec_path, json).map_err(|e| {
            err(
                ErrorKind::Internal,
                format!("cannot write {}: {e}", spec_path.display()),
            )
        })?;
        let name = p.exec_id.clone();
        let capture_limit = p.capture_limit();
        let capture = p.capture.map(|c| CaptureWait {
            ticket: None,
            deadline: c.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            timed_out: false,
        });
        let spec = StdioSpec {
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
            log: p.log,
            attach: p.attach,
            stdin_eof: p.stdin_eof,
            capture: capture.as_ref().map(|_| capture_limit),
        };
        let (pio, stdio) = match crate::io::setup(&name, terminal, spec, &self.dir, io) {
            Ok(wired) => wired,
            Err(e) => {
                let _ = fs::remove_file(&spec_path);
                self.remove_exec_files(&name);
                return Err(e);
            }
        };
        let mut proc = Process::new(&name, terminal);
        proc.io = pio;
        proc.capture = capture;
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
        let pid = match failure.map_or_else(|| self.read_pid_file(&name, "exec"), Err) {
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
        let init_gone = !self.engine_exec_session() && self.init.as_ref().is_none_or(|i| i.has_exited());
        let Some(proc) = self.execs.get_mut(&name) else {
            return;
        };
        proc.launched(pid, true);
        proc.io.start_relaying(io, true);
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
        match proc.capture.as_mut() {
            // Answered at its exit, with its output.
            Some(capture) => capture.ticket = Some(ticket),
            None => self.out.reply(ticket, Ok(Answer::Exec(result))),
        }
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

impl Core {
    /// Captured execs past their deadline are killed (their answer says so).
    pub(in crate::core) fn kill_overdue_captures(&mut self, now: Instant) {
        for proc in self.execs.values_mut() {
            let alive = proc.is_alive();
            let (Some(pid), Some(capture)) = (proc.pid(), proc.capture.as_mut()) else {
                continue;
            };
            if capture.deadline.is_some_and(|d| d <= now) {
                capture.deadline = None;
                if alive {
                    capture.timed_out = true;
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    pub(in crate::core) fn next_capture_deadline(&self) -> Option<Instant> {
        self.execs
            .values()
            .filter(|p| p.is_alive())
            .filter_map(|p| p.capture.as_ref()?.deadline)
            .min()
    }
}

/// The answer to a captured exec: its exit and the output it kept.
pub(in crate::core) fn capture_answer(proc: &mut Process, exit: &ExitRecord, timed_out: bool) -> Answer {
    let mut result = CaptureResult {
        exec_id: proc.name.clone(),
        exit: exit.clone(),
        timed_out,
        stdout: None,
        stdout_base64: None,
        stderr: None,
        stderr_base64: None,
        stdout_truncated: false,
        stderr_truncated: false,
    };
    for stream in [Stream::Stdout, Stream::Stderr] {
        let captured = proc.io.take_capture(stream).unwrap_or_default();
        let (text, b64) = match String::from_utf8(captured.bytes) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(base64(e.as_bytes()))),
        };
        match stream {
            Stream::Stdout => {
                (result.stdout, result.stdout_base64, result.stdout_truncated) =
                    (text, b64, captured.truncated)
            }
            _ => {
                (result.stderr, result.stderr_base64, result.stderr_truncated) =
                    (text, b64, captured.truncated)
            }
        }
    }
    Answer::Captured(result)
}

/// Standard base64 with padding, for output that is not UTF-8.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0xfe, 0x00, 0x80]), "//4AgA==");
    }
}
