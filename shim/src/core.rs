//! The boundary between the container core and its fronts. A front (the JSON-RPC
//! socket today; containerd's task API could be another) turns its input into a
//! [`Call`] with a [`Ticket`], and turns [`Output`]s back into its own messages. The
//! core knows nothing of JSON-RPC or sockets.

use crate::events::Published;
use serde::Serialize;
use std::rc::Rc;
use tether_protocol::*;

/// Names one call so its answer can be routed back, possibly much later (a `wait`,
/// or a runtime call in flight).
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
}

/// `{}` on the wire.
#[derive(Debug, Serialize)]
pub struct Empty {}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Hello(HelloResult),
    Created(CreateResult),
    Pid(PidResult),
    Exec(ExecResult),
    Exit(ExitRecord),
    Container(ContainerState),
    Process(ProcessState),
    Pids(Vec<ContainerPid>),
    Stats(Stats),
    /// `delete`: the exit record of what was deleted (null if it never ran).
    Deleted(Option<ExitRecord>),
    Empty(Empty),
}

pub type CallResult = Result<Answer, RpcError>;

pub enum Output {
    Reply(Ticket, Box<CallResult>),
    Event(Rc<Published>),
    /// The shim is done: answer what is queued, then exit.
    Exit {
        remove_state_dir: bool,
    },
}

pub fn err(kind: ErrorKind, message: impl Into<String>) -> RpcError {
    RpcError::new(kind, message)
}
