//! conmon's small files and messages: the sync pipe's JSON line, exit files.

use std::os::fd::OwnedFd;
use std::path::Path;

/// The sync pipe's key: `data` with `--api-version`; else (CRI-O) `exit_code` for an
/// exec, `pid` for a create.
pub fn sync_key(api_version: bool, exec: bool) -> &'static str {
    match (api_version, exec) {
        (true, _) => "data",
        (false, true) => "exit_code",
        (false, false) => "pid",
    }
}

/// `{"KEY": N}\n` or `{"KEY": N, "message": "TEXT"}\n`, in one write.
pub fn sync_message(fd: &OwnedFd, key: &str, data: i32, message: Option<&str>) -> std::io::Result<()> {
    let line = match message {
        Some(m) => format!(
            "{{\"{key}\": {data}, \"message\": {}}}\n",
            serde_json::to_string(m).unwrap_or_else(|_| "\"\"".to_string())
        ),
        None => format!("{{\"{key}\": {data}}}\n"),
    };
    nix::unistd::write(fd, line.as_bytes())
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Writes `text` (no newline: podman parses the whole file as a number) by temp file
/// and rename, so a watcher sees it complete.
pub fn write_or_log(path: &Path, text: &str) {
    if let Err(e) = crate::state_dir::write_atomic(path, text.as_bytes()) {
        crate::log!("cannot write {}: {e}", path.display());
    }
}
