//! Splits the bytes appended to a file into lines.
//!
//! A final line without its newline is held until the newline arrives, so
//! a reader never emits half a line just because the writer was mid-write.
//! Lines longer than the limit are cut into pieces to keep memory bounded.

/// One line handed out by [`LineSplitter`], without its `\n` (or `\r\n`).
#[derive(Debug, PartialEq)]
pub(crate) struct Line<'a> {
    pub(crate) bytes: &'a [u8],
    /// File offset of the first byte of the line.
    pub(crate) start: u64,
    /// File offset just past the line's newline.
    pub(crate) end: u64,
}

/// Stateful line splitter for one file.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    /// Bytes of an incomplete line carried over from the previous push.
    held: Vec<u8>,
    /// File offset of `held[0]` (or of the next byte when `held` is empty).
    held_start: u64,
    max_line_bytes: usize,
}

impl LineSplitter {
    /// A splitter whose next byte is at file offset `start`.
    pub(crate) fn new(start: u64, max_line_bytes: usize) -> Self {
        LineSplitter {
            held: Vec::new(),
            held_start: start,
            max_line_bytes,
        }
    }

    /// Starts over at `start`, dropping any held bytes.
    pub(crate) fn reset(&mut self, start: u64) {
        self.held.clear();
        self.held_start = start;
    }

    /// Bytes held back waiting for a newline.
    #[cfg(test)]
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    /// File offset of the first byte not yet handed out as a line.
    pub(crate) fn held_start(&self) -> u64 {
        self.held_start
    }

    /// Feeds the next bytes of the file and calls `on_line` for every
    /// complete line.
    pub(crate) fn push(&mut self, mut data: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        while !data.is_empty() {
            let Some(newline) = memchr::memchr(b'\n', data) else {
                self.hold(data, &mut on_line);
                return;
            };
            let (head, rest) = (&data[..newline], &data[newline + 1..]);
            data = rest;
            if self.held.is_empty() && head.len() <= self.max_line_bytes {
                let line_end = self.held_start + head.len() as u64 + 1;
                on_line(Line {
                    bytes: trim_cr(head),
                    start: self.held_start,
                    end: line_end,
                });
                self.held_start = line_end;
                continue;
            }
            self.hold(head, &mut on_line);
            let line_end = self.held_start + self.held.len() as u64 + 1;
            on_line(Line {
                bytes: trim_cr(&self.held),
                start: self.held_start,
                end: line_end,
            });
            self.held.clear();
            self.held_start = line_end;
        }
    }

    /// Hands out the held incomplete line, if any (the file will not grow
    /// any more, e.g. it was rotated away).
    pub(crate) fn flush_held(&mut self, mut on_line: impl FnMut(Line<'_>)) {
        if self.held.is_empty() {
            return;
        }
        let end = self.held_start + self.held.len() as u64;
        on_line(Line {
            bytes: trim_cr(&self.held),
            start: self.held_start,
            end,
        });
        self.held.clear();
        self.held_start = end;
    }

    /// Keeps an incomplete line; cuts it when it grows past the limit.
    fn hold(&mut self, mut data: &[u8], on_line: &mut impl FnMut(Line<'_>)) {
        while self.held.len() + data.len() > self.max_line_bytes {
            let room = self.max_line_bytes.saturating_sub(self.held.len());
            self.held.extend_from_slice(&data[..room]);
            data = &data[room..];
            let piece_end = self.held_start + self.held.len() as u64;
            on_line(Line {
                bytes: &self.held,
                start: self.held_start,
                end: piece_end,
            });
            self.held.clear();
            self.held_start = piece_end;
        }
        self.held.extend_from_slice(data);
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max_line_bytes: usize) -> (Vec<(String, u64, u64)>, usize) {
        let mut splitter = LineSplitter::new(0, max_line_bytes);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, |line| {
                lines.push((
                    String::from_utf8_lossy(line.bytes).into_owned(),
                    line.start,
                    line.end,
                ));
            });
        }
        (lines, splitter.held_len())
    }

    #[test]
    fn complete_lines_and_held_tail() {
        let (lines, held) = split(&[b"one\ntwo\nthr"], 100);
        assert_eq!(lines, [("one".into(), 0, 4), ("two".into(), 4, 8)]);
        assert_eq!(held, 3);
    }

    #[test]
    fn line_completed_by_later_chunks() {
        let (lines, held) = split(&[b"he", b"ll", b"o\r\nx\n"], 100);
        assert_eq!(lines, [("hello".into(), 0, 7), ("x".into(), 7, 9)]);
        assert_eq!(held, 0);
    }

    #[test]
    fn empty_lines() {
        let (lines, _) = split(&[b"\n\na\n"], 100);
        assert_eq!(
            lines,
            [("".into(), 0, 1), ("".into(), 1, 2), ("a".into(), 2, 4)]
        );
    }

    #[test]
    fn long_lines_are_cut_into_pieces() {
        let (lines, held) = split(&[b"abcdefg", b"hij\nk"], 4);
        assert_eq!(
            lines,
            [
                ("abcd".into(), 0, 4),
                ("efgh".into(), 4, 8),
                ("ij".into(), 8, 11)
            ]
        );
        assert_eq!(held, 1);
    }
}
