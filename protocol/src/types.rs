//! Requests, params, results and events as they travel on the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request line. `jsonrpc` may be left out so a person typing into socat is served;
/// a request without `id` is a notification and gets no answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonrpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// The lifecycle of the container as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// The shim runs, `create` has not been called.
    New,
    /// `runc create` is running.
    Creating,
    /// Created, init waits for `start`.
    Created,
    Running,
    Paused,
    /// Init has exited (its exit record is kept until `delete`).
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// The runtime call that makes it (`runc create` / `runc exec`) is running.
    Creating,
    /// Init after `create`, before `start`.
    Created,
    Running,
    Exited,
}

/// How a process ended. Written to `STATE_DIR/exits/PROCESS.json` before the `exit`
/// event is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// `init` or the exec id.
    pub process: String,
    pub pid: i32,
    /// The exit code, or 128+N for a process killed by signal N. `null` only when the
    /// status cannot be known (a shim that was SIGKILLed, see `tether-shim cleanup`).
    pub status: Option<i32>,
    /// The signal that killed the process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    /// RFC 3339, UTC, when the shim reaped the process.
    pub exited_at: String,
    /// The kernel's OOM killer ended it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub oom_killed: bool,
    /// Why the status is unknown, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One event. `seq` rises by exactly one from event to event of a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub ts: String,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Created {
        pid: i32,
    },
    Started {
        pid: i32,
    },
    ExecAdded {
        exec_id: String,
    },
    ExecStarted {
        exec_id: String,
        pid: i32,
    },
    Exit(ExitRecord),
    /// The OOM killer struck in the container's cgroup; `oom_kills` is the cgroup's
    /// running count.
    Oom {
        oom_kills: u64,
    },
    Paused {},
    Resumed {},
    Checkpointed {
        image_path: String,
    },
    Deleted {},
    /// The state dir refuses writes (full disk, EIO): events and exit records wait in
    /// memory, in order, and are written when it takes them again.
    StateDirFailing {
        error: String,
    },
    /// Everything that waited is on disk again.
    StateDirRecovered {},
    /// Output the shim could not write to its destination (a file on a full disk) was
    /// dropped so the process never blocks: `bytes` since the last such event on this
    /// stream, `total` since the process started.
    OutputDropped {
        process: String,
        stream: String,
        /// `file` (the stdout/stderr target) or `log` (the CRI log).
        sink: String,
        bytes: u64,
        total: u64,
        error: String,
    },
    /// The shim replaced its own binary (`upgrade`): same pid, same fds, every
    /// process and client carried over. `from` and `to` are the two versions.
    Upgraded {
        from: String,
        to: String,
    },
}

impl EventBody {
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::Created { .. } => "created",
            EventBody::Started { .. } => "started",
            EventBody::ExecAdded { .. } => "exec_added",
            EventBody::ExecStarted { .. } => "exec_started",
            EventBody::Exit(_) => "exit",
            EventBody::Oom { .. } => "oom",
            EventBody::Paused {} => "paused",
            EventBody::Resumed {} => "resumed",
            EventBody::Checkpointed { .. } => "checkpointed",
            EventBody::Deleted {} => "deleted",
            EventBody::StateDirFailing { .. } => "state_dir_failing",
            EventBody::StateDirRecovered {} => "state_dir_recovered",
            EventBody::OutputDropped { .. } => "output_dropped",
            EventBody::Upgraded { .. } => "upgraded",
        }
    }
}

/// `upgrade`: the binary to replace the shim's own with (default: the path the shim
/// was started from, as it is on disk now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

/// The answer to `upgrade`, sent by the new binary once it has taken over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeResult {
    pub from: String,
    pub to: String,
    /// The shim's pid, the same before and after.
    pub shim_pid: u32,
    /// How long the shim's loop stood still for the hand-over, in microseconds.
    pub paused_us: u64,
}

