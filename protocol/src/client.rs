//! A small blocking client: one request at a time, events that arrive in between are
//! queued and handed out by [`Client::next_event`].

use crate::error::RpcError;
use crate::types::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    /// The shim answered with an error.
    Rpc(RpcError),
    /// The shim sent something this client does not understand, or hung up.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "socket: {e}"),
            ClientError::Rpc(e) => write!(f, "{e}"),
            ClientError::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    pub fn rpc_kind(&self) -> Option<crate::ErrorKind> {
        match self {
            ClientError::Rpc(e) => Some(e.kind()),
            _ => None,
        }
    }
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    events: VecDeque<Event>,
}

impl Client {
    /// Connects to a shim's socket. A path too long for a socket that is a symlink
    /// (`STATE_DIR/shim.sock` of a shim with a long id) is followed.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, ClientError> {
        let mut path = socket.as_ref().to_path_buf();
        if path.as_os_str().len() > 107 {
            if let Ok(target) = std::fs::read_link(&path) {
                path = target;
            }
        }
        let stream = UnixStream::connect(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", socket.as_ref().display())))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    /// Bounds every blocking read (None: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)
    }

    /// Sends a raw line (tests use it to send garbage).
    pub fn send_raw(&mut self, line: &[u8]) -> io::Result<()> {
        self.writer.write_all(line)
    }

    /// Reads one raw line, without its newline; `None` at EOF.
    pub fn read_raw_line(&mut self) -> Result<Option<Value>, ClientError> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("bad line from shim: {e}")))
    }

    /// Calls `method` and waits for its answer, queueing events that come first.
    pub fn call_value(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": id, "method": method, "params": params,
        }))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let msg = self
                .read_raw_line()?
                .ok_or_else(|| ClientError::Protocol("shim closed the connection".into()))?;
            if msg.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = msg.get("error") {
                    let err: RpcError = serde_json::from_value(err.clone())
                        .map_err(|e| ClientError::Protocol(format!("bad error object: {e}")))?;
                    return Err(ClientError::Rpc(err));
                }
                return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
            }
            self.queue_if_event(msg)?;
        }
    }

    pub fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let params = serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let result = self.call_value(method, params)?;
        serde_json::from_value(result)
            .map_err(|e| ClientError::Protocol(format!("unexpected {method} result: {e}")))
    }

    fn queue_if_event(&mut self, msg: Value) -> Result<(), ClientError> {
        match msg.get("method").and_then(Value::as_str) {
            Some("event") => {
                let params = msg.get("params").cloned().unwrap_or(Value::Null);
                let event: Event = serde_json::from_value(params)
                    .map_err(|e| ClientError::Protocol(format!("bad event: {e}")))?;
                self.events.push_back(event);
                Ok(())
            }
            Some("closing") => Err(ClientError::Protocol(format!(
                "shim closed the connection: {}",
                msg.get("params").cloned().unwrap_or(Value::Null)
            ))),
            _ => Err(ClientError::Protocol(format!("unexpected line from shim: {msg}"))),
        }
    }

    /// The next event (after `subscribe`), blocking until one arrives.
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let msg = self
                .read_raw_line()?
                .ok_or_else(|| ClientError::Protocol("shim closed the connection".into()))?;
            self.queue_if_event(msg)?;
        }
    }

    pub fn hello(&mut self) -> Result<HelloResult, ClientError> {
        self.call("hello", &json!({}))
    }

    pub fn create(&mut self, params: &CreateParams) -> Result<CreateResult, ClientError> {
        self.call("create", params)
    }

    pub fn start(&mut self) -> Result<PidResult, ClientError> {
        self.call("start", &json!({}))
    }

    pub fn exec(&mut self, params: &ExecParams) -> Result<ExecResult, ClientError> {
        self.call("exec", params)
    }

    pub fn kill(&mut self, process: Option<&str>, signal: i32, all: bool) -> Result<(), ClientError> {
        let params = KillParams {
            process: process.map(str::to_string),
            signal: SignalSpec::Number(signal),
            all,
        };
        self.call::<_, Value>("kill", &params).map(|_| ())
    }

    pub fn wait(&mut self, process: Option<&str>) -> Result<ExitRecord, ClientError> {
        self.call(
            "wait",
            &ProcessParams {
                process: process.map(str::to_string),
            },
        )
    }

    pub fn state(&mut self) -> Result<ContainerState, ClientError> {
        self.call("state", &json!({}))
    }

    pub fn delete(&mut self, process: Option<&str>, force: bool) -> Result<Value, ClientError> {
        self.call_value(
            "delete",
            json!(DeleteParams {
                process: process.map(str::to_string),
                force
            }),
        )
    }

    pub fn subscribe(&mut self, since: Option<u64>) -> Result<SubscribeResult, ClientError> {
        self.call("subscribe", &SubscribeParams { since })
    }
}
