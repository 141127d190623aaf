//! The head's write-ahead log: one file of checksummed records.
//!
//! The file opens with the magic `SLWAL002` (format version 2). Record:
//! `len: u32 LE | crc32 of payload: u32 LE | payload`, payload starting with
//! a type byte:
//!
//! - 1 = series: `id` varint, label count varint, then per label the name
//!   and the value, each a varint length and UTF-8 bytes;
//! - 3 = samples: count varint, base timestamp zigzag varint, then per
//!   sample `id` varint, timestamp minus base as zigzag varint, value bits
//!   (8 bytes LE, exact, so the staleness NaN survives).
//!
//! One commit writes its new series, then one samples record: about 11 bytes
//! a sample instead of a framed record each. Replay stops at the first torn
//! or corrupt record (the tail of a crash), warns, and truncates the file
//! there; a file of another format is an error, never overwritten.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Labels, TsdbError, io_error};

/// The head WAL's format: 2, in its magic. A file of another format is an
/// error; a change is a new version, with a fixture in `tests/fixtures/`
/// (`tests/formats.rs`).
pub const HEAD_WAL_FORMAT_VERSION: u32 = 2;

const MAGIC: &[u8; 8] = b"SLWAL002";
const SERIES: u8 = 1;
const SAMPLES: u8 = 3;

/// One replayed record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WalRecord {
    Series {
        id: u32,
        labels: Labels,
    },
    Sample {
        id: u32,
        timestamp_ms: i64,
        value: f64,
    },
}

#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    file: Arc<File>,
    sync: Arc<SyncState>,
    /// Framed series records not yet written.
    series: Vec<u8>,
    /// Payload of the samples record being built (after its header).
    samples: Vec<u8>,
    sample_count: u32,
    base_ms: i64,
    /// Reused for the framed samples record.
    frame: Vec<u8>,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

pub(crate) fn put_string(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads fields from a byte slice.
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A varint that must fit in a `u32`.
    pub(crate) fn varint32(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }

    /// A string with a varint length.
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        let length = usize::try_from(self.varint()?).ok()?;
        std::str::from_utf8(self.take(length)?).ok()
    }
}

/// How far the log is written and how far it is known to be on disk, in
/// bytes ever written (not file offsets: truncation does not reset them).
#[derive(Debug, Default)]
struct SyncState {
    written: AtomicU64,
    synced: Mutex<u64>,
    /// fsyncs done by [`WalSync::wait`].
    fsyncs: AtomicU64,
}

/// Records written to the log but maybe not on disk yet. Waiting outside the
/// store's lock lets writers append while another one fsyncs, and one fsync
/// serves every writer whose records it covers (group commit).
#[derive(Debug)]
pub(crate) struct WalSync {
    path: PathBuf,
    file: Arc<File>,
    state: Arc<SyncState>,
    upto: u64,
}

impl WalSync {
    /// Returns once the records are on disk, fsyncing unless another
    /// writer's fsync already covered them.
    pub(crate) fn wait(self) -> Result<(), TsdbError> {
        let mut synced = self.state.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= self.upto {
            return Ok(());
        }
        // everything written before this load is covered by the fsync
        let target = self.state.written.load(Ordering::Acquire);
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.state.fsyncs.fetch_add(1, Ordering::Relaxed);
        *synced = target;
        Ok(())
    }
}

/// Decodes one record payload, handing each record to `visit`.
fn decode_payload(payload: &[u8], visit: &mut impl FnMut(WalRecord)) -> Option<()> {
    let mut cursor = Cursor { bytes: payload };
    match cursor.u8()? {
        SERIES => {
            let id = cursor.varint32()?;
            let count = cursor.varint()? as usize;
            let mut pairs = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                pairs.push((cursor.string()?, cursor.string()?));
            }
            if !cursor.bytes.is_empty() {
                return None;
            }
            visit(WalRecord::Series {
                id,
                labels: Labels::new(pairs),
            });
        }
        SAMPLES => {
            let count = cursor.varint()?;
            let base_ms = unzigzag(cursor.varint()?);
            // validate the whole record before handing out any of it
            let mut decoded = Vec::with_capacity((count as usize).min(payload.len() / 10));
            for _ in 0..count {
                let id = cursor.varint32()?;
                let timestamp_ms = base_ms.wrapping_add(unzigzag(cursor.varint()?));
                let value = f64::from_bits(cursor.u64()?);
                decoded.push(WalRecord::Sample {
                    id,
                    timestamp_ms,
                    value,
                });
            }
            if !cursor.bytes.is_empty() {
                return None;
            }
            decoded.into_iter().for_each(&mut *visit);
        }
        _ => return None,
    }
    Some(())
}

