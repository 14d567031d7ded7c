//! The mode where the engine owns the lifecycle (`tether-conmon`, under Podman and
//! CRI-O): the engine runs `runtime start`, `kill`, `pause` and `delete` itself, and
//! the shim only creates, watches, logs and serves attach. So the core refuses the
//! calls that would change the container behind the engine's back, and notices a
//! start it was not told of: init's executable changes from the runtime's (blocked
//! on its exec FIFO) to the container's own when the engine's `runtime start` lets
//! it exec.

use super::ops::OpKind;
use super::process::Life;
use super::{err, Call, Core, CoreError, ErrorKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tether_protocol::{EventBody, INIT_PROCESS};

/// How often a created (not yet noticed started) init is looked at, besides every
/// readiness of the core's fds and every `state` call.
pub const START_POLL: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct EngineMode {
    /// One exec session in a container another monitor watches (conmon's `-e`):
    /// there is no init here, and the exec needs none.
    exec_session: bool,
    /// Init's executable when `runtime create` returned (the runtime's own).
    created_exe: Option<PathBuf>,
    next_poll: Option<Instant>,
}

impl Core {
    /// From now on the engine owns the lifecycle (see the module's doc).
    pub fn set_engine_owns_lifecycle(&mut self) {
        self.engine = Some(EngineMode::default());
    }

    pub fn engine_owns_lifecycle(&self) -> bool {
        self.engine.is_some()
    }

    /// The engine owns the lifecycle and this core runs one exec session of a
    /// container another monitor watches.
    pub fn set_engine_exec_session(&mut self) {
        self.engine = Some(EngineMode {
            exec_session: true,
            ..Default::default()
        });
    }

    pub(super) fn engine_exec_session(&self) -> bool {
        self.engine.as_ref().is_some_and(|m| m.exec_session)
    }

    /// Process `name`'s attach follows conmon's stdin rule (from its launch on:
    /// input may come and end before the runtime call returns).
    pub fn engine_launched(&mut self, name: &str) {
        if self.engine.is_none() {
            return;
        }
        if let Ok(proc) = self.process_mut(Some(name)) {
            if let Some(hub) = proc.io.attach.as_mut() {
                hub.set_eof_closes_stdin(true);
            }
        }
    }

    /// Calls the engine makes through the runtime itself are refused here.
    pub(super) fn engine_refuses(&self, call: &Call) -> Result<(), CoreError> {
        if self.engine.is_none() {
            return Ok(());
        }
        let what = match call {
            Call::Start => "start",
            Call::Delete(_) => "delete",
            Call::Pause => "pause",
            Call::Resume => "resume",
            Call::Checkpoint(_) => "checkpoint",
            Call::Update(_) => "update",
            _ => return Ok(()),
        };
        Err(err(
            ErrorKind::WrongState,
            format!(
                "cannot {what}: the engine owns the lifecycle of container {} (tether-conmon); ask the engine (podman {what} ...)",
                self.id
            ),
        ))
    }

    /// `runtime create` returned: remember what init runs while it waits for start.
    pub(super) fn engine_created(&mut self, pid: i32) {
        let Some(mode) = self.engine.as_mut() else {
            return;
        };
        mode.created_exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        mode.next_poll = Some(Instant::now() + START_POLL);
    }

    /// Publishes `started` if the engine has started init since last time.
    pub(super) fn notice_engine_start(&mut self) {
        let Some(mode) = self.engine.as_mut() else {
            return;
        };
        let Some(init) = self.init.as_mut() else {
            return;
        };
        let Life::Created { pid } = *init.life() else {
            mode.next_poll = None;
            return;
        };
        mode.next_poll = Some(Instant::now() + START_POLL);
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return;
        };
        if mode.created_exe.as_ref().is_some_and(|created| *created == exe) {
            return;
        }
        mode.next_poll = None;
        init.start_begun();
        init.start_finished(true);
        self.out.publish(EventBody::Started { pid });
    }

    /// Attach clients still connected (with output queued for them, once the
    /// output is over): the monitor lets them drain before it ends.
    pub fn attach_clients_remain(&self) -> bool {
        self.processes()
            .any(|p| p.io.attach.as_ref().is_some_and(|h| h.has_clients()))
    }

    pub(super) fn engine_deadline(&self) -> Option<Instant> {
        self.engine.as_ref().and_then(|m| m.next_poll)
    }

    /// conmon's forwarding of a signal sent to the monitor: to `process` (init or the
    /// exec session) once its pid is known and it lives, else to the runtime call
    /// that is making it. The pid signalled; None once the process has exited (conmon
    /// then does nothing either).
    pub fn forward_signal(&self, process: &str, signal: i32) -> Option<i32> {
        let signal = Signal::try_from(signal).ok()?;
        let live = self
            .process(Some(process))
            .ok()
            .filter(|p| p.is_alive())
            .and_then(|p| p.pid());
        let making = self.ops.iter().find_map(|(pid, op)| match &op.kind {
            OpKind::Create { .. } if process == INIT_PROCESS => Some(*pid),
            OpKind::Exec(name) if name == process => Some(*pid),
            _ => None,
        });
        [live, making]
            .into_iter()
            .flatten()
            .find(|pid| kill(Pid::from_raw(*pid), signal).is_ok())
    }
}
