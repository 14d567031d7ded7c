//! The sequenced event log: every event gets the next `seq`, is appended to
//! `STATE_DIR/events.jsonl` before anyone is told of it, and can be replayed from
//! that file. The file is compacted so a long-lived shim does not grow without bound;
//! exit records themselves live in `exits/` until their process is deleted, so
//! compaction never loses an exit status.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::rc::Rc;
use tether_protocol::{Event, EventBody};

/// Compaction keeps this many newest events...
const KEEP_EVENTS: u64 = 1024;
/// ...once the file holds this many.
const COMPACT_AT: u64 = 4 * KEEP_EVENTS;

/// An event as the log holds it: its seq and its JSON line (the same JSON every
/// front that speaks JSON sends). [`Stored::event`] gives the typed event.
pub struct Stored {
    pub seq: u64,
    pub json: String,
}

impl Stored {
    pub fn event(&self) -> Option<Event> {
        serde_json::from_str(&self.json).ok()
    }
}

pub struct EventLog {
    path: PathBuf,
    file: File,
    last_seq: u64,
    /// The oldest seq still in the file (last_seq + 1 while it is empty).
    first_seq: u64,
}

#[derive(Debug)]
pub enum ReplayError {
    /// Events after `since` are no longer all kept.
    Compacted {
        since: u64,
        first_seq: u64,
    },
    Io(io::Error),
}

impl EventLog {
    pub fn create(path: PathBuf) -> io::Result<EventLog> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        Ok(EventLog {
            path,
            file,
            last_seq: 0,
            first_seq: 1,
        })
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Gives `body` the next seq and appends it to the file. A failed write is logged
    /// and the event still goes out: the live subscribers must not miss it.
    pub fn append(&mut self, body: EventBody) -> Rc<Event> {
        let event = Event {
            seq: self.last_seq + 1,
            ts: tether_protocol::time::now(),
            body,
        };
        // Serializing these plain structs cannot fail; an empty object is the fallback.
        let json = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_string());
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json.as_bytes());
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            crate::log!(
                "cannot append event {} to {}: {e}",
                event.seq,
                self.path.display()
            );
        }
        self.last_seq = event.seq;
        if self.last_seq + 1 - self.first_seq >= COMPACT_AT {
            if let Err(e) = self.compact() {
                crate::log!("event log compaction failed (the log keeps growing): {e}");
            }
        }
        Rc::new(event)
    }

    /// Rewrites the file with only its newest KEEP_EVENTS events.
    fn compact(&mut self) -> io::Result<()> {
        let keep_from = self.last_seq + 1 - KEEP_EVENTS;
        let kept = self.read_after(keep_from - 1)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for stored in &kept {
                out.write_all(stored.json.as_bytes())?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.first_seq = keep_from;
        Ok(())
    }

    /// Every event with seq > since, in order.
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
        self.read_after(since).map_err(ReplayError::Io)
    }

    fn read_after(&self, since: u64) -> io::Result<Vec<Stored>> {
        #[derive(serde::Deserialize)]
        struct SeqOnly {
            seq: u64,
        }
        let mut lines = Vec::new();
        for line in BufReader::new(File::open(&self.path)?).lines() {
            let line = line?;
            match serde_json::from_str::<SeqOnly>(&line) {
                Ok(s) if s.seq > since => lines.push(Stored {
                    seq: s.seq,
                    json: line,
                }),
                Ok(_) => {}
                Err(e) => crate::log!("skipping a bad line in the event log: {e}"),
            }
        }
        Ok(lines)
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

    #[test]
    fn seqs_rise_by_one_and_replay_is_exact() {
        let (dir, mut log) = temp_log("replay");
        for pid in 1..=5 {
            let p = log.append(EventBody::Created { pid });
            assert_eq!(p.seq, pid as u64);
        }
        let after2: Vec<u64> = log.replay(2).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(after2, vec![3, 4, 5]);
        assert!(log.replay(5).unwrap().is_empty());
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
        let seqs: Vec<u64> = log
            .replay(log.last_seq() - 3)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        let last = log.last_seq();
        assert_eq!(seqs, vec![last - 2, last - 1, last]);
        fs::remove_dir_all(dir).unwrap();
    }
}
