//! The write-ahead log: what the collector has acknowledged but the indexes
//! may not have committed yet. [`LocalWal`] is the local disk's
//! [`DurableLog`], with one partition.
//!
//! The log is a sequence of segment files `wal-<start position>.log` in one
//! directory. A *position* numbers an entry: the first entry ever written is
//! 0, the next 1, and so on (format 1 used byte offsets; see below). A
//! segment (format 2, [`WAL_FORMAT_VERSION`]) opens with the magic
//! [`SEGMENT_MAGIC`], written with its first entry, then holds entries
//! framed as
//!
//! ```text
//! [payload length: u32 LE][crc32 of payload: u32 LE][payload]
//! ```
//!
//! The `n`th entry of a segment has position `start + n`. Payloads are
//! [`crate::Batch`] encodings; the log itself does not look at them.
//!
//! Format 1 segments have no magic, the same frames, and positions that are
//! byte offsets in the concatenation of all segments (`start + offset of the
//! frame`): record sequence numbers derived from them ran out after 16 TiB
//! written. They are still read: a log whose newest segment is format 1
//! continues in a new format 2 segment whose first position is the format
//! 1 end, so positions keep growing across the change and the stores'
//! committed positions (format 1 byte offsets) keep their meaning.
//!
//! On open, the last segment is scanned and a torn tail (a crash in the middle
//! of a write) is cut off. A failed write (a full disk) is rolled back to the
//! last good length, so the log stays readable and appends resume once space
//! is free. Segments entirely below the position every index has committed are
//! deleted by [`Wal::remove_below`].

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::durable::{Checkpoint, DurableLog, LogEntry, PartitionId, Position, SINGLE_PARTITION};
use crate::error::{Result, StoreError};

/// The format segments are written in: 2, entries numbered by position,
/// segments open with [`SEGMENT_MAGIC`]. Format 1 (byte-offset positions,
/// no magic) is still read.
pub const WAL_FORMAT_VERSION: u32 = 2;

/// The first bytes of a format 2 segment. Read as a format 1 frame header,
/// its length (`0x4c445453`) is over [`MAX_ENTRY_BYTES`], so no format 1
/// segment starts with it.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STDLOG02";

const MAGIC_BYTES: u64 = SEGMENT_MAGIC.len() as u64;

const FRAME_HEADER_BYTES: u64 = 8;

/// Largest payload one entry may carry.
pub const MAX_ENTRY_BYTES: u32 = 256 * 1024 * 1024;

/// A new segment starts once the current one is this large.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// One entry read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// Position of the entry; entries are ordered by it.
    pub position: u64,
    pub payload: Vec<u8>,
}

/// How a segment file numbers its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentFormat {
    /// Format 1: no magic; an entry's position is its frame's byte offset.
    ByteOffsets,
    /// Format 2: [`SEGMENT_MAGIC`] first; positions count entries.
    Numbered,
}

/// What a scan of one segment found.
struct SegmentScan {
    format: SegmentFormat,
    /// Length of the good prefix (the magic included).
    good_len: u64,
    /// Entries in the good prefix.
    entries: u64,
}

