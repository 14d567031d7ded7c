//! Where events and answers go: every event to the event log first, then to the
//! fronts; an exit record to disk before its event.

use super::api::{Answer, CallResult, Output, Ticket};
use super::process::Process;
use crate::events::EventLog;
use crate::state_dir::{self, StateDir};
use tether_protocol::EventBody;

pub struct Outbox {
    dir: StateDir,
    events: EventLog,
    outputs: Vec<Output>,
}

impl Outbox {
    pub fn new(dir: StateDir, events: EventLog) -> Outbox {
        Outbox {
            dir,
            events,
            outputs: Vec::new(),
        }
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn publish(&mut self, body: EventBody) {
        let event = self.events.append(body);
        self.outputs.push(Output::Event(event));
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
                    Some(file) => file.commit(&json),
                    None => state_dir::write_atomic(&path, &json),
                };
                if let Err(e) = written {
                    crate::log!("cannot write exit record {}: {e}", path.display());
                }
            }
            Err(e) => crate::log!("cannot encode exit record: {e}"),
        }
        self.publish(EventBody::Exit(record.clone()));
        for ticket in waiters {
            self.reply(ticket, Ok(Answer::Exit(record.clone())));
        }
    }
}
