//! The JSON-RPC front: request lines in, calls on the core; answers and events out as
//! lines. `subscribe` is served here from the core's event log.

use crate::conn::{Conn, ReadEnd};
use crate::container::Container;
use crate::core::{err, Call, CallResult, Output, Ticket};
use mio::{Registry, Token};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use tether_protocol::*;

pub struct Front {
    pub conns: HashMap<Token, Conn>,
    /// Calls whose answer is still to come: which connection, which request id.
    pending: HashMap<Ticket, (Token, Value)>,
    next_ticket: Ticket,
}

impl Default for Front {
    fn default() -> Self {
        Front {
            conns: HashMap::new(),
            pending: HashMap::new(),
            next_ticket: 1,
        }
    }
}

/// `{"jsonrpc":"2.0","id":ID,"result"|"error":BODY}`, written out by hand so a person
/// reading socat sees the envelope first and the body's fields in their documented
/// order (a serde_json map would sort them).
fn answer_line<T: serde::Serialize>(id: &Value, member: &str, body: &T) -> Vec<u8> {
    let body = serde_json::to_string(body).unwrap_or_else(|e| {
        // Serializing our own plain types does not fail; say so if it ever does.
        json!({"code": ErrorKind::Internal.code(), "message": e.to_string(), "data": {"kind": "internal"}})
            .to_string()
    });
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"{member}\":{body}}}\n").into_bytes()
}

fn error_line(id: &Value, e: &RpcError) -> Vec<u8> {
    answer_line(id, "error", e)
}

/// Params as `T`; absent or null params are `{}`.
fn params<T: DeserializeOwned>(method: &str, p: Value) -> Result<T, RpcError> {
    let p = if p.is_null() { json!({}) } else { p };
    serde_json::from_value(p).map_err(|e| err(ErrorKind::InvalidParams, format!("{method}: {e}")))
}

fn parse_call(method: &str, p: Value) -> Result<Call, RpcError> {
    Ok(match method {
        "hello" | "version" => Call::Hello,
        "create" => Call::Create(params(method, p)?),
        "start" => Call::Start,
        "exec" => Call::Exec(params(method, p)?),
        "kill" => Call::Kill(params(method, p)?),
        "wait" => Call::Wait(params(method, p)?),
        "state" => Call::State(params(method, p)?),
        "pids" => Call::Pids,
        "close_stdin" => Call::CloseStdin(params(method, p)?),
        "resize" => Call::Resize(params(method, p)?),
        "delete" => Call::Delete(params(method, p)?),
        "shutdown" => Call::Shutdown(params(method, p)?),
        "pause" => Call::Pause,
        "resume" => Call::Resume,
        "stats" => Call::Stats,
        "update" => Call::Update(params(method, p)?),
        "checkpoint" => Call::Checkpoint(params(method, p)?),
        _ => {
            return Err(err(
                ErrorKind::MethodNotFound,
                format!("no method {method:?}; methods: {}", METHODS.join(", ")),
            ))
        }
    })
}

const METHODS: &[&str] = &[
    "hello",
    "create",
    "start",
    "exec",
    "kill",
    "wait",
    "state",
    "pids",
    "close_stdin",
    "resize",
    "delete",
    "pause",
    "resume",
    "stats",
    "update",
    "checkpoint",
    "subscribe",
    "shutdown",
];

impl Front {
    pub fn add(&mut self, token: Token, conn: Conn) {
        self.conns.insert(token, conn);
    }

