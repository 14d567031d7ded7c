//! The core's events as containerd's task events (api/events/task.proto), each in
//! an Envelope with its topic. What the core's events do not carry (the bundle, the
//! rootfs and stdio of the create, init's exit for TaskDelete) the front remembers in
//! [`TaskInfo`]; events are converted in log order, so init's exit is known by the
//! time the delete event comes.

use super::proto::{self, Any, Envelope, Mount, TaskIo};
use tether_protocol::{Event, EventBody, ExitRecord, INIT_PROCESS};

/// What Create was asked, for TaskCreate.
#[derive(Clone, Default)]
pub struct CreateInfo {
    pub rootfs: Vec<Mount>,
    pub io: TaskIo,
    pub checkpoint: String,
}

pub struct TaskInfo {
    pub id: String,
    pub bundle: String,
    pub create: CreateInfo,
    /// Init's exit, once its event went by (for TaskDelete).
    init_exit: Option<ExitRecord>,
}

impl TaskInfo {
    pub fn new(id: String, bundle: String) -> TaskInfo {
        TaskInfo {
            id,
            bundle,
            create: CreateInfo::default(),
            init_exit: None,
        }
    }

    /// `e` as containerd's envelope; None for an event containerd has no topic for
    /// (the log's own, for JSON-RPC clients), which is not forwarded.
    pub fn envelope(&mut self, namespace: &str, e: &Event) -> Option<Envelope> {
        let (topic, event) = self.task_event(&e.body)?;
        Some(Envelope {
            timestamp: proto::timestamp(&e.ts),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(event),
        })
    }

    fn task_event(&mut self, body: &EventBody) -> Option<(&'static str, Any)> {
        let id = self.id.clone();
        let only = |topic, url| {
            (
                topic,
                Any::pack(
                    url,
                    &proto::TaskOnly {
                        container_id: id.clone(),
                    },
                ),
            )
        };
        // Every event of the core is named here: one containerd has no topic for
        // returns None, so that a new kind of event is a decision, not a default.
        let event = match body {
            EventBody::Created { pid } => {
                let m = proto::TaskCreate {
                    container_id: id.clone(),
                    bundle: self.bundle.clone(),
                    rootfs: self.create.rootfs.clone(),
                    io: Some(self.create.io.clone()),
                    checkpoint: self.create.checkpoint.clone(),
                    pid: *pid as u32,
                };
                ("/tasks/create", Any::pack("containerd.events.TaskCreate", &m))
            }
            EventBody::Started { pid } => {
                let m = proto::TaskStart {
                    container_id: id,
                    pid: *pid as u32,
                };
                ("/tasks/start", Any::pack("containerd.events.TaskStart", &m))
            }
            EventBody::ExecAdded { exec_id } => {
                let m = proto::TaskExecAdded {
                    container_id: id,
                    exec_id: exec_id.clone(),
                };
                (
                    "/tasks/exec-added",
                    Any::pack("containerd.events.TaskExecAdded", &m),
                )
            }
            EventBody::ExecStarted { exec_id, pid } => {
                let m = proto::TaskExecStarted {
                    container_id: id,
                    exec_id: exec_id.clone(),
                    pid: *pid as u32,
                };
                (
                    "/tasks/exec-started",
                    Any::pack("containerd.events.TaskExecStarted", &m),
                )
            }
            EventBody::Exit(record) => {
                // containerd names init by the container id.
                let process = if record.process == INIT_PROCESS {
                    self.init_exit = Some(record.clone());
                    id.clone()
                } else {
                    record.process.clone()
                };
                let m = proto::TaskExit {
                    container_id: id,
                    id: process,
                    pid: record.pid as u32,
                    exit_status: exit_status(record),
                    exited_at: proto::timestamp(&record.exited_at),
                };
                ("/tasks/exit", Any::pack("containerd.events.TaskExit", &m))
            }
            EventBody::Oom { .. } => only("/tasks/oom", "containerd.events.TaskOOM"),
            EventBody::Paused {} => only("/tasks/paused", "containerd.events.TaskPaused"),
            EventBody::Resumed {} => only("/tasks/resumed", "containerd.events.TaskResumed"),
            EventBody::Checkpointed { image_path } => {
                let m = proto::TaskCheckpointed {
                    container_id: id,
                    checkpoint: image_path.clone(),
                };
                (
                    "/tasks/checkpointed",
                    Any::pack("containerd.events.TaskCheckpointed", &m),
                )
            }
            // The shim's own news for JSON-RPC clients: nothing containerd knows.
            EventBody::StateDirFailing { .. }
            | EventBody::StateDirRecovered {}
            | EventBody::OutputDropped { .. }
            | EventBody::Upgraded { .. } => return None,
            EventBody::Deleted {} => {
                let exit = self.init_exit.as_ref();
                let m = proto::TaskDelete {
                    container_id: id,
                    pid: exit.map_or(0, |r| r.pid as u32),
                    exit_status: exit.map_or(0, exit_status),
                    exited_at: exit.and_then(|r| proto::timestamp(&r.exited_at)),
                    id: String::new(),
                };
                ("/tasks/delete", Any::pack("containerd.events.TaskDelete", &m))
            }
        };
        Some(event)
    }
}

