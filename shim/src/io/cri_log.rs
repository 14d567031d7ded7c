//! The CRI log, the format kubelet reads: one record per line,
//! `2026-11-29T12:00:00.123456789Z stdout F content` — a timestamp, the stream, `F`
//! when the content ends its line or `P` when the line goes on in the next record.
//! A line is split only when it is longer than `max_line`, or at the end of the
//! stream if the last line has no newline: never at a read boundary, so every
//! line's records rejoin exactly.
//!
//! Rotation never truncates and never replaces the file the shim writes: kubelet
//! renames it away and calls `reopen_log` (open with append and create); without
//! kubelet, the shim rotates itself at `max_size` (log -> log.1 -> ... -> the oldest
//! past `max_files` goes). A disk that refuses writes costs records, counted and
//! reported, never a blocked container.

use super::drops::{refuses_bytes, DropReport, Drops};
use super::Stream;
use nix::errno::Errno;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tether_protocol::LogParams;

/// containerd's and kubelet's default maximum line.
pub const DEFAULT_MAX_LINE: usize = 16 << 10;
/// Files kept by built-in rotation when the client does not say.
pub const DEFAULT_MAX_FILES: u32 = 5;

pub struct CriLog {
    path: PathBuf,
    file: File,
    /// Bytes in the current file, counted from its size when opened.
    size: u64,
    max_line: usize,
    /// 0: no built-in rotation.
    max_size: u64,
    max_files: u32,
    /// Per stream (stdout, stderr): the start of a line not yet ended.
    partial: [Vec<u8>; 2],
    /// Records of one chunk, written at once.
    out: Vec<u8>,
    drops: [Drops; 2],
}

fn index(stream: Stream) -> usize {
    usize::from(stream == Stream::Stderr)
}

impl CriLog {
    pub fn open(p: &LogParams) -> Result<CriLog, String> {
        if !p.path.starts_with('/') {
            return Err(format!("log path {:?} is not absolute", p.path));
        }
        let max_line = p.max_line.unwrap_or(DEFAULT_MAX_LINE);
        if max_line == 0 {
            return Err("log max_line must be at least 1".to_string());
        }
        let max_files = p.max_files.unwrap_or(DEFAULT_MAX_FILES);
        if p.max_size.unwrap_or(0) > 0 && max_files < 2 {
            return Err(
                "log max_files must be at least 2 to rotate (the log and one rotated file)".to_string(),
            );
        }
        let path = PathBuf::from(&p.path);
        let (file, size) = open_append(&path)?;
        Ok(CriLog {
            path,
            file,
            size,
            max_line,
            max_size: p.max_size.unwrap_or(0),
            max_files,
            partial: [Vec::new(), Vec::new()],
            out: Vec::new(),
            drops: [Drops::default(), Drops::default()],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records for `chunk` of `stream`, read at `ts`.
    pub fn write(&mut self, stream: Stream, chunk: &[u8], ts: &str) {
        let i = index(stream);
        let mut rest = chunk;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.partial[i]);
                    line.extend_from_slice(&rest[..nl]);
                    self.full_line(stream, &line, ts);
                    rest = &rest[nl + 1..];
                }
                None => {
                    self.partial[i].extend_from_slice(rest);
                    rest = &[];
                    // Only what certainly goes beyond max_line is cut off now.
                    let mut partial = std::mem::take(&mut self.partial[i]);
                    let mut start = 0;
                    while partial.len() - start > self.max_line {
                        self.record(stream, b'P', &partial[start..start + self.max_line], ts);
                        start += self.max_line;
                    }
                    partial.drain(..start);
                    self.partial[i] = partial;
                }
            }
        }
        self.flush(stream);
    }

    /// The stream ended: a line without its newline goes out as `P`.
    pub fn finish(&mut self, stream: Stream, ts: &str) {
        let partial = std::mem::take(&mut self.partial[index(stream)]);
        if !partial.is_empty() {
            self.record(stream, b'P', &partial, ts);
            self.flush(stream);
        }
    }

    /// A line ended: `P` records of max_line while more than max_line remain, then `F`.
    fn full_line(&mut self, stream: Stream, line: &[u8], ts: &str) {
        let mut start = 0;
        while line.len() - start > self.max_line {
            self.record(stream, b'P', &line[start..start + self.max_line], ts);
            start += self.max_line;
        }
        self.record(stream, b'F', &line[start..], ts);
    }

    fn record(&mut self, stream: Stream, tag: u8, content: &[u8], ts: &str) {
        let len = ts.len() + stream.name().len() + content.len() + 5;
        if self.max_size > 0 && self.size > 0 && self.size + (self.out.len() + len) as u64 > self.max_size {
            self.flush(stream);
            self.rotate();
        }
        self.out.reserve(len);
        self.out.extend_from_slice(ts.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(stream.name().as_bytes());
        self.out.push(b' ');
        self.out.push(tag);
        self.out.push(b' ');
        self.out.extend_from_slice(content);
        self.out.push(b'\n');
    }

    /// Writes the assembled records (or drops and counts them).
    fn flush(&mut self, stream: Stream) {
        if self.out.is_empty() {
            return;
        }
        let drops = &mut self.drops[index(stream)];
        let n = self.out.len();
        if drops.dropping() {
            drops.count(n);
        } else {
            match self.file.write_all(&self.out) {
                Ok(()) => {
                    self.size += n as u64;
                    drops.recovered("log");
                }
                Err(e) => {
                    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                    // A record cut short by the disk: its newline ends it, so the
                    // next record still starts a line.
                    let _ = self.file.write_all(b"\n");
                    if !refuses_bytes(errno) {
                        crate::log!("log {}: {e}", self.path.display());
                    }
                    drops.refused(errno, n, "log");
                }
            }
        }
        self.out.clear();
        if self.out.capacity() > 64 << 10 {
            self.out = Vec::new();
        }
    }

    /// log -> log.1 -> ... -> log.(max_files-1); the oldest goes. A new, empty log.
    fn rotate(&mut self) {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        for i in (1..self.max_files.saturating_sub(1)).rev() {
            if name(i).exists() {
                if let Err(e) = fs::rename(name(i), name(i + 1)) {
                    crate::log!("log rotation: {}: {e}", name(i).display());
                }
            }
        }
        if let Err(e) = fs::rename(&self.path, name(1)) {
            // Keep writing where we are rather than lose anything.
            return crate::log!("log rotation: {}: {e}", self.path.display());
        }
        match open_append(&self.path) {
            Ok((file, size)) => {
                self.file = file;
                self.size = size;
            }
            Err(e) => crate::log!("log rotation: {e}"),
        }
    }

    /// kubelet renamed the file away: write to a file at the path again (made if
    /// needed, never truncated). A partial line carries over.
    pub fn reopen(&mut self) -> Result<(), String> {
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }

    pub fn take_drop_reports(&mut self, now: Instant, force: bool) -> Vec<(Stream, DropReport)> {
        let mut reports = Vec::new();
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if let Some(r) = self.drops[i].take_report(now, force, false) {
                reports.push((stream, r));
            }
        }
        reports
    }

    pub fn report_due(&self) -> Option<Instant> {
        self.drops.iter().filter_map(Drops::report_due).min()
    }

    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().map(Drops::total).sum()
    }
}

