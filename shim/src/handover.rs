//! Upgrade in place: a shim replaces its own binary under running containers.
//!
//! Everything a shim holds is an fd or a value, and a process keeps its pid (and so
//! stays its containers' parent and subreaper) across `execve`. The running shim
//! checks that the new binary accepts its hand-over version, writes its state as a
//! versioned record into a memfd, clears close-on-exec on every fd the record names,
//! and execs `BINARY take-over --record-fd N`. The new binary rebuilds its loop from
//! the record and carries on; bytes that waited in the shim's buffers are in the
//! record, bytes in pipes and sockets never left the kernel, and a child that ended
//! meanwhile is a zombie the new loop reaps. If the exec fails, the old shim puts
//! close-on-exec back and runs on as it was.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The record layout this binary writes.
pub const HANDOVER_VERSION: u32 = 1;

/// The build's tag, part of its version string. A static read at run time (not a
/// constant folded into the code) so that a copy of the binary can be told apart by
/// patching these bytes: the upgrade tests make their "other version" so.
#[used]
static BUILD_TAG: [u8; 48] = *b"tether-build-tag:dev\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
/// The hand-over versions this binary takes over from (one digit each), patchable
/// the same way (a test makes a binary that accepts no version this one writes).
#[used]
static ACCEPTS_TAG: [u8; 32] = *b"tether-handover-accepts:1\0\0\0\0\0\0\0";

fn tag_value<'a>(tag: &'a [u8], prefix: &str) -> &'a str {
    let tag = std::hint::black_box(tag);
    let rest = tag.get(prefix.len()..).unwrap_or_default();
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("?")
}

/// This binary's version: the crate's, and its build tag.
pub fn version() -> String {
    format!(
        "{}+{}",
        env!("CARGO_PKG_VERSION"),
        tag_value(&BUILD_TAG, "tether-build-tag:")
    )
}

/// The hand-over versions this binary can take over from.
pub fn accepted_versions() -> Vec<u32> {
    tag_value(&ACCEPTS_TAG, "tether-handover-accepts:")
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// What `BINARY handover-versions` prints: `KIND VERSION handover V[,V...]`.
pub fn versions_line(kind: &str) -> String {
    let accepts: Vec<String> = accepted_versions().iter().map(u32::to_string).collect();
    format!("{kind} {} handover {}", version(), accepts.join(","))
}

/// How long the new binary may take to say which versions it accepts.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The version of `binary` if it is a `kind` shim that takes over from
/// HANDOVER_VERSION; else why not, naming the binary. (Runs it once, briefly: the
/// loop waits for that, bounded by CHECK_TIMEOUT.)
pub fn check_binary(binary: &Path, kind: &str) -> Result<String, String> {
    let shown = binary.display();
    let meta = std::fs::metadata(binary).map_err(|e| format!("binary {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("binary {shown} is not a regular file"));
    }
    let mut child = std::process::Command::new(binary)
        .arg("handover-versions")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env_remove("GLIBC_TUNABLES")
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // The child is reaped here, by pid: the shim's reaper must not see it.
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} handover-versions did not answer within {CHECK_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let line = out.lines().next().unwrap_or("").trim();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (their_kind, their_version, accepts) = match fields.as_slice() {
        [k, v, "handover", a] if status.success() => (*k, *v, *a),
        _ => {
            return Err(format!(
                "{shown} is not a tether shim that can take over: `{shown} handover-versions` {}",
                if status.success() {
                    format!("printed {line:?}")
                } else {
                    format!("failed ({status})")
                }
            ))
        }
    };
    if their_kind != kind {
        return Err(format!("{shown} is a {their_kind}, not a {kind}"));
    }
    let fits = accepts
        .split(',')
        .any(|v| v.parse::<u32>() == Ok(HANDOVER_VERSION));
    if !fits {
        return Err(format!(
            "{shown} ({their_version}) takes over from hand-over versions {accepts}; this shim writes version {HANDOVER_VERSION}"
        ));
    }
    Ok(their_version.to_string())
}

/// The binary this shim was started from, as that path is now on disk.
pub fn own_binary() -> Result<PathBuf, String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let shown = exe.display().to_string();
    Ok(PathBuf::from(shown.strip_suffix(" (deleted)").unwrap_or(&shown)))
}

/// Bytes in a record: hex, so the record stays one plain JSON document.
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 15)] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(serde::de::Error::custom("not a hex digit")),
        };
        text.as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [h, l] => Ok(digit(*h)? << 4 | digit(*l)?),
                _ => Err(serde::de::Error::custom("odd number of hex digits")),
            })
            .collect()
    }
}

/// Several byte strings (queued messages), each as hex.
pub mod hex_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Item(#[serde(with = "super::hex")] Vec<u8>);

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let items: Vec<Item> = list.iter().map(|b| Item(b.clone())).collect();
        items.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<Item>::deserialize(d)?.into_iter().map(|i| i.0).collect())
    }
}

