//! tether's wire protocol: JSON-RPC 2.0, one JSON object per line, over the shim's
//! Unix socket. This crate holds the message types, the error kinds, the line framing
//! and a small blocking [`Client`]. It depends on serde only, so any Rust daemon can
//! use it cheaply. `docs/PROTOCOL.md` is the normative description.

pub mod client;
pub mod error;
pub mod frame;
pub mod time;
pub mod types;

pub use client::{Client, ClientError};
pub use error::{ErrorKind, RpcError};
pub use types::*;

/// Bumped on any incompatible change of the wire contract.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the shim accepts (bytes, without the newline). A longer
/// line closes that connection: nothing else is affected.
pub const MAX_LINE: usize = 1 << 20;

/// The name the shim gives the container's init process wherever a process id is
/// expected (exec ids may not take it).
pub const INIT_PROCESS: &str = "init";
