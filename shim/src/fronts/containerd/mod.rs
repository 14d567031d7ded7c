//! The containerd front: containerd's runtime v2 task API over ttrpc on the shim's
//! own loop (`containerd-shim-tether-v2`), beside the JSON-RPC socket, on the same
//! core. containerd connects to the socket `start` printed; the shim dials
//! containerd's TTRPC_ADDRESS to forward its events. docs/CONTAINERD.md describes it.
//!
//! Per connection, work is bounded as in the JSON-RPC front: at most
//! FRAMES_PER_TURN frames before others get a turn, frames over 4 MiB skipped (and
//! answered ResourceExhausted), at most MAX_PENDING calls waiting for an answer, at
//! most 8 MiB of answers queued; a closed connection releases all it held.

pub(crate) mod events;
mod handover;
mod lifecycle;
mod metrics;
pub(crate) mod mounts;
pub(crate) mod options;
pub(crate) mod proto;
mod publisher;
mod service;
pub(crate) mod sha256;
pub use handover::ContainerdRecord;
mod stdio;
mod ttrpc;

use crate::core::{Core, Output, Ticket};
use crate::fronts::listener::{Backlog, Listener};
use crate::fronts::{Front, FrontRecord};
use crate::handover::Passing;
use crate::registry::{Io, Owner, Readiness};
use mio::Token;
use prost::Message;
use publisher::Publisher;
use service::{status, Asker, Handled, Service, Then};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::Instant;
use ttrpc::{code, Input, Link};

const FRAMES_PER_TURN: usize = 64;
/// Calls of one connection that may wait for an answer at once (Waits, mostly).
const MAX_PENDING: usize = 4096;
/// The task service's names: containerd 1.6/1.7 call v2; 2.x may call v3 (same messages).
const SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];
/// Request flag: the client streams data after the request (not supported here).
const FLAG_REMOTE_OPEN: u8 = 0x2;

/// How the shim was started by containerd.
pub struct Config {
    pub namespace: String,
    /// The bundle (containerd's working directory for the shim).
    pub bundle: PathBuf,
    /// Where the task service listens (what `start` printed, without `unix://`).
    pub socket: PathBuf,
    /// containerd's ttrpc socket, for events (TTRPC_ADDRESS).
    pub events_address: Option<PathBuf>,
}

struct Conn {
    link: Link,
    /// Calls of this connection waiting for the core.
    pending: usize,
}

pub struct Containerd {
    listener: Listener,
    socket: PathBuf,
    conns: HashMap<Token, Conn>,
    pending: HashMap<Ticket, (Asker, Then)>,
    backlog: Backlog,
    service: Service,
    publisher: Publisher,
}

impl Containerd {
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        config: Config,
        id: String,
        owner: Owner,
        io: &mut Io<'_>,
    ) -> io::Result<Containerd> {
        Ok(Containerd {
            listener: Listener::watch(listener, owner, "task API client", io)?,
            socket: config.socket,
            conns: HashMap::new(),
            pending: HashMap::new(),
            backlog: Backlog::default(),
            service: Service::new(config.namespace.clone(), config.bundle, id),
            publisher: Publisher::new(config.events_address, config.namespace, owner),
        })
    }

    fn accept(&mut self, io: &mut Io<'_>) {
        let conns = &mut self.conns;
        self.listener.accept(io, |token, stream| {
            conns.insert(
                token,
                Conn {
                    link: Link::new(stream),
                    pending: 0,
                },
            );
        });
    }

    /// Serves at most FRAMES_PER_TURN frames of one connection, then writes.
    fn serve(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        for _ in 0..FRAMES_PER_TURN {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            match conn.link.next_input() {
                Input::Frame {
                    stream,
                    kind: ttrpc::REQUEST,
                    flags,
                    data,
                } => self.request(Asker { token, stream }, flags, &data, core, io),
                // Data of a stream this server never accepts, or a stray response.
                Input::Frame { .. } => {}
                Input::Oversized { stream, kind, len } => {
                    if kind == ttrpc::REQUEST {
                        let e = status(
                            code::RESOURCE_EXHAUSTED,
                            format!(
                                "message length {len} exceeds the maximum message size of {}",
                                ttrpc::MAX_DATA
                            ),
                        );
                        self.respond(Asker { token, stream }, Err(e), core, io);
                    }
                }
                Input::Drained => return self.flush(token, core, io),
                Input::Closed => return self.drop_conn(token, core, io),
            }
        }
        self.backlog.push(token);
        self.flush(token, core, io);
    }

    fn request(&mut self, who: Asker, flags: u8, data: &[u8], core: &mut Core, io: &mut Io<'_>) {
        let req = match proto::Request::decode(data) {
            Ok(r) => r,
            Err(e) => {
                let e = status(
                    code::INVALID_ARGUMENT,
                    format!("cannot decode the ttrpc request: {e}"),
                );
                return self.respond(who, Err(e), core, io);
            }
        };
        if !SERVICES.contains(&req.service.as_str()) {
            let e = status(code::UNIMPLEMENTED, format!("service {}", req.service));
            return self.respond(who, Err(e), core, io);
        }
        if flags & FLAG_REMOTE_OPEN != 0 {
            let e = status(
                code::UNIMPLEMENTED,
                format!("{} is not a streaming method", req.method),
            );
            return self.respond(who, Err(e), core, io);
        }
        let waiting = self.conns.get(&who.token).map_or(0, |c| c.pending);
        if waiting >= MAX_PENDING {
            let e = status(
                code::RESOURCE_EXHAUSTED,
                format!("{waiting} calls of this connection wait for their answers (at most {MAX_PENDING})"),
            );
            return self.respond(who, Err(e), core, io);
        }
        let handled = self.service.call(&req.method, &req.payload, who, core, io);
        self.handled(who, handled, core, io);
        for (who, handled) in std::mem::take(&mut self.service.side) {
            self.handled(who, handled, core, io);
        }
    }

    fn handled(&mut self, who: Asker, handled: Handled, core: &mut Core, io: &mut Io<'_>) {
        match handled {
            Handled::Now(result) => self.respond(who, result, core, io),
            Handled::Later(ticket, then) => {
                self.pending.insert(ticket, (who, then));
                if let Some(conn) = self.conns.get_mut(&who.token) {
                    conn.pending += 1;
                }
            }
            Handled::Parked => {}
        }
    }

    fn respond(
        &mut self,
        who: Asker,
        result: Result<Vec<u8>, service::Status>,
        core: &mut Core,
        io: &mut Io<'_>,
    ) {
        let Some(conn) = self.conns.get_mut(&who.token) else {
            return;
        };
        let response = match result {
            Ok(payload) => proto::Response {
                status: None,
                payload,
            },
            Err(s) => proto::Response {
                status: Some(s),
                payload: Vec::new(),
            },
        };
        if !conn
            .link
            .queue(who.stream, ttrpc::RESPONSE, &response.encode_to_vec())
        {
            crate::log!("a task API client takes no answers: disconnecting it");
            self.drop_conn(who.token, core, io);
        }
    }

    fn flush(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        let gone = self
            .conns
            .get_mut(&token)
            .is_some_and(|c| c.link.flush().is_err());
        if gone {
            self.drop_conn(token, core, io);
        }
    }

    fn drop_conn(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        // Answers still queued are written if the socket takes them at once.
        let _ = conn.link.flush();
        io.unwatch(&mut conn.link.stream, token);
        if conn.pending > 0 {
            self.pending.retain(|ticket, (who, _)| {
                let mine = who.token == token;
                if mine {
                    core.cancel(*ticket);
                }
                !mine
            });
        }
        self.service.forget(token);
    }
}

