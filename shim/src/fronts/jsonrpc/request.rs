//! One request line: checked for shape, its id kept exactly as sent (a raw JSON
//! number or string, echoed byte for byte), its params decoded into the core's call.

use crate::core::Call;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tether_protocol::{ErrorKind, RpcError};

/// A request as far as its shape is concerned.
pub struct Request<'a> {
    /// The raw id text; `None` only when the request has no `id` member (a
    /// notification). `"id": null` is `Some("null")`: it gets an answer.
    pub id: Option<String>,
    pub method: String,
    pub params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// A member that is there, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn invalid(id: Option<String>, m: &str) -> (Option<String>, RpcError) {
    (id, RpcError::new(ErrorKind::InvalidRequest, m))
}

/// Parses one line. The error comes with the id to answer with, as far as it could
/// be read (`None` answers with `null`).
pub fn parse(line: &[u8]) -> Result<Request<'_>, (Option<String>, RpcError)> {
    // A derived struct would also take a JSON array, field by field: only objects.
    let is_object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let shape: Result<Shape, _> = match is_object {
        true => serde_json::from_slice(line),
        false => serde_json::from_slice::<serde::de::IgnoredAny>(line)
            .and_then(|_| Err(serde::de::Error::custom("it is not an object"))),
    };
    let shape = match shape {
        Ok(s) => s,
        Err(e) => {
            let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
            return Err(match is_json {
                true => invalid(None, &format!("a request must be a JSON object: {e}")),
                false => (
                    None,
                    RpcError::new(ErrorKind::ParseError, format!("not JSON: {e}")),
                ),
            });
        }
    };
    let id = match shape.id.map(RawValue::get) {
        None => None,
        Some(raw)
            if raw == "null"
                || raw.starts_with('"')
                || raw.starts_with('-')
                || raw.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Some(raw.to_string())
        }
        Some(_) => return Err(invalid(None, "id must be a string, a number or null")),
    };
    if let Some(v) = shape.jsonrpc {
        if v.get() != "\"2.0\"" {
            return Err(invalid(id, "jsonrpc must be \"2.0\" (or left out)"));
        }
    }
    let method = match shape.method.map(|m| serde_json::from_str::<String>(m.get())) {
        Some(Ok(m)) => m,
        _ => return Err(invalid(id, "method must be a string")),
    };
    if let Some(p) = shape.params {
        if !p.get().starts_with('{') {
            return Err((
                id,
                RpcError::new(ErrorKind::InvalidParams, "params must be an object"),
            ));
        }
    }
    Ok(Request {
        id,
        method,
        params: shape.params,
    })
}

/// Params as `T`; absent or null params are `{}`.
pub fn params<T: DeserializeOwned>(method: &str, p: Option<&RawValue>) -> Result<T, RpcError> {
    let text = p.map_or("{}", RawValue::get);
    serde_json::from_str(text).map_err(|e| RpcError::new(ErrorKind::InvalidParams, format!("{method}: {e}")))
}

/// For methods that take no params: anything given is refused, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

pub fn call(method: &str, p: Option<&RawValue>) -> Result<Call, RpcError> {
    let none = |method: &str| params::<NoParams>(method, p).map(|_| ());
    Ok(match method {
        "hello" | "version" => none(method).map(|_| Call::Hello)?,
        "create" => Call::Create(params(method, p)?),
        "start" => none(method).map(|_| Call::Start)?,
        "exec" => Call::Exec(params(method, p)?),
        "kill" => Call::Kill(params(method, p)?),
        "wait" => Call::Wait(params(method, p)?),
        "state" => Call::State(params(method, p)?),
        "pids" => none(method).map(|_| Call::Pids)?,
        "close_stdin" => Call::CloseStdin(params(method, p)?),
        "resize" => Call::Resize(params(method, p)?),
        "delete" => Call::Delete(params(method, p)?),
        "shutdown" => Call::Shutdown(params(method, p)?),
        "pause" => none(method).map(|_| Call::Pause)?,
        "resume" => none(method).map(|_| Call::Resume)?,
        "stats" => none(method).map(|_| Call::Stats)?,
        "update" => Call::Update(params(method, p)?),
        "checkpoint" => Call::Checkpoint(params(method, p)?),
        "reopen_log" => Call::ReopenLog(params(method, p)?),
        "attach" => Call::Attach(params(method, p)?),
        _ => {
            return Err(RpcError::new(
                ErrorKind::MethodNotFound,
                format!("no method {method:?}; methods: {}", METHODS.join(", ")),
            ))
        }
    })
}

