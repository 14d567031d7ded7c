//! What the container's state allows: the container status, derived from init's
//! life and the runtime calls in flight, and one guard per operation. Every front
//! asks the same guards, so every front gets the same answers.

use super::ops::OpKind;
use super::process::{Life, Stage};
use super::{err, Core, CoreError, ErrorKind};
use crate::io::cri_log::CriLog;
use std::path::{Path, PathBuf};
use tether_protocol::LogParams;
use tether_protocol::{ContainerStatus, INIT_PROCESS};

/// How `delete` of the container goes, once allowed.
pub enum DeleteHow {
    /// Never created: nothing to ask the runtime.
    Nothing,
    /// `runtime delete`, forced or not.
    Runtime { force: bool },
}

impl Core {
    pub fn status(&self) -> ContainerStatus {
        if self.deleted {
            return ContainerStatus::Deleted;
        }
        let Some(init) = &self.init else {
            return ContainerStatus::New;
        };
        let running = if self.paused {
            ContainerStatus::Paused
        } else {
            ContainerStatus::Running
        };
        match init.life() {
            Life::Launching => ContainerStatus::Creating,
            Life::Created { .. } | Life::Starting { .. } => ContainerStatus::Created,
            Life::Running { .. } => running,
            Life::Exited { stage, .. } => match stage {
                Stage::Created | Stage::Starting => ContainerStatus::Created,
                Stage::Running => running,
            },
            Life::Published { .. } => ContainerStatus::Stopped,
        }
    }

    pub(super) fn op_in_flight(&self, pred: impl Fn(&OpKind) -> bool) -> bool {
        self.ops.values().any(|op| pred(&op.kind))
    }

    /// A runtime call that makes a process (create, restore, exec) is running: an
    /// exit of an unknown pid may be its process.
    pub(super) fn launch_in_flight(&self) -> bool {
        self.op_in_flight(|k| matches!(k, OpKind::Create { .. } | OpKind::Exec(_)))
    }

    fn wrong_state(&self, what: &str) -> CoreError {
        err(
            ErrorKind::WrongState,
            format!("cannot {what}: container is {}", status_name(self.status())),
        )
    }

