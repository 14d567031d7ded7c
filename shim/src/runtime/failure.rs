//! The runtime's own account of why a call failed, from its `--log-format json` log,
//! or, when it logged no error there, from what it printed on stderr.
//!
//! The runtimes differ (see "Runtime quirks" in docs/PROTOCOL.md): runc and crun log
//! `{"level":"error","msg":...}`; youki logs `{"level":"ERROR","message":...}` with an
//! anyhow chain in the message (`...\n\nCaused by:\n    0: ...`, and a stack backtrace
//! when RUST_BACKTRACE is set). Errors found before a runtime's logger is set up
//! (an unknown subcommand or flag, crun's `ps` on a container it does not know) go to
//! stderr only.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Only the end of a runtime log is read: its last error is there, and a runtime
/// that logged megabytes must not make the shim hold them.
const LOG_TAIL: u64 = 64 << 10;

/// The last error in the runtime's JSON log; else the first line the runtime wrote
/// on `stderr` (when it was captured); else the last line of its log; else a
/// description of how it ended. `how` says how the runtime ended ("exited with
/// status 1", "was killed by SIGKILL"), for when it said nothing.
pub fn failure_message(what: &str, log: &Path, stderr: Option<&Path>, how: &str) -> String {
    let printed = stderr.map(read_tail);
    failure_message_with(what, log, printed.as_deref(), how)
}

/// [`failure_message`], with what the runtime printed given as text: for create and
/// exec, whose stdout and stderr are the process's own pipes (youki's `exec` says
/// why it failed there, before its log is set up).
pub fn failure_message_with(what: &str, log: &Path, printed: Option<&str>, how: &str) -> String {
    let text = read_tail(log);
    let mut last_error = None;
    let mut last_line = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let field = |names: &[&str]| names.iter().find_map(|n| v.get(*n).and_then(|m| m.as_str()));
                let msg = field(&["msg", "message"]).unwrap_or(line).to_string();
                let level = field(&["level"]).unwrap_or("").to_ascii_lowercase();
                if level == "error" || level == "fatal" {
                    last_error = Some(msg.clone());
                }
                last_line = Some(msg);
            }
            Err(_) => last_line = Some(line.to_string()),
        }
    }
    // Its first line, and an anyhow "Caused by:" list after it (youki's form when it
    // fails before its logger is up): the cause is what the client needs.
    let printed = printed.and_then(|t| {
        let first = t.lines().map(str::trim).find(|l| !l.is_empty())?;
        let first = strip_prefix_ci(first, "error:").trim_start();
        Some(match t.split_once("\n\nCaused by:") {
            Some((_, causes)) => format!("{first}\n\nCaused by:{causes}"),
            None => first.to_string(),
        })
    });
    match last_error.or(printed).or(last_line).map(|m| tidy(&m)) {
        Some(msg) if msg.starts_with(what) => msg,
        Some(msg) if !msg.is_empty() => format!("{what} failed: {msg}"),
        _ => format!("{what} failed: it {how} and logged nothing"),
    }
}

/// One line from a runtime's message: youki's "error in executing command: " and
/// any stack backtrace dropped, an anyhow "Caused by:" list joined with ": ".
fn tidy(msg: &str) -> String {
    let msg = strip_prefix_ci(msg.trim(), "error in executing command: ");
    let msg = msg.split("\n\nStack backtrace:").next().unwrap_or(msg);
    let mut parts = msg.split("\n\nCaused by:");
    let head = parts.next().unwrap_or("").trim().to_string();
    let causes = parts
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            // "0: io operation failed" -> "io operation failed"
            match l.split_once(": ") {
                Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest,
                _ => l,
            }
        });
    std::iter::once(head.as_str())
        .chain(causes)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> &'a str {
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &s[prefix.len()..],
        _ => s,
    }
}

