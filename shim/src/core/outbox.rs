//! Where events and answers go: every event to the event log first, then to the
//! fronts; an exit record to disk before its event.
//!
//! When the state dir refuses writes (full disk, EIO), nothing that clients are told
//! is lost: the event log keeps what waits in order (see `events`), refused exit
//! records wait here, both are retried on a timer, and clients hear of it
//! (`state_dir_failing` / `state_dir_recovered`, and `state_dir` in hello and state).

use super::api::{Answer, CallResult, Output, Ticket};
use super::process::Process;
use crate::events::EventLog;
use crate::state_dir::{self, StateDir};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tether_protocol::{EventBody, StateDirHealth};

/// How often writes the disk refused are tried again.
const RETRY: Duration = Duration::from_millis(500);

pub struct Outbox {
    dir: StateDir,
    events: EventLog,
    outputs: Vec<Output>,
    /// Exit records the disk refused, oldest first.
    unwritten_records: Vec<(PathBuf, Vec<u8>)>,
    record_error: Option<String>,
    /// `state_dir_failing` was published and not yet followed by `..._recovered`.
    failing: bool,
    retry_at: Option<Instant>,
}

impl Outbox {
    pub fn new(dir: StateDir, events: EventLog) -> Outbox {
        Outbox {
            dir,
            events,
            outputs: Vec::new(),
            unwritten_records: Vec::new(),
            record_error: None,
            failing: false,
            retry_at: None,
        }
    }

    /// The event log for a hand-over record; refused while anything waits for the
    /// disk (the shim retries until it is written).
    pub fn hand_over(
        &self,
        fds: &mut crate::handover::Passing,
    ) -> Result<crate::events::EventLogRecord, String> {
        if !self.outputs.is_empty() {
            return Err("outputs not yet delivered".to_string());
        }
        if !self.unwritten_records.is_empty() {
            return Err(format!(
                "{} exit records wait for the disk ({})",
                self.unwritten_records.len(),
                self.record_error.as_deref().unwrap_or("unknown error")
            ));
        }
        self.events.hand_over(fds)
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn publish(&mut self, body: EventBody) {
        let (event, json) = self.events.append(body);
        self.outputs.push(Output::Event(event, json));
        self.check_health();
    }

    pub fn reply(&mut self, ticket: Ticket, result: CallResult) {
        self.outputs.push(Output::Reply(ticket, Box::new(result)));
    }

    pub fn exit_shim(&mut self, remove_state_dir: bool) {
        self.outputs.push(Output::Exit { remove_state_dir });
    }

    /// Writes the exit record (atomically, before the event), publishes the exit and
    /// answers the process's waiters.
    pub fn publish_exit(&mut self, process: &mut Process) {
        let prepared = process.exit_file.take();
        let Some((record, waiters)) = process.publish() else {
            return;
        };
        match serde_json::to_vec(&record) {
            Ok(json) => {
                let path = self.dir.exit_record(&process.name);
                let written = match prepared {
                    Some(file) => file
                        .commit(&json)
                        .or_else(|_| state_dir::write_atomic(&path, &json)),
                    None => state_dir::write_atomic(&path, &json),
                };
                if let Err(e) = written {
                    crate::log!(
                        "cannot write exit record {}: {e}; it waits in memory",
                        path.display()
                    );
                    self.record_error = Some(format!("cannot write {}: {e}", path.display()));
                    self.unwritten_records.push((path, json));
                }
            }
            Err(e) => crate::log!("cannot encode exit record: {e}"),
        }
        self.publish(EventBody::Exit(record.clone()));
        for ticket in waiters {
            self.reply(ticket, Ok(Answer::Exit(record.clone())));
        }
    }

    /// An exit record the shim forgets (its exec is deleted) need not wait any more.
    pub fn forget_record(&mut self, path: &std::path::Path) {
        self.unwritten_records.retain(|(p, _)| p != path);
    }

    pub fn health(&self) -> StateDirHealth {
        let (events, error) = self.events.backlog();
        let records = self.unwritten_records.len();
        StateDirHealth {
            writable: events == 0 && records == 0,
            error: error.map(str::to_string).or_else(|| self.record_error.clone()),
            unwritten_events: events as u64,
            unwritten_records: records as u64,
        }
    }

    pub fn next_retry(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Tries again what the disk refused: the events in order, then the records.
    pub fn retry(&mut self) {
        self.events.write_unwritten();
        let mut still = Vec::new();
        for (path, json) in std::mem::take(&mut self.unwritten_records) {
            if let Err(e) = state_dir::write_atomic(&path, &json) {
                self.record_error = Some(format!("cannot write {}: {e}", path.display()));
                still.push((path, json));
            }
        }
        if still.is_empty() {
            self.record_error = None;
        }
        self.unwritten_records = still;
        self.check_health();
    }

    /// Tells clients when the state dir starts or stops refusing writes, and keeps
    /// the retry timer while anything waits.
    fn check_health(&mut self) {
        let health = self.health();
        self.retry_at = (!health.writable).then(|| Instant::now() + RETRY);
        if health.writable == self.failing {
            self.failing = !health.writable;
            let body = match health.error {
                Some(error) if !health.writable => EventBody::StateDirFailing { error },
                _ if !health.writable => EventBody::StateDirFailing {
                    error: "the state dir refuses writes".to_string(),
                },
                _ => EventBody::StateDirRecovered {},
            };
            let (event, json) = self.events.append(body);
            self.outputs.push(Output::Event(event, json));
            self.retry_at = (!self.health().writable).then(|| Instant::now() + RETRY);
        }
    }
}
