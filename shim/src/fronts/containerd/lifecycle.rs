//! The lifecycle methods of the task service: Create (rootfs mounts and stdio
//! first), Start (init, or an exec registered by Exec), Exec, Delete, Shutdown.

use super::events::CreateInfo;
use super::mounts;
use super::proto::{self, TaskIo};
use super::service::{status, Handled, PendingExec, Service, Status, Then, MAX_PENDING_EXECS};
use super::stdio::{self, Owner};
use super::ttrpc::code;
use crate::core::{Call, Core};
use crate::registry::Io;
use prost::Message;
use tether_protocol::*;

impl Service {
    pub(super) fn create(
        &mut self,
        r: proto::CreateTaskRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        if r.id != core.id() {
            return Err(status(
                code::INVALID_ARGUMENT,
                format!("this shim runs task {}, not {}", core.id(), r.id),
            ));
        }
        if self.container(core, io)?.status != ContainerStatus::New {
            return Err(status(
                code::ALREADY_EXISTS,
                format!("task {} is already created", r.id),
            ));
        }
        if !r.rootfs.is_empty() {
            mounts::mount_all(&r.rootfs, &self.bundle.join("rootfs"))
                .map_err(|e| status(code::INTERNAL, e))?;
            self.mounted = true;
        }
        let wired = match self.wire(INIT_PROCESS, r.terminal, &r.stdin, &r.stdout, &r.stderr) {
            Ok(w) => w,
            Err(e) => {
                self.undo_create();
                return Err(e);
            }
        };
        self.info.create = CreateInfo {
            io: TaskIo {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            rootfs: r.rootfs,
            checkpoint: r.checkpoint.clone(),
        };
        let [stdin, stdout, stderr] = wired;
        // What the core's params add later (sinks of its own) stays at its default.
        #[allow(clippy::needless_update)]
        let params = CreateParams {
            stdin,
            stdout,
            stderr,
            terminal: Some(r.terminal),
            checkpoint: (!r.checkpoint.is_empty()).then(|| RestoreParams {
                image_path: r.checkpoint,
                ..Default::default()
            }),
            // containerd's rule for stdin (see CONTAINERD.md, "Stdin").
            stdin_eof: StdinEof::WritersGoneBeforeStart,
            ..Default::default()
        };
        let handled = self.ask(core, io, Call::Create(params), Then::Create);
        self.release_logger_holds();
        Ok(handled)
    }

    /// What a Create that failed had set up: its mounts.
    pub(super) fn undo_create(&mut self) {
        self.unmount();
    }

    /// Unmounts the rootfs containerd handed over, if it was mounted.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        let rootfs = self.bundle.join("rootfs");
        match mounts::unmount_all(&rootfs) {
            Ok(()) => self.mounted = false,
            Err(e) => crate::log!("{e}"),
        }
    }

