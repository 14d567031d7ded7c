//! `logs`: a CRI log read across its rotations.

use super::*;

/// `logs [-f] [--since TS] [--path FILE | PROCESS]`: the process's CRI log, its rotated
/// files (log.N ... log.1) first, each stream to its own output; `-f` follows the log
/// through rotations.
pub(crate) fn logs(g: &Global, a: &[String]) -> Result<i32, String> {
    let (mut follow, mut since, mut path, mut process) = (false, None, None, None);
    let mut it = a.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-f" | "--follow" => follow = true,
            "--since" => since = Some(it.next().ok_or("--since needs an RFC 3339 time")?.clone()),
            "--path" => path = Some(PathBuf::from(it.next().ok_or("--path needs a file")?)),
            p => process = Some(p.to_string()),
        }
    }
    let path = match path {
        Some(p) => p,
        None => {
            let mut c = g.client()?;
            let st: ProcessState = c
                .call("state", &process_param(process.as_ref()))
                .map_err(|e| e.to_string())?;
            PathBuf::from(st.stdio.log.ok_or("the process has no log")?)
        }
    };
    let mut files = rotated_logs(&path);
    files.push(path.clone());
    let mut out = LogPrinter { since };
    for f in &files[..files.len() - 1] {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        out.print(&bytes);
    }
    // The live file: read to its end; with -f, keep reading, and move on to the new
    // file when the log is rotated or reopened.
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pending = Vec::new();
    loop {
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk).map_err(|e| e.to_string())?;
        pending.extend_from_slice(&chunk);
        let whole = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        out.print(&pending[..whole]);
        pending.drain(..whole);
        if !follow {
            out.print(&pending);
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let moved = std::fs::metadata(&path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(now, open)| {
                use std::os::unix::fs::MetadataExt;
                now.ino() != open.ino()
            });
        if moved {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            pending.extend_from_slice(&rest);
            file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
}

/// `path.N` ... `path.1`, oldest first.
pub(crate) fn rotated_logs(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let p = e.ok()?.path();
                let n = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix(name)?
                    .strip_prefix('.')?
                    .parse()
                    .ok()?;
                Some((n, p))
            })
            .collect()
        })
        .unwrap_or_default();
    numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
    numbered.into_iter().map(|(_, p)| p).collect()
}

/// CRI records -> each stream's bytes: a `P` record's line goes on, `F` ends it.
pub(crate) struct LogPrinter {
    since: Option<String>,
}

impl LogPrinter {
    fn print(&mut self, bytes: &[u8]) {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for rec in bytes.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let mut parts = rec.splitn(4, |b| *b == b' ');
            let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if self.since.as_deref().is_some_and(|s| ts < s.as_bytes()) {
                continue;
            }
            let w: &mut dyn Write = if stream == b"stderr" { &mut err } else { &mut out };
            let _ = w.write_all(parts.next().unwrap_or(b""));
            if tag == b"F" {
                let _ = w.write_all(b"\n");
            }
        }
        let _ = out.flush();
    }
}
