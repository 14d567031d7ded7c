//! Why a call failed: a kind and a message. The core answers with these and the
//! stdio set-up below it reports with them; each front maps the kinds to its own
//! codes (docs/PROTOCOL.md lists what each kind means).

use std::fmt;

/// Why a call failed, in the core's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidParams,
    NotFound,
    AlreadyExists,
    WrongState,
    RuntimeFailed,
    InvalidBundle,
    StdioFailed,
    /// A replay asked for events that are no longer kept.
    EventsCompacted,
    /// The event log does not hold every event of the range asked for.
    EventsMissing,
    /// A bound was reached (pending calls of one client...).
    LimitExceeded,
    ShuttingDown,
    /// The shim failed at something of its own (state dir I/O...).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub fn err(kind: ErrorKind, message: impl Into<String>) -> CoreError {
    CoreError::new(kind, message)
}
