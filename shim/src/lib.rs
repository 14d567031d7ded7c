//! tether-shim as a library: the core (front-neutral, testable without root), its
//! fronts, the event loop, and the launch. `src/main.rs` is the thin binary.
//! docs/PROTOCOL.md is the wire contract.

pub mod cgroup;
pub mod cleanup;
pub mod conmon_cli;
pub mod containerd_cli;
pub mod core;
pub mod error;
pub mod events;
pub mod fronts;
pub mod handover;
pub mod io;
pub mod launch;
pub mod log;
pub mod memory;
pub mod reactor;
pub mod reaper;
pub mod registry;
pub mod runtime;
pub mod spec;
pub mod state_dir;
pub(crate) mod sys;
pub mod upgrade;
