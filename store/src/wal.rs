//! The write-ahead log: what the collector has acknowledged but the indexes
//! may not have committed yet.
//!
//! The log is a sequence of segment files `wal-<start position>.log` in one
//! directory. A *position* is a byte offset in the concatenation of all
//! segments ever written, so it only grows. Each entry is framed as
//!
//! ```text
//! [payload length: u32 LE][crc32 of payload: u32 LE][payload]
//! ```
//!
//! On open, the last segment is scanned and a torn tail (a crash in the middle
//! of a write) is cut off. A failed write (a full disk) is rolled back to the
//! last good length, so the log stays readable and appends resume once space
//! is free. Segments entirely below the position every index has committed are
//! deleted by [`Wal::remove_below`].

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

const FRAME_HEADER_BYTES: u64 = 8;

/// Largest payload one entry may carry.
pub const MAX_ENTRY_BYTES: u32 = 256 * 1024 * 1024;

/// A new segment starts once the current one is this large.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One entry read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// Position of the entry's frame; entries are ordered by it.
    pub position: u64,
    pub payload: Vec<u8>,
}

/// The append side of the write-ahead log. One writer at a time.
pub struct Wal {
    dir: PathBuf,
    segment: File,
    segment_start: u64,
    /// Bytes of the current segment that are known good.
    segment_len: u64,
    segment_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, repairing a torn tail, creating it if needed.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let (segment_start, path) = match segments.last() {
            Some((start, path)) => (*start, path.clone()),
            None => (0, segment_path(dir, 0)),
        };
        let mut segment = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let good_len = scan_segment(&mut segment, segment_start, |_| Ok(()))?;
        if good_len < segment.metadata()?.len() {
            tracing::warn!(path = %path.display(), good_len, "cutting off a torn wal tail");
            segment.set_len(good_len)?;
            segment.sync_all()?;
        }
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment,
            segment_start,
            segment_len: good_len,
            segment_bytes: segment_bytes.max(FRAME_HEADER_BYTES + 1),
        })
    }

    /// Position the next entry will get.
    pub fn end_position(&self) -> u64 {
        self.segment_start + self.segment_len
    }

    /// Appends one entry and returns its position. It is durable only after
    /// the next [`Wal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_ENTRY_BYTES)
            .ok_or_else(|| StoreError::TooLarge(format!("wal entry of {} bytes", payload.len())))?;
        if self.segment_len > 0
            && self.segment_len + FRAME_HEADER_BYTES + u64::from(len) > self.segment_bytes
        {
            self.roll()?;
        }
        let position = self.end_position();
        let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES as usize);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        if let Err(error) = self.segment.write_all(&frame) {
            // Leave no half-written frame behind: a full disk must not corrupt the log.
            let _ = self.segment.set_len(self.segment_len);
            return Err(error.into());
        }
        self.segment_len += frame.len() as u64;
        Ok(position)
    }

    /// Makes every appended entry durable.
    pub fn sync(&mut self) -> Result<()> {
        self.segment.sync_data()?;
        Ok(())
    }

    /// Deletes every segment whose entries all lie below `position`.
    /// The current segment is never deleted.
    pub fn remove_below(&self, position: u64) -> Result<usize> {
        remove_below(&self.dir, position)
    }

    fn roll(&mut self) -> Result<()> {
        self.segment.sync_data()?;
        let start = self.end_position();
        let path = segment_path(&self.dir, start);
        self.segment = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segment_start = start;
        self.segment_len = 0;
        Ok(())
    }
}

