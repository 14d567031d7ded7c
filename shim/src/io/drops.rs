//! Output a destination refused (a file or log on a full disk): counted, reported at
//! most once a second, and the destination tried again at most once a second. The
//! process never waits for a destination that cannot take bytes.

use nix::errno::Errno;
use std::time::{Duration, Instant};

/// While dropping: how often the destination is tried again...
const RETRY: Duration = Duration::from_secs(1);
/// ...and how often the bytes dropped are reported.
pub const REPORT: Duration = Duration::from_secs(1);

/// A destination's failure that dropping can ride out: it is out of space or broken,
/// not gone.
pub fn refuses_bytes(e: Errno) -> bool {
    matches!(e, Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG | Errno::EIO)
}

/// Bytes dropped on one stream since the last report.
pub struct DropReport {
    pub bytes: u64,
    pub total: u64,
    pub error: String,
}

#[derive(Default)]
pub struct Drops {
    /// Set while the destination refuses bytes: when to try it again.
    retry_at: Option<Instant>,
    total: u64,
    unreported: u64,
    error: String,
    reported_at: Option<Instant>,
}

impl Drops {
    /// The destination refused `n` bytes with `e`: they are dropped.
    pub fn refused(&mut self, e: Errno, n: usize, what: &str) {
        if self.retry_at.is_none() {
            crate::log!("{what}: destination refuses output ({e}); dropping and counting");
        }
        self.error = e.desc().to_string();
        self.retry_at = Some(Instant::now() + RETRY);
        self.count(n);
    }

    /// `n` more bytes dropped while dropping.
    pub fn count(&mut self, n: usize) {
        self.total += n as u64;
        self.unreported += n as u64;
    }

    /// Dropping, and not yet time to try the destination again.
    pub fn dropping(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// The destination took bytes again.
    pub fn recovered(&mut self, what: &str) {
        if self.retry_at.take().is_some() {
            crate::log!("{what}: the destination takes output again");
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// What was dropped since the last report, if a report is due (`force`: now;
    /// `ended`: the stream ended or recovered, so no later report would come).
    pub fn take_report(&mut self, now: Instant, force: bool, ended: bool) -> Option<DropReport> {
        if self.unreported == 0 {
            return None;
        }
        let due =
            force || ended || self.retry_at.is_none() || self.reported_at.is_none_or(|t| now >= t + REPORT);
        if !due {
            return None;
        }
        self.reported_at = Some(now);
        Some(DropReport {
            bytes: std::mem::take(&mut self.unreported),
            total: self.total,
            error: self.error.clone(),
        })
    }

    pub fn report_due(&self) -> Option<Instant> {
        (self.unreported > 0).then(|| self.reported_at.map_or(Instant::now(), |t| t + REPORT))
    }
}

/// [`Drops`] in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DropsRecord {
    retry_in_ms: Option<u64>,
    total: u64,
    unreported: u64,
    error: String,
    reported_ms_ago: Option<u64>,
}

impl Drops {
    pub fn hand_over(&self) -> DropsRecord {
        use crate::handover::{ms_ahead, ms_since};
        DropsRecord {
            retry_in_ms: ms_ahead(self.retry_at),
            total: self.total,
            unreported: self.unreported,
            error: self.error.clone(),
            reported_ms_ago: ms_since(self.reported_at),
        }
    }

    pub fn take_over(r: DropsRecord) -> Drops {
        use crate::handover::{from_ms_ahead, from_ms_since};
        Drops {
            retry_at: from_ms_ahead(r.retry_in_ms),
            total: r.total,
            unreported: r.unreported,
            error: r.error,
            reported_at: from_ms_since(r.reported_ms_ago),
        }
    }
}
