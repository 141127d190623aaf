//! Immutable blocks: one directory per block, self-describing, opened by path.
//!
//! `meta.json`: `{"version": 2, "min_ms", "max_ms", "num_series",
//! "num_samples"}`. `series.bin` (version 2): magic `SLTSDB02`, then
//!
//! - the symbol table: count varint, then each string (varint length,
//!   UTF-8), sorted, unique; labels refer to strings by their index;
//! - the series, sorted by labels: count varint, then per series its label
//!   count varint and (name, value) symbol ids as varints, its chunk count
//!   varint, and per chunk `first_ms` as a zigzag varint delta from the
//!   previous chunk's `last_ms` (from the block's `min_ms` for the first),
//!   `last_ms - first_ms`, the sample count and the byte length as varints,
//!   then the Gorilla bytes;
//! - a crc32 of everything before it.
//!
//! A label string costs its bytes once per block, a chunk header about 7
//! bytes. Opening a block builds its postings (label=value -> series) in
//! memory, so selectors touch only matching series. Version 1 blocks
//! (`SLTSDB01`: labels as strings per series, fixed-width chunk headers) are
//! still read (their chunks re-encoded in the current chunk format).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunk;
use super::labels::{FastHash, LabelIndex};
use super::wal::{Cursor, put_string, put_varint, unzigzag, zigzag};
use super::{
    ChunkRef, LabelMatcher, Labels, SealedChunk, SeriesData, TsdbError, collect_chunks, io_error,
};

const MAGIC_V1: &[u8; 8] = b"SLTSDB01";
const MAGIC: &[u8; 8] = b"SLTSDB02";
/// Format version written in `meta.json`.
pub const BLOCK_FORMAT_VERSION: u32 = 2;

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

/// An opened block: its postings index and its chunks, held in memory
/// compressed.
#[derive(Debug)]
pub struct Block {
    path: PathBuf,
    meta: BlockMeta,
    index: LabelIndex,
    /// Chunks by series id of `index`.
    chunks: Vec<Box<[SealedChunk]>>,
    /// The size of its `series.bin`: about what it holds in memory.
    bytes: u64,
}

impl Block {
    /// Opens the block directory at `path`.
    pub fn open(path: &Path) -> Result<Self, TsdbError> {
        let meta_path = path.join("meta.json");
        let meta_text = std::fs::read(&meta_path).map_err(io_error(&meta_path))?;
        let data_path = path.join("series.bin");
        let data = std::fs::read(&data_path).map_err(io_error(&data_path))?;
        Self::decode(path, &meta_text, &data)
    }

