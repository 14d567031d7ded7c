//! The bundle: config.json read once at `create` (its rootfs checked, its `process`
//! kept as the base of every exec), and an exec's process spec laid over that base.

use super::{err, CoreError, ErrorKind};
use serde_json::Value;
use std::fs;
use std::path::Path;

/// What `create` needs from config.json.
pub struct Bundle {
    /// config.json's `process`.
    pub process: Value,
    pub terminal: bool,
}

/// Reads config.json: checks the rootfs and returns the `process` and its
/// `terminal`. Errors name the file and the cause.
pub fn load(bundle: &Path) -> Result<Bundle, CoreError> {
    let config = bundle.join("config.json");
    let bad = |m: String| err(ErrorKind::InvalidBundle, m);
    let text =
        fs::read_to_string(&config).map_err(|e| bad(format!("cannot read {}: {e}", config.display())))?;
    let invalid = |e: serde_json::Error| bad(format!("{} is not a valid OCI spec: {e}", config.display()));
    // Parsed once: the typed view checks it, the raw one is kept for execs.
    let raw: Value = serde_json::from_str(&text).map_err(invalid)?;
    let spec = <crate::spec::Config as serde::Deserialize>::deserialize(&raw).map_err(invalid)?;
    let root = spec
        .root
        .as_ref()
        .ok_or_else(|| bad(format!("{} has no root", config.display())))?;
    let rootfs = bundle.join(&root.path);
    if !rootfs.is_dir() {
        return Err(bad(format!(
            "rootfs {} does not exist (root.path in {})",
            rootfs.display(),
            config.display()
        )));
    }
    Ok(Bundle {
        process: raw.get("process").cloned().unwrap_or(Value::Null),
        terminal: spec.process.is_some_and(|p| p.terminal),
    })
}

/// An exec's process spec: config.json's `process` with the client's fields laid over
/// it (so `{"args":["sh"]}` is enough), checked against the OCI schema. `env` is
/// merged by variable name, so `{"env":["X=1"]}` keeps the bundle's PATH.
pub fn exec_spec(base: &Value, given: &Value) -> Result<Value, CoreError> {
    let bad = |m: String| err(ErrorKind::InvalidParams, m);
    let Value::Object(given) = given else {
        return Err(bad("process must be an OCI process object".to_string()));
    };
    let mut spec = match base {
        Value::Object(b) => b.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in given {
        let merged = match (k.as_str(), spec.get(k), v) {
            ("env", Some(Value::Array(base_env)), Value::Array(env)) => {
                Value::Array(merge_env(base_env, env))
            }
            _ => v.clone(),
        };
        spec.insert(k.clone(), merged);
    }
    let spec = Value::Object(spec);
    let parsed: crate::spec::Process = serde_json::from_value(spec.clone())
        .map_err(|e| bad(format!("process is not a valid OCI process: {e}")))?;
    if parsed.args.as_ref().is_none_or(|a| a.is_empty()) {
        return Err(bad("process.args must name a program".to_string()));
    }
    if !parsed.cwd.starts_with('/') {
        return Err(bad(format!("process.cwd {} is not absolute", parsed.cwd)));
    }
    Ok(spec)
}

/// `base` with `over` laid on it, variable by variable (`NAME=value`).
fn merge_env(base: &[Value], over: &[Value]) -> Vec<Value> {
    let name = |v: &Value| v.as_str().map(|s| s.split('=').next().unwrap_or(s).to_string());
    let overridden: std::collections::HashSet<String> = over.iter().filter_map(name).collect();
    base.iter()
        .filter(|v| name(v).is_none_or(|n| !overridden.contains(&n)))
        .chain(over.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_spec_lays_fields_over_the_bundle_process() {
        let base = json!({"args":["sh"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}});
        let spec = exec_spec(&base, &json!({"args":["echo","hi"],"env":["X=42"]})).unwrap();
        assert_eq!(spec["args"], json!(["echo", "hi"]));
        assert_eq!(spec["env"], json!(["PATH=/bin", "X=42"]));
        let spec = exec_spec(&base, &json!({"env":["PATH=/x"]})).unwrap();
        assert_eq!(spec["env"], json!(["PATH=/x"]));
        assert_eq!(spec["cwd"], "/");
    }

    #[test]
    fn exec_spec_rejects_bad_processes() {
        let base = json!({"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}});
        assert!(exec_spec(&base, &json!([1])).is_err());
        assert!(exec_spec(&base, &json!({"args":[]})).is_err());
        assert!(exec_spec(&base, &json!({"cwd":"relative"})).is_err());
        assert!(exec_spec(&base, &json!({"args":"not a list"})).is_err());
    }
}