/// The stdio a process got: the paths in use, or `null` where the stream is closed
/// (stderr of a terminal process: it shares the terminal with stdout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioPaths {
    pub stdin: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// The CRI log, if the process has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The attach socket, if the process has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<String>,
}

/// A CRI log for a process's output (`create` and `exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Absolute path of the log file; made if missing, appended to if not.
    pub path: String,
    /// Longer lines are split into `P` records of this size (default 16384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line: Option<usize>,
    /// Built-in rotation at this size in bytes (absent or 0: none; kubelet rotates
    /// by renaming the file and calling `reopen_log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Files kept by built-in rotation, the live one included (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

/// `exec` that answers with the process's output (kubelet's exec probes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureParams {
    /// Kill the process (SIGKILL) if it runs longer; absent: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes kept per stream (default 16 MiB, as CRI-O and containerd); the rest is
    /// drained and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The answer to an `exec` with `capture`: its exit and its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureResult {
    pub exec_id: String,
    #[serde(flatten)]
    pub exit: ExitRecord,
    pub timed_out: bool,
    /// The output as text; when it is not UTF-8, `stdout_base64` holds it instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// More than `limit` bytes were written: the rest was dropped.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub version: String,
    pub shim_pid: u32,
    pub id: String,
    pub bundle: String,
    pub runtime: String,
    pub status: ContainerStatus,
    /// The seq of the newest event, 0 before the first.
    pub last_seq: u64,
    /// The oldest seq `subscribe` can still replay from (`since` >= first_seq - 1).
    pub first_seq: u64,
    pub state_dir: StateDirHealth,
}

/// Whether the state dir takes writes. While it does not, events and exit records
/// wait in memory (they were still sent to clients) and are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDirHealth {
    pub writable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub unwritten_events: u64,
    pub unwritten_records: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Run init on a console PTY. Default: `process.terminal` of config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    /// Restore the container from a checkpoint image instead of creating it fresh
    /// (`runc restore --detach`): it is running when `create` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<RestoreParams>,
    /// Write the output to a CRI log as well (or instead: with a log, a stream left
    /// out gets no FIFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogParams>,
    /// Make an attach socket for the process (conmon's wire).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attach: bool,
    /// What ends the process's stdin when it is a FIFO (default: `close_stdin` only).
    #[serde(default, skip_serializing_if = "StdinEof::is_default")]
    pub stdin_eof: StdinEof,
}

/// What ends a process's stdin FIFO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinEof {
    /// Only `close_stdin`: the shim holds a writer of its own on the FIFO from the
    /// start, so a client that goes away never gives the process EOF.
    #[default]
    CloseStdin,
    /// containerd's rule: `close_stdin`, or every writer of the FIFO having come and
    /// gone before the process started (the shim's own writer is opened only then).
    WritersGoneBeforeStart,
}

impl StdinEof {
    pub fn is_default(&self) -> bool {
        *self == StdinEof::CloseStdin
    }
}

/// CRIU options shared by checkpoint and restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriuOptions {
    /// Where the image is written (checkpoint) or read from (restore).
    pub image_path: String,
    /// Where CRIU puts its logs and work files (default: the image path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_path: Option<String>,
    /// Checkpoint/restore established TCP connections.
    #[serde(default)]
    pub tcp_established: bool,
    /// Allow external unix sockets.
    #[serde(default)]
    pub ext_unix_sk: bool,
    /// The container is a shell job (has a controlling terminal from outside).
    #[serde(default)]
    pub shell_job: bool,
    /// Checkpoint/restore file locks.
    #[serde(default)]
    pub file_locks: bool,
}

pub type RestoreParams = CriuOptions;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointParams {
    pub image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_path: Option<String>,
    #[serde(default)]
    pub tcp_established: bool,
    #[serde(default)]
    pub ext_unix_sk: bool,
    #[serde(default)]
    pub shell_job: bool,
    #[serde(default)]
    pub file_locks: bool,
    /// Keep the container running after the checkpoint (default: it exits).
    #[serde(default)]
    pub leave_running: bool,
}

