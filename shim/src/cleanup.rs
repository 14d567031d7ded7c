//! `tether-shim cleanup --id ID`: the counterpart of containerd's `shim delete`, for a
//! shim that died (SIGKILL, OOM). It kills what is left of the container, runs
//! `runtime delete --force`, prints init's exit record on stdout (the real one if the
//! shim had written it, else one whose status is null: unknown, never a made-up 0)
//! and removes the state dir.

use crate::reaper::pid_alive;
use crate::runtime::{Runtime, RuntimeCall};
use crate::state_dir::{read_pid, LaunchOptions, StateDir};
use std::fs;
use std::process::{Command, Stdio};
use tether_protocol::{ExitRecord, INIT_PROCESS};

pub fn cleanup(dir: StateDir) -> Result<ExitRecord, String> {
    let options = dir.read_options()?;
    if let Some(pid) = dir.live_shim() {
        return Err(format!(
            "the shim for {} is alive (pid {pid}): use its `delete` or `shutdown` instead",
            options.id
        ));
    }
    let remains = clean_up_remains(&dir, &options)?;
    Ok(remains.recorded.unwrap_or_else(|| ExitRecord {
        process: INIT_PROCESS.to_string(),
        pid: remains.init_pid.unwrap_or(0),
        status: None,
        signal: None,
        signal_name: None,
        exited_at: tether_protocol::time::now(),
        oom_killed: false,
        reason: Some("the shim died before recording the exit; the status is unknown".to_string()),
    }))
}

/// What was left of a container whose shim is gone.
pub struct Remains {
    /// Init's exit record, if the shim had written it.
    pub recorded: Option<ExitRecord>,
    pub init_pid: Option<i32>,
    /// Init was still alive, and was killed (SIGKILL) here.
    pub killed: bool,
}

/// Kills what is left of the container, runs `runtime delete --force` and removes
/// the state dir. The shim must be gone.
pub fn clean_up_remains(dir: &StateDir, options: &LaunchOptions) -> Result<Remains, String> {
    let recorded: Option<ExitRecord> = fs::read(dir.exit_record(INIT_PROCESS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .or_else(|| exit_in_event_log(dir));
    let init_pid = read_pid(&dir.pid_file(INIT_PROCESS));
    let alive = init_pid.filter(|p| pid_alive(*p));
    if let Some(pid) = alive {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    runtime_delete_force(&options.runtime, &options.id)?;
    let _ = fs::remove_file(dir.socket());
    match fs::remove_dir_all(&dir.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {e}", dir.root.display()))
        }
        _ => {}
    }
    Ok(Remains {
        recorded,
        init_pid,
        killed: alive.is_some(),
    })
}

/// `runtime delete --force ID`, run to its end; a container the runtime does not know
/// is already gone, which is success. The runtime's log for the call is in the temp
/// dir: the state dir may be going meanwhile (a shim still exiting removes it), and
/// the bundle too (containerd removes it after `delete`).
pub fn runtime_delete_force(runtime: &Runtime, id: &str) -> Result<(), String> {
    let log = &std::env::temp_dir().join(format!("tether-delete-{}.log", std::process::id()));
    let argv = runtime.argv(log, &RuntimeCall::Delete { force: true }, id);
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run runtime {}: {e}", runtime.path))?;
    let outcome = if status.success() {
        Ok(())
    } else {
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (_, Some(sig)) => format!("was killed by {}", tether_protocol::signal_name(sig)),
            (code, None) => format!("exited with status {}", code.unwrap_or(-1)),
        };
        let msg = crate::runtime::failure_message("runtime delete", log, None, &how);
        if msg.contains("does not exist") || msg.contains("not exist") {
            Ok(())
        } else {
            Err(msg)
        }
    };
    let _ = fs::remove_file(log);
    outcome
}

/// Init's exit as the event log has it: clients were told this status, so it stands
/// when the record itself never reached the disk.
fn exit_in_event_log(dir: &StateDir) -> Option<ExitRecord> {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
        process: Option<String>,
    }
    let text = fs::read_to_string(dir.events()).ok()?;
    text.lines().rev().find_map(|line| {
        let k: Kind = serde_json::from_str(line).ok()?;
        if k.kind == "exit" && k.process.as_deref() == Some(INIT_PROCESS) {
            serde_json::from_str(line).ok()
        } else {
            None
        }
    })
}
