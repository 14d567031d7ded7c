//! Events to containerd: `Events.Forward` on containerd's ttrpc socket
//! (TTRPC_ADDRESS), dialled from the shim's own loop. Events are forwarded one at a
//! time in seq order and each is retried until containerd accepts it: a lost
//! connection, a refusal or a silent containerd only delay it (containerd's Go shim
//! gives up after five tries; tether never does). What is waiting is kept in memory
//! up to QUEUE_BOUND events; past that, the rest is read back from the core's
//! durable event log, so a long containerd outage costs no memory.

use super::events::TaskInfo;
use super::proto::{ForwardRequest, KeyValue, Request, Response};
use super::ttrpc::{self, Input, Link};
use crate::core::{Core, CoreError};
use crate::events::Stored;
use crate::registry::{Io, Owner};
use mio::net::UnixStream;
use mio::{Interest, Token};
use prost::Message;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tether_protocol::Event;

const QUEUE_BOUND: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A Forward that is not answered in this time is sent again on a new connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where waiting events are read back from: the core's durable event log.
pub trait Backlog {
    /// Events after `since`, and the seq they go up to.
    fn replay(&self, since: u64) -> Result<(u64, Vec<Stored>), CoreError>;
    /// The oldest seq still kept.
    fn first_seq(&self) -> u64;
}

impl Backlog for Core {
    fn replay(&self, since: u64) -> Result<(u64, Vec<Stored>), CoreError> {
        Core::replay(self, since)
    }

    fn first_seq(&self) -> u64 {
        Core::first_seq(self)
    }
}

struct InFlight {
    stream: u32,
    seq: u64,
    deadline: Instant,
}

