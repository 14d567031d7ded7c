//! Line framing: bytes in, complete lines out, with a bound on line length so a peer
//! cannot make the other side buffer without limit.

/// What [`LineBuffer::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (and without a trailing `\r`).
    Complete(Vec<u8>),
    /// No complete line buffered yet.
    Incomplete,
    /// The line being received is longer than the bound.
    TooLong,
}

/// Accumulates bytes and hands out complete lines.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Where the scan for `\n` resumes: bytes before it hold none.
    scanned: usize,
    max_line: usize,
}

impl LineBuffer {
    pub fn new(max_line: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            scanned: 0,
            max_line,
        }
    }

    /// Reads once from `r` straight into the buffer (no buffer on the caller's
    /// stack). Ok(0) is end of input.
    pub fn read_from(&mut self, r: &mut impl std::io::Read) -> std::io::Result<usize> {
        const CHUNK: usize = 8 << 10;
        let len = self.buf.len();
        self.buf.resize(len + CHUNK, 0);
        let result = r.read(&mut self.buf[len..]);
        self.buf.truncate(len + *result.as_ref().unwrap_or(&0));
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        result
    }

    /// What is buffered and not yet taken as a line.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn next_line(&mut self) -> Line {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                if end > self.max_line {
                    return Line::TooLong;
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                if self.buf.is_empty() {
                    // Give back the memory a burst of input took.
                    self.buf = Vec::new();
                }
                Line::Complete(line)
            }
            None if self.buf.len() > self.max_line => Line::TooLong,
            None => {
                self.scanned = self.buf.len();
                Line::Incomplete
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_reads() {
        let mut b = LineBuffer::new(64);
        b.extend(b"{\"a\":");
        assert_eq!(b.next_line(), Line::Incomplete);
        b.extend(b"1}\r\n{\"b\":2}\n{");
        assert_eq!(b.next_line(), Line::Complete(b"{\"a\":1}".to_vec()));
        assert_eq!(b.next_line(), Line::Complete(b"{\"b\":2}".to_vec()));
        assert_eq!(b.next_line(), Line::Incomplete);
        assert!(!b.is_empty());
    }

    #[test]
    fn reads_straight_into_the_buffer() {
        let mut b = LineBuffer::new(64);
        let mut input: &[u8] = b"one\ntwo";
        assert_eq!(b.read_from(&mut input).unwrap(), 7);
        assert_eq!(b.next_line(), Line::Complete(b"one".to_vec()));
        assert_eq!(b.next_line(), Line::Incomplete);
        assert_eq!(b.read_from(&mut input).unwrap(), 0);
        assert!(!b.is_empty());
    }

    #[test]
    fn bounds_line_length() {
        let mut b = LineBuffer::new(8);
        b.extend(b"123456789");
        assert_eq!(b.next_line(), Line::TooLong);
        let mut b = LineBuffer::new(8);
        b.extend(b"123456789\n");
        assert_eq!(b.next_line(), Line::TooLong);
        let mut b = LineBuffer::new(8);
        b.extend(b"12345678\n");
        assert_eq!(b.next_line(), Line::Complete(b"12345678".to_vec()));
    }
}
