//! containerd's protobuf messages, declared in code (prost derive: no protoc, no
//! generated files). Only the fields tether reads or writes are declared: protobuf
//! decoding skips the others. Field numbers follow containerd's .proto files:
//! api/runtime/task/v2/shim.proto, api/types/{mount,task/task,event}.proto,
//! api/events/task.proto, api/services/ttrpc/events/v1/events.proto, and ttrpc's
//! request.proto.

use prost::Message;

// ---- well-known types ----

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

impl Any {
    pub fn pack<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: m.encode_to_vec(),
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

// ---- ttrpc ----

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// google.rpc.Status.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

// ---- containerd.types ----

#[derive(Clone, PartialEq, Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub source: String,
    #[prost(string, tag = "3")]
    pub target: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessInfo {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Any>,
}

/// containerd.runc.v1.ProcessDetails: which exec a pid is.
#[derive(Clone, PartialEq, Message)]
pub struct ProcessDetails {
    #[prost(string, tag = "1")]
    pub exec_id: String,
}

/// containerd.runc.v1.CheckpointOptions.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    pub exit: bool,
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

/// containerd.v1.types.Status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskStatus {
    Unknown = 0,
    Created = 1,
    Running = 2,
    Stopped = 3,
    Paused = 4,
}

// ---- containerd.task.v2 (the shim's task service) ----

#[derive(Clone, PartialEq, Message)]
pub struct CreateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(message, repeated, tag = "3")]
    pub rootfs: Vec<Mount>,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(string, tag = "5")]
    pub stdin: String,
    #[prost(string, tag = "6")]
    pub stdout: String,
    #[prost(string, tag = "7")]
    pub stderr: String,
    #[prost(string, tag = "8")]
    pub checkpoint: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PidResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

