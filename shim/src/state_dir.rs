//! The on-disk layout of a shim's state directory (default `/run/tether/ID`, 0700).
//! A restarted daemon rebuilds its view of the container from these files alone;
//! docs/PROTOCOL.md documents them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/run/tether";
const MAX_ID_LEN: usize = 128;

/// Container and exec ids: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 bytes, so an id
/// is always one plain path component and a safe runc container id.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    let first_ok = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if id.is_empty() || id.len() > MAX_ID_LEN || !first_ok || !rest_ok {
        return Err(format!(
            "{what} {id:?} is not valid: use 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    /// Makes the directory (0700); its parent is made as needed.
    pub fn create(&self) -> io::Result<()> {
        if let Some(parent) = self.root.parent() {
            fs::DirBuilder::new().recursive(true).mode(0o711).create(parent)?;
        }
        fs::DirBuilder::new().mode(0o700).create(&self.root)
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("shim.sock")
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.root.join("shim.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("shim.log")
    }
    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    /// The launch options, so `cleanup` can find the runtime after the shim is gone.
    pub fn options(&self) -> PathBuf {
        self.root.join("options.json")
    }
    /// `init.pid` or `exec-ID.pid`: written by the runtime.
    pub fn pid_file(&self, process: &str) -> PathBuf {
        self.root.join(format!("{}.pid", file_stem(process)))
    }
    pub fn exits_dir(&self) -> PathBuf {
        self.root.join("exits")
    }
    /// `exits/init.json` or `exits/exec-ID.json`, written before the exit event.
    pub fn exit_record(&self, process: &str) -> PathBuf {
        self.exits_dir().join(format!("{}.json", file_stem(process)))
    }
    /// FIFOs the shim makes when the client names none: `init-stdout`, `exec-ID-stdin`.
    pub fn fifo(&self, process: &str, stream: &str) -> PathBuf {
        self.root.join(format!("{}-{stream}", file_stem(process)))
    }
    pub fn console_socket(&self, process: &str) -> PathBuf {
        self.root.join(format!("{}-console.sock", file_stem(process)))
    }
    /// A file of one runtime invocation alone (`rt-7-create.log`, `rt-9-ps.out`,
    /// `rt-12-exec.json`): its log, input or output, removed when it ends.
    pub fn scratch(&self, n: u64, sub: &str, ext: &str) -> PathBuf {
        self.root.join(format!("rt-{n}-{sub}.{ext}"))
    }
}

/// `init` stays `init`; exec ids are prefixed so none can collide with the shim's files.
fn file_stem(process: &str) -> String {
    if process == tether_protocol::INIT_PROCESS {
        process.to_string()
    } else {
        format!("exec-{process}")
    }
}

/// A file to be written atomically later, whose temp file is made now: an exit
/// record is prepared when its process starts, so writing it at exit is one write and
/// one rename (about 25 us on ext4 instead of 80: exits are on the latency path).
pub struct PreparedFile {
    path: PathBuf,
    tmp: PathBuf,
    file: fs::File,
}

impl PreparedFile {
    pub fn create(path: &Path) -> io::Result<PreparedFile> {
        let tmp = path.with_extension("tmp");
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(PreparedFile {
            path: path.to_path_buf(),
            tmp,
            file,
        })
    }

    /// Writes `bytes` and renames the file into place.
    pub fn commit(mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        fs::rename(&self.tmp, &self.path)
    }

    /// Never committed: the temp file goes.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never
/// a part: write a temp file beside it, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    PreparedFile::create(path)?.commit(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("id", "web-1.a_b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(validate_id("id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn exec_files_cannot_collide_with_init() {
        let d = StateDir::new(PathBuf::from("/s"));
        assert_eq!(d.pid_file("init"), PathBuf::from("/s/init.pid"));
        assert_eq!(d.pid_file("init2"), PathBuf::from("/s/exec-init2.pid"));
        assert_eq!(d.fifo("e1", "stdout"), PathBuf::from("/s/exec-e1-stdout"));
    }
}
