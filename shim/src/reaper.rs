//! The one place children are reaped: after SIGCHLD, `waitpid(-1, WNOHANG)` until
//! nothing is left. Runtime invocations, container processes and orphans reparented
//! to the shim (it is a child subreaper) all come through here. [`pid_alive`] tells
//! whether a pid from a pid file is still a live process.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a child ended: `status` is the exit code, or 128+N when signal N killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    pub pid: i32,
    pub status: i32,
    pub signal: Option<i32>,
}

impl ChildExit {
    /// "exited with status 1" / "was killed by SIGKILL".
    pub fn describe(&self) -> String {
        match self.signal {
            Some(sig) => format!("was killed by {}", tether_protocol::signal_name(sig)),
            None => format!("exited with status {}", self.status),
        }
    }
}

/// Reaps every child that has ended.
pub fn reap_all() -> Vec<ChildExit> {
    let mut exits = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.push(ChildExit {
                pid: pid.as_raw(),
                status: code,
                signal: None,
            }),
            Ok(WaitStatus::Signaled(pid, sig, _)) => exits.push(ChildExit {
                pid: pid.as_raw(),
                status: 128 + sig as i32,
                signal: Some(sig as i32),
            }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            // Stopped/continued children are not exits.
            Ok(_) => continue,
            Err(e) => {
                crate::log!("waitpid failed: {e}");
                break;
            }
        }
    }
    exits
}

/// Alive and not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // The state letter follows the ")" that ends the command name.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}