/// Requests that name a process: State, Start, Delete, Wait. (Requests that name
/// only the task, and Shutdown's, carry nothing the shim reads: one shim, one task.)
#[derive(Clone, PartialEq, Message)]
pub struct ProcessRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint32, tag = "2")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "3")]
    pub exited_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExecProcessRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bool, tag = "3")]
    pub terminal: bool,
    #[prost(string, tag = "4")]
    pub stdin: String,
    #[prost(string, tag = "5")]
    pub stdout: String,
    #[prost(string, tag = "6")]
    pub stderr: String,
    /// The OCI process spec as JSON (types.containerd.io/opencontainers/runtime-spec/1/Process).
    #[prost(message, optional, tag = "7")]
    pub spec: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResizePtyRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub width: u32,
    #[prost(uint32, tag = "4")]
    pub height: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct StateResponse {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(int32, tag = "4")]
    pub status: i32,
    #[prost(string, tag = "5")]
    pub stdin: String,
    #[prost(string, tag = "6")]
    pub stdout: String,
    #[prost(string, tag = "7")]
    pub stderr: String,
    #[prost(bool, tag = "8")]
    pub terminal: bool,
    #[prost(uint32, tag = "9")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "10")]
    pub exited_at: Option<Timestamp>,
    #[prost(string, tag = "11")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KillRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub signal: u32,
    #[prost(bool, tag = "4")]
    pub all: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct CloseIoRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bool, tag = "3")]
    pub stdin: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PidsResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CheckpointTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub path: String,
    #[prost(message, optional, tag = "3")]
    pub options: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UpdateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    /// OCI linux.resources as JSON (types.containerd.io/opencontainers/runtime-spec/1/LinuxResources).
    #[prost(message, optional, tag = "2")]
    pub resources: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct WaitResponse {
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "2")]
    pub exited_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsResponse {
    #[prost(message, optional, tag = "1")]
    pub stats: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConnectResponse {
    #[prost(uint32, tag = "1")]
    pub shim_pid: u32,
    #[prost(uint32, tag = "2")]
    pub task_pid: u32,
    #[prost(string, tag = "3")]
    pub version: String,
}

// ---- containerd.events ----

#[derive(Clone, PartialEq, Message)]
pub struct TaskIo {
    #[prost(string, tag = "1")]
    pub stdin: String,
    #[prost(string, tag = "2")]
    pub stdout: String,
    #[prost(string, tag = "3")]
    pub stderr: String,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskCreate {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(message, repeated, tag = "3")]
    pub rootfs: Vec<Mount>,
    #[prost(message, optional, tag = "4")]
    pub io: Option<TaskIo>,
    #[prost(string, tag = "5")]
    pub checkpoint: String,
    #[prost(uint32, tag = "6")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskStart {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskDelete {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(uint32, tag = "3")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "4")]
    pub exited_at: Option<Timestamp>,
    #[prost(string, tag = "5")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskExit {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(uint32, tag = "4")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "5")]
    pub exited_at: Option<Timestamp>,
}

/// TaskOOM, TaskPaused, TaskResumed: the container id alone.
#[derive(Clone, PartialEq, Message)]
pub struct TaskOnly {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskExecAdded {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskExecStarted {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TaskCheckpointed {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub checkpoint: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub topic: String,
    #[prost(message, optional, tag = "4")]
    pub event: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ForwardRequest {
    #[prost(message, optional, tag = "1")]
    pub envelope: Option<Envelope>,
}

/// containerd 2.x's `-info`: the shim describes itself (containerd.types.RuntimeInfo,
/// api/types/introspection.proto).
#[derive(Clone, PartialEq, Message)]
pub struct RuntimeInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub version: Option<RuntimeVersion>,
    /// The OCI runtime's `features` (runtime-spec features.md), JSON in an Any.
    #[prost(message, optional, tag = "4")]
    pub features: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RuntimeVersion {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub revision: String,
}

/// The type URL containerd registers the runtime-spec's `features.Features` under
/// (a JSON-encoded type).
pub const OCI_FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

// ---- the shim's start (api/runtime/bootstrap/v1/bootstrap.proto, containerd 2.3+) ----

/// What containerd 2.3+ writes to `start`'s stdin.
#[derive(Clone, PartialEq, Message)]
pub struct BootstrapParams {
    #[prost(string, tag = "1")]
    pub instance_id: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "4")]
    pub containerd_version: String,
    #[prost(string, tag = "5")]
    pub containerd_ttrpc_address: String,
    #[prost(message, repeated, tag = "8")]
    pub extensions: Vec<Extension>,
    #[prost(string, optional, tag = "9")]
    pub socket_dir: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Extension {
    #[prost(message, optional, tag = "1")]
    pub value: Option<Any>,
}

/// What `start` answers a containerd that sent BootstrapParams.
#[derive(Clone, PartialEq, Message)]
pub struct BootstrapResult {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
}

/// containerd's runc options (api/types/runc/options/oci.proto, `containerd.runc.v1.Options`):
/// the runtime handler's `options` table in containerd's CRI config.
#[derive(Clone, PartialEq, Message)]
pub struct RuncOptions {
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The type URL of [`RuncOptions`] (containerd registers messages by their full name).
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// `Timestamp` from an RFC 3339 string the core wrote (None if it is not one).
pub fn timestamp(rfc3339: &str) -> Option<Timestamp> {
    let (seconds, nanos) = tether_protocol::time::parse_rfc3339(rfc3339)?;
    Some(Timestamp {
        seconds,
        nanos: nanos as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_match_protobuf() {
        // DeleteResponse{pid: 150, exit_status: 137}: the bytes containerd decodes.
        let r = DeleteResponse {
            pid: 150,
            exit_status: 137,
            exited_at: None,
        };
        assert_eq!(r.encode_to_vec(), vec![0x08, 0x96, 0x01, 0x10, 0x89, 0x01]);
        let m = Mount {
            r#type: "bind".into(),
            source: "/a".into(),
            target: String::new(),
            options: vec!["rbind".into(), "ro".into()],
        };
        let back = Mount::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn timestamps() {
        let t = timestamp("2026-11-28T13:04:53.000000005Z").unwrap();
        assert_eq!((t.seconds, t.nanos), (1_795_871_093, 5));
        assert!(timestamp("yesterday").is_none());
    }
}