    /// Readiness on a connection: read and serve its lines, write what is queued.
    /// `peer_gone`: the client closed both directions (nothing can reach it any more).
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn on_ready(&mut self, token: Token, peer_gone: bool, core: &mut Container, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (lines, end) = conn.read_lines();
        for l in lines {
            self.serve_line(token, &l, core, registry);
        }
        if peer_gone {
            return self.drop_conn(token, registry, None);
        }
        match end {
            ReadEnd::Open => {}
            ReadEnd::Closed => {
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.read_closed = true;
                }
            }
            ReadEnd::TooLong => {
                let reason = format!("request line longer than {MAX_LINE} bytes");
                return self.drop_conn(token, registry, Some(&reason));
            }
        }
        self.flush(token, registry);
    }

    /// Writes what is queued; drops the connection if the client is gone, or if it
    /// has stopped sending and nothing more is owed to it.
    pub fn flush(&mut self, token: Token, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let owed = conn.subscribed || self.pending.values().any(|(t, _)| *t == token);
        if conn.flush().is_err() || (conn.read_closed && !conn.has_pending() && !owed) {
            self.drop_conn(token, registry, None);
        }
    }

    pub fn drop_conn(&mut self, token: Token, registry: &Registry, reason: Option<&str>) {
        if let Some(mut conn) = self.conns.remove(&token) {
            if let Some(reason) = reason {
                crate::log!("closing a client connection: {reason}");
                conn.say_goodbye(reason);
            }
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    fn send(&mut self, token: Token, bytes: Vec<u8>, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if !conn.queue(bytes) {
            let reason = format!(
                "client too slow: more than {} bytes queued",
                crate::conn::MAX_QUEUED
            );
            self.drop_conn(token, registry, Some(&reason));
        }
    }

    fn serve_line(&mut self, token: Token, raw: &[u8], core: &mut Container, registry: &Registry) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return; // a person pressing enter
        }
        let value: Value = match serde_json::from_slice(raw) {
            Ok(v) => v,
            Err(e) => {
                let e = err(ErrorKind::ParseError, format!("not JSON: {e}"));
                return self.send(token, error_line(&Value::Null, &e), registry);
            }
        };
        let (id, method, p) = match split_request(value) {
            Ok(parts) => parts,
            Err((id, e)) => return self.send(token, error_line(&id, &e), registry),
        };
        if method == "subscribe" {
            return self.subscribe(token, id, p, core, registry);
        }
        let call = match parse_call(&method, p) {
            Ok(call) => call,
            Err(e) => return self.send_result(token, id, Err(e), registry),
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        match core.call(ticket, call, registry) {
            Some(result) => self.send_result(token, id, result, registry),
            None => {
                self.pending.insert(ticket, (token, id.unwrap_or(Value::Null)));
            }
        }
    }

    /// A request without id is a notification: it runs, nothing is sent back.
    fn send_result(&mut self, token: Token, id: Option<Value>, result: CallResult, registry: &Registry) {
        let Some(id) = id else { return };
        let bytes = match result {
            Ok(answer) => answer_line(&id, "result", &answer),
            Err(e) => error_line(&id, &e),
        };
        self.send(token, bytes, registry);
    }

    fn subscribe(
        &mut self,
        token: Token,
        id: Option<Value>,
        p: Value,
        core: &Container,
        registry: &Registry,
    ) {
        let p: SubscribeParams = match params("subscribe", p) {
            Ok(p) => p,
            Err(e) => return self.send_result(token, id, Err(e), registry),
        };
        let log = core.events();
        let replay = match p.since {
            None => Vec::new(),
            Some(since) => match log.replay(since) {
                Ok(lines) => lines,
                Err(crate::events::ReplayError::Compacted { since, first_seq }) => {
                    let e = err(
                        ErrorKind::EventsCompacted,
                        format!(
                            "events after {since} are no longer all kept (oldest kept: {first_seq}); read `state` and STATE_DIR/exits, then subscribe since {}",
                            log.last_seq()
                        ),
                    );
                    return self.send_result(token, id, Err(e), registry);
                }
                Err(crate::events::ReplayError::Io(e)) => {
                    let e = err(ErrorKind::Internal, format!("cannot read the event log: {e}"));
                    return self.send_result(token, id, Err(e), registry);
                }
            },
        };
        if let Some(id) = id {
            let result = SubscribeResult {
                replay_to: log.last_seq(),
                replayed: replay.len() as u64,
            };
            self.send(token, answer_line(&id, "result", &result), registry);
        }
        for event in replay {
            self.send(token, event_line(&event), registry);
        }
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.subscribed = true;
        }
    }

    /// Routes the core's outputs; returns Some(remove_state_dir) when the shim must exit.
    #[inline(never)] // keeps its locals out of the idle loop's frame
    pub fn route(&mut self, outputs: Vec<Output>, registry: &Registry) -> Option<bool> {
        let mut exit = None;
        for output in outputs {
            match output {
                Output::Reply(ticket, result) => {
                    if let Some((token, id)) = self.pending.remove(&ticket) {
                        let id = if id.is_null() { None } else { Some(id) };
                        self.send_result(token, id, *result, registry);
                    }
                }
                Output::Event(published) => {
                    let bytes = event_line(&published.json);
                    let subscribers: Vec<Token> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.subscribed)
                        .map(|(t, _)| *t)
                        .collect();
                    for token in subscribers {
                        self.send(token, bytes.clone(), registry);
                    }
                }
                Output::Exit { remove_state_dir } => exit = Some(remove_state_dir),
            }
        }
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.has_pending() || c.read_closed)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.flush(token, registry);
        }
        exit
    }

    pub fn all_flushed(&self) -> bool {
        self.conns.values().all(|c| !c.has_pending())
    }
}

