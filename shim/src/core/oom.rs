//! The OOM watch of the container's cgroup: an `oom` event whenever the cgroup's
//! OOM-kill count rises, and each kill claimed by the SIGKILLed exit it caused.

use super::Core;
use crate::cgroup::{read_oom_kills, Cgroup, OomNotifier};
use crate::registry::{Io, Owner};
use mio::{Interest, Token};
use std::fs;
use tether_protocol::EventBody;

#[derive(Default)]
pub struct OomWatch {
    /// Found from init's /proc/PID/cgroup once it exists.
    pub cgroup: Option<Cgroup>,
    notifier: Option<(OomNotifier, Token)>,
    /// The cgroup file with the OOM kill count, held open: it is read at every exit.
    counter: Option<fs::File>,
    /// The count as last published.
    seen: u64,
    /// Kills not yet tied to an exit.
    unclaimed: u64,
}

impl OomWatch {
    pub fn owns(&self, token: Token) -> bool {
        self.notifier.as_ref().is_some_and(|(_, t)| *t == token)
    }

    pub fn drain(&self) {
        if let Some((n, _)) = &self.notifier {
            n.drain();
        }
    }

    /// Finds the cgroup of `pid` (init) and starts watching it.
    pub fn watch(&mut self, pid: i32, io: &mut Io<'_>) {
        let cgroup = match Cgroup::of_pid(pid) {
            Ok(cg) => cg,
            Err(e) => return crate::log!("no cgroup for init (stats and OOM watch off): {e}"),
        };
        self.seen = cgroup.oom_kills().unwrap_or(0);
        self.counter = cgroup.oom_counter_file();
        match cgroup.oom_notifier() {
            Ok(notifier) => match io.watch_fd(Owner::Core, notifier.raw(), Interest::READABLE) {
                Ok(token) => self.notifier = Some((notifier, token)),
                Err(e) => crate::log!("cannot watch for OOM: {e}"),
            },
            Err(e) => crate::log!("no OOM notifications (exits are still checked): {e}"),
        }
        self.cgroup = Some(cgroup);
    }

    /// The count now, if it rose since last time (the rise is then unclaimed).
    fn rise(&mut self) -> Option<u64> {
        let kills = match &self.counter {
            Some(file) => read_oom_kills(file),
            None => self.cgroup.as_ref().and_then(Cgroup::oom_kills),
        }?;
        if kills <= self.seen {
            return None;
        }
        self.unclaimed += kills - self.seen;
        self.seen = kills;
        Some(kills)
    }

    /// A process killed by SIGKILL (status 137) takes one unclaimed OOM kill: true if
    /// it did.
    pub fn claim(&mut self, status: Option<i32>) -> bool {
        if self.unclaimed > 0 && status == Some(137) {
            self.unclaimed -= 1;
            return true;
        }
        false
    }

    pub fn release(&mut self, io: &mut Io<'_>) {
        if let Some((notifier, token)) = self.notifier.take() {
            io.unwatch_fd(notifier.raw(), token);
        }
    }

    #[cfg(test)]
    pub fn count_from(&mut self, file: fs::File) {
        self.counter = Some(file);
    }
}

/// The OOM watch in a hand-over record: the cgroup and the counts. The new shim
/// makes its own notifier (the old one's registration ends with its fd); a kill in
/// between shows as a rise of the count, read at once after the take-over.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct OomRecord {
    cgroup: Option<Cgroup>,
    watched: bool,
    seen: u64,
    unclaimed: u64,
}

impl OomWatch {
    pub fn hand_over(&self) -> OomRecord {
        OomRecord {
            cgroup: self.cgroup.clone(),
            watched: self.notifier.is_some(),
            seen: self.seen,
            unclaimed: self.unclaimed,
        }
    }

    pub fn take_over(r: OomRecord, io: &mut Io<'_>) -> OomWatch {
        let mut watch = OomWatch {
            seen: r.seen,
            unclaimed: r.unclaimed,
            ..OomWatch::default()
        };
        if let Some(cgroup) = r.cgroup {
            watch.counter = cgroup.oom_counter_file();
            if r.watched {
                match cgroup.oom_notifier() {
                    Ok(notifier) => match io.watch_fd(Owner::Core, notifier.raw(), Interest::READABLE) {
                        Ok(token) => watch.notifier = Some((notifier, token)),
                        Err(e) => crate::log!("cannot watch for OOM: {e}"),
                    },
                    Err(e) => crate::log!("no OOM notifications (exits are still checked): {e}"),
                }
            }
            watch.cgroup = Some(cgroup);
        }
        watch
    }
}

impl Core {
    /// Publishes an `oom` event if the cgroup's OOM kill count rose.
    pub(super) fn check_oom(&mut self) {
        if let Some(kills) = self.oom.rise() {
            self.out.publish(EventBody::Oom { oom_kills: kills });
        }
    }
}