pub const METHODS: &[&str] = &[
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
    "reopen_log",
    "attach",
    "subscribe",
    "shutdown",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> ErrorKind {
        parse(line.as_bytes()).err().unwrap().1.kind()
    }

    #[test]
    fn request_shapes() {
        let ok = parse(br#"{"id": 1, "method": "state"}"#).ok().unwrap();
        assert_eq!(ok.id.as_deref(), Some("1"));
        assert_eq!(ok.method, "state");
        assert_eq!(kind("[1]"), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"[1, "2.0", "hello"]"#), ErrorKind::InvalidRequest);
        assert_eq!(kind("not json"), ErrorKind::ParseError);
        assert_eq!(kind(r#"{"id": {}, "method": "x"}"#), ErrorKind::InvalidRequest);
        assert_eq!(kind(r#"{"id": 1, "method": 3}"#), ErrorKind::InvalidRequest);
        assert_eq!(
            kind(r#"{"id": 1, "method": "x", "jsonrpc": "1.0"}"#),
            ErrorKind::InvalidRequest
        );
        assert_eq!(
            kind(r#"{"id": 1, "method": "x", "params": [1]}"#),
            ErrorKind::InvalidParams
        );
        assert_eq!(
            kind(r#"{"id": 1, "id": 2, "method": "x"}"#),
            ErrorKind::InvalidRequest
        );
    }

    #[test]
    fn ids_are_kept_exactly_and_null_is_an_id() {
        let big = parse(br#"{"id":123456789012345678901234567890,"method":"hello"}"#)
            .ok()
            .unwrap();
        assert_eq!(big.id.as_deref(), Some("123456789012345678901234567890"));
        let s = parse(br#"{"id":"a\u0041\"b","method":"hello"}"#).ok().unwrap();
        assert_eq!(s.id.as_deref(), Some(r#""a\u0041\"b""#));
        let null = parse(br#"{"id":null,"method":"wait"}"#).ok().unwrap();
        assert_eq!(null.id.as_deref(), Some("null"));
        let notification = parse(br#"{"method":"wait"}"#).ok().unwrap();
        assert_eq!(notification.id, None);
    }

    #[test]
    fn every_listed_method_is_served() {
        for m in METHODS.iter().filter(|m| **m != "subscribe") {
            let e = call(m, None).err();
            assert!(
                e.is_none_or(|e| e.kind() != ErrorKind::MethodNotFound),
                "{m} is listed but not served"
            );
        }
    }

    #[test]
    fn unknown_methods_and_bad_params() {
        assert_eq!(
            call("bogus", None).err().unwrap().kind(),
            ErrorKind::MethodNotFound
        );
        let p = RawValue::from_string(r#"{"signal": {}}"#.into()).unwrap();
        assert_eq!(
            call("kill", Some(&p)).err().unwrap().kind(),
            ErrorKind::InvalidParams
        );
        assert!(matches!(call("state", None), Ok(Call::State(_))));
        // Methods without params refuse unknown ones rather than ignore them.
        let extra = RawValue::from_string(r#"{"verbose": true}"#.into()).unwrap();
        for m in ["hello", "stats", "pids", "start", "pause", "resume"] {
            assert_eq!(
                call(m, Some(&extra)).err().unwrap().kind(),
                ErrorKind::InvalidParams,
                "{m}"
            );
        }
    }
}