    /// A block from the bytes of its `meta.json` and `series.bin` (read
    /// from object storage, say); `path` names it in errors.
    pub fn decode(path: &Path, meta_json: &[u8], data: &[u8]) -> Result<Self, TsdbError> {
        let corrupt = |reason: &str| TsdbError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta: BlockMeta =
            serde_json::from_slice(meta_json).map_err(|error| corrupt(&error.to_string()))?;
        if meta.version != BLOCK_FORMAT_VERSION && meta.version != 1 {
            return Err(corrupt(&format!(
                "unknown block format version {}",
                meta.version
            )));
        }
        let magic = if meta.version == 1 { MAGIC_V1 } else { MAGIC };
        if data.len() < magic.len() + 4 || &data[..magic.len()] != magic {
            return Err(corrupt("bad magic"));
        }
        let (body, checksum) = data.split_at(data.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let mut cursor = Cursor {
            bytes: &body[magic.len()..],
        };
        let (index, chunks) = if meta.version == 1 {
            read_v1(&mut cursor).map_err(corrupt)?
        } else {
            read_v2(&mut cursor, meta.min_ms).map_err(corrupt)?
        };
        Ok(Block {
            path: path.to_path_buf(),
            meta,
            index,
            chunks,
            bytes: data.len() as u64,
        })
    }

    /// Writes a block under `parent` (via a temporary directory renamed into
    /// place, then the parent directory synced) and returns its path.
    /// `series` must be sorted by labels.
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

        let strings: BTreeSet<&str> = series
            .iter()
            .flat_map(|(labels, _)| labels.iter().flat_map(|(name, value)| [name, value]))
            .collect();
        let mut symbol_ids: HashMap<&str, u32, FastHash> = HashMap::default();
        let mut data = MAGIC.to_vec();
        put_varint(&mut data, strings.len() as u64);
        for (id, text) in strings.iter().enumerate() {
            put_string(&mut data, text);
            symbol_ids.insert(text, id as u32);
        }
        let mut num_samples = 0u64;
        put_varint(&mut data, series.len() as u64);
        for (labels, chunks) in series {
            put_varint(&mut data, labels.len() as u64);
            for (name, value) in labels.iter() {
                put_varint(&mut data, u64::from(symbol_ids[name]));
                put_varint(&mut data, u64::from(symbol_ids[value]));
            }
            put_varint(&mut data, chunks.len() as u64);
            let mut previous_ms = min_ms;
            for chunk in chunks {
                put_varint(&mut data, zigzag(chunk.first_ms.wrapping_sub(previous_ms)));
                put_varint(
                    &mut data,
                    zigzag(chunk.last_ms.wrapping_sub(chunk.first_ms)),
                );
                put_varint(&mut data, u64::from(chunk.count));
                put_varint(&mut data, chunk.bytes.len() as u64);
                data.extend_from_slice(&chunk.bytes);
                num_samples += u64::from(chunk.count);
                previous_ms = chunk.last_ms;
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
        sync_dir(&temporary)?;
        let _ = std::fs::remove_dir_all(&final_path);
        std::fs::rename(&temporary, &final_path).map_err(io_error(&final_path))?;
        sync_dir(parent)?;
        Ok(final_path)
    }

    /// Writes one block under `parent` holding every series of `blocks`,
    /// each timestamp of a series once (the sample of the earliest block in
    /// `blocks` kept), and returns its path: compaction. A series' chunks
    /// that do not overlap in time are copied as they are; overlapping ones
    /// (a sample written twice, blocks cut from replays) are decoded,
    /// deduplicated and encoded again.
    pub fn compact(parent: &Path, blocks: &[&Block]) -> Result<PathBuf, TsdbError> {
        // Each chunk with the position of its block in `blocks`.
        let mut series: std::collections::BTreeMap<Labels, Vec<(usize, SealedChunk)>> =
            std::collections::BTreeMap::new();
        for (position, block) in blocks.iter().enumerate() {
            for id in 0..block.chunks.len() as u32 {
                series.entry(block.index.labels(id)).or_default().extend(
                    block
                        .chunks(id)
                        .iter()
                        .map(|chunk| (position, chunk.clone())),
                );
            }
        }
        let mut merged = Vec::with_capacity(series.len());
        for (labels, mut chunks) in series {
            chunks.sort_by_key(|(position, chunk)| (chunk.first_ms, *position));
            let disjoint = chunks
                .windows(2)
                .all(|pair| pair[0].1.last_ms < pair[1].1.first_ms);
            let chunks = if disjoint {
                chunks.into_iter().map(|(_, chunk)| chunk).collect()
            } else {
                let mut samples = Vec::new();
                for (position, chunk) in &chunks {
                    let mut decoded = Vec::new();
                    collect_chunks(
                        std::iter::once(ChunkRef::from(chunk)),
                        i64::MIN,
                        i64::MAX,
                        &mut decoded,
                        blocks[*position].path(),
                    )?;
                    samples.extend(
                        decoded
                            .into_iter()
                            .map(|(at, value)| (at, *position, value)),
                    );
                }
                samples.sort_by_key(|(timestamp_ms, position, _)| (*timestamp_ms, *position));
                samples.dedup_by_key(|(timestamp_ms, _, _)| *timestamp_ms);
                let samples: Vec<(i64, f64)> = samples
                    .into_iter()
                    .map(|(timestamp_ms, _, value)| (timestamp_ms, value))
                    .collect();
                super::encode_chunks(&samples)
            };
            merged.push((labels, chunks));
        }
        let min_ms = blocks.iter().map(|block| block.meta.min_ms).min();
        let max_ms = blocks.iter().map(|block| block.meta.max_ms).max();
        let (Some(min_ms), Some(max_ms)) = (min_ms, max_ms) else {
            return Err(TsdbError::Corrupt {
                path: parent.to_path_buf(),
                reason: "no blocks to compact".into(),
            });
        };
        Block::write(parent, min_ms, max_ms, &merged)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// The size of its `series.bin`, about what it holds in memory.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Series matching `matchers` with their samples in `[start_ms,
    /// end_ms]`, sorted by labels; series without samples there are left
    /// out.
    pub fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, TsdbError> {
        let mut found = Vec::new();
        if self.meta.max_ms < start_ms || self.meta.min_ms > end_ms {
            return Ok(found);
        }
        for id in self.index.select(matchers) {
            let mut samples = Vec::new();
            let chunks = self.chunks(id).iter().map(ChunkRef::from);
            collect_chunks(chunks, start_ms, end_ms, &mut samples, &self.path)?;
            if !samples.is_empty() {
                found.push(SeriesData {
                    labels: self.index.labels(id),
                    samples,
                });
            }
        }
        Ok(found)
    }

    /// Label sets of the series matching `matchers` with samples in the
    /// range (from the chunk headers: nothing is decoded).
    pub fn series(&self, matchers: &[LabelMatcher], start_ms: i64, end_ms: i64) -> Vec<Labels> {
        let overlaps = |chunk: ChunkRef<'_>| chunk.last_ms >= start_ms && chunk.first_ms <= end_ms;
        self.index
            .select(matchers)
            .into_iter()
            .filter(|id| self.chunks(*id).iter().map(ChunkRef::from).any(overlaps))
            .map(|id| self.index.labels(id))
            .collect()
    }

    /// Every label name of its series.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.index.label_names()
    }

    /// Values of label `name` among its series matching `matchers`.
    pub fn label_values(&self, name: &str, matchers: &[LabelMatcher]) -> BTreeSet<String> {
        self.index.values_matching(name, matchers)
    }

    /// The block's label index.
    pub(crate) fn index(&self) -> &LabelIndex {
        &self.index
    }

    /// The chunks of series `id` of [`index`](Self::index).
    pub(crate) fn chunks(&self, id: u32) -> &[SealedChunk] {
        self.chunks.get(id as usize).map_or(&[], |chunks| chunks)
    }
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), TsdbError> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

type BlockContents = (LabelIndex, Vec<Box<[SealedChunk]>>);

/// Where each series' chunk records lie in `series.bin` (byte offsets from
/// its start), by series id.
pub(crate) type ChunkRanges = Vec<std::ops::Range<usize>>;

/// Reads a symbol table (count, then each string) into `index`; returns
/// the count.
pub(crate) fn read_symbols(
    cursor: &mut Cursor<'_>,
    index: &mut LabelIndex,
) -> Result<u64, &'static str> {
    let symbol_count = cursor.varint().ok_or("truncated symbol table")?;
    for expected in 0..symbol_count {
        let text = cursor.string().ok_or("truncated symbol")?;
        if u64::from(index.symbols.intern(text)) != expected {
            return Err("duplicate symbol");
        }
    }
    Ok(symbol_count)
}

/// Reads one series' label set (count, then symbol id pairs) and adds it
/// to `index`.
pub(crate) fn read_labels(
    cursor: &mut Cursor<'_>,
    symbol_count: u64,
    index: &mut LabelIndex,
) -> Result<(), &'static str> {
    let label_count = cursor.varint().ok_or("truncated labels")?;
    let mut labels = Vec::with_capacity((label_count as usize).min(64));
    for _ in 0..label_count {
        let name = cursor.varint32().ok_or("truncated label")?;
        let value = cursor.varint32().ok_or("truncated label")?;
        if u64::from(name.max(value)) >= symbol_count {
            return Err("label refers to a missing symbol");
        }
        labels.push((name, value));
    }
    index.add_interned(labels.into());
    Ok(())
}