/// The append side of the write-ahead log. One writer at a time.
pub struct Wal {
    dir: PathBuf,
    segment: File,
    segment_start: u64,
    /// Bytes of the current segment that are known good, its magic included.
    segment_len: u64,
    /// Entries in the current segment.
    segment_entries: u64,
    segment_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, repairing a torn tail, creating it if needed.
    /// Nothing is written but the repair: a full disk still opens.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let (segment_start, path) = match segments.last() {
            Some((start, path)) => (*start, path.clone()),
            None => (0, segment_path(dir, 0)),
        };
        let mut segment = open_segment(&path)?;
        let scan = scan_segment(&mut segment, segment_start, |_| Ok(()))?;
        if scan.good_len < segment.metadata()?.len() {
            tracing::warn!(path = %path.display(), good_len = scan.good_len, "cutting off a torn wal tail");
            segment.set_len(scan.good_len)?;
            segment.sync_all()?;
        }
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment,
            segment_start,
            segment_len: scan.good_len,
            segment_entries: scan.entries,
            segment_bytes: segment_bytes.max(MAGIC_BYTES + FRAME_HEADER_BYTES + 1),
        };
        if scan.format == SegmentFormat::ByteOffsets {
            // Written by format 1: new entries go to a format 2 segment
            // whose positions start at the format 1 end. An empty format 1
            // segment (cut to nothing above) already is an empty format 2 one.
            if scan.good_len > 0 {
                tracing::info!(
                    path = %path.display(),
                    from_version = 1,
                    to_version = WAL_FORMAT_VERSION,
                    "continuing an older write-ahead log in the current format"
                );
                wal.start_segment(segment_start + scan.good_len)?;
            } else {
                wal.segment_len = 0;
                wal.segment_entries = 0;
            }
        }
        sync_dir(dir)?;
        Ok(wal)
    }

    /// Position the next entry will get.
    pub fn end_position(&self) -> u64 {
        self.segment_start + self.segment_entries
    }

    /// Appends one entry and returns its position. It is durable only after
    /// the next [`Wal::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_ENTRY_BYTES)
            .ok_or_else(|| StoreError::TooLarge(format!("wal entry of {} bytes", payload.len())))?;
        if self.segment_entries > 0
            && self.segment_len + FRAME_HEADER_BYTES + u64::from(len) > self.segment_bytes
        {
            self.roll()?;
        }
        let position = self.end_position();
        let magic: &[u8] = if self.segment_len == 0 {
            &SEGMENT_MAGIC
        } else {
            &[]
        };
        let mut frame =
            Vec::with_capacity(magic.len() + FRAME_HEADER_BYTES as usize + payload.len());
        frame.extend_from_slice(magic);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        if let Err(error) = self.segment.write_all(&frame) {
            // Leave no half-written frame behind: a full disk must not corrupt the log.
            let _ = self.segment.set_len(self.segment_len);
            return Err(error.into());
        }
        self.segment_len += frame.len() as u64;
        self.segment_entries += 1;
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
        self.start_segment(self.end_position())?;
        sync_dir(&self.dir)
    }

    /// Makes an empty segment starting at `start` the current one; its
    /// magic is written with its first entry.
    fn start_segment(&mut self, start: u64) -> Result<()> {
        self.segment = open_segment(&segment_path(&self.dir, start))?;
        self.segment_start = start;
        self.segment_len = 0;
        self.segment_entries = 0;
        Ok(())
    }
}

fn open_segment(path: &Path) -> Result<File> {
    Ok(OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?)
}

/// The write-ahead log on the local disk as a [`DurableLog`] with one
/// partition ([`SINGLE_PARTITION`]): appends and syncs go to the [`Wal`]
/// (one writer at a time), replays and removals read the directory and do
/// not wait for the writer.
pub struct LocalWal {
    dir: PathBuf,
    writer: Mutex<Wal>,
}

