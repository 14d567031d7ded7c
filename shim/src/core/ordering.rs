//! When an exit may be published. The rules containerd's users depend on, in one
//! place:
//! - start before exit: a process's start event precedes its exit, even when it
//!   exits before the runtime call that starts it returns;
//! - exit after output: its exit waits until its output has been relayed to the end;
//!   a pipe that something else holds open (a process that outlived it) gets a grace
//!   period, but only while nothing is waiting in it: output behind a slow reader is
//!   never cut off, however long it takes;
//! - init last: init's exit waits for the exit of every exec;
//! - OOM first: an `oom` event precedes the exit of the process it killed.

use super::process::Process;
use super::Core;
use crate::registry::Io;
use std::time::{Duration, Instant};

/// How long an exit waits for its output pipes to reach EOF while nothing is waiting
/// in them: past it, something that outlived the process holds them open and silent,
/// and the exit goes out without waiting further (the relay carries on).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why an exit is (not yet) publishable.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not exited, or already published.
    Nothing,
    /// Its start call has not returned.
    AwaitStart,
    /// Its output is still flowing: within the grace period, or bytes wait in it.
    AwaitOutput,
    Publish,
    /// Publish, though its output is still open (held open and silent past the grace
    /// period).
    PublishOutputOpen,
}

/// The rules for one process (init's extra rule is in [`execs_settled`]).
pub fn verdict(p: &Process, now: Instant) -> Verdict {
    let Some(reaped_at) = p.exit_reaped_at() else {
        return Verdict::Nothing;
    };
    if !p.exit_unblocked_by_start() {
        return Verdict::AwaitStart;
    }
    if p.io.output_drained() {
        Verdict::Publish
    } else if now < reaped_at + OUTPUT_GRACE || p.io.output_waiting() {
        Verdict::AwaitOutput
    } else {
        Verdict::PublishOutputOpen
    }
}

/// Every exec's exit is published: init's exit may follow. (An exec still being
/// launched holds it back too: it either fails and goes, or runs and is killed.)
pub fn execs_settled<'a>(mut execs: impl Iterator<Item = &'a Process>) -> bool {
    execs.all(|e| e.is_published())
}

/// The earliest grace deadline among exits still waiting for their output, or drop
/// report due. An exit whose output has bytes waiting needs no timer: the relay's
/// progress wakes the loop, and the grace is looked at again then.
pub fn next_deadline<'a>(procs: impl Iterator<Item = &'a Process>) -> Option<Instant> {
    procs
        .flat_map(|p| {
            let grace = p
                .exit_reaped_at()
                .filter(|_| p.exit_unblocked_by_start() && !p.io.output_waiting())
                .map(|t| t + OUTPUT_GRACE);
            grace.into_iter().chain(p.io.due())
        })
        .min()
}

impl Core {
    /// Publishes what is due: drop reports, every exit whose ordering rules are now
    /// met; then finishes a `delete` that waited for init's exit.
    pub(super) fn try_publish(&mut self, io: &mut Io<'_>) {
        let now = Instant::now();
        for proc in self.init.iter_mut().chain(self.execs.values_mut()) {
            report_drops(proc, now, false, &mut self.out);
            let exited = proc.has_exited();
            proc.io.on_tick(now, exited, io);
        }
        if self.processes().any(|p| p.exit_reaped_at().is_some()) {
            // An OOM kill is published before the exit it caused: look once more
            // now, the cgroup may be gone by the time its notification is read.
            self.check_oom();
        }
        for exec in self.execs.values_mut() {
            publish_if_ready(exec, now, &mut self.oom, &mut self.out, io);
        }
        if execs_settled(self.execs.values()) {
            if let Some(init) = self.init.as_mut() {
                publish_if_ready(init, now, &mut self.oom, &mut self.out, io);
            }
        }
        self.maybe_finish_delete(io);
    }
}

fn publish_if_ready(
    proc: &mut Process,
    now: Instant,
    oom: &mut super::oom::OomWatch,
    out: &mut super::outbox::Outbox,
    io: &mut Io<'_>,
) {
    match verdict(proc, now) {
        Verdict::Nothing | Verdict::AwaitStart | Verdict::AwaitOutput => return,
        Verdict::PublishOutputOpen => crate::log!(
            "{}: output still open {OUTPUT_GRACE:?} after exit; publishing the exit",
            proc.name
        ),
        Verdict::Publish => {}
    }
    if oom.claim(proc.exit_status()) {
        proc.mark_oom_killed();
    }
    // What its output lost is told before its exit.
    report_drops(proc, now, true, out);
    out.publish_exit(proc);
    if let Some(capture) = proc.capture.take() {
        if let (Some(ticket), Some(record)) = (capture.ticket, proc.published_exit().cloned()) {
            let answer = super::ops::exec::capture_answer(proc, &record, capture.timed_out);
            out.reply(ticket, Ok(answer));
        }
    }
    proc.io.release_after_exit(io);
}

/// `output_dropped` for each stream of `proc` whose report is due.
fn report_drops(proc: &mut Process, now: Instant, force: bool, out: &mut super::outbox::Outbox) {
    for (stream, sink, r) in proc.io.take_drop_reports(now, force) {
        out.publish(tether_protocol::EventBody::OutputDropped {
            process: proc.name.clone(),
            stream: stream.name().to_string(),
            sink: sink.to_string(),
            bytes: r.bytes,
            total: r.total,
            error: r.error,
        });
    }
}