/// Reads `count` chunk records (header and Gorilla bytes each), the first
/// one's `first_ms` relative to `min_ms`.
pub(crate) fn read_chunk_records(
    cursor: &mut Cursor<'_>,
    count: u64,
    min_ms: i64,
) -> Option<Vec<SealedChunk>> {
    let mut chunks = Vec::with_capacity((count as usize).min(cursor.bytes.len()));
    let mut previous_ms = min_ms;
    for _ in 0..count {
        let first_ms = previous_ms.wrapping_add(unzigzag(cursor.varint()?));
        let last_ms = first_ms.wrapping_add(unzigzag(cursor.varint()?));
        let count = u16::try_from(cursor.varint()?).ok()?;
        let length = usize::try_from(cursor.varint()?).ok()?;
        let bytes = cursor.take(length)?.into();
        chunks.push(SealedChunk {
            first_ms,
            last_ms,
            count,
            bytes,
        });
        previous_ms = last_ms;
    }
    Some(chunks)
}

/// Reads a version 2 `series.bin` whose magic and checksum were checked:
/// the index, the chunks and each series' chunk byte range.
pub(crate) fn read_v2_with_ranges(
    data: &[u8],
    min_ms: i64,
) -> Result<(BlockContents, ChunkRanges), &'static str> {
    let body = &data[MAGIC.len()..data.len() - 4];
    let mut cursor = Cursor { bytes: body };
    let mut ranges = Vec::new();
    let (index, chunks) = read_v2_inner(&mut cursor, min_ms, |before, after| {
        let start = MAGIC.len() + body.len() - before;
        ranges.push(start..MAGIC.len() + body.len() - after);
    })?;
    Ok(((index, chunks), ranges))
}

