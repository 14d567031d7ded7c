//! The core in a hand-over record (see `crate::handover`): every process with its
//! stdio, the counters, the event log. What it waits for first: a runtime call in
//! flight (its answer and its pid file belong to the shim that started it) and a
//! terminal's master on its way; what it refuses: the engine's mode (tether-conmon
//! cannot hand over yet) and a state dir that holds writes back.

use super::oom::{OomRecord, OomWatch};
use super::outbox::Outbox;
use super::process::{Process, ProcessRecord};
use super::{Core, Ticket};
use crate::events::{EventLog, EventLogRecord};
use crate::handover::{Adopting, Passing};
use crate::registry::Io;
use crate::runtime::Runtime;
use crate::state_dir::StateDir;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tether_protocol::EventBody;

#[derive(Serialize, Deserialize)]
pub struct CoreRecord {
    id: String,
    bundle: PathBuf,
    runtime: Runtime,
    dir: PathBuf,
    base_process: Value,
    init: Option<ProcessRecord>,
    execs: Vec<ProcessRecord>,
    pending_delete: Option<Ticket>,
    deleted: bool,
    paused: bool,
    oom: OomRecord,
    closing: bool,
    next_ticket: Ticket,
    next_scratch: u64,
    events: EventLogRecord,
}

impl CoreRecord {
    /// The shim's state dir.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }
}

impl Core {
    pub fn state_dir(&self) -> &StateDir {
        &self.dir
    }

    /// What the core still waits for before it can be handed over, if anything.
    pub fn hand_over_waits_for(&self) -> Option<String> {
        if let Some(op) = self.ops.values().next() {
            return Some(format!("a runtime call ({}) is running", op.what()));
        }
        self.processes().find_map(|p| {
            p.io.not_ready_for_hand_over()
                .map(|why| format!("process {}: {why}", p.name))
        })
    }

    pub fn hand_over(&self, fds: &mut Passing) -> Result<CoreRecord, String> {
        if self.engine.is_some() {
            return Err("tether-conmon cannot hand over yet".to_string());
        }
        if let Some(why) = self.hand_over_waits_for() {
            return Err(why);
        }
        let events = self.out.hand_over(fds)?;
        Ok(CoreRecord {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            runtime: self.runtime.clone(),
            dir: self.dir.root.clone(),
            base_process: serde_json::from_str(&self.base_process).unwrap_or(Value::Null),
            init: self.init.as_ref().map(|p| p.hand_over(fds)).transpose()?,
            execs: self
                .execs
                .values()
                .map(|p| p.hand_over(fds))
                .collect::<Result<_, _>>()?,
            pending_delete: self.pending_delete,
            deleted: self.deleted,
            paused: self.paused,
            oom: self.oom.hand_over(),
            closing: self.closing,
            next_ticket: self.next_ticket,
            next_scratch: self.next_scratch,
            events,
        })
    }

    /// The core again, in the new binary, its fds watched by the new loop.
    pub fn take_over(r: CoreRecord, fds: &mut Adopting, io: &mut Io<'_>) -> Result<Core, String> {
        let dir = StateDir::new(r.dir);
        let events = EventLog::take_over(r.events, fds)?;
        let init = r.init.map(|p| Process::take_over(p, fds, io)).transpose()?;
        let mut execs = BTreeMap::new();
        for p in r.execs {
            let p = Process::take_over(p, fds, io)?;
            execs.insert(p.name.clone(), p);
        }
        let mut core = Core {
            id: r.id,
            bundle: r.bundle,
            runtime: r.runtime,
            spawner: Box::new(crate::runtime::Exec),
            base_process: r.base_process.to_string().into_boxed_str(),
            init,
            execs,
            ops: HashMap::new(),
            unclaimed: HashMap::new(),
            pending_delete: r.pending_delete,
            deleted: r.deleted,
            paused: r.paused,
            oom: OomWatch::take_over(r.oom, io),
            closing: r.closing,
            next_ticket: r.next_ticket,
            next_scratch: r.next_scratch,
            out: Outbox::new(dir.clone(), events),
            dir,
            engine: None,
        };
        // A kill while the shim was exec'ing shows as a rise of the count.
        core.check_oom();
        Ok(core)
    }

    /// The hand-over is done: every client learns it from the event log.
    pub fn publish_upgraded(&mut self, from: String, to: String, io: &mut Io<'_>) {
        self.out.publish(EventBody::Upgraded { from, to });
        // Whatever moved in the pipes meanwhile moves on now.
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            let exited = proc.has_exited();
            proc.io.pump(io, exited);
        }
        self.try_publish(io);
    }
}
