//! The runtime's own account of why a call failed, from its `--log-format json` log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Only the end of a runtime log is read: its last error is there, and a runtime
/// that logged megabytes must not make the shim hold them.
const LOG_TAIL: u64 = 64 << 10;

/// The last error in the runtime's JSON log, or the last line of a non-JSON log,
/// else a description of how it ended. `how` says how the runtime ended ("exited
/// with status 1", "was killed by SIGKILL"), for when it logged nothing.
pub fn failure_message(what: &str, log: &Path, how: &str) -> String {
    let text = read_tail(log);
    let mut last_error = None;
    let mut last_line = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or(line).to_string();
                let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
                if level == "error" || level == "fatal" {
                    last_error = Some(msg.clone());
                }
                last_line = Some(msg);
            }
            Err(_) => last_line = Some(line.to_string()),
        }
    }
    match last_error.or(last_line) {
        Some(msg) if msg.starts_with(what) => msg,
        Some(msg) => format!("{what} failed: {msg}"),
        None => format!("{what} failed: it {how} and logged nothing"),
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

    #[test]
    fn prefers_the_last_error() {
        let dir = std::env::temp_dir().join(format!("tether-rt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("l.log");
        fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"rootfs /x does not exist\"}\n{\"level\":\"info\",\"msg\":\"bye\"}\n",
        )
        .unwrap();
        assert_eq!(
            failure_message("runc create", &log, "exited with status 1"),
            "runc create failed: rootfs /x does not exist"
        );
        fs::write(&log, "").unwrap();
        assert_eq!(
            failure_message("runc start", &log, "was killed by SIGKILL"),
            "runc start failed: it was killed by SIGKILL and logged nothing"
        );
        // A huge log: only its tail is read, and its last error still found.
        let mut big = "{\"level\":\"info\",\"msg\":\"noise\"}\n".repeat(100_000);
        big.push_str("{\"level\":\"error\",\"msg\":\"the real cause\"}\n");
        fs::write(&log, big).unwrap();
        assert_eq!(
            failure_message("runc exec", &log, "exited with status 1"),
            "runc exec failed: the real cause"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
