//! One container process (init or an exec): its life as one state value, with every
//! transition in this file, beside its stdio and the calls waiting for its exit.
//! Modeled on containerd's runc shim (`init_state.go`, `exec_state.go`): what is
//! known only in a state (the pid, the exit record) lives in that state's variant.

use super::api::Ticket;
use crate::io::ProcessIo;
use crate::reaper::ChildExit;
use crate::state_dir::PreparedFile;
use std::time::Instant;
use tether_protocol::{signal_name, ExitRecord, ProcessState, ProcessStatus};

/// Where a process was when it was reaped: what it still waits for before its exit
/// may be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Init, created and never started.
    Created,
    /// Init: `runtime start` had not returned (its `started` event comes first).
    Starting,
    Running,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    /// The runtime call that makes it (create, restore, exec) is running; no pid yet.
    Launching,
    /// Init, made by `runtime create`, waiting for `start`.
    Created {
        pid: i32,
    },
    /// Init: `runtime start` is running.
    Starting {
        pid: i32,
    },
    Running {
        pid: i32,
    },
    /// Reaped; its exit is not published yet (see `ordering`).
    Exited {
        pid: i32,
        record: ExitRecord,
        reaped_at: Instant,
        stage: Stage,
    },
    /// Its exit has been published. Final.
    Published {
        record: ExitRecord,
    },
}

/// An `exec` with `capture`: answered at its exit, with its output.
#[derive(Debug, Default)]
pub struct CaptureWait {
    /// The exec call to answer (set once its runtime call has returned).
    pub ticket: Option<Ticket>,
    /// Past this, the process is killed.
    pub deadline: Option<Instant>,
    pub timed_out: bool,
}

pub struct Process {
    /// `init` or the exec id.
    pub name: String,
    pub terminal: bool,
    life: Life,
    pub io: ProcessIo,
    /// `wait` calls to answer with the exit record.
    waiters: Vec<Ticket>,
    /// Where its exit record goes, prepared once its pid is known.
    pub exit_file: Option<PreparedFile>,
    pub capture: Option<CaptureWait>,
}

impl Process {
    pub fn new(name: &str, terminal: bool) -> Process {
        Process {
            name: name.to_string(),
            terminal,
            life: Life::Launching,
            io: ProcessIo::default(),
            waiters: Vec::new(),
            exit_file: None,
            capture: None,
        }
    }

    pub fn life(&self) -> &Life {
        &self.life
    }

    pub fn pid(&self) -> Option<i32> {
        match &self.life {
            Life::Launching => None,
            Life::Created { pid } | Life::Starting { pid } | Life::Running { pid } => Some(*pid),
            Life::Exited { pid, .. } => Some(*pid),
            Life::Published { record } => Some(record.pid),
        }
    }

    /// Alive as far as the shim knows: it has a pid and has not been reaped.
    pub fn is_alive(&self) -> bool {
        matches!(
            self.life,
            Life::Created { .. } | Life::Starting { .. } | Life::Running { .. }
        )
    }

    /// Reaped (published or not).
    pub fn has_exited(&self) -> bool {
        matches!(self.life, Life::Exited { .. } | Life::Published { .. })
    }

    pub fn is_published(&self) -> bool {
        matches!(self.life, Life::Published { .. })
    }

    /// The exit record once published.
    pub fn published_exit(&self) -> Option<&ExitRecord> {
        match &self.life {
            Life::Published { record } => Some(record),
            _ => None,
        }
    }

    pub fn status(&self) -> ProcessStatus {
        match self.life {
            Life::Launching => ProcessStatus::Creating,
            Life::Created { .. } | Life::Starting { .. } => ProcessStatus::Created,
            Life::Running { .. } => ProcessStatus::Running,
            Life::Exited { .. } | Life::Published { .. } => ProcessStatus::Exited,
        }
    }

    pub fn state(&self) -> ProcessState {
        ProcessState {
            process: self.name.clone(),
            pid: self.pid(),
            status: self.status(),
            terminal: self.terminal,
            stdio: self.io.paths.clone(),
            exit: self.published_exit().cloned(),
            output_dropped_bytes: self.io.dropped_total(),
        }
    }

