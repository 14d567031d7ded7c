//! Stdio as containerd names it, turned into the core's stdio specs: FIFO paths (the
//! scheme-less default), `""` for none, `file:///PATH` (stdout and stderr into one
//! file), and `binary:///PATH?ARGS` (a logging binary, started the way containerd's
//! shims start it: fds 3 and 4 read the process's stdout and stderr, fd 5 is a
//! pipe it closes — or writes one byte to, for `binary-v2` — when ready; env
//! CONTAINER_ID and CONTAINER_NAMESPACE; its arguments are the query's keys and
//! values). The logger reads FIFOs made in the bundle, which the core relays into
//! like any other FIFO, so the core needs no stdio kind of its own for it.

use nix::sys::stat::Mode;
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};

/// What the core is given for one process, and the logging binary if one was started.
pub struct Wired {
    pub specs: [Option<String>; 3],
    pub logger: Option<Logger>,
}

/// A running logging binary: the read end of its ready pipe (kept so a `binary-v2`
/// logger's ready byte never meets a closed pipe). It ends by itself at its EOF.
pub struct Logger {
    _ready: OwnedFd,
    /// Write ends of its FIFOs, held until the core has opened its own: a FIFO
    /// with no writer reads as EOF, and the logger would stop at once.
    hold: Vec<OwnedFd>,
}

impl Logger {
    /// The core has opened the FIFOs (or failed to): the logger's EOF is now the
    /// core's to give.
    pub fn release_hold(&mut self) {
        self.hold.clear();
    }
}

/// Who the process is, for the logging binary's environment and FIFO names.
pub struct Owner<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub bundle: &'a Path,
    /// `init` or the exec id.
    pub process: &'a str,
}

/// containerd's `stdin`, `stdout`, `stderr` as core specs.
pub fn wire(
    owner: &Owner<'_>,
    terminal: bool,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<Wired, String> {
    let plain = |s: &str| {
        Some(if s.is_empty() {
            "/dev/null".to_string()
        } else {
            s.to_string()
        })
    };
    let (scheme, path, query) = split_uri(stdout);
    let err_spec = |out: &str| if terminal { plain("") } else { plain(out) };
    match scheme {
        "" | "fifo" => Ok(Wired {
            specs: [
                plain(stdin),
                plain(&unescape(path, false)),
                if terminal { plain("") } else { plain(stderr) },
            ],
            logger: None,
        }),
        "file" => {
            let path = unescape(path, false);
            if let Some(dir) = Path::new(&path).parent() {
                fs::create_dir_all(dir)
                    .map_err(|e| format!("stdout {stdout}: cannot make {}: {e}", dir.display()))?;
            }
            Ok(Wired {
                specs: [plain(stdin), plain(&path), err_spec(&path)],
                logger: None,
            })
        }
        "binary" | "binary-v2" => {
            let fifos = [owner.fifo("stdout"), owner.fifo("stderr")];
            let logger = start_logger(owner, &unescape(path, false), query, &fifos)
                .map_err(|e| format!("logging binary {stdout}: {e}"))?;
            let [out, errf] = fifos.map(|p| p.display().to_string());
            Ok(Wired {
                specs: [plain(stdin), plain(&out), err_spec(&errf)],
                logger: Some(logger),
            })
        }
        other => Err(format!(
            "stdout {stdout:?}: unknown stdio scheme {other:?} (fifo path, file://, binary://)"
        )),
    }
}

impl Owner<'_> {
    /// BUNDLE/log-PROCESS-STREAM: outside the shim's state dir, gone with the bundle.
    fn fifo(&self, stream: &str) -> PathBuf {
        self.bundle.join(format!("log-{}-{stream}", self.process))
    }
}

/// (scheme, path, query) of `scheme://host/path?query`; a bare path has no scheme.
fn split_uri(uri: &str) -> (&str, &str, &str) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return ("", uri, "");
    };
    // `file:///x`: an empty host; any host is ignored (containerd uses none).
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    match path.split_once('?') {
        Some((p, q)) => (scheme, p, q),
        None => (scheme, path, ""),
    }
}

/// Percent-decoding; in a query `+` is a space too.
fn unescape(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if query => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The logging binary's arguments: each query key, then its value if it has one.
fn logger_args(query: &str) -> Vec<String> {
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) => {
                args.push(unescape(k, true));
                args.push(unescape(v, true));
            }
            None => args.push(unescape(pair, true)),
        }
    }
    args
}