impl CheckpointParams {
    pub fn criu(&self) -> CriuOptions {
        CriuOptions {
            image_path: self.image_path.clone(),
            work_path: self.work_path.clone(),
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
        }
    }
}

/// `attach`: where a process's attach socket is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachResult {
    pub path: String,
}

/// `reopen_log`: the process whose CRI log to reopen (default init).
pub type ReopenLogParams = ProcessParams;

/// `update`: an OCI `linux.resources` object (memory, cpu, pids, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateParams {
    pub resources: Value,
}

/// The container's cgroup figures (`stats`). A figure the kernel does not provide
/// on this cgroup version is null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cgroup_version: u8,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    /// Output bytes dropped because their destination refused them (all processes).
    #[serde(default)]
    pub output_dropped_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage_ns: Option<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub usage: Option<u64>,
    /// null: no limit.
    pub limit: Option<u64>,
    /// The high-water mark of usage.
    pub max_usage: Option<u64>,
    /// Times usage hit the limit.
    pub failcnt: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Kernel memory (v1 memory.kmem.usage_in_bytes, v2 memory.stat `kernel`).
    #[serde(default)]
    pub kernel_usage: Option<u64>,
    /// Swap alone (v1 memory.memsw.usage_in_bytes less usage, v2 memory.swap.current).
    #[serde(default)]
    pub swap_usage: Option<u64>,
    /// From memory.stat (v1 its hierarchical `total_` figures): page cache, anonymous
    /// memory, mapped files, active and inactive file pages, page faults.
    #[serde(default)]
    pub cache: Option<u64>,
    #[serde(default)]
    pub rss: Option<u64>,
    #[serde(default)]
    pub mapped_file: Option<u64>,
    #[serde(default)]
    pub active_file: Option<u64>,
    #[serde(default)]
    pub inactive_file: Option<u64>,
    #[serde(default)]
    pub pgfault: Option<u64>,
    #[serde(default)]
    pub pgmajfault: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: Option<u64>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioStats {
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResult {
    pub pid: i32,
    #[serde(flatten)]
    pub stdio: StdioPaths,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidResult {
    pub pid: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub exec_id: String,
    /// An OCI runtime-spec `process` object (args, env, cwd, user, terminal, ...).
    pub process: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogParams>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub attach: bool,
    /// What ends the process's stdin when it is a FIFO (see [`CreateParams`]).
    #[serde(default, skip_serializing_if = "StdinEof::is_default")]
    pub stdin_eof: StdinEof,
    /// Answer only when the process has exited, with its output (and kill it past
    /// the deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureParams>,
}

impl ExecParams {
    /// Bytes kept per stream of a captured exec.
    pub fn capture_limit(&self) -> usize {
        self.capture.as_ref().and_then(|c| c.limit).unwrap_or(16 << 20)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exec_id: String,
    pub pid: i32,
    #[serde(flatten)]
    pub stdio: StdioPaths,
    pub terminal: bool,
}

/// A signal as a number (`9`) or a name (`"SIGKILL"`, `"KILL"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    Number(i32),
    Name(String),
}

impl Default for SignalSpec {
    fn default() -> Self {
        SignalSpec::Number(15)
    }
}

impl SignalSpec {
    /// The signal number, checked against Linux's range.
    pub fn number(&self) -> Result<i32, String> {
        match self {
            SignalSpec::Number(n) if (1..=64).contains(n) => Ok(*n),
            SignalSpec::Number(n) => Err(format!("signal {n} is out of range 1..64")),
            SignalSpec::Name(name) => {
                let upper = name.to_ascii_uppercase();
                let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
                SIGNALS
                    .iter()
                    .position(|s| *s == bare)
                    .map(|i| i as i32 + 1)
                    .or_else(|| bare.parse::<i32>().ok().filter(|n| (1..=64).contains(n)))
                    .ok_or_else(|| format!("unknown signal {name:?}"))
            }
        }
    }
}

/// Linux signal names, index + 1 = number (x86_64/arm64 numbering).
const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE",
    "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ",
    "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// `SIGKILL` for 9; `SIGRTMIN+n` style for real-time signals.
pub fn signal_name(n: i32) -> String {
    match n {
        1..=31 => format!("SIG{}", SIGNALS[(n - 1) as usize]),
        34..=64 => format!("SIGRTMIN+{}", n - 34),
        _ => format!("SIG{n}"),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// `init` (default) or an exec id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default)]
    pub signal: SignalSpec,
    /// Signal every process of the container (init only; `runc kill --all`).
    #[serde(default)]
    pub all: bool,
}

/// Params of the calls that name one process: wait, state, close_stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// An exec id to forget (it must have exited); absent: the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Kill a running container first (`runc delete --force`).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    /// The last seq the client has seen: events after it are replayed, then live
    /// events follow. Absent: live events only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Replayed events are those with since < seq <= replay_to; they follow this
    /// answer on the connection, then live events.
    pub replay_to: u64,
    pub replayed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownParams {
    /// Exit even though container processes are alive (they keep running,
    /// unsupervised: `tether-shim cleanup` removes them later).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub process: String,
    pub pid: Option<i32>,
    pub status: ProcessStatus,
    pub terminal: bool,
    #[serde(flatten)]
    pub stdio: StdioPaths,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
    /// Output bytes dropped because their destination refused them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_dropped_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: String,
    pub status: ContainerStatus,
    /// Init's pid once created.
    pub pid: Option<i32>,
    pub processes: Vec<ProcessState>,
    pub state_dir: StateDirHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPid {
    pub pid: i32,
    /// `init` or the exec id this pid is; absent for other processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signal_specs() {
        assert_eq!(SignalSpec::Number(9).number(), Ok(9));
        assert_eq!(SignalSpec::Name("SIGKILL".into()).number(), Ok(9));
        assert_eq!(SignalSpec::Name("term".into()).number(), Ok(15));
        assert_eq!(SignalSpec::Name("10".into()).number(), Ok(10));
        assert!(SignalSpec::Name("SIGNOPE".into()).number().is_err());
        assert!(SignalSpec::Number(0).number().is_err());
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(36), "SIGRTMIN+2");
    }

    #[test]
    fn event_wire_shape() {
        let e = Event {
            seq: 3,
            ts: "t".into(),
            body: EventBody::Exit(ExitRecord {
                process: "init".into(),
                pid: 10,
                status: Some(137),
                signal: Some(9),
                signal_name: Some("SIGKILL".into()),
                exited_at: "t".into(),
                oom_killed: false,
                reason: None,
            }),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "exit");
        assert_eq!(v["status"], 137);
        assert_eq!(v["seq"], 3);
        assert!(v.get("oom_killed").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        let paused: Event = serde_json::from_value(json!({"seq":1,"ts":"t","type":"paused"})).unwrap();
        assert_eq!(paused.body, EventBody::Paused {});
    }

    #[test]
    fn params_reject_unknown_fields() {
        let r: Result<KillParams, _> = serde_json::from_value(json!({"sginal": 9}));
        assert!(r.is_err());
        let k: KillParams = serde_json::from_value(json!({"signal": "KILL"})).unwrap();
        assert_eq!(k.signal.number(), Ok(9));
        let c: CreateParams = serde_json::from_value(json!({"stdout": "/tmp/x"})).unwrap();
        assert_eq!(c.stdout.as_deref(), Some("/tmp/x"));
        let r: Result<CreateParams, _> = serde_json::from_value(json!({"stdot": "/tmp/x"}));
        assert!(r.is_err());
    }
}