fn open_append(path: &Path) -> Result<(File, u64), String> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot open log {}: {e}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(name: &str, max_line: usize, max_size: u64) -> (PathBuf, CriLog) {
        let dir = std::env::temp_dir().join(format!("tether-crilog-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let p = LogParams {
            path: dir.join("0.log").display().to_string(),
            max_line: Some(max_line),
            max_size: Some(max_size),
            max_files: Some(100),
        };
        (dir, CriLog::open(&p).unwrap())
    }

    /// (stream, tag, content) of every record in `text`.
    fn records(text: &str) -> Vec<(String, String, String)> {
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let _ts = parts.next().unwrap();
                let stream = parts.next().unwrap().to_string();
                let tag = parts.next().unwrap().to_string();
                (stream, tag, parts.next().unwrap_or("").to_string())
            })
            .collect()
    }

    #[test]
    fn lines_split_only_past_max_line_or_at_the_end() {
        let (dir, mut l) = log("split", 4, 0);
        // Read boundaries in odd places: "ab|cdefghij\nxy|z\n12345678|9".
        for chunk in ["ab", "cdefghij\nxy", "z\n12345678", "9"] {
            l.write(Stream::Stdout, chunk.as_bytes(), "T");
        }
        l.write(Stream::Stderr, b"e1\n", "T");
        l.finish(Stream::Stdout, "T");
        let got = records(&fs::read_to_string(dir.join("0.log")).unwrap());
        let want = [
            ("stdout", "P", "abcd"),
            ("stdout", "P", "efgh"),
            ("stdout", "F", "ij"),
            ("stdout", "F", "xyz"),
            ("stdout", "P", "1234"),
            ("stdout", "P", "5678"),
            ("stderr", "F", "e1"),
            ("stdout", "P", "9"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_line_of_exactly_max_line_is_one_full_record() {
        let (dir, mut l) = log("exact", 4, 0);
        l.write(Stream::Stdout, b"abcd\nabcdefgh\n", "T");
        let got = records(&fs::read_to_string(dir.join("0.log")).unwrap());
        let tags: Vec<&str> = got.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(tags, ["F", "P", "F"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_keeps_every_record_and_counts_from_the_existing_size() {
        let (dir, mut l) = log("rotate", 16 << 10, 1000);
        drop(l);
        fs::write(dir.join("0.log"), "x".repeat(960)).unwrap();
        l = CriLog::open(&LogParams {
            path: dir.join("0.log").display().to_string(),
            max_line: None,
            max_size: Some(1000),
            max_files: Some(100),
        })
        .unwrap();
        for i in 0..100 {
            l.write(
                Stream::Stdout,
                format!("line {i}\n").as_bytes(),
                "2026-11-29T12:00:00.000000000Z",
            );
        }
        // The first record did not fit beside the 960 bytes there: they were rotated
        // away untouched.
        let oldest = count(&dir) - 1;
        assert_eq!(
            fs::read_to_string(format!("{}.{oldest}", dir.join("0.log").display())).unwrap(),
            "x".repeat(960)
        );
        let mut all = Vec::new();
        for i in (1..oldest).rev() {
            all.extend(records(
                &fs::read_to_string(format!("{}.{i}", dir.join("0.log").display())).unwrap_or_default(),
            ));
        }
        all.extend(records(&fs::read_to_string(dir.join("0.log")).unwrap()));
        let contents: Vec<String> = all.into_iter().filter(|r| r.0 == "stdout").map(|r| r.2).collect();
        assert_eq!(
            contents,
            (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>()
        );
        for entry in fs::read_dir(&dir).unwrap() {
            assert!(entry.unwrap().metadata().unwrap().len() <= 1000);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }
}
