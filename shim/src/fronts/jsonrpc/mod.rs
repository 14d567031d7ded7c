//! The JSON-RPC front: request lines in, core calls; answers and events out as
//! lines on `shim.sock`. `subscribe` is served here from the core's event log.
//!
//! Per-connection work is bounded at every step: a line is at most MAX_LINE; at most
//! LINES_PER_TURN lines of one client are served before others get their turn;
//! reading stops while a client's answers are not being taken; at most MAX_PENDING
//! calls per client wait for an answer; a closed connection releases all it held.

mod conn;
#[cfg(test)]
mod fuzz;
mod request;

use crate::core::{self, Call, CallResult, Core, Output, Reply, Ticket};
use crate::fronts::listener::{Backlog, Listener};
use crate::fronts::{Front, FrontRecord, UpgradeRequest};
use crate::handover::{Adopting, Passing};
use crate::registry::{Io, Owner, Readiness};
use conn::{Conn, Input, MAX_QUEUED, PAUSE_READING_AT};
use mio::Token;
use std::collections::HashMap;
use std::io;
use std::time::Instant;
use tether_protocol::*;

/// Lines of one client served before the loop turns to other work.
const LINES_PER_TURN: usize = 64;
/// Calls of one client that may wait for an answer at once.
pub const MAX_PENDING: usize = 4096;

pub struct JsonRpc {
    listener: Listener,
    conns: HashMap<Token, Conn>,
    /// Deferred calls: which connection, and the raw id to answer with (None: a
    /// notification, answered to nobody).
    pending: HashMap<Ticket, (Token, Option<String>)>,
    /// Connections with lines or unread input left over from their last turn.
    backlog: Backlog,
    /// The `upgrade` under way: whom to answer (its connection, the raw id).
    upgrade: Option<(Token, Option<String>)>,
    /// ...and what it asked, until the loop takes it.
    upgrade_request: Option<UpgradeRequest>,
    /// An upgrade waits for the core: no new requests are served.
    held: bool,
}

/// The JSON-RPC front in a hand-over record. Connections are numbered by their
/// place in `conns`; tokens mean nothing to the new loop.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JsonRpcRecord {
    listener: Option<std::os::fd::RawFd>,
    conns: Vec<conn::ConnRecord>,
    /// Calls waiting for their answers: ticket, connection, raw id.
    pending: Vec<(Ticket, usize, Option<String>)>,
    /// The client that asked for the upgrade, and its raw id.
    upgrade: Option<(usize, Option<String>)>,
}

