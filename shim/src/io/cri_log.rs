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
/// Bytes of records written at once (one read's worth of short lines).
const BATCH: usize = 256 << 10;

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
    drops: [Drops; 2],
    /// Whole records waiting for their write, and for each its end in `out` and the
    /// process's bytes it stands for. Kept while output flows (a fresh buffer a
    /// chunk costs page faults), given back when it stops (`release_buffers`).
    out: Vec<u8>,
    ends: Vec<(usize, usize)>,
}

/// One record's content, in up to two pieces (a line begun in an earlier chunk, and
/// the rest of it in this one).
struct Record<'a> {
    tag: u8,
    a: &'a [u8],
    b: &'a [u8],
}

impl<'a> Record<'a> {
    fn new(tag: u8, a: &'a [u8], b: &'a [u8]) -> Record<'a> {
        Record { tag, a, b }
    }

    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }

    /// The process's bytes this record stands for: its content, and for `F` the
    /// newline that ended the line. What a dropped record costs, exactly.
    fn written_by_process(&self) -> usize {
        self.len() + usize::from(self.tag == b'F')
    }
}

/// The line `a`+`b` as records, each given to `out`: `P` of `max` bytes while more
/// than `max` remain, then the rest as `F` if the line `ended`. Returns what is left
/// unwritten (the rest of an unfinished line, at most `max` bytes), as pieces of `a`
/// and `b`.
fn split<'a>(
    a: &'a [u8],
    b: &'a [u8],
    max: usize,
    ended: bool,
    out: &mut impl FnMut(Record<'_>),
) -> (&'a [u8], &'a [u8]) {
    let (mut a, mut b) = (a, b);
    while a.len() + b.len() > max {
        let from_a = a.len().min(max);
        let (pa, ra) = a.split_at(from_a);
        let (pb, rb) = b.split_at(max - from_a);
        out(Record::new(b'P', pa, pb));
        (a, b) = (ra, rb);
    }
    if ended {
        out(Record::new(b'F', a, b));
        (&[], &[])
    } else {
        (a, b)
    }
}

fn index(stream: Stream) -> usize {
    usize::from(stream == Stream::Stderr)
}

/// A record's start for `P` and for `F`: `TIMESTAMP STREAM TAG `.
fn heads(stream: Stream, ts: &str) -> [Vec<u8>; 2] {
    [b'P', b'F'].map(|tag| {
        let mut h = Vec::with_capacity(ts.len() + 10);
        h.extend_from_slice(ts.as_bytes());
        h.push(b' ');
        h.extend_from_slice(stream.name().as_bytes());
        h.push(b' ');
        h.push(tag);
        h.push(b' ');
        h
    })
}

impl CriLog {
    /// The log's parameters make sense (checked before anything is opened: a
    /// mistake here is the client's, `invalid_params`).
    pub fn check(p: &LogParams) -> Result<(), String> {
        if !p.path.starts_with('/') {
            return Err(format!("log path {:?} is not absolute", p.path));
        }
        if p.max_line == Some(0) {
            return Err("log max_line must be at least 1".to_string());
        }
        if p.max_size.unwrap_or(0) > 0 && p.max_files.unwrap_or(DEFAULT_MAX_FILES) < 2 {
            return Err(
                "log max_files must be at least 2 to rotate (the log and one rotated file)".to_string(),
            );
        }
        Ok(())
    }

    pub fn open(p: &LogParams) -> Result<CriLog, String> {
        Self::check(p)?;
        let max_line = p.max_line.unwrap_or(DEFAULT_MAX_LINE);
        let max_files = p.max_files.unwrap_or(DEFAULT_MAX_FILES);
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
            drops: [Drops::default(), Drops::default()],
            out: Vec::new(),
            ends: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records for `chunk` of `stream`, read at `ts`: each whole line of it, and the
    /// line begun in an earlier chunk.
    pub fn write(&mut self, stream: Stream, chunk: &[u8], ts: &str) {
        let i = index(stream);
        let prefix = std::mem::take(&mut self.partial[i]);
        let heads = heads(stream, ts);
        let max_line = self.max_line;
        let mut add = |r: Record<'_>| self.add(stream, r, &heads);
        let (mut a, mut rest): (&[u8], &[u8]) = (&prefix, chunk);
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            split(a, &rest[..nl], max_line, true, &mut add);
            a = &[];
            rest = &rest[nl + 1..];
        }
        // The unfinished line: what goes beyond max_line now, the rest waits.
        let kept = split(a, rest, max_line, false, &mut add);
        let mut partial = Vec::with_capacity(kept.0.len() + kept.1.len());
        partial.extend_from_slice(kept.0);
        partial.extend_from_slice(kept.1);
        self.flush(stream);
        self.partial[i] = partial;
    }

