//! What the core takes and gives: typed calls in; replies (now or later), typed
//! events and an exit request out; errors as a kind and a message. It names no
//! front: each front maps calls from its own messages and these kinds to its own
//! codes. The data types are tether-protocol's plain serde structs (no JSON-RPC in
//! them), so the JSON front needs no conversion.

use serde::Serialize;
use std::rc::Rc;
use tether_protocol::*;

/// Names one call whose answer comes later, so a front can route it back.
pub type Ticket = u64;

#[derive(Debug)]
pub enum Call {
    Hello,
    Create(CreateParams),
    Start,
    Exec(ExecParams),
    Kill(KillParams),
    Wait(ProcessParams),
    State(ProcessParams),
    Pids,
    CloseStdin(ProcessParams),
    Resize(ResizeParams),
    Delete(DeleteParams),
    Shutdown(ShutdownParams),
    Pause,
    Resume,
    Stats,
    Update(UpdateParams),
    Checkpoint(CheckpointParams),
    ReopenLog(ReopenLogParams),
    Attach(ProcessParams),
}

/// `{}`.
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Hello(HelloResult),
    Created(CreateResult),
    Pid(PidResult),
    Exec(ExecResult),
    Captured(CaptureResult),
    Attach(AttachResult),
    Exit(ExitRecord),
    Container(ContainerState),
    Process(ProcessState),
    Pids(Vec<ContainerPid>),
    Stats(Stats),
    /// `delete`: the exit record of what was deleted (null if it never ran).
    Deleted(Option<ExitRecord>),
    Upgraded(UpgradeResult),
    Empty(Empty),
}

pub use crate::error::{err, CoreError, ErrorKind};

pub type CallResult = Result<Answer, CoreError>;

/// A promise that an [`Output::Reply`] with this ticket will come. Only the core
/// makes one, and only where it has stored the ticket somewhere that is certain to
/// answer it (a runtime call in flight, a process's waiters), so a "later" that
/// nothing will ever answer cannot be expressed.
#[derive(Debug)]
pub struct Deferred(Ticket);

impl Deferred {
    pub(in crate::core) fn stored(ticket: Ticket) -> Deferred {
        Deferred(ticket)
    }

    pub fn ticket(&self) -> Ticket {
        self.0
    }
}

// Returned once per call and consumed at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Reply {
    Now(CallResult),
    Later(Deferred),
}

impl From<CallResult> for Reply {
    fn from(r: CallResult) -> Self {
        Reply::Now(r)
    }
}

pub enum Output {
    Reply(Ticket, Box<CallResult>),
    /// An event, and its JSON as the event log holds it (a JSON front sends that
    /// rather than serialize the event again).
    Event(Rc<Event>, Rc<str>),
    /// The shim is done: answer what is queued, then exit.
    Exit {
        remove_state_dir: bool,
    },
}