    // ---- transitions ----

    /// The runtime call that made it returned with its pid: init from `create` is
    /// Created; an exec, or init restored from a checkpoint, is Running.
    pub fn launched(&mut self, pid: i32, running: bool) {
        if self.life == Life::Launching {
            self.life = if running {
                Life::Running { pid }
            } else {
                Life::Created { pid }
            };
        }
    }

    /// `runtime start` begins. False unless the process is Created.
    pub fn start_begun(&mut self) -> bool {
        match self.life {
            Life::Created { pid } => {
                self.life = Life::Starting { pid };
                true
            }
            _ => false,
        }
    }

    /// `runtime start` returned. Returns the pid if the process now counts as started
    /// (its `started` event is due), even if it has been reaped in the meantime.
    pub fn start_finished(&mut self, ok: bool) -> Option<i32> {
        let next = if ok { Stage::Running } else { Stage::Created };
        match &mut self.life {
            Life::Starting { pid } => {
                let pid = *pid;
                self.life = if ok {
                    Life::Running { pid }
                } else {
                    Life::Created { pid }
                };
                ok.then_some(pid)
            }
            Life::Exited { stage, pid, .. } if *stage == Stage::Starting => {
                *stage = next;
                ok.then_some(*pid)
            }
            _ => None,
        }
    }

    /// The reaper collected it.
    pub fn reaped(&mut self, exit: &ChildExit) {
        let stage = match self.life {
            Life::Created { .. } => Stage::Created,
            Life::Starting { .. } => Stage::Starting,
            Life::Running { .. } => Stage::Running,
            _ => return,
        };
        let record = ExitRecord {
            process: self.name.clone(),
            pid: exit.pid,
            status: Some(exit.status),
            signal: exit.signal,
            signal_name: exit.signal.map(signal_name),
            exited_at: tether_protocol::time::now(),
            oom_killed: false,
            reason: None,
        };
        self.life = Life::Exited {
            pid: exit.pid,
            record,
            reaped_at: Instant::now(),
            stage,
        };
    }

    /// Marks the unpublished exit as caused by the OOM killer.
    pub fn mark_oom_killed(&mut self) {
        if let Life::Exited { record, .. } = &mut self.life {
            record.oom_killed = true;
        }
    }

    /// Exited -> Published. Returns the record and the waiters to answer with it.
    pub fn publish(&mut self) -> Option<(ExitRecord, Vec<Ticket>)> {
        let Life::Exited { record, .. } = &self.life else {
            return None;
        };
        let record = record.clone();
        self.life = Life::Published {
            record: record.clone(),
        };
        Some((record, std::mem::take(&mut self.waiters)))
    }

    // ---- waiters ----

    /// Stores a `wait` to answer at publication. Only a process whose exit is still
    /// to be published takes one (the caller answers at once otherwise).
    pub fn add_waiter(&mut self, ticket: Ticket) -> bool {
        if self.is_published() {
            return false;
        }
        self.waiters.push(ticket);
        true
    }

    /// Forgets a waiter whose client went away. True if it was here.
    pub fn cancel_waiter(&mut self, ticket: Ticket) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|t| *t != ticket);
        self.waiters.len() != before
    }

    #[cfg(test)]
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// The waiters of a process that is being dropped unpublished (its launch
    /// failed): the caller must answer each.
    pub fn take_waiters(&mut self) -> Vec<Ticket> {
        std::mem::take(&mut self.waiters)
    }

    pub fn exit_reaped_at(&self) -> Option<Instant> {
        match &self.life {
            Life::Exited { reaped_at, .. } => Some(*reaped_at),
            _ => None,
        }
    }

    /// Exited and its start (if one was running) is done: only output and other
    /// processes may still hold the exit back.
    pub fn exit_unblocked_by_start(&self) -> bool {
        matches!(&self.life, Life::Exited { stage, .. } if *stage != Stage::Starting)
    }

    pub fn exit_status(&self) -> Option<i32> {
        match &self.life {
            Life::Exited { record, .. } => record.status,
            _ => None,
        }
    }
}

