//! The part of the OCI runtime spec the shim reads or checks itself. The runtime
//! validates the whole spec, and its errors reach the client verbatim; the shim checks
//! what it acts on (root, terminal) and the shape of what clients hand it (an exec's
//! process, update's resources), with types strict enough for a clear early error.
//! Unknown fields are ignored, as the OCI spec asks of runtimes.
//!
//! Why not the oci-spec crate in the shim: its validation pulls in regex, about
//! 450 kB of the 2.3 MB binary, and every mapped page of text is resident memory in
//! every shim. The unit tests below check that this subset agrees with oci-spec.

use serde::Deserialize;
use std::collections::HashMap;

/// config.json, as far as the shim reads it.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub root: Option<Root>,
    pub process: Option<Process>,
}

#[derive(Debug, Deserialize)]
pub struct Root {
    pub path: String,
}

/// An OCI `process` object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // fields are read for their types: a wrong type is a clear error
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    pub console_size: Option<ConsoleSize>,
    /// Required by the OCI spec on Linux.
    pub user: User,
    pub args: Option<Vec<String>>,
    pub command_line: Option<String>,
    pub env: Option<Vec<String>>,
    pub cwd: String,
    pub capabilities: Option<Capabilities>,
    pub rlimits: Option<Vec<Rlimit>>,
    pub no_new_privileges: Option<bool>,
    pub apparmor_profile: Option<String>,
    pub oom_score_adj: Option<i32>,
    pub selinux_label: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct ConsoleSize {
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub umask: Option<u32>,
    pub additional_gids: Option<Vec<u32>>,
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Capabilities {
    pub bounding: Option<Vec<String>>,
    pub effective: Option<Vec<String>>,
    pub inheritable: Option<Vec<String>>,
    pub permitted: Option<Vec<String>>,
    pub ambient: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

/// An OCI `linux.resources` object (what `update` takes).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Resources {
    pub devices: Option<Vec<serde_json::Value>>,
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(rename = "blockIO")]
    pub block_io: Option<serde_json::Value>,
    pub hugepage_limits: Option<Vec<serde_json::Value>>,
    pub network: Option<serde_json::Value>,
    pub rdma: Option<serde_json::Value>,
    pub unified: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Memory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    pub kernel: Option<i64>,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: Option<i64>,
    pub swappiness: Option<u64>,
    #[serde(rename = "disableOOMKiller")]
    pub disable_oom_killer: Option<bool>,
    pub use_hierarchy: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Cpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub period: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    pub idle: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Pids {
    #[serde(default)]
    pub limit: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// This subset accepts exactly what oci-spec accepts, on processes that matter.
    #[test]
    fn process_agrees_with_oci_spec() {
        let cases = [
            json!({"args": ["sh"], "cwd": "/"}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
            json!({"args": ["sh"], "cwd": "/", "env": ["A=1"], "terminal": true, "user": {"uid": 0, "gid": 0}}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": -1, "gid": 0}}),
            json!({"args": "sh", "cwd": "/"}),
            json!({"args": ["sh"]}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 10}]}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": [{"type": "RLIMIT_NOFILE", "hard": "x", "soft": 10}]}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "capabilities": {"bounding": ["CAP_KILL"]}}),
            json!({"args": ["sh"], "cwd": "/", "env": [1]}),
            json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "consoleSize": {"height": 10, "width": 20}}),
            json!({"args": ["sh"], "cwd": "/", "noNewPrivileges": "yes"}),
        ];
        for case in cases {
            let ours = serde_json::from_value::<Process>(case.clone()).is_ok();
            let theirs = serde_json::from_value::<oci_spec::runtime::Process>(case.clone()).is_ok();
            assert_eq!(ours, theirs, "disagreement on {case}");
        }
    }

    #[test]
    fn resources_agree_with_oci_spec() {
        let cases = [
            json!({"memory": {"limit": 67108864}}),
            json!({"memory": {"limit": "lots"}}),
            json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000}}),
            json!({"cpu": {"shares": -1}}),
            json!({"pids": {"limit": 50}}),
            json!({"pids": {}}),
            json!({"unified": {"memory.max": "max"}}),
        ];
        for case in cases {
            let ours = serde_json::from_value::<Resources>(case.clone()).is_ok();
            let theirs = serde_json::from_value::<oci_spec::runtime::LinuxResources>(case.clone()).is_ok();
            assert_eq!(ours, theirs, "disagreement on {case}");
        }
    }
}