impl JsonRpc {
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        owner: Owner,
        io: &mut Io<'_>,
    ) -> io::Result<Self> {
        Ok(JsonRpc {
            listener: Listener::watch(listener, owner, "client", io)?,
            conns: HashMap::new(),
            pending: HashMap::new(),
            backlog: Backlog::default(),
            upgrade: None,
            upgrade_request: None,
            held: false,
        })
    }

    /// The front again, in the new binary, its sockets watched by the new loop.
    pub fn take_over(
        r: JsonRpcRecord,
        owner: Owner,
        fds: &mut Adopting,
        io: &mut Io<'_>,
    ) -> Result<Self, String> {
        let listener = Listener::take_over(r.listener, owner, "client", fds, io)?;
        let mut front = JsonRpc {
            listener,
            conns: HashMap::new(),
            pending: HashMap::new(),
            backlog: Backlog::default(),
            upgrade: None,
            upgrade_request: None,
            held: false,
        };
        let mut tokens = Vec::with_capacity(r.conns.len());
        for c in r.conns {
            let mut conn = Conn::take_over(c, fds)?;
            let token = io
                .watch(
                    owner,
                    &mut conn.stream,
                    mio::Interest::READABLE | mio::Interest::WRITABLE,
                )
                .map_err(|e| format!("cannot watch a client connection: {e}"))?;
            front.conns.insert(token, conn);
            // Each gets a turn: input may have come while the shim was exec'ing.
            front.backlog.push(token);
            tokens.push(token);
        }
        for (ticket, i, id) in r.pending {
            if let Some(token) = tokens.get(i) {
                front.pending.insert(ticket, (*token, id));
            }
        }
        front.upgrade = r.upgrade.and_then(|(i, id)| tokens.get(i).map(|t| (*t, id)));
        Ok(front)
    }

    /// The new binary has taken over: the client that asked is answered.
    fn answer_upgrade(&mut self, result: UpgradeResult, core: &mut Core, io: &mut Io<'_>) {
        let Some((token, id)) = self.take_upgrade_asker() else {
            return;
        };
        self.send_result(token, id.as_deref(), Ok(core::Answer::Upgraded(result)), core, io);
        self.flush(token, core, io);
    }

    /// The client that asked for the upgrade, now to be answered (its call no longer
    /// pending).
    fn take_upgrade_asker(&mut self) -> Option<(Token, Option<String>)> {
        let (token, id) = self.upgrade.take()?;
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.pending = conn.pending.saturating_sub(1);
        }
        Some((token, id))
    }

    /// `upgrade`: one at a time; the loop carries it out (see `crate::handover`).
    fn ask_upgrade(
        &mut self,
        token: Token,
        id: Option<&str>,
        p: Option<&serde_json::value::RawValue>,
        core: &mut Core,
        io: &mut Io<'_>,
    ) {
        let p: UpgradeParams = match request::params("upgrade", p) {
            Ok(p) => p,
            Err(e) => return self.send_error(token, Some(id.unwrap_or("null")), e, core, io),
        };
        if self.upgrade.is_some() {
            let e = RpcError::new(ErrorKind::WrongState, "an upgrade is already under way");
            return self.send_error(token, Some(id.unwrap_or("null")), e, core, io);
        }
        if let Some(binary) = p.binary.as_deref().filter(|b| !b.starts_with('/')) {
            let e = RpcError::new(
                ErrorKind::InvalidParams,
                format!("binary {binary:?} is not an absolute path"),
            );
            return self.send_error(token, Some(id.unwrap_or("null")), e, core, io);
        }
        self.upgrade = Some((token, id.map(str::to_string)));
        self.held = true;
        self.upgrade_request = Some(UpgradeRequest {
            binary: p.binary.map(Into::into),
        });
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.pending += 1;
        }
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn accept(&mut self, io: &mut Io<'_>) {
        let conns = &mut self.conns;
        self.listener.accept(io, |token, stream| {
            conns.insert(token, Conn::new(stream));
        });
    }

    /// Serves a connection's input, at most LINES_PER_TURN lines, then writes.
    fn serve(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        if self.held {
            // Served when the upgrade is done or refused.
            self.backlog.push(token);
            return self.flush(token, core, io);
        }
        for _ in 0..LINES_PER_TURN {
            if self.held {
                // An `upgrade` came: what follows it waits.
                break;
            }
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            if conn.queued() > PAUSE_READING_AT {
                conn.paused = true;
                return self.flush(token, core, io);
            }
            match conn.next_input() {
                Input::Line(line) => self.serve_line(token, &line, core, io),
                Input::Drained | Input::Closed => return self.flush(token, core, io),
                Input::TooLong => {
                    let reason = format!("request line longer than {MAX_LINE} bytes");
                    return self.drop_conn(token, core, io, Some(&reason));
                }
            }
        }
        // Turn over: the rest waits for the next turn of the loop.
        self.backlog.push(token);
        self.flush(token, core, io);
    }

    /// Writes what is queued; resumes a paused reader whose queue drained; drops the
    /// connection if the client is gone, or if it stopped sending and nothing more
    /// is owed to it.
    fn flush(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let gone = conn.flush().is_err();
        if conn.paused && conn.queued() <= PAUSE_READING_AT / 2 {
            conn.paused = false;
            self.backlog.push(token);
        }
        let owed = conn.subscribed || conn.pending > 0;
        if gone || (conn.read_closed && !conn.has_pending() && !owed) {
            self.drop_conn(token, core, io, None);
        }
    }

    fn drop_conn(&mut self, token: Token, core: &mut Core, io: &mut Io<'_>, reason: Option<&str>) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if let Some(reason) = reason {
            crate::log!("closing a client connection: {reason}");
            conn.say_goodbye(reason);
        }
        io.unwatch(&mut conn.stream, token);
        if self.upgrade.as_ref().is_some_and(|(t, _)| *t == token) {
            // The upgrade goes on; nobody is left to answer.
            self.upgrade = Some((Token(usize::MAX), None));
        }
        if conn.pending > 0 {
            // Everything kept only to answer this client goes.
            self.pending.retain(|ticket, (t, _)| {
                let mine = *t == token;
                if mine {
                    core.cancel(*ticket);
                }
                !mine
            });
        }
    }

    fn send(&mut self, token: Token, bytes: Vec<u8>, core: &mut Core, io: &mut Io<'_>) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if !conn.queue(bytes) {
            let reason = format!("client too slow: more than {MAX_QUEUED} bytes queued");
            self.drop_conn(token, core, io, Some(&reason));
        }
    }

    fn send_result(
        &mut self,
        token: Token,
        id: Option<&str>,
        result: CallResult,
        core: &mut Core,
        io: &mut Io<'_>,
    ) {
        // A request without id is a notification: nothing is sent back.
        let Some(id) = id else { return };
        let bytes = match result {
            Ok(answer) => answer_line(id, "result", &answer),
            Err(e) => answer_line(id, "error", &rpc_error(&e)),
        };
        self.send(token, bytes, core, io);
    }

    fn send_error(&mut self, token: Token, id: Option<&str>, e: RpcError, core: &mut Core, io: &mut Io<'_>) {
        let line = answer_line(id.unwrap_or("null"), "error", &e);
        self.send(token, line, core, io);
    }

    fn serve_line(&mut self, token: Token, raw: &[u8], core: &mut Core, io: &mut Io<'_>) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return; // a person pressing enter
        }
        let req = match request::parse(raw) {
            Ok(req) => req,
            Err((id, e)) => return self.send_error(token, id.as_deref(), e, core, io),
        };
        let id = req.id.as_deref();
        if req.method == "subscribe" {
            return self.subscribe(token, id, req.params, core, io);
        }
        if req.method == "upgrade" {
            return self.ask_upgrade(token, id, req.params, core, io);
        }
        let call = match request::call(&req.method, req.params) {
            Ok(call) => call,
            Err(e) => return self.send_error(token, Some(id.unwrap_or("null")), e, core, io),
        };
        let waiting = self.conns.get(&token).map_or(0, |c| c.pending);
        if waiting >= MAX_PENDING && may_defer(&call) {
            let e = RpcError::new(
                ErrorKind::LimitExceeded,
                format!("{waiting} calls of this connection are still waiting for their answers (at most {MAX_PENDING}): read some answers first"),
            );
            return self.send_error(token, Some(id.unwrap_or("null")), e, core, io);
        }
        match core.call(call, io) {
            Reply::Now(result) => self.send_result(token, id, result, core, io),
            Reply::Later(deferred) => {
                self.pending.insert(deferred.ticket(), (token, req.id.clone()));
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.pending += 1;
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        token: Token,
        id: Option<&str>,
        p: Option<&serde_json::value::RawValue>,
        core: &mut Core,
        io: &mut Io<'_>,
    ) {
        let p: SubscribeParams = match request::params("subscribe", p) {
            Ok(p) => p,
            Err(e) => return self.send_error(token, Some(id.unwrap_or("null")), e, core, io),
        };
        let (replay_to, replay) = match p.since {
            None => (core.last_seq(), Vec::new()),
            Some(since) => match core.replay(since) {
                Ok(r) => r,
                Err(e) => return self.send_result(token, Some(id.unwrap_or("null")), Err(e), core, io),
            },
        };
        if let Some(id) = id {
            let result = SubscribeResult {
                replay_to,
                replayed: replay.len() as u64,
            };
            self.send(token, answer_line(id, "result", &result), core, io);
        }
        for stored in &replay {
            self.send(token, event_line(&stored.json), core, io);
        }
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.subscribed = true;
        }
    }
}