impl Wal {
    /// Opens the log, handing every record it holds to `visit` in order.
    pub(crate) fn open(path: &Path, mut visit: impl FnMut(WalRecord)) -> Result<Self, TsdbError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io_error(path))?;
        let mut offset = MAGIC.len();
        if contents.len() >= MAGIC.len() && &contents[..MAGIC.len()] != MAGIC {
            return Err(TsdbError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "not a version 2 wal: starts with {:?}, expected {:?}",
                    String::from_utf8_lossy(&contents[..MAGIC.len()]),
                    String::from_utf8_lossy(MAGIC)
                ),
            });
        }
        if contents.len() < MAGIC.len() {
            // new, or torn before its header was complete
            file.set_len(0).map_err(io_error(path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
            file.write_all(MAGIC).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
            contents = MAGIC.to_vec();
        }
        let mut cursor = Cursor {
            bytes: &contents[offset..],
        };
        while let Some(length) = cursor.u32() {
            let Some(checksum) = cursor.u32() else { break };
            let Some(payload) = cursor.take(length as usize) else {
                break;
            };
            if crc32fast::hash(payload) != checksum {
                break;
            }
            if decode_payload(payload, &mut visit).is_none() {
                break;
            }
            offset += 8 + length as usize;
        }
        if offset != contents.len() {
            tracing::warn!(path = %path.display(), valid_bytes = offset, total_bytes = contents.len(), "truncating torn wal tail");
            file.set_len(offset as u64).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_error(path))?;
        Ok(Wal {
            path: path.to_path_buf(),
            file: Arc::new(file),
            sync: Arc::default(),
            series: Vec::new(),
            samples: Vec::new(),
            sample_count: 0,
            base_ms: 0,
            frame: Vec::new(),
        })
    }

    /// Buffers a new series; written by [`flush`](Self::flush) before the
    /// samples of the same commit.
    pub(crate) fn add_series(&mut self, id: u32, labels: &Labels) {
        let mut payload = vec![SERIES];
        put_varint(&mut payload, u64::from(id));
        put_varint(&mut payload, labels.len() as u64);
        for (name, value) in labels.iter() {
            put_string(&mut payload, name);
            put_string(&mut payload, value);
        }
        frame(&mut self.series, &payload);
    }

    /// Buffers one sample; written by [`flush`](Self::flush).
    pub(crate) fn add_sample(&mut self, id: u32, timestamp_ms: i64, value: f64) {
        if self.sample_count == 0 {
            self.base_ms = timestamp_ms;
        }
        self.sample_count += 1;
        put_varint(&mut self.samples, u64::from(id));
        put_varint(
            &mut self.samples,
            zigzag(timestamp_ms.wrapping_sub(self.base_ms)),
        );
        self.samples
            .extend_from_slice(&value.to_bits().to_le_bytes());
    }

    /// Writes buffered records in one write, fsyncing when `sync`.
    pub(crate) fn flush(&mut self, sync: bool) -> Result<(), TsdbError> {
        let durable = self.write_pending()?;
        if sync {
            durable.wait()?;
        }
        Ok(())
    }

    /// Writes buffered records in one write, without waiting for the disk;
    /// [`WalSync::wait`] on the result makes them durable.
    pub(crate) fn write_pending(&mut self) -> Result<WalSync, TsdbError> {
        self.frame.clear();
        self.frame.append(&mut self.series);
        if self.sample_count > 0 {
            let mut header = Vec::with_capacity(16);
            header.push(SAMPLES);
            put_varint(&mut header, u64::from(self.sample_count));
            put_varint(&mut header, zigzag(self.base_ms));
            let length = (header.len() + self.samples.len()) as u32;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header);
            hasher.update(&self.samples);
            self.frame.extend_from_slice(&length.to_le_bytes());
            self.frame
                .extend_from_slice(&hasher.finalize().to_le_bytes());
            self.frame.extend_from_slice(&header);
            self.frame.extend_from_slice(&self.samples);
            self.samples.clear();
            self.sample_count = 0;
        }
        if !self.frame.is_empty() {
            (&*self.file)
                .write_all(&self.frame)
                .map_err(io_error(&self.path))?;
            self.sync
                .written
                .fetch_add(self.frame.len() as u64, Ordering::AcqRel);
            self.frame.clear();
        }
        Ok(WalSync {
            path: self.path.clone(),
            file: self.file.clone(),
            state: self.sync.clone(),
            upto: self.sync.written.load(Ordering::Acquire),
        })
    }

    /// Empties the log once its contents are safe in a block.
    pub(crate) fn truncate(&mut self) -> Result<(), TsdbError> {
        self.series.clear();
        self.samples.clear();
        self.sample_count = 0;
        self.file.set_len(0).map_err(io_error(&self.path))?;
        (&*self.file)
            .seek(SeekFrom::Start(0))
            .map_err(io_error(&self.path))?;
        (&*self.file)
            .write_all(MAGIC)
            .map_err(io_error(&self.path))?;
        self.file.sync_all().map_err(io_error(&self.path))?;
        // whatever was written before is in a block now
        let mut synced = self.sync.synced.lock().unwrap_or_else(|e| e.into_inner());
        *synced = self.sync.written.load(Ordering::Acquire);
        Ok(())
    }

    pub(crate) fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path)
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    }

    /// Heap bytes of the buffers.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.series.capacity() + self.samples.capacity() + self.frame.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(path: &Path) -> Vec<WalRecord> {
        let mut records = Vec::new();
        Wal::open(path, |record| records.push(record)).unwrap();
        records
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let labels = Labels::new([("__name__", "up"), ("job", "api")]);
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        {
            let mut wal = Wal::open(&path, |_| {}).unwrap();
            wal.add_series(0, &labels);
            wal.add_sample(0, 1_000, 1.0);
            wal.add_sample(0, -5, stale);
            wal.flush(true).unwrap();
            wal.add_sample(0, 16_000, 2.0);
            wal.flush(true).unwrap();
        }
        let records = replay(&path);
        assert_eq!(records.len(), 4);
        assert_eq!(
            records[0],
            WalRecord::Series {
                id: 0,
                labels: labels.clone()
            }
        );
        let WalRecord::Sample {
            timestamp_ms,
            value,
            ..
        } = records[2]
        else {
            panic!("expected a sample, got {:?}", records[2])
        };
        assert_eq!((timestamp_ms, value.to_bits()), (-5, stale.to_bits()));

        // cut the last record in half: its sample is gone, the rest stays
        let whole = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 5).unwrap();
        drop(file);
        assert_eq!(replay(&path).len(), 3);
        let kept = std::fs::metadata(&path).unwrap().len();
        assert!(kept < whole - 5, "the torn bytes were truncated");
        assert_eq!(replay(&path).len(), 3);
    }

    #[test]
    fn one_fsync_serves_every_batch_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut wal = Wal::open(&path, |_| {}).unwrap();
        wal.add_series(0, &Labels::new([("__name__", "up")]));
        wal.add_sample(0, 1_000, 1.0);
        let first = wal.write_pending().unwrap();
        wal.add_sample(0, 2_000, 1.0);
        let second = wal.write_pending().unwrap();
        second.wait().unwrap();
        assert_eq!(wal.sync.fsyncs.load(Ordering::Relaxed), 1);
        first.wait().unwrap();
        assert_eq!(
            wal.sync.fsyncs.load(Ordering::Relaxed),
            1,
            "already covered"
        );
        wal.add_sample(0, 3_000, 1.0);
        wal.write_pending().unwrap().wait().unwrap();
        assert_eq!(wal.sync.fsyncs.load(Ordering::Relaxed), 2);
        drop(wal);
        assert_eq!(replay(&path).len(), 4);
    }

    #[test]
    fn a_file_of_another_format_is_an_error_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        std::fs::write(&path, b"SLWAL999 and more").unwrap();
        let error = Wal::open(&path, |_| {}).unwrap_err();
        assert!(error.to_string().contains("not a version 2 wal"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"SLWAL999 and more");
    }
}
