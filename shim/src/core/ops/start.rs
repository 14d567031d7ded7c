//! `start`: `runtime start` on a created container. If init exits before the call
//! returns, its exit waits for the `started` event (see `ordering`).

use super::super::{err, Answer, CoreError, ErrorKind, Reply, Ticket};
use super::{later, Core, OpKind};
use crate::registry::Io;
use crate::runtime::{RuntimeCall, RuntimeStdio};
use tether_protocol::{EventBody, PidResult};

impl Core {
    pub(in crate::core) fn start(&mut self, ticket: Ticket) -> Reply {
        if let Err(e) = self.can_start() {
            return Reply::Now(Err(e));
        }
        let Some(init) = self.init.as_mut() else {
            return Reply::Now(Err(err(ErrorKind::Internal, "init vanished")));
        };
        init.start_begun();
        let n = self.scratch_id();
        let started = self.spawn_op(
            OpKind::Start,
            ticket,
            RuntimeCall::Start,
            RuntimeStdio::default(),
            n,
            Vec::new(),
        );
        if started.is_err() {
            if let Some(init) = self.init.as_mut() {
                init.start_finished(false);
            }
        }
        later(started)
    }

    pub(super) fn finish_start(&mut self, ticket: Ticket, failure: Option<CoreError>, io: &mut Io<'_>) {
        let Some(init) = self.init.as_mut() else {
            return;
        };
        let started = init.start_finished(failure.is_none());
        if let Some(e) = failure {
            return self.out.reply(ticket, Err(e));
        }
        let exited = init.has_exited();
        init.io.process_started(io, exited);
        let pid = started.or(init.pid()).unwrap_or(0);
        self.out.publish(EventBody::Started { pid });
        self.out.reply(ticket, Ok(Answer::Pid(PidResult { pid })));
    }
}