    pub(super) fn can_create(&self) -> Result<(), CoreError> {
        match &self.init {
            Some(init) if *init.life() == Life::Launching => Err(err(
                ErrorKind::WrongState,
                format!(
                    "container {} is being created: its create is still running",
                    self.id
                ),
            )),
            Some(_) => Err(err(
                ErrorKind::AlreadyExists,
                format!("container {} is already created", self.id),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn can_start(&self) -> Result<(), CoreError> {
        self.process(None)?;
        match self.init.as_ref().map(|i| i.life()) {
            Some(Life::Created { .. }) => Ok(()),
            _ => Err(self.wrong_state("start")),
        }
    }

    pub(super) fn can_exec(&self, exec_id: &str) -> Result<(), CoreError> {
        crate::state_dir::validate_id("exec id", exec_id).map_err(|m| err(ErrorKind::InvalidParams, m))?;
        if exec_id == INIT_PROCESS {
            return Err(err(
                ErrorKind::InvalidParams,
                "exec id \"init\" is reserved for the container's init",
            ));
        }
        if self.execs.contains_key(exec_id) {
            return Err(err(
                ErrorKind::AlreadyExists,
                format!("exec id {exec_id:?} is already in use"),
            ));
        }
        if self.engine_exec_session() {
            // The container is another monitor's: the engine checked it runs.
            return Ok(());
        }
        let init_running = self
            .init
            .as_ref()
            .is_some_and(|i| matches!(i.life(), Life::Running { .. }));
        if self.status() != ContainerStatus::Running || !init_running {
            return Err(err(
                ErrorKind::WrongState,
                format!(
                    "cannot exec: container {} is {}",
                    self.id,
                    status_name(self.status())
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn can_pause_or_resume(&self, pause: bool) -> Result<(), CoreError> {
        let (want, what) = if pause {
            (ContainerStatus::Running, "pause")
        } else {
            (ContainerStatus::Paused, "resume")
        };
        if self.status() != want || self.op_in_flight(|k| matches!(k, OpKind::Pause | OpKind::Resume)) {
            return Err(self.wrong_state(what));
        }
        Ok(())
    }

    pub(super) fn can_update(&self) -> Result<(), CoreError> {
        match self.status() {
            ContainerStatus::Created | ContainerStatus::Running | ContainerStatus::Paused => Ok(()),
            _ => Err(self.wrong_state("update")),
        }
    }

    pub(super) fn can_checkpoint(&self) -> Result<(), CoreError> {
        match self.status() {
            ContainerStatus::Running | ContainerStatus::Paused => Ok(()),
            _ => Err(self.wrong_state("checkpoint")),
        }
    }

    pub(super) fn can_delete(&self, force: bool) -> Result<DeleteHow, CoreError> {
        if self.pending_delete.is_some()
            || self.op_in_flight(|k| matches!(k, OpKind::Create { .. } | OpKind::Start | OpKind::Delete))
        {
            return Err(err(
                ErrorKind::WrongState,
                "another lifecycle call is in progress",
            ));
        }
        match self.status() {
            ContainerStatus::New => Ok(DeleteHow::Nothing),
            ContainerStatus::Running | ContainerStatus::Paused if !force => Err(err(
                ErrorKind::WrongState,
                format!(
                    "container {} is running: kill it first, or delete with force",
                    self.id
                ),
            )),
            ContainerStatus::Running | ContainerStatus::Paused => Ok(DeleteHow::Runtime { force: true }),
            _ => Ok(DeleteHow::Runtime { force }),
        }
    }

    pub(super) fn can_delete_exec(&self, name: &str) -> Result<(), CoreError> {
        let proc = self.process(Some(name))?;
        if !proc.is_published() {
            return Err(err(
                ErrorKind::WrongState,
                format!("exec {name} has not exited: kill it first"),
            ));
        }
        Ok(())
    }

    pub(super) fn can_shutdown(&self, force: bool) -> Result<(), CoreError> {
        let alive = self.processes().any(|p| p.is_alive());
        if (alive || !self.ops.is_empty()) && !force {
            return Err(err(
                ErrorKind::WrongState,
                "container processes are alive: delete the container, or shutdown with force to leave them unsupervised",
            ));
        }
        Ok(())
    }

    /// The pid a signal may be sent to: alive, and not yet reaped by the shim (so it
    /// cannot have been reused).
    pub(super) fn signal_target(&self, name: &str) -> Result<i32, CoreError> {
        let proc = self.process(Some(name))?;
        match (proc.is_alive(), proc.pid()) {
            (true, Some(pid)) => Ok(pid),
            _ => {
                let why = if proc.has_exited() {
                    "has already exited"
                } else {
                    "is not created yet"
                };
                Err(err(ErrorKind::WrongState, format!("process {name} {why}")))
            }
        }
    }
}

impl Core {
    /// Output and input targets may not be the shim's own files: a client that named
    /// `events.jsonl` as stdout would corrupt the event log.
    /// The stdio a create or exec asks for fits: absolute paths, none inside the
    /// state dir, a log whose parameters make sense (all `invalid_params`; a path
    /// that cannot be opened or made is `stdio_failed`, later).
    pub(super) fn check_stdio_params(
        &self,
        stdin: &Option<String>,
        stdout: &Option<String>,
        stderr: &Option<String>,
        log: Option<&LogParams>,
    ) -> Result<(), CoreError> {
        if let Some(log) = log {
            CriLog::check(log).map_err(|m| err(ErrorKind::InvalidParams, m))?;
        }
        let log_path = log.map(|l| l.path.clone());
        for (stream, spec) in ["stdin", "stdout", "stderr"]
            .into_iter()
            .zip([stdin, stdout, stderr])
        {
            if let Some(p) = spec.as_deref().filter(|p| !p.starts_with('/')) {
                return Err(err(
                    ErrorKind::InvalidParams,
                    format!("{stream} path {p:?} is not absolute"),
                ));
            }
        }
        self.check_stdio_targets([stdin, stdout, stderr, &log_path])
    }

    fn check_stdio_targets(&self, specs: [&Option<String>; 4]) -> Result<(), CoreError> {
        let root = self
            .dir
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.dir.root.clone());
        for (stream, spec) in ["stdin", "stdout", "stderr", "log"].into_iter().zip(specs) {
            let Some(path) = spec
                .as_deref()
                .filter(|p| p.starts_with('/') && *p != "/dev/null")
            else {
                continue;
            };
            if resolve(Path::new(path)).starts_with(&root) {
                return Err(err(
                    ErrorKind::InvalidParams,
                    format!(
                        "{stream} {path} is inside the shim's state dir {}: the shim's own files live there",
                        root.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `path` with symlinks and `..` resolved as far as it exists (a file to be
/// created is resolved through its directory).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => resolve(dir).join(name),
        _ => path.to_path_buf(),
    }
}

pub fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::New => "new",
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Paused => "paused",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Deleted => "deleted",
    }
}
