//! The sequenced event log: every event gets the next `seq` and is appended to
//! `STATE_DIR/events.jsonl` before anyone is told of it; `subscribe since=N` replays
//! from it. The file is compacted so a long-lived shim does not grow without bound;
//! exit records live in `exits/` until their process is deleted, so compaction never
//! loses an exit status.
//!
//! A disk that refuses a write (full, EIO) loses nothing and tears nothing: the line
//! that failed is cut back off the file, it and every later event wait in memory, in
//! order, and are written when the disk takes them again (retried on every append and
//! on a timer). Replay serves the file and then the waiting events, and checks that
//! the seqs it serves are contiguous: a gap is an error, never skipped silently.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::rc::Rc;
use tether_protocol::{Event, EventBody};

/// Compaction keeps this many newest events...
const KEEP_EVENTS: u64 = 1024;
/// ...once the file holds this many.
const COMPACT_AT: u64 = 4 * KEEP_EVENTS;
/// Events kept in memory while the disk refuses them. Past this the oldest are let
/// go, and a replay over them says so.
const MAX_UNWRITTEN: usize = 65_536;

/// An event as the log holds it: its seq and its JSON line (the same JSON every
/// front that speaks JSON sends). [`Stored::event`] gives the typed event.
pub struct Stored {
    pub seq: u64,
    pub json: Rc<str>,
}

impl Stored {
    pub fn event(&self) -> Option<Event> {
        serde_json::from_str(&self.json).ok()
    }
}

pub struct EventLog {
    path: PathBuf,
    file: File,
    /// Length of the file's whole lines: a torn write is cut back to this.
    good_len: u64,
    last_seq: u64,
    /// The oldest seq still kept (last_seq + 1 while there is none).
    first_seq: u64,
    /// Events the disk has not taken yet, oldest first.
    unwritten: VecDeque<Stored>,
    /// Seqs let go from memory while the disk refused them (first, last).
    lost: Option<(u64, u64)>,
    /// Why the last write failed, while events wait.
    failure: Option<String>,
}

#[derive(Debug)]
pub enum ReplayError {
    /// Events after `since` are no longer all kept.
    Compacted {
        since: u64,
        first_seq: u64,
    },
    /// The log does not hold every seq in the range asked for.
    Gap {
        missing: u64,
        detail: String,
    },
    Io(io::Error),
}

impl EventLog {
    pub fn create(path: PathBuf) -> io::Result<EventLog> {
        File::create(&path)?;
        // Append mode: after a torn line is cut off, the next write lands at the end.
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(EventLog {
            path,
            file,
            good_len: 0,
            last_seq: 0,
            first_seq: 1,
            unwritten: VecDeque::new(),
            lost: None,
            failure: None,
        })
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Events waiting for the disk, and why it refused the last one.
    pub fn backlog(&self) -> (usize, Option<&str>) {
        (self.unwritten.len(), self.failure.as_deref())
    }

    /// Gives `body` the next seq and appends it to the file (or, if the disk refuses,
    /// keeps it in memory behind the others that wait). The event goes out either
    /// way: the live subscribers must not miss it.
    /// Returns the event and its JSON (serialized once, for the file and for every
    /// front that speaks JSON).
    pub fn append(&mut self, body: EventBody) -> (Rc<Event>, Rc<str>) {
        let event = Event {
            seq: self.last_seq + 1,
            ts: tether_protocol::time::now(),
            body,
        };
        // Serializing these plain structs cannot fail; an empty object is the fallback.
        let json: Rc<str> = serde_json::to_string(&event)
            .unwrap_or_else(|_| "{}".to_string())
            .into();
        self.last_seq = event.seq;
        self.unwritten.push_back(Stored {
            seq: event.seq,
            json: json.clone(),
        });
        if self.unwritten.len() > MAX_UNWRITTEN {
            if let Some(dropped) = self.unwritten.pop_front() {
                let first = self.lost.map_or(dropped.seq, |(first, _)| first);
                self.lost = Some((first, dropped.seq));
            }
        }
        if self.write_unwritten() && self.last_seq + 1 - self.first_seq >= COMPACT_AT {
            if let Err(e) = self.compact() {
                crate::log!("event log compaction failed (the log keeps growing): {e}");
            }
        }
        (Rc::new(event), json)
    }

    /// Writes what waits, in order. True when nothing waits any more.
    pub fn write_unwritten(&mut self) -> bool {
        while let Some(stored) = self.unwritten.front() {
            let mut line = Vec::with_capacity(stored.json.len() + 1);
            line.extend_from_slice(stored.json.as_bytes());
            line.push(b'\n');
            if let Err(e) = self.file.write_all(&line) {
                // Never leave a torn line: cut back to the last whole one.
                if let Err(cut) = self.file.set_len(self.good_len) {
                    crate::log!("cannot cut a torn line off {}: {cut}", self.path.display());
                }
                if self.failure.is_none() {
                    crate::log!(
                        "cannot append event {} to {}: {e}; events wait in memory",
                        stored.seq,
                        self.path.display()
                    );
                }
                self.failure = Some(format!("cannot write {}: {e}", self.path.display()));
                return false;
            }
            self.good_len += line.len() as u64;
            self.unwritten.pop_front();
        }
        if self.failure.take().is_some() {
            crate::log!("{} is written again", self.path.display());
        }
        true
    }

    /// Rewrites the file with only its newest KEEP_EVENTS events.
    fn compact(&mut self) -> io::Result<()> {
        let keep_from = self.last_seq + 1 - KEEP_EVENTS;
        let kept = self.read_file_after(keep_from - 1)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut len = 0;
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for stored in &kept {
                out.write_all(stored.json.as_bytes())?;
                out.write_all(b"\n")?;
                len += stored.json.len() as u64 + 1;
            }
            out.flush()?;
        }
        fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.good_len = len;
        self.first_seq = keep_from;
        Ok(())
    }