impl LocalWal {
    /// Opens (or creates) the log in `dir`; see [`Wal::open`].
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<LocalWal> {
        Ok(LocalWal {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Wal::open(dir, segment_bytes)?),
        })
    }

    /// The directory of its segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Wal> {
        // A panic while appending leaves the file as the rollback left it.
        self.writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl DurableLog for LocalWal {
    fn partitions(&self) -> Vec<PartitionId> {
        vec![SINGLE_PARTITION]
    }

    fn append(&self, partition: PartitionId, payload: &[u8]) -> Result<Position> {
        if partition != SINGLE_PARTITION {
            return Err(StoreError::NotFound(format!(
                "partition {partition} of the local write-ahead log (it has only {SINGLE_PARTITION})"
            )));
        }
        self.writer().append(payload)
    }

    fn sync(&self) -> Result<()> {
        self.writer().sync()
    }

    fn end(&self) -> Checkpoint {
        Checkpoint::single(self.writer().end_position())
    }

    fn replay(
        &self,
        from: &Checkpoint,
        visit: &mut dyn FnMut(LogEntry) -> Result<()>,
    ) -> Result<()> {
        replay(&self.dir, from.position(SINGLE_PARTITION), |entry| {
            visit(LogEntry {
                partition: SINGLE_PARTITION,
                position: entry.position,
                payload: entry.payload,
            })
        })
    }

    fn remove_below(&self, checkpoint: &Checkpoint) -> Result<usize> {
        remove_below(&self.dir, checkpoint.position(SINGLE_PARTITION))
    }

    fn disk_bytes(&self) -> Result<u64> {
        disk_bytes(&self.dir)
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
/// one; says how long the good prefix is and in which format it is.
///
/// A segment shorter than the magic holds no entry in either format (a
/// format 1 frame is longer): it is an empty format 2 segment.
fn scan_segment(
    file: &mut File,
    segment_start: u64,
    mut visit: impl FnMut(WalEntry) -> Result<()>,
) -> Result<SegmentScan> {
    file.seek(SeekFrom::Start(0))?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut scan = SegmentScan {
        format: SegmentFormat::Numbered,
        good_len: 0,
        entries: 0,
    };
    let mut magic = [0u8; MAGIC_BYTES as usize];
    if file_len >= MAGIC_BYTES {
        reader.read_exact(&mut magic)?;
        if magic == SEGMENT_MAGIC {
            scan.good_len = MAGIC_BYTES;
        } else {
            scan.format = SegmentFormat::ByteOffsets;
            reader.seek(SeekFrom::Start(0))?;
        }
    }
    // A segment shorter than the magic has no room for a frame header either.
    loop {
        let offset = scan.good_len;
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
        let position = match scan.format {
            SegmentFormat::ByteOffsets => segment_start + offset,
            SegmentFormat::Numbered => segment_start + scan.entries,
        };
        visit(WalEntry { position, payload })?;
        scan.good_len += FRAME_HEADER_BYTES + u64::from(len);
        scan.entries += 1;
    }
    drop(reader);
    file.seek(SeekFrom::End(0))?;
    Ok(scan)
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

    /// A format 1 segment as format 1 wrote it: frames, no magic.
    fn write_format_1_segment(dir: &Path, start: u64, payloads: &[&[u8]]) -> Vec<u64> {
        let mut bytes = Vec::new();
        let mut positions = Vec::new();
        for payload in payloads {
            positions.push(start + bytes.len() as u64);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        std::fs::write(segment_path(dir, start), bytes).unwrap();
        positions
    }

    #[test]
    fn positions_count_entries_not_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 100).unwrap();
        let positions: Vec<u64> = (0..10usize)
            .map(|i| wal.append(&vec![7; 10 + i * 5]).unwrap())
            .collect();
        assert_eq!(positions, (0..10).collect::<Vec<u64>>());
        assert_eq!(wal.end_position(), 10);
        let starts: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .map(|(start, _)| start)
            .collect();
        assert!(starts.len() > 2, "small segments roll: {starts:?}");
        for (start, path) in list_segments(dir.path()).unwrap() {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                bytes[..8],
                SEGMENT_MAGIC,
                "segment {start} opens with the magic"
            );
        }
        let entries = read_all(dir.path(), 4);
        assert_eq!(entries[0].position, 4);
        assert_eq!(entries[0].payload.len(), 30);
        // Reopened, it goes on counting.
        drop(wal);
        let mut wal = Wal::open(dir.path(), 100).unwrap();
        assert_eq!(wal.end_position(), 10);
        assert_eq!(wal.append(b"x").unwrap(), 10);
    }

    #[test]
    fn a_format_1_log_is_read_and_continued_in_format_2_after_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_format_1_segment(dir.path(), 0, &[b"one", b"two"]);
        let second = write_format_1_segment(dir.path(), 22, &[b"three"]);
        assert_eq!(first, [0, 11]);
        let old_end = 22 + 8 + 5;
        let old: Vec<_> = read_all(dir.path(), 0)
            .into_iter()
            .map(|entry| (entry.position, entry.payload))
            .collect();
        assert_eq!(
            old,
            [
                (0, b"one".to_vec()),
                (11, b"two".to_vec()),
                (second[0], b"three".to_vec())
            ]
        );
        let mut wal = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(wal.end_position(), old_end, "positions keep growing");
        assert_eq!(wal.append(b"four").unwrap(), old_end);
        assert_eq!(wal.append(b"five").unwrap(), old_end + 1);
        wal.sync().unwrap();
        let new_segment = std::fs::read(segment_path(dir.path(), old_end)).unwrap();
        assert_eq!(new_segment[..8], SEGMENT_MAGIC);
        let all: Vec<_> = read_all(dir.path(), 11)
            .into_iter()
            .map(|entry| entry.position)
            .collect();
        assert_eq!(all, [11, 22, old_end, old_end + 1]);
        // The old segments go once everything in them is committed.
        assert_eq!(wal.remove_below(old_end).unwrap(), 2);
        assert_eq!(read_all(dir.path(), 0).len(), 2);
    }

    #[test]
    fn an_empty_or_torn_first_write_is_an_empty_segment() {
        for leftover in [&b""[..], &SEGMENT_MAGIC[..5], &[3, 0, 0][..]] {
            let dir = tempfile::tempdir().unwrap();
            write_format_1_segment(dir.path(), 0, &[b"kept"]);
            std::fs::write(segment_path(dir.path(), 12), leftover).unwrap();
            let mut wal = Wal::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
            assert_eq!(wal.end_position(), 12, "after {leftover:?}");
            assert_eq!(wal.append(b"next").unwrap(), 12);
            let positions: Vec<_> = read_all(dir.path(), 0)
                .into_iter()
                .map(|entry| entry.position)
                .collect();
            assert_eq!(positions, [0, 12], "after {leftover:?}");
        }
    }

    #[test]
    fn the_local_wal_is_a_durable_log_of_one_partition() {
        let dir = tempfile::tempdir().unwrap();
        let log: Box<dyn DurableLog> = Box::new(LocalWal::open(dir.path(), 64).unwrap());
        assert_eq!(log.partitions(), [SINGLE_PARTITION]);
        for i in 0..6u8 {
            assert_eq!(
                log.append(SINGLE_PARTITION, &[i; 20]).unwrap(),
                u64::from(i)
            );
        }
        log.sync().unwrap();
        assert!(matches!(
            log.append(1, b"elsewhere"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(log.end(), Checkpoint::single(6));
        let mut seen = Vec::new();
        log.replay(&Checkpoint::single(2), &mut |entry| {
            seen.push((entry.partition, entry.position, entry.payload[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, 2, 2), (0, 3, 3), (0, 4, 4), (0, 5, 5)]);
        let before = log.disk_bytes().unwrap();
        assert!(log.remove_below(&Checkpoint::single(4)).unwrap() > 0);
        assert!(log.disk_bytes().unwrap() < before);
        let mut first = None;
        log.replay(&Checkpoint::default(), &mut |entry| {
            first.get_or_insert(entry.position);
            Ok(())
        })
        .unwrap();
        assert_eq!(first, Some(4), "entries from the checkpoint on stay");
        // A visitor's error stops the replay and comes back.
        let error = log
            .replay(&Checkpoint::default(), &mut |_| {
                Err(StoreError::CorruptDocument("stop".into()))
            })
            .unwrap_err();
        assert!(matches!(error, StoreError::CorruptDocument(_)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A crash can cut the newest segment at any byte: what stays
        /// readable is a prefix of what was appended, numbered from 0, and
        /// the next append gets the next number.
        #[test]
        fn a_cut_at_any_byte_keeps_a_numbered_prefix(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..12),
            segment_bytes in 40u64..200,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut wal = Wal::open(dir.path(), segment_bytes).unwrap();
            for payload in &payloads {
                wal.append(payload).unwrap();
            }
            wal.sync().unwrap();
            drop(wal);
            let (_, newest) = list_segments(dir.path()).unwrap().pop().unwrap();
            let len = std::fs::metadata(&newest).unwrap().len();
            let keep = cut.index(len as usize + 1) as u64;
            OpenOptions::new().write(true).open(&newest).unwrap().set_len(keep).unwrap();

            let entries = read_all(dir.path(), 0);
            proptest::prop_assert!(entries.len() <= payloads.len());
            for (index, entry) in entries.iter().enumerate() {
                proptest::prop_assert_eq!(entry.position, index as u64);
                proptest::prop_assert_eq!(&entry.payload, &payloads[index]);
            }
            let mut wal = Wal::open(dir.path(), segment_bytes).unwrap();
            proptest::prop_assert_eq!(wal.end_position(), entries.len() as u64);
            proptest::prop_assert_eq!(wal.append(b"after").unwrap(), entries.len() as u64);
            let again = read_all(dir.path(), 0);
            proptest::prop_assert_eq!(again.len(), entries.len() + 1);
            proptest::prop_assert_eq!(&again[entries.len()].payload, b"after");
        }
    }
}