fn event_line(json: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(json.len() + 48);
    bytes.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":");
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(b"}\n");
    bytes
}

/// Checks the request's shape: (id, method, params), or an error to send with the id
/// as far as it could be read.
fn split_request(value: Value) -> Result<(Option<Value>, String, Value), (Value, RpcError)> {
    let invalid = |id: &Value, m: &str| (id.clone(), err(ErrorKind::InvalidRequest, m));
    let Value::Object(mut obj) = value else {
        return Err(invalid(&Value::Null, "a request must be a JSON object"));
    };
    let id = obj.remove("id");
    let id_shown = id.clone().unwrap_or(Value::Null);
    if let Some(id) = &id {
        if !(id.is_string() || id.is_number() || id.is_null()) {
            return Err(invalid(&Value::Null, "id must be a string, a number or null"));
        }
    }
    match obj.get("jsonrpc") {
        None => {}
        Some(Value::String(v)) if v == "2.0" => {}
        Some(_) => return Err(invalid(&id_shown, "jsonrpc must be \"2.0\" (or left out)")),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid(&id_shown, "method must be a string")),
    };
    let p = obj.remove("params").unwrap_or(Value::Null);
    if !(p.is_object() || p.is_null()) {
        return Err((
            id_shown,
            err(ErrorKind::InvalidParams, "params must be an object"),
        ));
    }
    Ok((id, method, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shapes() {
        let ok = split_request(json!({"id": 1, "method": "state"})).unwrap();
        assert_eq!(ok.0, Some(json!(1)));
        assert_eq!(ok.1, "state");
        assert!(split_request(json!([1])).is_err());
        assert!(split_request(json!({"id": {}, "method": "x"})).is_err());
        assert!(split_request(json!({"id": 1, "method": 3})).is_err());
        assert!(split_request(json!({"id": 1, "method": "x", "jsonrpc": "1.0"})).is_err());
        assert!(split_request(json!({"id": 1, "method": "x", "params": [1]})).is_err());
    }

    #[test]
    fn every_listed_method_is_served() {
        for m in METHODS.iter().filter(|m| **m != "subscribe") {
            let e = parse_call(m, json!({})).err();
            assert!(
                e.is_none_or(|e| e.kind() != ErrorKind::MethodNotFound),
                "{m} is listed but not served"
            );
        }
    }

    #[test]
    fn unknown_methods_and_bad_params() {
        let e = parse_call("bogus", Value::Null).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MethodNotFound);
        let e = parse_call("kill", json!({"signal": {}})).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParams);
        assert!(matches!(parse_call("state", Value::Null), Ok(Call::State(_))));
    }
}