    /// The stream ended: a line without its newline goes out as `P`.
    pub fn finish(&mut self, stream: Stream, ts: &str) {
        let partial = std::mem::take(&mut self.partial[index(stream)]);
        if !partial.is_empty() {
            self.add(stream, Record::new(b'P', &partial, &[]), &heads(stream, ts));
            self.flush(stream);
        }
    }

    /// The write buffers go back (output stopped a while ago).
    pub fn release_buffers(&mut self) {
        self.out = Vec::new();
        self.ends = Vec::new();
    }

    /// Queues one record; what is queued is written first when this one would pass
    /// the batch size, or `max_size` (then the log rotates first).
    fn add(&mut self, stream: Stream, r: Record<'_>, heads: &[Vec<u8>; 2]) {
        let head = &heads[usize::from(r.tag == b'F')];
        let len = head.len() + r.len() + 1;
        let queued = self.out.len() as u64;
        let full =
            self.max_size > 0 && self.size + queued > 0 && self.size + queued + len as u64 > self.max_size;
        if full || (queued > 0 && self.out.len() + len > BATCH) {
            self.flush(stream);
            if full {
                self.rotate();
            }
        }
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(r.a);
        self.out.extend_from_slice(r.b);
        self.out.push(b'\n');
        self.ends.push((self.out.len(), r.written_by_process()));
    }

    /// Writes the queued records with one write: a writev of three small slices a
    /// record (head, line, newline) costs the kernel more than this copy. A disk
    /// that refuses them: they are dropped and counted, and a record the disk cut
    /// short is cut off the file again, so the log holds whole records only.
    fn flush(&mut self, stream: Stream) {
        if self.out.is_empty() {
            return;
        }
        let (out, ends) = (std::mem::take(&mut self.out), std::mem::take(&mut self.ends));
        self.write_queued(stream, &out, &ends);
        // The buffers stay for the next chunk.
        (self.out, self.ends) = (out, ends);
        self.out.clear();
        self.ends.clear();
    }

    fn write_queued(&mut self, stream: Stream, out: &[u8], ends: &[(usize, usize)]) {
        let drops = &mut self.drops[index(stream)];
        if drops.dropping() {
            return drops.count(ends.iter().map(|e| e.1).sum());
        }
        let mut written = 0;
        let error = loop {
            if written == out.len() {
                break None;
            }
            match self.file.write(&out[written..]) {
                Ok(0) => break Some(Errno::ENOSPC),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        };
        let Some(e) = error else {
            self.size += written as u64;
            return drops.recovered("log");
        };
        // Keep the whole records that made it; cut off a torn one.
        let whole = ends.iter().take_while(|(end, _)| *end <= written).count();
        let kept = if whole == 0 { 0 } else { ends[whole - 1].0 };
        if kept < written {
            if let Err(cut) = self.file.set_len(self.size + kept as u64) {
                crate::log!("log {}: cannot cut a torn record off: {cut}", self.path.display());
            }
        }
        self.size += kept as u64;
        let lost: usize = ends[whole..].iter().map(|e| e.1).sum();
        if !refuses_bytes(e) {
            crate::log!("log {}: {e}", self.path.display());
        }
        drops.refused(e, lost, "log");
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

/// A [`CriLog`] in a hand-over record: its file by fd (kubelet may have renamed it
/// away, and the shim writes where its fd points until `reopen_log`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CriLogRecord {
    path: PathBuf,
    file: std::os::fd::RawFd,
    size: u64,
    max_line: usize,
    max_size: u64,
    max_files: u32,
    #[serde(with = "crate::handover::hex_list")]
    partial: Vec<Vec<u8>>,
    drops: Vec<super::drops::DropsRecord>,
}

impl CriLog {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<CriLogRecord, String> {
        Ok(CriLogRecord {
            path: self.path.clone(),
            file: fds.pass(&self.file)?,
            size: self.size,
            max_line: self.max_line,
            max_size: self.max_size,
            max_files: self.max_files,
            partial: self.partial.to_vec(),
            drops: self.drops.iter().map(Drops::hand_over).collect(),
        })
    }

    pub fn take_over(r: CriLogRecord, fds: &mut crate::handover::Adopting) -> Result<CriLog, String> {
        let [out, err]: [Vec<u8>; 2] = r
            .partial
            .try_into()
            .map_err(|_| "a log record needs two partial lines".to_string())?;
        let mut drops = r.drops.into_iter().map(Drops::take_over);
        let (d_out, d_err) = (drops.next().unwrap_or_default(), drops.next().unwrap_or_default());
        Ok(CriLog {
            path: r.path,
            file: File::from(fds.take(r.file)?),
            size: r.size,
            max_line: r.max_line,
            max_size: r.max_size,
            max_files: r.max_files,
            partial: [out, err],
            drops: [d_out, d_err],
            out: Vec::new(),
            ends: Vec::new(),
        })
    }
}