/// Calls `visit` with every entry at or after `from`, in order.
pub fn replay(dir: &Path, from: u64, mut visit: impl FnMut(WalEntry) -> Result<()>) -> Result<()> {
    let segments = list_segments(dir)?;
    for (index, (start, path)) in segments.iter().enumerate() {
        let next_start = segments.get(index + 1).map(|(next, _)| *next);
        if next_start.is_some_and(|next| next <= from) {
            continue;
        }
        let mut file = File::open(path)?;
        scan_segment(&mut file, *start, |entry| {
            if entry.position >= from {
                visit(entry)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Deletes every segment in `dir` whose entries all lie below `position`.
/// The newest segment is never deleted, so this is safe to call from another
/// thread than the writer's: a segment entirely below a committed position is
/// complete and no longer written.
pub fn remove_below(dir: &Path, position: u64) -> Result<usize> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for window in segments.windows(2) {
        let ((_, path), (next_start, _)) = (&window[0], &window[1]);
        if *next_start <= position {
            std::fs::remove_file(path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Reads frames from the start of a segment, calling `visit` for each good
/// one; returns the length of the good prefix.
fn scan_segment(
    file: &mut File,
    segment_start: u64,
    mut visit: impl FnMut(WalEntry) -> Result<()>,
) -> Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut offset = 0u64;
    loop {
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        if offset + FRAME_HEADER_BYTES > file_len || reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
        if len > MAX_ENTRY_BYTES || offset + FRAME_HEADER_BYTES + u64::from(len) > file_len {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        visit(WalEntry {
            position: segment_start + offset,
            payload,
        })?;
        offset += FRAME_HEADER_BYTES + u64::from(len);
    }
    drop(reader);
    file.seek(SeekFrom::End(0))?;
    Ok(offset)
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("wal-{start:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let start = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| {
                name.strip_prefix("wal-")?
                    .strip_suffix(".log")?
                    .parse::<u64>()
                    .ok()
            });
        if let Some(start) = start {
            segments.push((start, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Bytes the log holds on disk.
pub fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for (_, path) in list_segments(dir)? {
        total += std::fs::metadata(path)?.len();
    }
    Ok(total)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path, from: u64) -> Vec<WalEntry> {
        let mut entries = Vec::new();
        replay(dir, from, |entry| {
            entries.push(entry);
            Ok(())
        })
        .unwrap();
        entries
    }

    #[test]
    fn entries_come_back_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut positions = Vec::new();
        {
            let mut wal = Wal::open(dir.path(), 64).unwrap();
            for i in 0..20u8 {
                positions.push(wal.append(&[i; 20]).unwrap());
            }
            wal.sync().unwrap();
        }
        assert!(
            list_segments(dir.path()).unwrap().len() > 5,
            "small segments roll"
        );
        let entries = read_all(dir.path(), 0);
        assert_eq!(entries.len(), 20);
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.payload, vec![i as u8; 20]);
            assert_eq!(entry.position, positions[i]);
        }
        assert_eq!(read_all(dir.path(), positions[7]).len(), 13);
        let mut wal = Wal::open(dir.path(), 64).unwrap();
        let next = wal.append(b"after reopen").unwrap();
        assert!(next > positions[19]);
        assert_eq!(read_all(dir.path(), next)[0].payload, b"after reopen");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let good_end;
        {
            let mut wal = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
            wal.append(b"first").unwrap();
            wal.append(b"second").unwrap();
            wal.sync().unwrap();
            good_end = wal.end_position();
        }
        // A crash mid-write: a header promising more bytes than follow, then garbage.
        let path = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[100, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(file);
        let mut wal = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(wal.end_position(), good_end);
        wal.append(b"third").unwrap();
        let payloads: Vec<_> = read_all(dir.path(), 0)
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(
            payloads,
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
    }

    #[test]
    fn a_corrupt_entry_ends_the_readable_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
            wal.append(b"keep").unwrap();
            wal.append(b"flip").unwrap();
            wal.sync().unwrap();
        }
        let path = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let payloads: Vec<_> = read_all(dir.path(), 0)
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(payloads, vec![b"keep".to_vec()]);
    }

    #[test]
    fn segments_below_the_committed_position_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 40).unwrap();
        let positions: Vec<u64> = (0..10u8).map(|i| wal.append(&[i; 30]).unwrap()).collect();
        let before = list_segments(dir.path()).unwrap().len();
        let removed = wal.remove_below(positions[5]).unwrap();
        assert_eq!(removed, 5, "segments holding entries 0..5 go");
        assert_eq!(list_segments(dir.path()).unwrap().len(), before - 5);
        let first = read_all(dir.path(), 0)[0].payload[0];
        assert_eq!(first, 5);
        // Everything below the end: all but the current segment.
        wal.remove_below(u64::MAX).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }
}
