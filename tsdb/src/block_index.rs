//! A block's index apart from its chunks, for readers of object storage.
//!
//! A block on object storage is read the way Prometheus' and Mimir's store
//! gateways read theirs: the reader downloads a small index once and then
//! fetches only the byte ranges of `series.bin` that hold the chunks of the
//! series a query selects, never the whole block. [`BlockIndex::build`]
//! makes the index (`index.bin`) from a version 2 block's `series.bin`;
//! `series.bin` itself is unchanged, so local blocks and blocks uploaded
//! before the index existed stay readable (a reader builds the index
//! itself from the whole file once).
//!
//! `index.bin`: magic `SLTSIX01`, then as varints `min_ms`, `max_ms`
//! (zigzag), `num_series`, `num_samples`; the symbol table as in
//! `series.bin`; the series count, then per series its labels (symbol id
//! pairs), its chunk count, per chunk `first_ms` (zigzag delta from the
//! previous chunk's `last_ms`, from `min_ms` for the first) and `last_ms -
//! first_ms`, then the byte offset of its chunk records in `series.bin`
//! (delta from the previous series' end), their length and a crc32 of
//! them (4 bytes little-endian); a crc32 of everything before it.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::block::{
    BlockMeta, check_v2, read_chunk_records, read_labels, read_symbols, read_v2_with_ranges,
};
use super::labels::LabelIndex;
use super::wal::{Cursor, put_string, put_varint, unzigzag, zigzag};
use super::{
    BLOCK_FORMAT_VERSION, ChunkRef, LabelMatcher, Labels, SealedChunk, SeriesData, TsdbError,
    collect_chunks,
};

const MAGIC: &[u8; 8] = b"SLTSIX01";

#[derive(Debug, Clone, Copy)]
struct ChunkSpan {
    first_ms: i64,
    last_ms: i64,
}

#[derive(Debug)]
struct IndexedSeries {
    chunks: Box<[ChunkSpan]>,
    offset: u64,
    length: u64,
    crc: u32,
}

/// A block's postings, chunk time ranges and chunk byte ranges, without
/// the chunks.
#[derive(Debug)]
pub struct BlockIndex {
    name: PathBuf,
    meta: BlockMeta,
    index: LabelIndex,
    series: Vec<IndexedSeries>,
    heap_bytes: u64,
}

/// The chunks of one series of a block, read from its byte range.
#[derive(Debug)]
pub struct SeriesChunks {
    chunks: Box<[SealedChunk]>,
}

impl SeriesChunks {
    /// The bytes it holds in memory (about).
    pub fn bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|chunk| chunk.bytes.len() as u64 + 24)
            .sum()
    }
}