pub struct Publisher {
    /// containerd's ttrpc socket; None: nobody to tell (the shim was not started by
    /// containerd), events stay in the log for JSON-RPC clients only.
    address: Option<PathBuf>,
    namespace: String,
    owner: Owner,
    link: Option<(Link, Token)>,
    next_stream: u32,
    /// The last seq containerd accepted.
    acked: u64,
    /// The newest seq handed to the publisher.
    newest: u64,
    /// Events after `acked`, contiguous, as far as kept in memory.
    queue: VecDeque<Rc<Event>>,
    /// Events were left in the log (the queue was full): read them back from there.
    spilled: bool,
    in_flight: Option<InFlight>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Publisher {
    pub fn new(address: Option<PathBuf>, namespace: String, owner: Owner) -> Publisher {
        Publisher {
            address,
            namespace,
            owner,
            link: None,
            next_stream: 1,
            acked: 0,
            newest: 0,
            queue: VecDeque::new(),
            spilled: false,
            in_flight: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.link.as_ref().is_some_and(|(_, t)| *t == token)
    }

    /// A new event of the core.
    pub fn push(&mut self, event: &Rc<Event>) {
        if self.address.is_none() || event.seq <= self.newest {
            return;
        }
        self.newest = event.seq;
        if self.spilled || self.queue.len() >= QUEUE_BOUND {
            self.spilled = true;
        } else {
            self.queue.push_back(event.clone());
        }
    }

    /// Everything handed over has been accepted.
    pub fn is_done(&self) -> bool {
        self.acked >= self.newest
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.in_flight {
            Some(f) => Some(f.deadline),
            None if !self.is_done() => self.retry_at,
            None => None,
        }
    }

    /// Sends the next event if none is in flight; handles timers.
    pub fn pump(&mut self, core: &dyn Backlog, info: &mut TaskInfo, io: &mut Io<'_>) {
        let now = Instant::now();
        if self.in_flight.as_ref().is_some_and(|f| f.deadline <= now) {
            crate::log!("containerd did not answer an event in {ANSWER_TIMEOUT:?}: reconnecting");
            self.lost(io);
        }
        if self.in_flight.is_some() || self.retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.retry_at = None;
        // Events containerd has no topic for are passed over (accepted at once).
        let (seq, envelope) = loop {
            let Some(event) = self.next_event(core) else {
                return;
            };
            match info.envelope(&self.namespace, &event) {
                Some(envelope) => break (event.seq, envelope),
                None => self.acked = event.seq,
            }
        };
        if self.link.is_none() && !self.connect(io) {
            return;
        }
        let request = Request {
            service: "containerd.services.events.ttrpc.v1.Events".to_string(),
            method: "Forward".to_string(),
            payload: ForwardRequest {
                envelope: Some(envelope),
            }
            .encode_to_vec(),
            timeout_nano: 0,
            metadata: vec![KeyValue {
                key: "containerd-namespace-ttrpc".to_string(),
                value: self.namespace.clone(),
            }],
        };
        let stream = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(2);
        let Some((link, _)) = self.link.as_mut() else {
            return;
        };
        let sent = link.queue(stream, ttrpc::REQUEST, &request.encode_to_vec()) && link.flush().is_ok();
        if !sent {
            return self.lost(io);
        }
        self.in_flight = Some(InFlight {
            stream,
            seq,
            deadline: now + ANSWER_TIMEOUT,
        });
    }

    /// The event after `acked`: from the queue, or read back from the log.
    fn next_event(&mut self, core: &dyn Backlog) -> Option<Rc<Event>> {
        while self.queue.front().is_some_and(|e| e.seq <= self.acked) {
            self.queue.pop_front();
        }
        if self.queue.is_empty() && self.spilled {
            self.refill(core);
        }
        self.queue.front().filter(|e| e.seq == self.acked + 1).cloned()
    }

    fn refill(&mut self, core: &dyn Backlog) {
        match core.replay(self.acked) {
            Ok((_, stored)) => {
                let all = stored.len() <= QUEUE_BOUND;
                for s in stored.iter().take(QUEUE_BOUND) {
                    match s.event() {
                        Some(e) => self.queue.push_back(Rc::new(e)),
                        None => {
                            crate::log!(
                                "event {} in the log is unreadable; containerd will not get it",
                                s.seq
                            );
                            break;
                        }
                    }
                }
                self.spilled = !all;
            }
            Err(e) => {
                // Only after thousands of events went unaccepted: say so, go on from
                // what the log still holds.
                crate::log!("events for containerd were lost from the log: {e}");
                self.acked = core.first_seq().saturating_sub(1);
            }
        }
    }

    fn connect(&mut self, io: &mut Io<'_>) -> bool {
        let Some(address) = self.address.as_ref() else {
            return false;
        };
        let connected = UnixStream::connect(address).and_then(|mut s| {
            let token = io.watch(self.owner, &mut s, Interest::READABLE | Interest::WRITABLE)?;
            Ok((s, token))
        });
        match connected {
            Ok((stream, token)) => {
                self.link = Some((Link::new(stream), token));
                self.next_stream = 1;
                true
            }
            Err(e) => {
                self.retry(&format!("cannot reach containerd at {}: {e}", address.display()));
                false
            }
        }
    }

    fn retry(&mut self, why: &str) {
        if self.backoff == FIRST_BACKOFF {
            crate::log!("{why}; retrying (event {} waits)", self.acked + 1);
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The connection is gone (or unusable): drop it, retry what was in flight.
    fn lost(&mut self, io: &mut Io<'_>) {
        if let Some((mut link, token)) = self.link.take() {
            io.unwatch(&mut link.stream, token);
        }
        self.in_flight = None;
        if !self.is_done() {
            self.retry("the connection to containerd closed");
        }
    }

    /// Readiness of the link: answers in, queued bytes out.
    pub fn on_ready(&mut self, core: &dyn Backlog, info: &mut TaskInfo, io: &mut Io<'_>) {
        loop {
            let Some((link, _)) = self.link.as_mut() else {
                return;
            };
            if link.flush().is_err() {
                return self.lost(io);
            }
            match link.next_input() {
                Input::Drained => return,
                Input::Closed => return self.lost(io),
                Input::Oversized { .. } => {}
                Input::Frame {
                    stream, kind, data, ..
                } => {
                    if kind == ttrpc::RESPONSE {
                        self.answered(stream, &data);
                        self.pump(core, info, io);
                    }
                }
            }
        }
    }

    fn answered(&mut self, stream: u32, data: &[u8]) {
        let Some(f) = self.in_flight.take_if(|f| f.stream == stream) else {
            return;
        };
        let status = Response::decode(data).map(|r| r.status.unwrap_or_default());
        match status {
            Ok(s) if s.code == ttrpc::code::OK => {
                self.acked = f.seq;
                self.backoff = FIRST_BACKOFF;
            }
            Ok(s) => self.retry(&format!(
                "containerd refused event {}: code {} {}",
                f.seq, s.code, s.message
            )),
            Err(e) => self.retry(&format!(
                "containerd's answer to event {} is unreadable: {e}",
                f.seq
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{err, ErrorKind};
    use tether_protocol::EventBody;

    /// A log holding seqs `first..=last`.
    struct Log {
        first: u64,
        last: u64,
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            ts: "2026-11-28T13:04:53Z".into(),
            body: EventBody::Paused {},
        }
    }

    impl Backlog for Log {
        fn replay(&self, since: u64) -> Result<(u64, Vec<Stored>), CoreError> {
            if since + 1 < self.first {
                return Err(err(ErrorKind::EventsCompacted, "compacted"));
            }
            let stored = (since + 1..=self.last)
                .map(|seq| Stored {
                    seq,
                    json: serde_json::to_string(&event(seq)).unwrap().into(),
                })
                .collect();
            Ok((self.last, stored))
        }

        fn first_seq(&self) -> u64 {
            self.first
        }
    }

    fn publisher() -> Publisher {
        Publisher::new(Some("/nonexistent".into()), "ns".into(), Owner::Core)
    }

    #[test]
    fn a_long_backlog_is_read_back_from_the_log_in_order() {
        let mut p = publisher();
        for seq in 1..=600 {
            p.push(&Rc::new(event(seq)));
        }
        assert_eq!(p.queue.len(), QUEUE_BOUND, "memory is bounded");
        assert!(p.spilled && !p.is_done());
        let log = Log { first: 1, last: 600 };
        for want in 1..=600 {
            let e = p.next_event(&log).expect("next event");
            assert_eq!(e.seq, want);
            assert!(p.queue.len() <= QUEUE_BOUND);
            p.acked = e.seq;
        }
        assert!(p.is_done() && !p.spilled);
        assert!(p.next_event(&log).is_none());
        p.push(&Rc::new(event(601)));
        assert_eq!(p.next_event(&log).map(|e| e.seq), Some(601));
    }

    #[test]
    fn events_past_the_logs_compaction_are_skipped_and_said() {
        let mut p = publisher();
        for seq in 1..=QUEUE_BOUND as u64 + 5 {
            p.push(&Rc::new(event(seq)));
        }
        p.queue.clear();
        let log = Log {
            first: 200,
            last: QUEUE_BOUND as u64 + 5,
        };
        p.next_event(&log);
        assert_eq!(p.acked, 199);
        assert_eq!(p.next_event(&log).map(|e| e.seq), Some(200));
    }

    #[test]
    fn without_containerd_nothing_is_kept() {
        let mut p = Publisher::new(None, "ns".into(), Owner::Core);
        p.push(&Rc::new(event(1)));
        assert!(p.queue.is_empty() && p.is_done());
    }
}

/// The publisher in a hand-over record: where it is in the event log. Its link to
/// containerd is not carried over (the new shim dials again); what containerd has not
/// accepted is read back from the log.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PublisherRecord {
    address: Option<PathBuf>,
    namespace: String,
    acked: u64,
    newest: u64,
}

impl Publisher {
    /// An event containerd has not answered yet: the hand-over waits for its answer,
    /// or containerd could get it twice.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|f| f.seq)
    }

    pub fn hand_over(&self) -> PublisherRecord {
        PublisherRecord {
            address: self.address.clone(),
            namespace: self.namespace.clone(),
            acked: self.acked,
            newest: self.newest,
        }
    }

    pub fn take_over(r: PublisherRecord, owner: Owner) -> Publisher {
        let mut p = Publisher::new(r.address, r.namespace, owner);
        p.acked = r.acked;
        p.newest = r.newest;
        p.spilled = r.newest > r.acked;
        p
    }
}
