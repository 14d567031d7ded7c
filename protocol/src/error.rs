//! Error kinds: each JSON-RPC error carries `data.kind`, a stable machine-readable
//! name, so daemons never parse messages.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not JSON.
    ParseError,
    /// JSON, but not a request object (no method, bad id type...).
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// The params do not fit the method.
    InvalidParams,
    /// No such process (exec id) or file.
    NotFound,
    /// An exec id that is taken, a container that is already created.
    AlreadyExists,
    /// The container or process is in the wrong state for this call.
    WrongState,
    /// The OCI runtime failed; the message is the runtime's own error.
    RuntimeFailed,
    /// The bundle is unusable (missing, bad config.json, rootfs missing).
    InvalidBundle,
    /// Stdio targets could not be opened or made.
    StdioFailed,
    /// `subscribe since=N` asked for events no longer kept.
    EventsCompacted,
    /// The shim is shutting down.
    ShuttingDown,
    /// A per-connection bound was reached (calls waiting for an answer).
    LimitExceeded,
    /// A replay found an event missing from the log (never skipped silently).
    EventsMissing,
    /// Something inside the shim failed (I/O on its state dir...).
    Internal,
    /// `upgrade` did not happen (the binary cannot take over, or the shim could not
    /// be handed over): the shim runs on unchanged, as the message says why.
    UpgradeRefused,
}

impl ErrorKind {
    /// The JSON-RPC `code` for this kind: the standard codes where they apply,
    /// -32000.. for the application's own.
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal => -32603,
            ErrorKind::NotFound => -32001,
            ErrorKind::AlreadyExists => -32002,
            ErrorKind::WrongState => -32003,
            ErrorKind::RuntimeFailed => -32004,
            ErrorKind::InvalidBundle => -32005,
            ErrorKind::StdioFailed => -32006,
            ErrorKind::EventsCompacted => -32007,
            ErrorKind::ShuttingDown => -32008,
            ErrorKind::LimitExceeded => -32009,
            ErrorKind::EventsMissing => -32010,
            ErrorKind::UpgradeRefused => -32011,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::WrongState => "wrong_state",
            ErrorKind::RuntimeFailed => "runtime_failed",
            ErrorKind::InvalidBundle => "invalid_bundle",
            ErrorKind::StdioFailed => "stdio_failed",
            ErrorKind::EventsCompacted => "events_compacted",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::EventsMissing => "events_missing",
            ErrorKind::Internal => "internal",
            ErrorKind::UpgradeRefused => "upgrade_refused",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub kind: ErrorKind,
}

/// A JSON-RPC error object as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: ErrorData,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError {
            code: kind.code(),
            message: message.into(),
            data: ErrorData { kind },
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.data.kind
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.data.kind)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for kind in [
            ErrorKind::ParseError,
            ErrorKind::WrongState,
            ErrorKind::EventsCompacted,
            ErrorKind::Internal,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn error_serializes_with_kind() {
        let e = RpcError::new(ErrorKind::MethodNotFound, "no method \"x\"");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], -32601);
        assert_eq!(v["data"]["kind"], "method_not_found");
    }
}
