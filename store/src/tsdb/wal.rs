//! The head's write-ahead log: one file of checksummed records.
//!
//! Record: `len: u32 LE | crc32 of payload: u32 LE | payload`, payload
//! starting with a type byte: 1 = series (id, labels), 2 = sample (id,
//! timestamp, value bits). Replay stops at the first torn or corrupt record
//! (the tail of a crash) and truncates the file there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Labels, TsdbError, io_error};

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
    file: File,
    buffer: Vec<u8>,
}

fn put_string(payload: &mut Vec<u8>, text: &str) {
    payload.extend_from_slice(&(text.len() as u32).to_le_bytes());
    payload.extend_from_slice(text.as_bytes());
}

pub(crate) fn encode_labels(payload: &mut Vec<u8>, labels: &Labels) {
    payload.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (name, value) in labels.iter() {
        put_string(payload, name);
        put_string(payload, value);
    }
}

/// Reads little-endian fields from a byte slice.
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
}

impl Cursor<'_> {
    pub(crate) fn take(&mut self, count: usize) -> Option<&[u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    pub(crate) fn labels(&mut self) -> Option<Labels> {
        let count = self.u32()? as usize;
        let mut pairs = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            pairs.push((self.string()?, self.string()?));
        }
        Some(Labels::new(pairs))
    }
}

fn decode_record(payload: &[u8]) -> Option<WalRecord> {
    let mut cursor = Cursor { bytes: payload };
    match cursor.take(1)?[0] {
        1 => Some(WalRecord::Series {
            id: cursor.u32()?,
            labels: cursor.labels()?,
        }),
        2 => Some(WalRecord::Sample {
            id: cursor.u32()?,
            timestamp_ms: cursor.u64()? as i64,
            value: f64::from_bits(cursor.u64()?),
        }),
        _ => None,
    }
}

impl Wal {
    /// Opens the log and returns the records it holds.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<WalRecord>), TsdbError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io_error(path))?;
        let mut records = Vec::new();
        let mut offset = 0usize;
        while contents.len() >= offset + 8 {
            let length = u32::from_le_bytes([
                contents[offset],
                contents[offset + 1],
                contents[offset + 2],
                contents[offset + 3],
            ]) as usize;
            let checksum = u32::from_le_bytes([
                contents[offset + 4],
                contents[offset + 5],
                contents[offset + 6],
                contents[offset + 7],
            ]);
            let Some(payload) = contents.get(offset + 8..offset + 8 + length) else {
                break;
            };
            if crc32fast::hash(payload) != checksum {
                break;
            }
            let Some(record) = decode_record(payload) else {
                break;
            };
            records.push(record);
            offset += 8 + length;
        }
        if offset != contents.len() {
            tracing::warn!(path = %path.display(), valid_bytes = offset, total_bytes = contents.len(), "truncating torn wal tail");
            file.set_len(offset as u64).map_err(io_error(path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_error(path))?;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                buffer: Vec::new(),
            },
            records,
        ))
    }

    /// Buffers one record; written by [`flush`](Self::flush).
    pub(crate) fn add(&mut self, record: &WalRecord) {
        // header placeholder, filled once the payload is in the buffer
        let header_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 8]);
        let payload_at = self.buffer.len();
        match record {
            WalRecord::Series { id, labels } => {
                self.buffer.push(1);
                self.buffer.extend_from_slice(&id.to_le_bytes());
                encode_labels(&mut self.buffer, labels);
            }
            WalRecord::Sample {
                id,
                timestamp_ms,
                value,
            } => {
                self.buffer.push(2);
                self.buffer.extend_from_slice(&id.to_le_bytes());
                self.buffer.extend_from_slice(&timestamp_ms.to_le_bytes());
                self.buffer
                    .extend_from_slice(&value.to_bits().to_le_bytes());
            }
        }
        let length = (self.buffer.len() - payload_at) as u32;
        let checksum = crc32fast::hash(&self.buffer[payload_at..]);
        self.buffer[header_at..header_at + 4].copy_from_slice(&length.to_le_bytes());
        self.buffer[header_at + 4..header_at + 8].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Writes buffered records, fsyncing when `sync`.
    pub(crate) fn flush(&mut self, sync: bool) -> Result<(), TsdbError> {
        if !self.buffer.is_empty() {
            self.file
                .write_all(&self.buffer)
                .map_err(io_error(&self.path))?;
            self.buffer.clear();
        }
        if sync {
            self.file.sync_data().map_err(io_error(&self.path))?;
        }
        Ok(())
    }

    /// Empties the log once its contents are safe in a block.
    pub(crate) fn truncate(&mut self) -> Result<(), TsdbError> {
        self.buffer.clear();
        self.file.set_len(0).map_err(io_error(&self.path))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_error(&self.path))?;
        self.file.sync_all().map_err(io_error(&self.path))
    }

    pub(crate) fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path)
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    }
}