/// A deadline in a record: how far ahead of the hand-over it was, in milliseconds
/// (an `Instant` means nothing to another process).
pub fn ms_ahead(at: Option<Instant>) -> Option<u64> {
    at.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
}

pub fn from_ms_ahead(ms: Option<u64>) -> Option<Instant> {
    ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

/// A moment in the past in a record: how long before the hand-over, in milliseconds.
pub fn ms_since(at: Option<Instant>) -> Option<u64> {
    at.map(|t| t.elapsed().as_millis() as u64)
}

pub fn from_ms_since(ms: Option<u64>) -> Option<Instant> {
    ms.map(|ms| {
        let now = Instant::now();
        now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
    })
}

/// The old shim's side: every fd the record names, kept open across the exec.
#[derive(Default)]
pub struct Passing {
    fds: Vec<RawFd>,
}

impl Passing {
    /// Keeps `fd` open across the exec; returns its number for the record.
    pub fn pass(&mut self, fd: &impl AsRawFd) -> Result<RawFd, String> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let raw = fd.as_raw_fd();
        fcntl(raw, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| format!("fd {raw}: {e}"))?;
        self.fds.push(raw);
        Ok(raw)
    }

    pub fn pass_opt(&mut self, fd: Option<&impl AsRawFd>) -> Result<Option<RawFd>, String> {
        fd.map(|fd| self.pass(fd)).transpose()
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.fds.clone()
    }

    /// The exec failed: the fds close on exec again, as before.
    pub fn undo(&self) {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        for fd in &self.fds {
            let _ = fcntl(*fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
    }
}

/// The new shim's side: the fds the record names, each taken once.
pub struct Adopting {
    left: BTreeSet<RawFd>,
}

impl Adopting {
    pub fn new(fds: &[RawFd]) -> Adopting {
        Adopting {
            left: fds.iter().copied().collect(),
        }
    }

    pub fn take(&mut self, fd: RawFd) -> Result<OwnedFd, String> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        if !self.left.remove(&fd) {
            return Err(format!("the record names fd {fd} twice, or not in its list"));
        }
        let owned = crate::sys::own_inherited_fd(fd).ok_or_else(|| format!("fd {fd} is not open"))?;
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| format!("fd {fd}: {e}"))?;
        Ok(owned)
    }

    /// A connected socket the record names, non-blocking, for the new loop to watch.
    pub fn take_stream(&mut self, fd: RawFd, what: &str) -> Result<mio::net::UnixStream, String> {
        let stream = std::os::unix::net::UnixStream::from(self.take(fd)?);
        stream.set_nonblocking(true).map_err(|e| format!("{what}: {e}"))?;
        Ok(mio::net::UnixStream::from_std(stream))
    }

    pub fn take_opt(&mut self, fd: Option<RawFd>) -> Result<Option<OwnedFd>, String> {
        fd.map(|fd| self.take(fd)).transpose()
    }

    /// Fds the record listed but nothing took: closed, and named in the log.
    pub fn finish(self) {
        for fd in self.left {
            if let Some(owned) = crate::sys::own_inherited_fd(fd) {
                crate::log!("hand-over: fd {fd} was passed but nothing took it; closed");
                drop(owned);
            }
        }
    }
}

/// Writes `record` into a memfd the new binary inherits; returns it.
pub fn write_record<T: Serialize>(record: &T) -> Result<OwnedFd, String> {
    let bytes = serde_json::to_vec(record).map_err(|e| format!("hand-over record: {e}"))?;
    let fd = nix::sys::memfd::memfd_create(c"tether-handover", nix::sys::memfd::MemFdCreateFlag::empty())
        .map_err(|e| format!("memfd_create: {e}"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)
        .map_err(|e| format!("writing the hand-over record: {e}"))?;
    Ok(OwnedFd::from(file))
}

/// Reads the record the old shim left in fd `fd`.
pub fn read_record<T: for<'de> Deserialize<'de>>(fd: RawFd) -> Result<T, String> {
    use std::io::Seek;
    let owned = crate::sys::own_inherited_fd(fd).ok_or_else(|| format!("record fd {fd} is not open"))?;
    let mut file = std::fs::File::from(owned);
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| format!("record fd {fd}: {e}"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("reading the hand-over record: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the hand-over record does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct B(#[serde(with = "hex")] Vec<u8>);

    #[test]
    fn bytes_round_trip_and_bad_hex_is_refused() {
        let b = B((0..=255).collect());
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<B>(&json).unwrap(), b);
        assert!(serde_json::from_str::<B>("\"0g\"").is_err());
        assert!(serde_json::from_str::<B>("\"abc\"").is_err());
    }

    #[test]
    fn this_build_accepts_what_it_writes() {
        assert!(accepted_versions().contains(&HANDOVER_VERSION));
        assert!(version().starts_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(versions_line("tether-shim").split_whitespace().count(), 4);
    }
}
