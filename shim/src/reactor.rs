//! The event loop: one thread, one mio poll, driving the core and the fronts. Each
//! token's owner is recorded in [`Routes`] (see `registry`), so the loop hands every
//! readiness event to whoever registered the fd. Nothing in the loop blocks.

use crate::core::{Core, Output};
use crate::fronts::Front;
use crate::handover::Adopting;
use crate::reaper;
use crate::registry::{Io, Owner, Readiness, Routes};
use crate::state_dir::StateDir;
use crate::upgrade::{self, ShimRecord, Upgrade};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io;
use std::time::{Duration, Instant};

/// How long a shim that is exiting keeps trying to hand its last answers over (and
/// what else a front still owes: events to containerd, its Shutdown).
const EXIT_FLUSH: Duration = Duration::from_secs(2);
/// While an upgrade waits for a runtime call to end: how often the loop looks.
const UPGRADE_POLL: Duration = Duration::from_millis(5);

pub struct Reactor {
    poll: Poll,
    routes: Routes,
    signals: Signals,
    signals_token: Token,
    fronts: Vec<Box<dyn Front>>,
    core: Core,
    dir: StateDir,
    upgrade: Option<Upgrade>,
    /// Which binary this is (`tether-shim`, `containerd-shim-tether-v2`): an upgrade
    /// takes only a binary of the same kind.
    kind: &'static str,
}