/// A [`Process`] in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ProcessRecord {
    name: String,
    terminal: bool,
    life: LifeRecord,
    io: crate::io::ProcessIoRecord,
    waiters: Vec<Ticket>,
    exit_file: Option<crate::state_dir::PreparedFileRecord>,
    capture: Option<CaptureRecord>,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum LifeRecord {
    Launching,
    Created {
        pid: i32,
    },
    Starting {
        pid: i32,
    },
    Running {
        pid: i32,
    },
    Exited {
        pid: i32,
        record: ExitRecord,
        reaped_ms_ago: u64,
        stage: StageRecord,
    },
    Published {
        record: ExitRecord,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
enum StageRecord {
    Created,
    Starting,
    Running,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CaptureRecord {
    ticket: Option<Ticket>,
    deadline_in_ms: Option<u64>,
    timed_out: bool,
}

impl Process {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<ProcessRecord, String> {
        let life = match &self.life {
            Life::Launching => LifeRecord::Launching,
            Life::Created { pid } => LifeRecord::Created { pid: *pid },
            Life::Starting { pid } => LifeRecord::Starting { pid: *pid },
            Life::Running { pid } => LifeRecord::Running { pid: *pid },
            Life::Exited {
                pid,
                record,
                reaped_at,
                stage,
            } => LifeRecord::Exited {
                pid: *pid,
                record: record.clone(),
                reaped_ms_ago: reaped_at.elapsed().as_millis() as u64,
                stage: match stage {
                    Stage::Created => StageRecord::Created,
                    Stage::Starting => StageRecord::Starting,
                    Stage::Running => StageRecord::Running,
                },
            },
            Life::Published { record } => LifeRecord::Published {
                record: record.clone(),
            },
        };
        Ok(ProcessRecord {
            name: self.name.clone(),
            terminal: self.terminal,
            life,
            io: self
                .io
                .hand_over(fds)
                .map_err(|e| format!("process {}: {e}", self.name))?,
            waiters: self.waiters.clone(),
            exit_file: self.exit_file.as_ref().map(|f| f.hand_over(fds)).transpose()?,
            capture: self.capture.as_ref().map(|c| CaptureRecord {
                ticket: c.ticket,
                deadline_in_ms: crate::handover::ms_ahead(c.deadline),
                timed_out: c.timed_out,
            }),
        })
    }

    pub fn take_over(
        r: ProcessRecord,
        fds: &mut crate::handover::Adopting,
        io: &mut crate::registry::Io<'_>,
    ) -> Result<Process, String> {
        let life = match r.life {
            LifeRecord::Launching => Life::Launching,
            LifeRecord::Created { pid } => Life::Created { pid },
            LifeRecord::Starting { pid } => Life::Starting { pid },
            LifeRecord::Running { pid } => Life::Running { pid },
            LifeRecord::Exited {
                pid,
                record,
                reaped_ms_ago,
                stage,
            } => Life::Exited {
                pid,
                record,
                reaped_at: crate::handover::from_ms_since(Some(reaped_ms_ago)).unwrap_or_else(Instant::now),
                stage: match stage {
                    StageRecord::Created => Stage::Created,
                    StageRecord::Starting => Stage::Starting,
                    StageRecord::Running => Stage::Running,
                },
            },
            LifeRecord::Published { record } => Life::Published { record },
        };
        let exit_file = r
            .exit_file
            .map(|f| crate::state_dir::PreparedFile::take_over(f, fds))
            .transpose()?;
        Ok(Process {
            io: ProcessIo::take_over(r.io, fds, io).map_err(|e| format!("process {}: {e}", r.name))?,
            name: r.name,
            terminal: r.terminal,
            life,
            waiters: r.waiters,
            exit_file,
            capture: r.capture.map(|c| CaptureWait {
                ticket: c.ticket,
                deadline: crate::handover::from_ms_ahead(c.deadline_in_ms),
                timed_out: c.timed_out,
            }),
        })
    }
}
