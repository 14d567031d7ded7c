//! The OOM watch: an fd that becomes readable when the OOM killer strikes in the
//! container's cgroup, and the kill count read from a held-open cgroup file.

use super::{keyed, Cgroup};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, RawFd};

impl Cgroup {
    /// The file that holds the OOM kill count, opened once (see [`read_oom_kills`]).
    pub fn oom_counter_file(&self) -> Option<fs::File> {
        let path = match self.v1("memory") {
            Some(d) => d.join("memory.oom_control"),
            None => self.v2_for("memory")?.join("memory.events"),
        };
        fs::File::open(path).ok()
    }

    /// How many processes the OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        if let Some(d) = self.v1("memory") {
            keyed(&d.join("memory.oom_control"), "oom_kill")
        } else {
            keyed(&self.v2_for("memory")?.join("memory.events"), "oom_kill")
        }
    }

    /// An fd that becomes readable when an OOM happens: v1, an eventfd registered on
    /// memory.oom_control; v2, an inotify watch on memory.events.
    pub fn oom_notifier(&self) -> Result<OomNotifier, String> {
        if let Some(d) = self.v1("memory") {
            let control = fs::File::open(d.join("memory.oom_control"))
                .map_err(|e| format!("memory.oom_control: {e}"))?;
            let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| format!("eventfd: {e}"))?;
            let line = format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd());
            fs::write(d.join("cgroup.event_control"), line)
                .map_err(|e| format!("cgroup.event_control: {e}"))?;
            return Ok(OomNotifier::V1 {
                efd,
                _control: control,
            });
        }
        let dir = self.v2_for("memory").ok_or("no memory cgroup")?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify: {e}"))?;
        inotify
            .add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
            .map_err(|e| format!("inotify on memory.events: {e}"))?;
        Ok(OomNotifier::V2 { inotify })
    }
}

/// The `oom_kill` count from an open memory.oom_control (v1) or memory.events (v2):
/// cgroup files are generated afresh by each read from offset 0.
pub fn read_oom_kills(file: &fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The OOM watch's fd; drain it after each readiness.
pub enum OomNotifier {
    V1 {
        efd: EventFd,
        /// memory.oom_control must stay open for the eventfd registration to live.
        _control: fs::File,
    },
    V2 {
        inotify: Inotify,
    },
}

impl OomNotifier {
    pub fn raw(&self) -> RawFd {
        match self {
            OomNotifier::V1 { efd, .. } => efd.as_fd().as_raw_fd(),
            OomNotifier::V2 { inotify } => inotify.as_fd().as_raw_fd(),
        }
    }

    pub fn drain(&self) {
        match self {
            OomNotifier::V1 { efd, .. } => while efd.read().is_ok() {},
            OomNotifier::V2 { inotify } => while inotify.read_events().is_ok_and(|e| !e.is_empty()) {},
        }
    }
}