impl Front for JsonRpc {
    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn on_ready(&mut self, token: Token, ready: Readiness, core: &mut Core, io: &mut Io<'_>) {
        if self.listener.owns(token) {
            return self.accept(io);
        }
        self.serve(token, core, io);
        if ready.gone {
            self.drop_conn(token, core, io, None);
        }
    }

    #[inline(never)] // keeps its locals out of the idle loop's frame
    fn deliver(&mut self, outputs: &[Output], core: &mut Core, io: &mut Io<'_>) {
        for output in outputs {
            match output {
                Output::Reply(ticket, result) => {
                    let Some((token, id)) = self.pending.remove(ticket) else {
                        continue;
                    };
                    if let Some(conn) = self.conns.get_mut(&token) {
                        conn.pending -= 1;
                    }
                    self.send_result(token, id.as_deref(), (**result).clone(), core, io);
                }
                Output::Event(_, json) => {
                    let line = event_line(json);
                    let subscribers: Vec<Token> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.subscribed)
                        .map(|(t, _)| *t)
                        .collect();
                    for token in subscribers {
                        self.send(token, line.clone(), core, io);
                    }
                }
                Output::Exit { .. } => {}
            }
        }
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.has_pending() || c.read_closed)
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
    }

    fn can_hand_over(&self) -> bool {
        true
    }

    fn upgrade_done(&mut self, result: UpgradeResult, core: &mut Core, io: &mut Io<'_>) {
        self.answer_upgrade(result, core, io);
    }

    fn take_upgrade_request(&mut self) -> Option<UpgradeRequest> {
        self.upgrade_request.take()
    }

    fn upgrade_refused(&mut self, why: &str, core: &mut Core, io: &mut Io<'_>) {
        let Some((token, id)) = self.take_upgrade_asker() else {
            return;
        };
        let e = RpcError::new(ErrorKind::UpgradeRefused, why);
        if let Some(id) = id {
            self.send_error(token, Some(&id), e, core, io);
            self.flush(token, core, io);
        }
    }

    fn hold(&mut self, on: bool) {
        self.held = on;
        if !on {
            for token in self.conns.keys() {
                self.backlog.push(*token);
            }
        }
    }

    fn hand_over(&self, fds: &mut Passing) -> Result<FrontRecord, String> {
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        let index = |t: &Token| tokens.iter().position(|x| x == t);
        let conns = tokens
            .iter()
            .filter_map(|t| self.conns.get(t))
            .map(|c| c.hand_over(fds))
            .collect::<Result<_, _>>()?;
        Ok(FrontRecord::JsonRpc(JsonRpcRecord {
            listener: self.listener.hand_over(fds)?,
            conns,
            pending: self
                .pending
                .iter()
                .filter_map(|(ticket, (t, id))| Some((*ticket, index(t)?, id.clone())))
                .collect(),
            upgrade: self
                .upgrade
                .as_ref()
                .and_then(|(t, id)| Some((index(t)?, id.clone()))),
        }))
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.held {
            return None;
        }
        if !self.backlog.is_empty() {
            return Some(Instant::now());
        }
        self.listener.retry_at()
    }

    fn stop_accepting(&mut self, io: &mut Io<'_>) {
        self.listener.close(io);
    }

    fn is_flushed(&self) -> bool {
        self.conns.values().all(|c| !c.has_pending())
    }
}

