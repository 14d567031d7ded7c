//! The on-disk layout of a shim's state directory (default `/run/tether/ID`, 0700).
//! A restarted daemon rebuilds its view of the container from these files alone;
//! docs/PROTOCOL.md documents them.

use crate::runtime::Runtime;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/run/tether";
const MAX_ID_LEN: usize = 128;
/// The longest path a Unix socket can be bound or reached at (sun_path, with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Where sockets go whose path in the state dir would be too long (a long id, a deep
/// state root): named by a hash of the state dir, so their length never grows.
pub const SHORT_SOCKET_DIR: &str = "/run/tether/s";

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

/// What the shim was started with; saved as `options.json` for `cleanup` and for
/// daemons that rebuild their view from disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub runtime: Runtime,
}

/// A pid file's pid, if it holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
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

    /// The socket clients connect to: `STATE_DIR/shim.sock`, or, when that path is
    /// too long for a socket, `/run/tether/s/HASH.sock` (and `STATE_DIR/shim.sock` is
    /// a symlink to it).
    pub fn socket(&self) -> PathBuf {
        self.fitting(self.root.join("shim.sock"), "")
    }

    /// `STATE_DIR/shim.sock`: the socket itself, or a symlink to it.
    pub fn socket_link(&self) -> PathBuf {
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
    pub fn read_options(&self) -> Result<LaunchOptions, String> {
        fs::read(self.options())
            .map_err(|e| format!("cannot read {}: {e}", self.options().display()))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.options().display()))
            })
    }
    /// The pid in `shim.pid`, if that shim is alive.
    pub fn live_shim(&self) -> Option<i32> {
        read_pid(&self.shim_pid()).filter(|p| crate::reaper::pid_alive(*p))
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
    /// Where the runtime sends a process's PTY master (short enough for a socket).
    pub fn console_socket(&self, process: &str) -> PathBuf {
        let stem = file_stem(process);
        self.fitting(self.root.join(format!("{stem}-console.sock")), &stem)
    }

    /// A process's attach socket: `attach` for init (conmon's name), `exec-ID-attach`.
    pub fn attach_socket(&self, process: &str) -> PathBuf {
        let name = if process == tether_protocol::INIT_PROCESS {
            "attach".to_string()
        } else {
            format!("{}-attach", file_stem(process))
        };
        self.fitting(self.root.join(&name), &name)
    }

    /// `preferred` if a socket can live there, else a short path that names the
    /// state dir (and `what` in it) by hash.
    fn fitting(&self, preferred: PathBuf, what: &str) -> PathBuf {
        if preferred.as_os_str().len() <= MAX_SOCKET_PATH {
            return preferred;
        }
        let mut name = format!("{:016x}", fnv1a(self.root.as_os_str().as_encoded_bytes()));
        if !what.is_empty() {
            name.push_str(&format!("-{:016x}", fnv1a(what.as_bytes())));
        }
        Path::new(SHORT_SOCKET_DIR).join(name + ".sock")
    }
    /// A file of one runtime invocation alone (`rt-7-create.log`, `rt-9-ps.out`,
    /// `rt-12-exec.json`): its log, input or output, removed when it ends.
    pub fn scratch(&self, n: u64, sub: &str, ext: &str) -> PathBuf {
        self.root.join(format!("rt-{n}-{sub}.{ext}"))
    }
}

/// FNV-1a, 64 bits: a short, stable name for a long path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `init` stays `init`; exec ids are prefixed so none can collide with the shim's files.
fn file_stem(process: &str) -> String {
    if process == tether_protocol::INIT_PROCESS {
        process.to_string()
    } else {
        format!("exec-{process}")
    }
}

/// A file to be written atomically later, whose temp file is made now, with its
/// space already taken. An exit record is prepared when its process starts, so that
/// at exit it is one write and one rename (about 25 us on ext4 instead of 80: exits
/// are on the latency path), and so that it can still be written when the disk has
/// filled up meanwhile (it overwrites space it already holds).
pub struct PreparedFile {
    path: PathBuf,
    tmp: PathBuf,
    file: fs::File,
}

/// Bytes reserved in a prepared file: an exit record is about 200.
const PREPARED_RESERVE: usize = 1024;

/// `path`'s temp file beside it (`.tmp`), made afresh, 0600.
fn open_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let tmp = path.with_extension("tmp");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    Ok((tmp, file))
}

impl PreparedFile {
    pub fn create(path: &Path) -> io::Result<PreparedFile> {
        let (tmp, mut file) = open_temp(path)?;
        file.write_all(&[b' '; PREPARED_RESERVE])?;
        Ok(PreparedFile {
            path: path.to_path_buf(),
            tmp,
            file,
        })
    }

    /// Writes `bytes` over the reserved space and renames the file into place.
    pub fn commit(self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, 0)?;
        self.file.set_len(bytes.len() as u64)?;
        fs::rename(&self.tmp, &self.path)
    }

    /// Never committed: the temp file goes.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// A [`PreparedFile`] in a hand-over record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PreparedFileRecord {
    path: PathBuf,
    tmp: PathBuf,
    file: std::os::fd::RawFd,
}

impl PreparedFile {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<PreparedFileRecord, String> {
        Ok(PreparedFileRecord {
            path: self.path.clone(),
            tmp: self.tmp.clone(),
            file: fds.pass(&self.file)?,
        })
    }

    pub fn take_over(
        r: PreparedFileRecord,
        fds: &mut crate::handover::Adopting,
    ) -> Result<PreparedFile, String> {
        Ok(PreparedFile {
            path: r.path,
            tmp: r.tmp,
            file: fs::File::from(fds.take(r.file)?),
        })
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never
/// a part: write a temp file beside it, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (tmp, mut file) = open_temp(path)?;
    file.write_all(bytes)?;
    fs::rename(&tmp, path)
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
    fn socket_paths_never_outgrow_a_socket() {
        let short = StateDir::new(PathBuf::from("/run/tether/web1"));
        assert_eq!(short.socket(), PathBuf::from("/run/tether/web1/shim.sock"));
        let long = StateDir::new(Path::new("/run/tether").join("x".repeat(128)));
        let sock = long.socket();
        assert!(sock.as_os_str().len() <= MAX_SOCKET_PATH, "{}", sock.display());
        assert!(sock.starts_with(SHORT_SOCKET_DIR));
        let console = long.console_socket(&"e".repeat(128));
        assert!(console.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_ne!(console, long.console_socket("init"));
        assert_ne!(
            sock,
            StateDir::new(Path::new("/run/tether").join("y".repeat(128))).socket()
        );
    }

    #[test]
    fn exec_files_cannot_collide_with_init() {
        let d = StateDir::new(PathBuf::from("/s"));
        assert_eq!(d.pid_file("init"), PathBuf::from("/s/init.pid"));
        assert_eq!(d.pid_file("init2"), PathBuf::from("/s/exec-init2.pid"));
        assert_eq!(d.fifo("e1", "stdout"), PathBuf::from("/s/exec-e1-stdout"));
    }
}