/// The last LOG_TAIL bytes, from the first whole line in them.
fn read_tail(log: &Path) -> String {
    let Ok(mut file) = File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL).read_to_end(&mut bytes);
    if start > 0 {
        // Drop the partial first line.
        let cut = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..cut);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-rt-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn prefers_the_last_error() {
        let dir = scratch("last");
        let log = dir.join("l.log");
        fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"rootfs /x does not exist\"}\n{\"level\":\"info\",\"msg\":\"bye\"}\n",
        )
        .unwrap();
        assert_eq!(
            failure_message("runc create", &log, None, "exited with status 1"),
            "runc create failed: rootfs /x does not exist"
        );
        fs::write(&log, "").unwrap();
        assert_eq!(
            failure_message("runc start", &log, None, "was killed by SIGKILL"),
            "runc start failed: it was killed by SIGKILL and logged nothing"
        );
        // A huge log: only its tail is read, and its last error still found.
        let mut big = "{\"level\":\"info\",\"msg\":\"noise\"}\n".repeat(100_000);
        big.push_str("{\"level\":\"error\",\"msg\":\"the real cause\"}\n");
        fs::write(&log, big).unwrap();
        assert_eq!(
            failure_message("runc exec", &log, None, "exited with status 1"),
            "runc exec failed: the real cause"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn youki_log_lines_become_one_line() {
        let dir = scratch("youki");
        let log = dir.join("l.log");
        // youki 0.7.0, verbatim (RUST_BACKTRACE=1 in its environment).
        fs::write(
            &log,
            concat!(
                r#"{"timestamp":"2026-11-29T14:17:49.141525Z","level":"ERROR","message":"failed to initialize container process: executable '/no/such/program' not found in $PATH","target":"libcontainer::process::container_intermediate_process"}"#,
                "\n",
                r#"{"timestamp":"2026-11-29T14:17:49.153793Z","level":"ERROR","message":"error in executing command: failed to create container: exec process failed with error error in executing process : executable '/no/such/program' not found in $PATH\n\nStack backtrace:\n   0: <unknown>\n   7: __libc_start_call_main\n             at ./csu/../sysdeps/nptl/libc_start_call_main.h:58:16","target":"youki"}"#,
                "\n"
            ),
        )
        .unwrap();
        assert_eq!(
            failure_message("youki create", &log, None, "exited with status 1"),
            "youki create failed: failed to create container: exec process failed with error error in executing process : executable '/no/such/program' not found in $PATH"
        );
        fs::write(
            &log,
            r#"{"timestamp":"2026-11-29T14:23:04.171299Z","level":"ERROR","message":"error in executing command: oci spec error\n\nCaused by:\n    0: io operation failed\n    1: No such file or directory (os error 2)","target":"youki"}"#,
        )
        .unwrap();
        assert_eq!(
            failure_message("youki create", &log, None, "exited with status 1"),
            "youki create failed: oci spec error: io operation failed: No such file or directory (os error 2)"
        );
        fs::write(
            &log,
            r#"{"timestamp":"2026-11-29T14:22:43.792361Z","level":"ERROR","message":"error in executing command: container not running\n\nCaused by:\n    failed operation due to incompatible container status: `Stopped`","target":"youki"}"#,
        )
        .unwrap();
        assert_eq!(
            failure_message("youki kill", &log, None, "exited with status 1"),
            "youki kill failed: container not running: failed operation due to incompatible container status: `Stopped`"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stderr_speaks_when_the_log_has_no_error() {
        let dir = scratch("stderr");
        let log = dir.join("l.log");
        let err = dir.join("l.err");
        // youki 0.7.0 has no `checkpoint` subcommand: clap says so on stderr only.
        fs::write(&log, "").unwrap();
        fs::write(
            &err,
            "error: unrecognized subcommand 'checkpoint'\n\n  tip: some similar subcommands exist: 'completion', 'checkpointt'\n\nUsage: youki [OPTIONS] [COMMAND]\n",
        )
        .unwrap();
        assert_eq!(
            failure_message("youki checkpoint", &log, Some(&err), "exited with status 2"),
            "youki checkpoint failed: unrecognized subcommand 'checkpoint'"
        );
        // A JSON error in the log wins over stderr.
        fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"container does not exist\"}\n",
        )
        .unwrap();
        fs::write(&err, "container does not exist\n").unwrap();
        assert_eq!(
            failure_message("runc ps", &log, Some(&err), "exited with status 1"),
            "runc ps failed: container does not exist"
        );
        // youki failing before its logger is up: anyhow's form on stderr, cause kept.
        fs::write(&log, "").unwrap();
        fs::write(
            &err,
            "Error: failed to seal /proc/self/exe\n\nCaused by:\n    Text file busy (os error 26)\n",
        )
        .unwrap();
        assert_eq!(
            failure_message("youki exec", &log, Some(&err), "exited with status 1"),
            "youki exec failed: failed to seal /proc/self/exe: Text file busy (os error 26)"
        );
        // Nothing anywhere.
        fs::write(&log, "").unwrap();
        fs::write(&err, "\n").unwrap();
        assert_eq!(
            failure_message("crun ps", &log, Some(&err), "was killed by SIGSEGV"),
            "crun ps failed: it was killed by SIGSEGV and logged nothing"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
