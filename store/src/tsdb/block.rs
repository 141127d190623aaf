//! Immutable blocks: one directory per block, self-describing, opened by path.
//!
//! `meta.json`: `{"version": 1, "min_ms", "max_ms", "num_series",
//! "num_samples"}`. `series.bin`: magic `SLTSDB01`, then per series its
//! labels and chunks (`first_ms: i64, last_ms: i64, count: u16, len: u32,
//! bytes`), then a crc32 of everything before it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::wal::{Cursor, encode_labels};
use super::{Labels, SealedChunk, TsdbError, io_error};

const MAGIC: &[u8; 8] = b"SLTSDB01";
/// Format version written in `meta.json`.
pub const BLOCK_FORMAT_VERSION: u32 = 1;

/// What `meta.json` says about a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMeta {
    pub version: u32,
    pub min_ms: i64,
    pub max_ms: i64,
    pub num_series: u64,
    pub num_samples: u64,
}

/// An opened block (its chunks are held in memory, compressed).
#[derive(Debug)]
pub struct Block {
    path: PathBuf,
    meta: BlockMeta,
    series: Vec<(Labels, Vec<SealedChunk>)>,
}

impl Block {
    /// Opens the block directory at `path`.
    pub fn open(path: &Path) -> Result<Self, TsdbError> {
        let corrupt = |reason: &str| TsdbError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta_path = path.join("meta.json");
        let meta_text = std::fs::read_to_string(&meta_path).map_err(io_error(&meta_path))?;
        let meta: BlockMeta =
            serde_json::from_str(&meta_text).map_err(|error| corrupt(&error.to_string()))?;
        if meta.version != BLOCK_FORMAT_VERSION {
            return Err(corrupt(&format!(
                "unknown block format version {}",
                meta.version
            )));
        }
        let data_path = path.join("series.bin");
        let data = std::fs::read(&data_path).map_err(io_error(&data_path))?;
        if data.len() < MAGIC.len() + 4 || &data[..MAGIC.len()] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let (body, checksum) = data.split_at(data.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut cursor = Cursor {
            bytes: &body[MAGIC.len()..],
        };
        let mut series = Vec::new();
        while !cursor.bytes.is_empty() {
            let labels = cursor.labels().ok_or_else(|| corrupt("truncated labels"))?;
            let chunk_count = cursor
                .u32()
                .ok_or_else(|| corrupt("truncated chunk count"))?;
            let mut chunks = Vec::with_capacity(chunk_count as usize);
            for _ in 0..chunk_count {
                let read_chunk = |cursor: &mut Cursor<'_>| -> Option<SealedChunk> {
                    let first_ms = cursor.u64()? as i64;
                    let last_ms = cursor.u64()? as i64;
                    let count = u16::from_le_bytes(cursor.take(2)?.try_into().ok()?);
                    let length = cursor.u32()? as usize;
                    let bytes = cursor.take(length)?.into();
                    Some(SealedChunk {
                        first_ms,
                        last_ms,
                        count,
                        bytes,
                    })
                };
                chunks.push(read_chunk(&mut cursor).ok_or_else(|| corrupt("truncated chunk"))?);
            }
            series.push((labels, chunks));
        }
        Ok(Block {
            path: path.to_path_buf(),
            meta,
            series,
        })
    }

    /// Writes a block under `parent` (via a temporary directory renamed into
    /// place) and returns its path.
    pub(crate) fn write(
        parent: &Path,
        min_ms: i64,
        max_ms: i64,
        series: &[(Labels, Vec<SealedChunk>)],
    ) -> Result<PathBuf, TsdbError> {
        let name = format!("{min_ms:020}-{max_ms:020}");
        let final_path = parent.join(&name);
        let temporary = parent.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&temporary);
        std::fs::create_dir_all(&temporary).map_err(io_error(&temporary))?;
        let mut data = MAGIC.to_vec();
        let mut num_samples = 0u64;
        for (labels, chunks) in series {
            encode_labels(&mut data, labels);
            data.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
            for chunk in chunks {
                data.extend_from_slice(&chunk.first_ms.to_le_bytes());
                data.extend_from_slice(&chunk.last_ms.to_le_bytes());
                data.extend_from_slice(&chunk.count.to_le_bytes());
                data.extend_from_slice(&(chunk.bytes.len() as u32).to_le_bytes());
                data.extend_from_slice(&chunk.bytes);
                num_samples += u64::from(chunk.count);
            }
        }
        let checksum = crc32fast::hash(&data);
        data.extend_from_slice(&checksum.to_le_bytes());
        let meta = BlockMeta {
            version: BLOCK_FORMAT_VERSION,
            min_ms,
            max_ms,
            num_series: series.len() as u64,
            num_samples,
        };
        let write = |file: &str, contents: &[u8]| -> Result<(), TsdbError> {
            let path = temporary.join(file);
            let mut handle = std::fs::File::create(&path).map_err(io_error(&path))?;
            std::io::Write::write_all(&mut handle, contents).map_err(io_error(&path))?;
            handle.sync_all().map_err(io_error(&path))
        };
        write("series.bin", &data)?;
        let meta_json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write("meta.json", &meta_json)?;
        let _ = std::fs::remove_dir_all(&final_path);
        std::fs::rename(&temporary, &final_path).map_err(io_error(&final_path))?;
        Ok(final_path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub(crate) fn series(&self) -> &[(Labels, Vec<SealedChunk>)] {
        &self.series
    }
}