impl Reactor {
    pub fn new(core: Core, dir: StateDir) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut routes = Routes::default();
        let mut signals = Signals::new([SIGCHLD, SIGTERM])?;
        let signals_token =
            Io::new(poll.registry(), &mut routes).watch(Owner::Signals, &mut signals, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            routes,
            signals,
            signals_token,
            fronts: Vec::new(),
            core,
            dir,
            upgrade: None,
            kind: upgrade::KIND,
        })
    }

    /// Which binary this is (see `kind`); tether-shim unless set.
    pub fn set_kind(&mut self, kind: &'static str) {
        self.kind = kind;
    }

    /// The loop again in a new binary, from the old one's record (upgrade in place):
    /// the client that asked is answered and `upgraded` is published.
    pub fn take_over(
        record: ShimRecord,
        fds: &mut Adopting,
        paused_us: u64,
        kind: &'static str,
    ) -> Result<Box<Reactor>, String> {
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        let mut routes = Routes::default();
        let mut signals = Signals::new([SIGCHLD, SIGTERM]).map_err(|e| format!("signals: {e}"))?;
        let mut io = Io::new(poll.registry(), &mut routes);
        let signals_token = io
            .watch(Owner::Signals, &mut signals, Interest::READABLE)
            .map_err(|e| format!("signals: {e}"))?;
        let mut core = Core::take_over(record.core, fds, &mut io)?;
        let mut fronts = Vec::with_capacity(record.fronts.len());
        for (k, r) in record.fronts.into_iter().enumerate() {
            fronts.push(crate::fronts::take_over(r, Owner::Front(k), fds, &mut io)?);
        }
        let to = crate::handover::version();
        let result = tether_protocol::UpgradeResult {
            from: record.from.clone(),
            to: to.clone(),
            shim_pid: std::process::id(),
            paused_us,
        };
        crate::log!("took over from {} as {to} (paused {paused_us} us)", record.from);
        if let Some(front) = fronts.get_mut(record.asked_by) {
            front.upgrade_done(result, &mut core, &mut io);
        }
        core.publish_upgraded(record.from, to, &mut io);
        let dir = core.state_dir().clone();
        Ok(Box::new(Reactor {
            poll,
            routes,
            signals,
            signals_token,
            fronts,
            core,
            dir,
            upgrade: None,
            kind,
        }))
    }

    /// The core, for a front's set-up (tether-conmon sets its mode).
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// Also catch `signal` (SIGTERM and SIGCHLD always are) and offer it to the fronts
    /// (tether-conmon forwards SIGINT and SIGQUIT to the container as conmon does).
    pub fn catch_signal(&mut self, signal: i32) -> io::Result<()> {
        self.signals.add_signal(signal)
    }

    /// Adds a front; `make` gets its owner tag and the loop to register with.
    pub fn add_front<F: Front + 'static>(
        &mut self,
        make: impl FnOnce(Owner, &mut Io<'_>) -> io::Result<F>,
    ) -> io::Result<()> {
        let owner = Owner::Front(self.fronts.len());
        let mut io = Io::new(self.poll.registry(), &mut self.routes);
        let front = make(owner, &mut io)?;
        self.fronts.push(Box::new(front));
        Ok(())
    }

    /// Serves until the container is deleted or `shutdown` is called.
    #[inline(never)]
    pub fn run(mut self: Box<Self>) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut exiting: Option<(Instant, bool)> = None;
        // A child may have ended before the signal handler was installed.
        let early = reaper::reap_all();
        if !early.is_empty() {
            let mut io = Io::new(self.poll.registry(), &mut self.routes);
            self.core.on_child_exits(early, &mut io);
        }
        loop {
            let deadline = match exiting {
                Some((at, _)) => Some(at),
                None => self.next_deadline(),
            };
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let mut reap = false;
            // Requests and runtime calls allocate; relaying output does not.
            let mut allocated = false;
            let mut io = Io::new(self.poll.registry(), &mut self.routes);
            for event in events.iter() {
                let token = event.token();
                if token == self.signals_token {
                    for signal in self.signals.pending() {
                        if signal == SIGCHLD {
                            reap = true;
                        } else {
                            allocated = true;
                            offer_signal(&mut self.fronts, &mut self.core, signal, &mut io);
                        }
                    }
                    continue;
                }
                let ready = Readiness {
                    readable: event.is_readable() || event.is_read_closed(),
                    writable: event.is_writable() || event.is_write_closed(),
                    gone: event.is_write_closed() && event.is_read_closed(),
                };
                match io.owner(token) {
                    Some(Owner::Core) => self.core.on_ready(token, &mut io),
                    Some(Owner::Front(k)) => {
                        allocated = true;
                        if let Some(front) = self.fronts.get_mut(k) {
                            front.on_ready(token, ready, &mut self.core, &mut io);
                        }
                    }
                    Some(Owner::Signals) | None => {}
                }
            }
            if reap {
                self.core.on_child_exits(reaper::reap_all(), &mut io);
                allocated = true;
            }
            self.core.on_tick(&mut io);
            for front in &mut self.fronts {
                front.on_tick(&mut self.core, &mut io);
            }
            let outputs = self.core.take_outputs();
            if !outputs.is_empty() {
                for front in &mut self.fronts {
                    front.deliver(&outputs, &mut self.core, &mut io);
                }
            }
            for output in &outputs {
                if let Output::Exit { remove_state_dir } = output {
                    if exiting.is_none() {
                        exiting = Some((Instant::now() + EXIT_FLUSH, *remove_state_dir));
                        for front in &mut self.fronts {
                            front.stop_accepting(&mut io);
                        }
                    }
                }
            }
            step_upgrade(
                &mut self.upgrade,
                self.kind,
                exiting.is_some(),
                &mut self.core,
                &mut self.fronts,
                &mut io,
            );
            let flushed = self.fronts.iter().all(|f| f.is_flushed());
            if allocated && flushed {
                crate::memory::give_back();
            }
            if let Some((at, remove)) = exiting {
                let done = self.fronts.iter().all(|f| f.ready_to_exit());
                if done || Instant::now() >= at {
                    self.finish(remove);
                    return Ok(());
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.upgrade.is_some() {
            return Some(Instant::now() + UPGRADE_POLL);
        }
        self.fronts
            .iter()
            .filter_map(|f| f.next_deadline())
            .chain(self.core.next_deadline())
            .min()
    }

    fn finish(&self, remove_state_dir: bool) {
        let _ = std::fs::remove_file(self.dir.socket());
        if remove_state_dir {
            if let Err(e) = std::fs::remove_dir_all(&self.dir.root) {
                crate::log!("cannot remove {}: {e}", self.dir.root.display());
            }
        } else {
            let _ = std::fs::remove_file(self.dir.socket());
            crate::log!("shim exiting; state dir kept");
        }
    }
}

/// Takes an `upgrade` a front asked for, and carries out the one under way: it waits
/// while the core has a runtime call in flight (up to WAIT_LIMIT), then the shim
/// execs the new binary; whatever stops it is the asking client's answer. Never
/// inlined: the hand-over's frame would sit in the idle loop's for the shim's life.
#[inline(never)]
fn step_upgrade(
    upgrade: &mut Option<Upgrade>,
    kind: &'static str,
    exiting: bool,
    core: &mut Core,
    fronts: &mut [Box<dyn Front>],
    io: &mut Io<'_>,
) {
    if upgrade.is_none() {
        let asked = (0..fronts.len()).find_map(|k| fronts[k].take_upgrade_request().map(|r| (k, r)));
        let Some((k, req)) = asked else { return };
        let begun = if exiting {
            Err("the shim is exiting".to_string())
        } else {
            upgrade::begin(k, req, kind, core, fronts)
        };
        match begun {
            Ok(up) => {
                crate::log!("upgrade to {} ({}) asked", up.binary.display(), up.to);
                for front in fronts.iter_mut() {
                    front.hold(true);
                }
                *upgrade = Some(up);
            }
            Err(why) => return refuse_upgrade(k, &why, core, fronts, io),
        }
    }
    let Some(up) = upgrade.as_ref() else { return };
    let waits = core
        .hand_over_waits_for()
        .or_else(|| fronts.iter().find_map(|f| f.hand_over_waits_for()));
    let why = match waits {
        Some(_) if up.asked_at.elapsed() < upgrade::WAIT_LIMIT => return,
        Some(why) => format!("waited {:?}: {why}", upgrade::WAIT_LIMIT),
        None if exiting => "the shim is exiting".to_string(),
        None => upgrade::hand_over(up, core, fronts),
    };
    let k = up.front;
    *upgrade = None;
    refuse_upgrade(k, &why, core, fronts, io);
}

#[inline(never)]
fn refuse_upgrade(k: usize, why: &str, core: &mut Core, fronts: &mut [Box<dyn Front>], io: &mut Io<'_>) {
    crate::log!("upgrade refused: {why}; running on unchanged");
    if let Some(front) = fronts.get_mut(k) {
        front.upgrade_refused(why, core, io);
    }
    for front in fronts.iter_mut() {
        front.hold(false);
    }
}

/// A signal other than SIGCHLD: the first front that takes it has it; SIGTERM
/// no front takes is ignored (the container outlives its shim's signals).
#[inline(never)]
fn offer_signal(fronts: &mut [Box<dyn Front>], core: &mut Core, signal: i32, io: &mut Io<'_>) {
    for front in fronts.iter_mut() {
        if front.on_signal(signal, core, io) {
            return;
        }
    }
    if signal == SIGTERM {
        crate::log!("SIGTERM received and ignored: the container keeps running; use `shutdown` or `delete`");
    } else {
        crate::log!("signal {signal} received and ignored");
    }
}