/// Calls whose answer may come later (they count against MAX_PENDING).
fn may_defer(call: &Call) -> bool {
    !matches!(
        call,
        Call::Hello
            | Call::State(_)
            | Call::Stats
            | Call::CloseStdin(_)
            | Call::Resize(_)
            | Call::Shutdown(_)
    )
}

/// The core's error as a JSON-RPC error object.
fn rpc_error(e: &core::CoreError) -> RpcError {
    use core::ErrorKind as K;
    let kind = match e.kind {
        K::InvalidParams => ErrorKind::InvalidParams,
        K::NotFound => ErrorKind::NotFound,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::WrongState => ErrorKind::WrongState,
        K::RuntimeFailed => ErrorKind::RuntimeFailed,
        K::InvalidBundle => ErrorKind::InvalidBundle,
        K::StdioFailed => ErrorKind::StdioFailed,
        K::EventsCompacted => ErrorKind::EventsCompacted,
        K::EventsMissing => ErrorKind::EventsMissing,
        K::LimitExceeded => ErrorKind::LimitExceeded,
        K::ShuttingDown => ErrorKind::ShuttingDown,
        K::Internal => ErrorKind::Internal,
    };
    RpcError::new(kind, e.message.clone())
}

/// `{"jsonrpc":"2.0","id":ID,"result"|"error":BODY}`, written out by hand so the id is
/// echoed exactly as sent, and a person reading socat sees the envelope first and
/// the body's fields in their documented order.
fn answer_line<T: serde::Serialize>(id: &str, member: &str, body: &T) -> Vec<u8> {
    let body = serde_json::to_string(body).unwrap_or_else(|e| {
        // Serializing our own plain types does not fail; say so if it ever does.
        serde_json::json!({"code": ErrorKind::Internal.code(), "message": e.to_string(), "data": {"kind": "internal"}})
            .to_string()
    });
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"{member}\":{body}}}\n").into_bytes()
}

/// The notification carrying one event's JSON (as the event log stores it).
fn event_line(json: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(json.len() + 48);
    bytes.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":");
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(b"}\n");
    bytes
}
