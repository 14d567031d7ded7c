//! The containerd front in a hand-over record (upgrade in place, see
//! `crate::handover`): the task API's listener and connections (containerd's own
//! connection among them: it never notices), the calls waiting for the core, the
//! service's memory of the task (create's rootfs and stdio, pending execs, loggers),
//! and how far containerd has accepted the events.

use super::events::{TaskInfo, TaskInfoRecord};
use super::proto::TaskIo;
use super::publisher::{Publisher, PublisherRecord};
use super::service::{Asker, PendingExec, Service, Then};
use super::stdio::{Logger, LoggerRecord};
use super::ttrpc::{Link, LinkRecord};
use super::{Conn, Containerd};
use crate::core::Ticket;
use crate::fronts::listener::{Backlog, Listener};
use crate::handover::{Adopting, Passing};
use crate::registry::{Io, Owner};
use mio::Token;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
pub struct ContainerdRecord {
    listener: Option<std::os::fd::RawFd>,
    socket: PathBuf,
    /// Connections, numbered by their place here; and each one's calls waiting.
    conns: Vec<(LinkRecord, usize)>,
    /// Calls waiting for the core: ticket, connection, ttrpc stream, what then.
    pending: Vec<(Ticket, usize, u32, Then)>,
    service: ServiceRecord,
    publisher: PublisherRecord,
}

#[derive(Serialize, Deserialize)]
struct ServiceRecord {
    namespace: String,
    bundle: PathBuf,
    info: TaskInfoRecord,
    mounted: bool,
    loggers: Vec<LoggerRecord>,
    pending_execs: Vec<PendingExecRecord>,
    exec_io: Vec<ExecIoRecord>,
    shutdown: bool,
}

#[derive(Serialize, Deserialize)]
struct PendingExecRecord {
    id: String,
    spec: serde_json::Value,
    /// The TaskIo, encoded.
    #[serde(with = "crate::handover::hex")]
    io: Vec<u8>,
    /// Parked Waits: connection, ttrpc stream.
    waits: Vec<(usize, u32)>,
}

/// An exec's stdio as containerd gave it (for State), encoded.
#[derive(Serialize, Deserialize)]
struct ExecIoRecord {
    id: String,
    #[serde(with = "crate::handover::hex")]
    io: Vec<u8>,
}

fn task_io(bytes: &[u8]) -> Result<TaskIo, String> {
    TaskIo::decode(bytes).map_err(|e| format!("the record's exec stdio: {e}"))
}

impl Containerd {
    /// What the front still waits for before it can be handed over: an event
    /// containerd has not answered (sent again after the exec, it could count twice).
    pub fn hand_over_waits_for(&self) -> Option<String> {
        self.publisher
            .in_flight()
            .map(|seq| format!("containerd has not yet answered event {seq}"))
    }

    pub fn record(&self, fds: &mut Passing) -> Result<ContainerdRecord, String> {
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        let index = |t: &Token| tokens.iter().position(|x| x == t);
        let mut conns = Vec::with_capacity(tokens.len());
        for t in &tokens {
            if let Some(c) = self.conns.get(t) {
                conns.push((c.link.hand_over(fds)?, c.pending));
            }
        }
        let s = &self.service;
        let mut pending_execs = Vec::with_capacity(s.pending_execs.len());
        for (id, p) in &s.pending_execs {
            pending_execs.push(PendingExecRecord {
                id: id.clone(),
                spec: p.spec.clone(),
                io: p.io.encode_to_vec(),
                waits: p
                    .waits
                    .iter()
                    .filter_map(|w| Some((index(&w.token)?, w.stream)))
                    .collect(),
            });
        }
        Ok(ContainerdRecord {
            listener: self.listener.hand_over(fds)?,
            socket: self.socket.clone(),
            conns,
            pending: self
                .pending
                .iter()
                .filter_map(|(ticket, (who, then))| {
                    Some((*ticket, index(&who.token)?, who.stream, then.clone()))
                })
                .collect(),
            service: ServiceRecord {
                namespace: s.namespace.clone(),
                bundle: s.bundle.clone(),
                info: s.info.hand_over(),
                mounted: s.mounted,
                loggers: s
                    .loggers
                    .iter()
                    .map(|l| l.hand_over(fds))
                    .collect::<Result<_, _>>()?,
                pending_execs,
                exec_io: s
                    .exec_io
                    .iter()
                    .map(|(id, io)| ExecIoRecord {
                        id: id.clone(),
                        io: io.encode_to_vec(),
                    })
                    .collect(),
                shutdown: s.shutdown,
            },
            publisher: self.publisher.hand_over(),
        })
    }

    /// The front again, in the new binary, its sockets watched by the new loop.
    pub fn take_over(
        r: ContainerdRecord,
        owner: Owner,
        fds: &mut Adopting,
        io: &mut Io<'_>,
    ) -> Result<Containerd, String> {
        let listener = Listener::take_over(r.listener, owner, "task API client", fds, io)?;
        let mut conns = HashMap::new();
        let mut tokens = Vec::with_capacity(r.conns.len());
        let mut backlog = Backlog::default();
        for (link, pending) in r.conns {
            let mut link = Link::take_over(link, fds)?;
            let token = io
                .watch(
                    owner,
                    &mut link.stream,
                    mio::Interest::READABLE | mio::Interest::WRITABLE,
                )
                .map_err(|e| format!("cannot watch a task API connection: {e}"))?;
            conns.insert(token, Conn { link, pending });
            backlog.push(token);
            tokens.push(token);
        }
        let asker = |i: usize, stream: u32| tokens.get(i).map(|t| Asker { token: *t, stream });
        let pending = r
            .pending
            .into_iter()
            .filter_map(|(ticket, i, stream, then)| Some((ticket, (asker(i, stream)?, then))))
            .collect();
        let s = r.service;
        let mut service = Service::new(s.namespace, s.bundle, String::new());
        service.info = TaskInfo::take_over(s.info)?;
        service.mounted = s.mounted;
        service.loggers = s
            .loggers
            .into_iter()
            .map(|l| Logger::take_over(l, fds))
            .collect::<Result<_, _>>()?;
        for p in s.pending_execs {
            let waits = p
                .waits
                .iter()
                .filter_map(|(i, stream)| asker(*i, *stream))
                .collect();
            service.pending_execs.insert(
                p.id,
                PendingExec {
                    spec: p.spec,
                    io: task_io(&p.io)?,
                    waits,
                },
            );
        }
        for e in s.exec_io {
            service.exec_io.insert(e.id, task_io(&e.io)?);
        }
        service.shutdown = s.shutdown;
        Ok(Containerd {
            listener,
            socket: r.socket,
            conns,
            pending,
            backlog,
            service,
            publisher: Publisher::take_over(r.publisher, owner),
        })
    }
}
