//! What a front has queued for one peer: whole messages, written as the socket takes
//! them, with a bound so a peer that stops reading cannot grow the shim.

use std::collections::VecDeque;
use std::io::{self, Write};

/// Bytes queued for one peer before it counts as stuck and is disconnected.
pub const MAX_QUEUED: usize = 8 << 20;

#[derive(Default)]
pub struct OutQueue {
    out: VecDeque<Vec<u8>>,
    /// Bytes of the front message already written.
    written: usize,
    queued: usize,
}

impl OutQueue {
    /// Queues one message; false when the bound is passed (the caller disconnects).
    pub fn push(&mut self, message: Vec<u8>) -> bool {
        self.queued += message.len();
        self.out.push_back(message);
        self.queued <= MAX_QUEUED
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// The queued messages and how much of the first is written (a hand-over).
    pub fn parts(&self) -> (Vec<Vec<u8>>, usize) {
        (self.out.iter().cloned().collect(), self.written)
    }

    pub fn from_parts(messages: Vec<Vec<u8>>, written: usize) -> OutQueue {
        let queued = messages.iter().map(Vec::len).sum();
        let written = if messages.first().is_some_and(|m| written < m.len()) {
            written
        } else {
            0
        };
        OutQueue {
            out: messages.into(),
            written,
            queued,
        }
    }

    /// A message is half written: anything else now would garble it.
    pub fn mid_message(&self) -> bool {
        self.written != 0
    }

    /// Writes what `to` takes. Err: the peer is gone.
    pub fn flush(&mut self, to: &mut impl Write) -> io::Result<()> {
        while let Some(front) = self.out.front() {
            match to.write(&front[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.queued -= front.len();
                        self.written = 0;
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // An empty queue holds no memory.
        self.out = VecDeque::new();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `n` bytes a call.
    struct Trickle(Vec<u8>, usize);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.1);
            self.0.extend_from_slice(&b[..n]);
            self.1 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn messages_go_out_whole_and_in_order_and_the_bound_holds() {
        let mut q = OutQueue::default();
        assert!(q.push(b"hello\n".to_vec()));
        assert!(q.push(b"world\n".to_vec()));
        let mut w = Trickle(Vec::new(), 8);
        q.flush(&mut w).unwrap();
        assert!(q.mid_message());
        w.1 = 100;
        q.flush(&mut w).unwrap();
        assert_eq!(w.0, b"hello\nworld\n");
        assert!(!q.has_pending() && !q.mid_message() && q.queued() == 0);
        assert!(!q.push(vec![0; MAX_QUEUED + 1]));
    }
}