    /// Every event with seq > since, in order, with no seq missing.
    pub fn replay(&self, since: u64) -> Result<Vec<Stored>, ReplayError> {
        if since >= self.last_seq {
            return Ok(Vec::new());
        }
        if since + 1 < self.first_seq {
            return Err(ReplayError::Compacted {
                since,
                first_seq: self.first_seq,
            });
        }
        let mut events = self.read_file_after(since).map_err(ReplayError::Io)?;
        let waiting = self.unwritten.iter().filter(|s| s.seq > since);
        events.extend(waiting.map(|s| Stored {
            seq: s.seq,
            json: s.json.clone(),
        }));
        let mut expected = since + 1;
        for stored in &events {
            if stored.seq != expected {
                return Err(self.gap(expected));
            }
            expected += 1;
        }
        if expected != self.last_seq + 1 {
            return Err(self.gap(expected));
        }
        Ok(events)
    }

    fn gap(&self, missing: u64) -> ReplayError {
        let detail = match self.lost {
            Some((first, last)) if (first..=last).contains(&missing) => format!(
                "events {first}..{last} could not be written to {} (the disk refused them) and were let go from memory",
                self.path.display()
            ),
            _ => format!("{} does not hold event {missing}", self.path.display()),
        };
        ReplayError::Gap { missing, detail }
    }

    fn read_file_after(&self, since: u64) -> io::Result<Vec<Stored>> {
        #[derive(serde::Deserialize)]
        struct SeqOnly {
            seq: u64,
        }
        let mut events = Vec::new();
        for line in BufReader::new(File::open(&self.path)?).lines() {
            let line = line?;
            match serde_json::from_str::<SeqOnly>(&line) {
                Ok(s) if s.seq > since => events.push(Stored {
                    seq: s.seq,
                    json: line.into(),
                }),
                Ok(_) => {}
                // Counted as a gap by replay, so not lost silently.
                Err(e) => crate::log!("a bad line in the event log: {e}"),
            }
        }
        Ok(events)
    }
}

/// The event log in a hand-over record. Only a log whose events are all on disk is
/// handed over (the shim waits for the disk otherwise), so the file is all of it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct EventLogRecord {
    path: PathBuf,
    file: std::os::fd::RawFd,
    good_len: u64,
    last_seq: u64,
    first_seq: u64,
}