/// Checks the magic and checksum of a version 2 `series.bin`.
pub(crate) fn check_v2(data: &[u8]) -> Result<(), &'static str> {
    if data.len() < MAGIC.len() + 4 || &data[..MAGIC.len()] != MAGIC {
        return Err("bad magic");
    }
    let (body, checksum) = data.split_at(data.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != checksum {
        return Err("checksum mismatch");
    }
    Ok(())
}

fn read_v2(cursor: &mut Cursor<'_>, min_ms: i64) -> Result<BlockContents, &'static str> {
    read_v2_inner(cursor, min_ms, |_, _| {})
}

/// `chunk_records(remaining before, remaining after)` is told, per series,
/// how many bytes were left before and after its chunk records.
fn read_v2_inner(
    cursor: &mut Cursor<'_>,
    min_ms: i64,
    mut chunk_records: impl FnMut(usize, usize),
) -> Result<BlockContents, &'static str> {
    let mut index = LabelIndex::default();
    let symbol_count = read_symbols(cursor, &mut index)?;
    let series_count = cursor.varint().ok_or("truncated series count")?;
    let mut all_chunks = Vec::with_capacity((series_count as usize).min(cursor.bytes.len()));
    for _ in 0..series_count {
        read_labels(cursor, symbol_count, &mut index)?;
        let chunk_count = cursor.varint().ok_or("truncated chunk count")?;
        let before = cursor.bytes.len();
        let chunks = read_chunk_records(cursor, chunk_count, min_ms).ok_or("truncated chunk")?;
        chunk_records(before, cursor.bytes.len());
        all_chunks.push(chunks.into_boxed_slice());
    }
    if !cursor.bytes.is_empty() {
        return Err("trailing bytes after the series");
    }
    Ok((index, all_chunks))
}

/// Version 1: per series `labels` (u32 count, u32-length strings), u32
/// chunk count, chunks `first_ms: i64, last_ms: i64, count: u16, len: u32,
/// bytes`, all little-endian.
fn read_v1(cursor: &mut Cursor<'_>) -> Result<BlockContents, &'static str> {
    let mut index = LabelIndex::default();
    let mut all_chunks = Vec::new();
    let string_v1 = |cursor: &mut Cursor<'_>| -> Option<String> {
        let length = cursor.u32()? as usize;
        String::from_utf8(cursor.take(length)?.to_vec()).ok()
    };
    while !cursor.bytes.is_empty() {
        let label_count = cursor.u32().ok_or("truncated labels")?;
        let mut pairs = Vec::with_capacity((label_count as usize).min(64));
        for _ in 0..label_count {
            let name = string_v1(cursor).ok_or("truncated label")?;
            let value = string_v1(cursor).ok_or("truncated label")?;
            pairs.push((name, value));
        }
        index.add(&Labels::new(pairs));
        let chunk_count = cursor.u32().ok_or("truncated chunk count")?;
        let mut chunks = Vec::with_capacity((chunk_count as usize).min(cursor.bytes.len()));
        for _ in 0..chunk_count {
            let mut read_chunk = || -> Option<SealedChunk> {
                let first_ms = cursor.u64()? as i64;
                let last_ms = cursor.u64()? as i64;
                let count = cursor.u16()?;
                let length = cursor.u32()? as usize;
                let bytes = chunk::transcode_v1(cursor.take(length)?, count)?;
                Some(SealedChunk {
                    first_ms,
                    last_ms,
                    count,
                    bytes,
                })
            };
            chunks.push(read_chunk().ok_or("truncated chunk")?);
        }
        all_chunks.push(chunks.into_boxed_slice());
    }
    Ok((index, all_chunks))
}