    /// containerd's stdio as core specs; a logging binary is started here.
    fn wire(
        &mut self,
        process: &str,
        terminal: bool,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<[Option<String>; 3], Status> {
        let owner = Owner {
            id: &self.info.id,
            namespace: &self.namespace,
            bundle: &self.bundle,
            process,
        };
        let wired = stdio::wire(&owner, terminal, stdin, stdout, stderr)
            .map_err(|e| status(code::INVALID_ARGUMENT, e))?;
        self.loggers.extend(wired.logger);
        Ok(wired.specs)
    }

    /// The core has opened (or failed to open) the loggers' FIFOs.
    fn release_logger_holds(&mut self) {
        for l in &mut self.loggers {
            l.release_hold();
        }
    }

    pub(super) fn exec(
        &mut self,
        r: proto::ExecProcessRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        crate::state_dir::validate_id("exec id", &r.exec_id)
            .map_err(|m| status(code::INVALID_ARGUMENT, m))?;
        let known = self
            .container(core, io)?
            .processes
            .iter()
            .any(|p| p.process == r.exec_id);
        if known || self.pending_execs.contains_key(&r.exec_id) || r.exec_id == INIT_PROCESS {
            return Err(status(
                code::ALREADY_EXISTS,
                format!("exec id {} is in use", r.exec_id),
            ));
        }
        if self.pending_execs.len() >= MAX_PENDING_EXECS {
            return Err(status(
                code::RESOURCE_EXHAUSTED,
                format!("{MAX_PENDING_EXECS} execs are registered and not started"),
            ));
        }
        let spec = match &r.spec {
            Some(any) => serde_json::from_slice(&any.value).map_err(|e| {
                status(
                    code::INVALID_ARGUMENT,
                    format!("the exec's spec is not an OCI process: {e}"),
                )
            })?,
            None => return Err(status(code::INVALID_ARGUMENT, "the exec has no process spec")),
        };
        let exec = PendingExec {
            spec,
            io: TaskIo {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            waits: Vec::new(),
        };
        self.pending_execs.insert(r.exec_id, exec);
        Ok(Handled::Now(Ok(Vec::new())))
    }

    pub(super) fn start(
        &mut self,
        r: proto::ProcessRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        if r.exec_id.is_empty() {
            return Ok(self.ask(core, io, Call::Start, Then::Start));
        }
        let Some(exec) = self.pending_execs.remove(&r.exec_id) else {
            return Err(status(
                code::FAILED_PRECONDITION,
                format!("exec {} is not registered, or already started", r.exec_id),
            ));
        };
        let t = exec.io.clone();
        let [stdin, stdout, stderr] = self.wire(&r.exec_id, t.terminal, &t.stdin, &t.stdout, &t.stderr)?;
        let mut spec = exec.spec;
        if let Some(p) = spec.as_object_mut() {
            p.insert("terminal".into(), t.terminal.into());
        }
        #[allow(clippy::needless_update)]
        let params = ExecParams {
            exec_id: r.exec_id.clone(),
            process: spec,
            stdin,
            stdout,
            stderr,
            stdin_eof: StdinEof::WritersGoneBeforeStart,
            ..Default::default()
        };
        let handled = self.ask(core, io, Call::Exec(params), Then::StartExec);
        self.release_logger_holds();
        self.exec_io.insert(r.exec_id.clone(), t);
        // Its Waits go to the core now that the core knows the exec.
        for who in exec.waits {
            let call = Call::Wait(ProcessParams {
                process: Some(r.exec_id.clone()),
            });
            let w = self.ask(core, io, call, Then::Wait);
            self.side.push((who, w));
        }
        Ok(handled)
    }

    pub(super) fn delete(
        &mut self,
        r: proto::ProcessRequest,
        core: &mut Core,
        io: &mut Io<'_>,
    ) -> Result<Handled, Status> {
        if let Some(exec) = self.pending_execs.remove(&r.exec_id) {
            // Never started: nothing ran, nothing to wait for.
            for who in exec.waits {
                let gone = status(
                    code::NOT_FOUND,
                    format!("exec {} was deleted before it started", r.exec_id),
                );
                self.side.push((who, Handled::Now(Err(gone))));
            }
            return Ok(Handled::Now(Ok(proto::DeleteResponse::default().encode_to_vec())));
        }
        let init = r.exec_id.is_empty();
        if !init {
            self.exec_io.remove(&r.exec_id);
        }
        let call = Call::Delete(DeleteParams {
            process: (!init).then(|| r.exec_id.clone()),
            force: false,
        });
        Ok(self.ask(core, io, call, Then::Delete { init }))
    }

    /// As containerd's own shims: a shim that still serves a container stays; one
    /// with none (never created, or deleted) goes once its answers are out.
    pub(super) fn shutdown(&mut self, core: &mut Core, io: &mut Io<'_>) -> Handled {
        let state = match self.container(core, io) {
            Ok(c) => c.status,
            Err(e) => return Handled::Now(Err(e)),
        };
        match state {
            ContainerStatus::New => {
                self.shutdown = true;
                self.ask(
                    core,
                    io,
                    Call::Shutdown(ShutdownParams { force: false }),
                    Then::Empty,
                )
            }
            ContainerStatus::Deleted => {
                self.shutdown = true;
                Handled::Now(Ok(Vec::new()))
            }
            _ => Handled::Now(Ok(Vec::new())),
        }
    }
}