impl EventLog {
    pub fn hand_over(&self, fds: &mut crate::handover::Passing) -> Result<EventLogRecord, String> {
        if !self.unwritten.is_empty() || self.lost.is_some() {
            return Err(format!(
                "{} events wait for the disk ({})",
                self.unwritten.len(),
                self.failure.as_deref().unwrap_or("some were let go")
            ));
        }
        Ok(EventLogRecord {
            path: self.path.clone(),
            file: fds.pass(&self.file)?,
            good_len: self.good_len,
            last_seq: self.last_seq,
            first_seq: self.first_seq,
        })
    }

    pub fn take_over(r: EventLogRecord, fds: &mut crate::handover::Adopting) -> Result<EventLog, String> {
        Ok(EventLog {
            path: r.path,
            file: File::from(fds.take(r.file)?),
            good_len: r.good_len,
            last_seq: r.last_seq,
            first_seq: r.first_seq,
            unwritten: VecDeque::new(),
            lost: None,
            failure: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(name: &str) -> (PathBuf, EventLog) {
        let dir = std::env::temp_dir().join(format!("tether-events-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let log = EventLog::create(dir.join("events.jsonl")).unwrap();
        (dir, log)
    }

    fn seqs(events: &[Stored]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn seqs_rise_by_one_and_replay_is_exact() {
        let (dir, mut log) = temp_log("replay");
        for pid in 1..=5 {
            let p = log.append(EventBody::Created { pid });
            assert_eq!(p.0.seq, pid as u64);
        }
        assert_eq!(seqs(&log.replay(2).unwrap()), vec![3, 4, 5]);
        assert!(log.replay(5).unwrap().is_empty());
        assert_eq!(
            log.replay(0).unwrap()[0].event().unwrap().body,
            EventBody::Created { pid: 1 }
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compaction_bounds_the_file_and_refuses_lost_ranges() {
        let (dir, mut log) = temp_log("compact");
        for _ in 0..(COMPACT_AT * 3) {
            log.append(EventBody::Paused {});
        }
        let lines = fs::read_to_string(dir.join("events.jsonl"))
            .unwrap()
            .lines()
            .count() as u64;
        assert!(lines < COMPACT_AT, "{lines} lines kept");
        let first = log.first_seq();
        assert!(first > 1);
        assert_eq!(
            log.replay(first - 1).unwrap().len() as u64,
            log.last_seq() - first + 1
        );
        assert!(matches!(
            log.replay(first - 2),
            Err(ReplayError::Compacted { .. })
        ));
        let last = log.last_seq();
        assert_eq!(
            seqs(&log.replay(last - 3).unwrap()),
            vec![last - 2, last - 1, last]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_refused_write_waits_in_memory_and_leaves_no_torn_line() {
        let (dir, mut log) = temp_log("refused");
        log.append(EventBody::Paused {});
        // A file that refuses writes: opened read-only behind the log's back.
        log.file = File::open(dir.join("events.jsonl")).unwrap();
        log.append(EventBody::Resumed {});
        log.append(EventBody::Paused {});
        assert_eq!(log.backlog().0, 2);
        assert!(log.backlog().1.is_some());
        // Replay serves file + memory, contiguous.
        assert_eq!(seqs(&log.replay(0).unwrap()), vec![1, 2, 3]);
        // The disk takes writes again: everything lands, in order.
        log.file = OpenOptions::new()
            .append(true)
            .open(dir.join("events.jsonl"))
            .unwrap();
        assert!(log.write_unwritten());
        let text = fs::read_to_string(dir.join("events.jsonl")).unwrap();
        let on_disk: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().seq)
            .collect();
        assert_eq!(on_disk, vec![1, 2, 3]);
        assert_eq!(log.backlog(), (0, None));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hole_in_the_file_is_a_gap_error() {
        let (dir, mut log) = temp_log("gap");
        for _ in 0..4 {
            log.append(EventBody::Paused {});
        }
        let text = fs::read_to_string(dir.join("events.jsonl")).unwrap();
        let without_2: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":2,")).collect();
        fs::write(dir.join("events.jsonl"), without_2.join("\n") + "\n").unwrap();
        assert!(matches!(log.replay(0), Err(ReplayError::Gap { missing: 2, .. })));
        assert_eq!(seqs(&log.replay(2).unwrap()), vec![3, 4]);
        fs::remove_dir_all(dir).unwrap();
    }
}