impl BlockIndex {
    /// The `index.bin` of the version 2 block whose files are `meta_json`
    /// and `series_bin`; `name` names the block in errors.
    pub fn build(name: &Path, meta_json: &[u8], series_bin: &[u8]) -> Result<Vec<u8>, TsdbError> {
        let corrupt = |reason: &str| TsdbError::Corrupt {
            path: name.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta: BlockMeta =
            serde_json::from_slice(meta_json).map_err(|error| corrupt(&error.to_string()))?;
        if meta.version != BLOCK_FORMAT_VERSION {
            return Err(corrupt(&format!(
                "block format version {} has no index for range reads (only version {BLOCK_FORMAT_VERSION})",
                meta.version
            )));
        }
        check_v2(series_bin).map_err(corrupt)?;
        let ((index, chunks), ranges) =
            read_v2_with_ranges(series_bin, meta.min_ms).map_err(corrupt)?;
        let mut out = MAGIC.to_vec();
        put_varint(&mut out, zigzag(meta.min_ms));
        put_varint(&mut out, zigzag(meta.max_ms));
        put_varint(&mut out, meta.num_series);
        put_varint(&mut out, meta.num_samples);
        let symbols = index.symbols.len();
        put_varint(&mut out, symbols as u64);
        for id in 0..symbols {
            put_string(&mut out, index.symbols.get(id as u32));
        }
        put_varint(&mut out, chunks.len() as u64);
        let mut previous_end = 0usize;
        for (id, (series_chunks, range)) in chunks.iter().zip(&ranges).enumerate() {
            let labels = index.interned(id as u32);
            put_varint(&mut out, labels.len() as u64);
            for (name, value) in labels.iter() {
                put_varint(&mut out, u64::from(*name));
                put_varint(&mut out, u64::from(*value));
            }
            put_varint(&mut out, series_chunks.len() as u64);
            let mut previous_ms = meta.min_ms;
            for chunk in series_chunks.iter() {
                put_varint(&mut out, zigzag(chunk.first_ms.wrapping_sub(previous_ms)));
                put_varint(&mut out, zigzag(chunk.last_ms.wrapping_sub(chunk.first_ms)));
                previous_ms = chunk.last_ms;
            }
            put_varint(&mut out, (range.start - previous_end) as u64);
            put_varint(&mut out, range.len() as u64);
            out.extend_from_slice(&crc32fast::hash(&series_bin[range.clone()]).to_le_bytes());
            previous_end = range.end;
        }
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        Ok(out)
    }

    /// Reads an `index.bin`; `name` names the block in errors.
    pub fn decode(name: &Path, bytes: &[u8]) -> Result<Self, TsdbError> {
        let corrupt = |reason: &str| TsdbError::Corrupt {
            path: name.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("bad index magic"));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != checksum {
            return Err(corrupt("index checksum mismatch"));
        }
        let mut cursor = Cursor {
            bytes: &body[MAGIC.len()..],
        };
        let (meta, index, series) =
            read_index(&mut cursor).ok_or_else(|| corrupt("truncated index"))?;
        if !cursor.bytes.is_empty() {
            return Err(corrupt("trailing bytes after the index"));
        }
        let spans: usize = series
            .iter()
            .map(|series| series.chunks.len() * 16 + 48)
            .sum();
        let heap_bytes = (index.heap_bytes() + spans) as u64;
        Ok(BlockIndex {
            name: name.to_path_buf(),
            meta,
            index,
            series,
            heap_bytes,
        })
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// The bytes it holds in memory (about).
    pub fn heap_bytes(&self) -> u64 {
        self.heap_bytes
    }

    fn overlaps(&self, id: u32, start_ms: i64, end_ms: i64) -> bool {
        self.series[id as usize]
            .chunks
            .iter()
            .any(|chunk| chunk.last_ms >= start_ms && chunk.first_ms <= end_ms)
    }

    /// Ids of the series matching `matchers` with a chunk in `[start_ms,
    /// end_ms]`, in label order.
    pub fn matching(&self, matchers: &[LabelMatcher], start_ms: i64, end_ms: i64) -> Vec<u32> {
        if self.meta.max_ms < start_ms || self.meta.min_ms > end_ms {
            return Vec::new();
        }
        let mut ids = self.index.select(matchers);
        ids.retain(|id| self.overlaps(*id, start_ms, end_ms));
        ids
    }

    /// Where series `id`'s chunk records lie in `series.bin`.
    pub fn byte_range(&self, id: u32) -> Range<u64> {
        let series = &self.series[id as usize];
        series.offset..series.offset + series.length
    }

    /// Series `id`'s chunks from the bytes of its [`byte_range`](Self::byte_range).
    pub fn read_chunks(&self, id: u32, bytes: &[u8]) -> Result<SeriesChunks, TsdbError> {
        let series = &self.series[id as usize];
        let corrupt = |reason: &str| TsdbError::Corrupt {
            path: self.name.clone(),
            reason: format!("series {id}: {reason}"),
        };
        if bytes.len() as u64 != series.length || crc32fast::hash(bytes) != series.crc {
            return Err(corrupt("chunk bytes do not match the index's checksum"));
        }
        let mut cursor = Cursor { bytes };
        let chunks = read_chunk_records(&mut cursor, series.chunks.len() as u64, self.meta.min_ms)
            .ok_or_else(|| corrupt("truncated chunk"))?;
        Ok(SeriesChunks {
            chunks: chunks.into_boxed_slice(),
        })
    }

    /// Series `id` with its samples of `chunks` in `[start_ms, end_ms]`, or
    /// nothing when it has none there.
    pub fn samples(
        &self,
        id: u32,
        chunks: &SeriesChunks,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<SeriesData>, TsdbError> {
        let mut samples = Vec::new();
        let refs = chunks.chunks.iter().map(ChunkRef::from);
        collect_chunks(refs, start_ms, end_ms, &mut samples, &self.name)?;
        Ok((!samples.is_empty()).then(|| SeriesData {
            labels: self.index.labels(id),
            samples,
        }))
    }

    /// The label set of series `id`.
    pub fn labels(&self, id: u32) -> Labels {
        self.index.labels(id)
    }

    /// Label sets of the series matching `matchers` with samples in the
    /// range (from the chunk time ranges: nothing is read).
    pub fn series(&self, matchers: &[LabelMatcher], start_ms: i64, end_ms: i64) -> Vec<Labels> {
        self.matching(matchers, start_ms, end_ms)
            .into_iter()
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
}

fn read_index(cursor: &mut Cursor<'_>) -> Option<(BlockMeta, LabelIndex, Vec<IndexedSeries>)> {
    let meta = BlockMeta {
        version: BLOCK_FORMAT_VERSION,
        min_ms: unzigzag(cursor.varint()?),
        max_ms: unzigzag(cursor.varint()?),
        num_series: cursor.varint()?,
        num_samples: cursor.varint()?,
    };
    let mut index = LabelIndex::default();
    let symbol_count = read_symbols(cursor, &mut index).ok()?;
    let series_count = cursor.varint()?;
    let mut series = Vec::with_capacity((series_count as usize).min(cursor.bytes.len()));
    let mut previous_end = 0u64;
    for _ in 0..series_count {
        read_labels(cursor, symbol_count, &mut index).ok()?;
        let chunk_count = cursor.varint()?;
        let mut chunks = Vec::with_capacity((chunk_count as usize).min(cursor.bytes.len()));
        let mut previous_ms = meta.min_ms;
        for _ in 0..chunk_count {
            let first_ms = previous_ms.wrapping_add(unzigzag(cursor.varint()?));
            let last_ms = first_ms.wrapping_add(unzigzag(cursor.varint()?));
            chunks.push(ChunkSpan { first_ms, last_ms });
            previous_ms = last_ms;
        }
        let offset = previous_end.checked_add(cursor.varint()?)?;
        let length = cursor.varint()?;
        let crc = cursor.u32()?;
        previous_end = offset.checked_add(length)?;
        series.push(IndexedSeries {
            chunks: chunks.into_boxed_slice(),
            offset,
            length,
            crc,
        });
    }
    Some((meta, index, series))
}