fn start_logger(
    owner: &Owner<'_>,
    program: &str,
    query: &str,
    fifos: &[PathBuf; 2],
) -> Result<Logger, String> {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for fifo in fifos {
        let _ = fs::remove_file(fifo);
        nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
        let open = |write: bool| {
            OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo)
                .map(OwnedFd::from)
                .map_err(|e| format!("open {}: {e}", fifo.display()))
        };
        reads.push(open(false)?);
        writes.push(open(true)?);
    }
    for fd in &reads {
        // The logger reads blocking, as it would from a pipe.
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // Above the targets 3-5, so that no source is overwritten by another's dup2.
    let high = |fd: &OwnedFd| {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| format!("dup: {e}"))
            .map(crate::sys::own_received_fd)
    };
    let sources = [high(&reads[0])?, high(&reads[1])?, high(&ready_w)?];
    let mut cmd = Command::new(program);
    cmd.args(logger_args(query))
        .env_clear()
        .env("CONTAINER_ID", owner.id)
        .env("CONTAINER_NAMESPACE", owner.namespace)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null());
    let map = sources
        .iter()
        .zip(3..)
        .map(|(fd, target)| (fd.as_raw_fd(), target))
        .collect();
    crate::sys::map_fds_on_spawn(&mut cmd, map);
    let child = cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
    crate::log!(
        "logging binary {program} started for {} (pid {})",
        owner.process,
        child.id()
    );
    Ok(Logger {
        _ready: ready_r,
        hold: writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(bundle: &Path) -> Owner<'_> {
        Owner {
            id: "c1",
            namespace: "ns",
            bundle,
            process: "init",
        }
    }

    #[test]
    fn fifos_and_none() {
        let o = owner(Path::new("/b"));
        let w = wire(&o, false, "", "/run/f/out", "/run/f/err").unwrap();
        assert_eq!(
            w.specs,
            [
                Some("/dev/null".into()),
                Some("/run/f/out".into()),
                Some("/run/f/err".into())
            ]
        );
        let w = wire(&o, true, "/run/f/in", "/run/f/out", "").unwrap();
        assert_eq!(w.specs[2].as_deref(), Some("/dev/null"));
        assert!(wire(&o, false, "", "gopher://x", "").is_err());
    }

    #[test]
    fn file_uri_shares_one_file() {
        let dir = std::env::temp_dir().join(format!("tether-stdio-{}", std::process::id()));
        let path = dir.join("sub/log.txt");
        let uri = format!("file://{}", path.display());
        let w = wire(&owner(&dir), false, "", &uri, &uri).unwrap();
        assert_eq!(w.specs[1].as_deref(), Some(path.to_str().unwrap()));
        assert_eq!(w.specs[2], w.specs[1]);
        assert!(dir.join("sub").is_dir());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uris_and_arguments() {
        assert_eq!(
            split_uri("binary:///bin/log?a=1&b"),
            ("binary", "/bin/log", "a=1&b")
        );
        assert_eq!(split_uri("file:///var/x%20y"), ("file", "/var/x%20y", ""));
        assert_eq!(split_uri("/run/fifo"), ("", "/run/fifo", ""));
        assert_eq!(unescape("/var/x%20y+z%zz", false), "/var/x y+z%zz");
        assert_eq!(unescape("x+y", true), "x y");
        assert_eq!(logger_args("a=1&b&c=x%2Fy"), vec!["a", "1", "b", "c", "x/y"]);
    }
}

/// A [`Logger`] in a hand-over record: the fds that tie it to the shim.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LoggerRecord {
    ready: std::os::fd::RawFd,
    hold: Vec<std::os::fd::RawFd>,
}

impl Logger {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<LoggerRecord, String> {
        Ok(LoggerRecord {
            ready: fds.pass(&self._ready)?,
            hold: self
                .hold
                .iter()
                .map(|fd| fds.pass(fd))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn take_over(r: LoggerRecord, fds: &mut crate::handover::Adopting) -> Result<Logger, String> {
        Ok(Logger {
            _ready: fds.take(r.ready)?,
            hold: r
                .hold
                .into_iter()
                .map(|fd| fds.take(fd))
                .collect::<Result<_, _>>()?,
        })
    }
}