impl Front for Containerd {
    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn on_ready(&mut self, token: Token, ready: Readiness, core: &mut Core, io: &mut Io<'_>) {
        if self.listener.owns(token) {
            return self.accept(io);
        }
        if self.publisher.owns(token) {
            return self.publisher.on_ready(core, &mut self.service.info, io);
        }
        self.serve(token, core, io);
        if ready.gone {
            self.drop_conn(token, core, io);
        }
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn deliver(&mut self, outputs: &[Output], core: &mut Core, io: &mut Io<'_>) {
        for output in outputs {
            match output {
                Output::Reply(ticket, result) => {
                    let Some((who, then)) = self.pending.remove(ticket) else {
                        continue;
                    };
                    if let Some(conn) = self.conns.get_mut(&who.token) {
                        conn.pending -= 1;
                    }
                    let response = self.service.finish(then, (**result).clone());
                    self.respond(who, response, core, io);
                }
                Output::Event(event, _) => self.publisher.push(event),
                // The container is gone however it was deleted (JSON-RPC too): its
                // rootfs goes with it.
                Output::Exit { .. } if core.status() == tether_protocol::ContainerStatus::Deleted => {
                    self.service.unmount();
                }
                Output::Exit { .. } => {}
            }
        }
        self.publisher.pump(core, &mut self.service.info, io);
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.link.has_pending())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.flush(token, core, io);
        }
    }

    fn on_tick(&mut self, core: &mut Core, io: &mut Io<'_>) {
        if self.listener.retry_due() {
            self.accept(io);
        }
        for token in self.backlog.take() {
            self.serve(token, core, io);
        }
        self.publisher.pump(core, &mut self.service.info, io);
    }

    fn next_deadline(&self) -> Option<Instant> {
        if !self.backlog.is_empty() {
            return Some(Instant::now());
        }
        [self.publisher.next_deadline(), self.listener.retry_at()]
            .into_iter()
            .flatten()
            .min()
    }

    fn stop_accepting(&mut self, io: &mut Io<'_>) {
        self.listener.close(io);
        let _ = std::fs::remove_file(&self.socket);
    }

    fn is_flushed(&self) -> bool {
        self.conns.values().all(|c| !c.link.has_pending())
    }

    fn can_hand_over(&self) -> bool {
        true
    }

    fn hand_over_waits_for(&self) -> Option<String> {
        Containerd::hand_over_waits_for(self)
    }

    fn hand_over(&self, fds: &mut Passing) -> Result<FrontRecord, String> {
        self.record(fds).map(|r| FrontRecord::Containerd(Box::new(r)))
    }

    /// containerd calls Shutdown after Delete and expects an answer, and every event
    /// must reach it first: the shim waits for both (the loop bounds the wait).
    fn ready_to_exit(&self) -> bool {
        self.is_flushed() && self.publisher.is_done() && (self.service.shutdown || self.conns.is_empty())
    }
}