/// The status containerd is given: the code (128+N for signal N); 255, containerd's
/// own "unknown", where the shim could not know it.
pub fn exit_status(r: &ExitRecord) -> u32 {
    r.status.map_or(255, |s| s as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn event(seq: u64, body: EventBody) -> Event {
        Event {
            seq,
            ts: "2026-11-28T13:04:53.000000005Z".into(),
            body,
        }
    }

    #[test]
    fn exits_name_init_by_the_container_and_feed_the_delete() {
        let mut info = TaskInfo::new("c1".into(), "/b".into());
        let record = ExitRecord {
            process: "init".into(),
            pid: 42,
            status: Some(137),
            signal: Some(9),
            signal_name: Some("SIGKILL".into()),
            exited_at: "2026-11-28T13:04:54Z".into(),
            oom_killed: false,
            reason: None,
        };
        let env = info.envelope("ns", &event(3, EventBody::Exit(record))).unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        assert_eq!(env.namespace, "ns");
        assert_eq!(env.timestamp.as_ref().map(|t| t.seconds), Some(1_795_871_093));
        let any = env.event.unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let exit = proto::TaskExit::decode(any.value.as_slice()).unwrap();
        assert_eq!((exit.id.as_str(), exit.pid, exit.exit_status), ("c1", 42, 137));
        let del = info.envelope("ns", &event(4, EventBody::Deleted {})).unwrap();
        assert_eq!(del.topic, "/tasks/delete");
        let del = proto::TaskDelete::decode(del.event.unwrap().value.as_slice()).unwrap();
        assert_eq!((del.pid, del.exit_status), (42, 137));
        assert_eq!(del.exited_at.map(|t| t.seconds), Some(1_795_871_094));
    }
}

/// [`TaskInfo`] in a hand-over record (prost messages as their encoding).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TaskInfoRecord {
    id: String,
    bundle: String,
    #[serde(with = "crate::handover::hex_list")]
    rootfs: Vec<Vec<u8>>,
    #[serde(with = "crate::handover::hex")]
    io: Vec<u8>,
    checkpoint: String,
    init_exit: Option<ExitRecord>,
}

impl TaskInfo {
    pub fn hand_over(&self) -> TaskInfoRecord {
        use prost::Message;
        TaskInfoRecord {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            rootfs: self.create.rootfs.iter().map(Message::encode_to_vec).collect(),
            io: self.create.io.encode_to_vec(),
            checkpoint: self.create.checkpoint.clone(),
            init_exit: self.init_exit.clone(),
        }
    }

    pub fn take_over(r: TaskInfoRecord) -> Result<TaskInfo, String> {
        use prost::Message;
        let bad = |e: prost::DecodeError| format!("the record's task info: {e}");
        Ok(TaskInfo {
            id: r.id,
            bundle: r.bundle,
            create: CreateInfo {
                rootfs: r
                    .rootfs
                    .iter()
                    .map(|m| Mount::decode(m.as_slice()))
                    .collect::<Result<_, _>>()
                    .map_err(bad)?,
                io: TaskIo::decode(r.io.as_slice()).map_err(bad)?,
                checkpoint: r.checkpoint,
            },
            init_exit: r.init_exit,
        })
    }
}
