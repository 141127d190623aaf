//! The time-series engine of Sightline's metrics half: Prometheus-style
//! samples on disk, PromQL over them, and the rules engine.
//!
//! - this module: the time-series store ([`TimeSeriesStore`], shared by the
//!   collector as [`MetricStore`]);
//! - [`promql`]: PromQL evaluation over it (parsed by `promql-parser`), with
//!   the query limits: nesting, the sample budget, cancellation;
//! - [`rules`]: Prometheus rule files, the clock-free rule engine (alert
//!   states, `ALERTS`, `ALERTS_FOR_STATE`) and `promtool test rules`.
//!
//! This crate never knows the log or span stores, OTLP, HTTP or a clock of
//! its own: callers pass the evaluation time. It does no networking.
//!
//! ## The store
//!
//! - A series is a sorted label set ([`Labels`], with `__name__`). Head and
//!   blocks each keep an inverted index (`labels.rs`: label strings interned
//!   as symbol ids, postings `(name, value) -> sorted series ids`) that
//!   answers selectors ([`LabelMatcher`]: `=`, `!=`, `=~`, `!~`, regexes
//!   fully anchored) by touching only the series they can match.
//! - New samples go to the in-memory head, compressed as they arrive in
//!   Gorilla chunks of at most 120 samples (delta-of-delta timestamps, XOR
//!   floats or integer steps; see `chunk.rs`), and to a write-ahead log
//!   (`wal.rs`) that [`TimeSeriesStore::commit`] fsyncs and
//!   [`TimeSeriesStore::open`] replays, truncating a torn tail with a warning.
//! - [`TimeSeriesStore::cut_block`] writes the whole head as an immutable
//!   block, a directory of its own (`blocks/<min>-<max>/`: `meta.json` with
//!   time range and format version, `series.bin` with a symbol table, the
//!   series and their chunks; see `block.rs`), written in a `.tmp` directory
//!   renamed into place, then empties the head and truncates the WAL. Blocks
//!   are opened by path; a leftover `.tmp` directory is deleted on open (its
//!   samples are still in the WAL).
//! - Retention ([`TimeSeriesStore::apply_retention`]) deletes whole blocks.
//! - Staleness markers (the NaN `0x7ff0000000000002`) are stored bit-exact;
//!   the PromQL engine honours them.
//!
//! Out-of-order samples (older than a series' newest sample in the head) are
//! rejected.

mod block;
mod block_index;
mod chunk;
mod labels;
mod shared;
mod wal;

pub mod exemplars;
pub mod promql;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

pub use block::{BLOCK_FORMAT_VERSION, Block, BlockMeta};
pub use block_index::{BlockIndex, SeriesChunks};
pub use labels::{LabelMatcher, Labels, METRIC_NAME, MatchKind, matches_all};

pub use exemplars::{Exemplar, SeriesExemplars};
use labels::{FastHash, LabelIndex, map_heap_bytes};
pub use shared::{
    AppendOutcome, ExemplarOutcome, MetricMetadata, MetricReader, MetricStore, SampleLog,
};
pub use wal::HEAD_WAL_FORMAT_VERSION;

use chunk::ChunkEncoder;
use wal::{Wal, WalRecord, WalSync};

use crate::promql::{QueryError, Queryable};

/// Samples per chunk before it is sealed.
const SAMPLES_PER_CHUNK: u16 = 120;

/// One series and its samples, as a query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    /// (timestamp ms, value) in time order.
    pub samples: Vec<(i64, f64)>,
}

/// Series from several sources (blocks, heads, nodes) merged into one
/// answer: sorted by labels, each series' samples in time order, each
/// timestamp once (the first added wins: a retried write stores a sample
/// twice, and the same sample may be in a block and a head for a while).
#[derive(Debug, Default)]
pub struct SeriesMerge {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
}

impl SeriesMerge {
    pub fn add(&mut self, series: SeriesData) {
        self.series
            .entry(series.labels)
            .or_default()
            .extend(series.samples);
    }

    pub fn add_all(&mut self, series: impl IntoIterator<Item = SeriesData>) {
        for one in series {
            self.add(one);
        }
    }

    /// A series by its labels alone (series listings).
    pub fn add_labels(&mut self, labels: Labels) {
        self.series.entry(labels).or_default();
    }

    pub fn finish(self) -> Vec<SeriesData> {
        self.series
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|(timestamp_ms, _)| *timestamp_ms);
                samples.dedup_by_key(|(timestamp_ms, _)| *timestamp_ms);
                SeriesData { labels, samples }
            })
            .collect()
    }
}

/// Errors of the time-series store.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    #[error("tsdb io error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt tsdb file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("out of order sample for {labels}: {timestamp_ms} is older than {newest_ms}")]
    OutOfOrder {
        labels: String,
        timestamp_ms: i64,
        newest_ms: i64,
    },
    #[error("series needs a __name__ label")]
    MissingMetricName,
    /// The log in front of the store (cluster mode's partitioned log) did
    /// not take the batch: nothing of it may be acknowledged; retry.
    #[error("the sample log did not acknowledge: {0}")]
    Unavailable(String),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError + '_ {
    move |source| TsdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sizes of the store, for its own telemetry and benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TsdbStats {
    /// Series in the head.
    pub head_series: usize,
    pub head_samples: u64,
    /// Heap bytes of the head: interned labels, postings, series lookup,
    /// chunks and WAL buffers, counted by capacity (approximate: allocator
    /// overhead is not included).
    pub head_bytes: usize,
    pub blocks: usize,
    pub block_samples: u64,
    /// Bytes of block files on disk.
    pub block_bytes: u64,
    /// Bytes of the WAL on disk.
    pub wal_bytes: u64,
}

/// A sealed chunk held in memory.
#[derive(Debug, Clone)]
pub(crate) struct SealedChunk {
    pub(crate) first_ms: i64,
    pub(crate) last_ms: i64,
    pub(crate) count: u16,
    pub(crate) bytes: Box<[u8]>,
}

/// A chunk's samples as a query reads them: header and bytes, borrowed.
#[derive(Debug, Clone, Copy)]
struct ChunkRef<'a> {
    first_ms: i64,
    last_ms: i64,
    count: u16,
    bytes: &'a [u8],
}

impl<'a> From<&'a SealedChunk> for ChunkRef<'a> {
    fn from(chunk: &'a SealedChunk) -> Self {
        ChunkRef {
            first_ms: chunk.first_ms,
            last_ms: chunk.last_ms,
            count: chunk.count,
            bytes: &chunk.bytes,
        }
    }
}

#[derive(Debug, Default)]
struct HeadSeries {
    sealed: Vec<SealedChunk>,
    open: ChunkEncoder,
}

impl HeadSeries {
    fn newest_ms(&self) -> Option<i64> {
        if self.open.count() > 0 {
            return Some(self.open.last_ms());
        }
        self.sealed.last().map(|chunk| chunk.last_ms)
    }

    /// Sealed chunks, then the open one, borrowed.
    fn chunks(&self) -> impl Iterator<Item = ChunkRef<'_>> {
        let open = (self.open.count() > 0).then(|| ChunkRef {
            first_ms: self.open.first_ms(),
            last_ms: self.open.last_ms(),
            count: self.open.count(),
            bytes: self.open.bytes(),
        });
        self.sealed.iter().map(ChunkRef::from).chain(open)
    }

    /// Every chunk, the open one sealed (for a block).
    fn into_chunks(self) -> Vec<SealedChunk> {
        let mut chunks = self.sealed;
        if self.open.count() > 0 {
            chunks.push(seal(self.open));
        }
        chunks
    }
}

/// Samples (sorted by time, each timestamp once) as sealed chunks of at
/// most [`SAMPLES_PER_CHUNK`].
fn encode_chunks(samples: &[(i64, f64)]) -> Vec<SealedChunk> {
    samples
        .chunks(usize::from(SAMPLES_PER_CHUNK))
        .map(|part| {
            let mut encoder = ChunkEncoder::default();
            for (timestamp_ms, value) in part {
                encoder.append(*timestamp_ms, *value);
            }
            seal(encoder)
        })
        .collect()
}

fn seal(encoder: ChunkEncoder) -> SealedChunk {
    SealedChunk {
        first_ms: encoder.first_ms(),
        last_ms: encoder.last_ms(),
        count: encoder.count(),
        bytes: encoder.into_bytes(),
    }
}

/// The in-memory head: label strings interned once, series found by a hash
/// of their labels (no label set is cloned on the append path), postings by
/// symbol ids, compressed chunks only.
#[derive(Debug, Default)]
struct Head {
    index: LabelIndex,
    series: Vec<HeadSeries>,
    /// Hash of a label set -> series id; the labels are compared on a hit.
    by_hash: HashMap<u64, u32, FastHash>,
    /// Series whose label hash collided with another series'.
    collisions: Vec<(u64, u32)>,
    hasher: FastHash,
    samples: u64,
    min_ms: Option<i64>,
    max_ms: Option<i64>,
}

impl Head {
    fn find(&self, hash: u64, labels: &Labels) -> Option<u32> {
        let id = *self.by_hash.get(&hash)?;
        if self.index.equals(id, labels) {
            return Some(id);
        }
        self.collisions
            .iter()
            .find(|(other, id)| *other == hash && self.index.equals(*id, labels))
            .map(|(_, id)| *id)
    }

    fn get_or_create(&mut self, labels: &Labels) -> (u32, bool) {
        let hash = self.hasher.hash_one(labels);
        if let Some(id) = self.find(hash, labels) {
            return (id, false);
        }
        let id = self.index.add(labels);
        self.series.push(HeadSeries::default());
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => self.collisions.push((hash, id)),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        (id, true)
    }

    /// Appends to series `id`; `Ok(false)` for a duplicate of its newest
    /// sample (ignored, as Prometheus does).
    fn append(&mut self, id: u32, timestamp_ms: i64, value: f64) -> Result<bool, TsdbError> {
        let series = &mut self.series[id as usize];
        if let Some(newest_ms) = series.newest_ms()
            && timestamp_ms <= newest_ms
        {
            if timestamp_ms == newest_ms {
                return Ok(false);
            }
            return Err(TsdbError::OutOfOrder {
                labels: self.index.labels(id).to_string(),
                timestamp_ms,
                newest_ms,
            });
        }
        if series.open.count() >= SAMPLES_PER_CHUNK {
            let full = std::mem::take(&mut series.open);
            series.sealed.push(seal(full));
        }
        series.open.append(timestamp_ms, value);
        self.samples += 1;
        self.min_ms = Some(
            self.min_ms
                .map_or(timestamp_ms, |min| min.min(timestamp_ms)),
        );
        self.max_ms = Some(
            self.max_ms
                .map_or(timestamp_ms, |max| max.max(timestamp_ms)),
        );
        Ok(true)
    }

    /// Heap bytes of the head: index, hash lookup and chunks (capacities,
    /// not lengths).
    fn heap_bytes(&self) -> usize {
        let mut bytes = self.index.heap_bytes()
            + map_heap_bytes(self.by_hash.capacity(), std::mem::size_of::<(u64, u32)>())
            + self.collisions.capacity() * std::mem::size_of::<(u64, u32)>()
            + self.series.capacity() * std::mem::size_of::<HeadSeries>();
        for series in &self.series {
            bytes += series.open.heap_bytes()
                + series.sealed.capacity() * std::mem::size_of::<SealedChunk>();
            bytes += series
                .sealed
                .iter()
                .map(|chunk| chunk.bytes.len())
                .sum::<usize>();
        }
        bytes
    }
}

/// The time-series store of one directory.
#[derive(Debug)]
pub struct TimeSeriesStore {
    dir: PathBuf,
    head: Head,
    wal: Wal,
    blocks: Vec<Block>,
}

impl TimeSeriesStore {
    /// Opens (or creates) the store in `dir`: opens every block under
    /// `blocks/` and replays the WAL into the head.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, TsdbError> {
        let dir = dir.as_ref().to_path_buf();
        let blocks_dir = dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir).map_err(io_error(&blocks_dir))?;
        let mut blocks = Vec::new();
        let entries = std::fs::read_dir(&blocks_dir).map_err(io_error(&blocks_dir))?;
        for entry in entries {
            let path = entry.map_err(io_error(&blocks_dir))?.path();
            let is_temporary = path.extension().is_some_and(|extension| extension == "tmp");
            if is_temporary {
                // a block write that did not finish: its samples are still in the WAL
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if path.is_dir() {
                blocks.push(Block::open(&path)?);
            }
        }
        blocks.sort_by_key(|block| block.meta().min_ms);
        let (head, wal) = Self::replay_head(&dir)?;
        Ok(TimeSeriesStore {
            dir,
            head,
            wal,
            blocks,
        })
    }

    /// Appends one sample; durable after [`commit`](Self::commit).
    pub fn append(
        &mut self,
        labels: &Labels,
        timestamp_ms: i64,
        value: f64,
    ) -> Result<(), TsdbError> {
        if labels.metric_name().is_empty() {
            return Err(TsdbError::MissingMetricName);
        }
        let (id, created) = self.head.get_or_create(labels);
        if created {
            self.wal.add_series(id, labels);
        }
        if self.head.append(id, timestamp_ms, value)? {
            self.wal.add_sample(id, timestamp_ms, value);
        }
        Ok(())
    }

    /// Appends many samples; stops at the first error.
    pub fn append_batch<'a>(
        &mut self,
        samples: impl IntoIterator<Item = (&'a Labels, i64, f64)>,
    ) -> Result<(), TsdbError> {
        for (labels, timestamp_ms, value) in samples {
            self.append(labels, timestamp_ms, value)?;
        }
        Ok(())
    }

    /// Writes the buffered WAL records and fsyncs them.
    pub fn commit(&mut self) -> Result<(), TsdbError> {
        self.wal.flush(true)
    }

    /// Writes the buffered WAL records without waiting for the disk; the
    /// caller waits on the result, outside any lock, to make them durable.
    pub(crate) fn write_wal(&mut self) -> Result<WalSync, TsdbError> {
        self.wal.write_pending()
    }

    /// Writes the head as an immutable block, empties the head and truncates
    /// the WAL. Returns the block's path, or `None` when the head is empty.
    pub fn cut_block(&mut self) -> Result<Option<PathBuf>, TsdbError> {
        let (Some(min_ms), Some(max_ms)) = (self.head.min_ms, self.head.max_ms) else {
            return Ok(None);
        };
        self.commit()?;
        let head = std::mem::take(&mut self.head);
        let index = head.index;
        let mut series: Vec<(Labels, Vec<SealedChunk>)> = head
            .series
            .into_iter()
            .enumerate()
            .map(|(id, series)| (index.labels(id as u32), series.into_chunks()))
            .filter(|(_, chunks)| !chunks.is_empty())
            .collect();
        series.sort_by(|left, right| left.0.cmp(&right.0));
        let written = Block::write(&self.dir.join("blocks"), min_ms, max_ms, &series)
            .and_then(|path| Ok((Block::open(&path)?, path)));
        let (block, path) = match written {
            Ok(written) => written,
            Err(error) => {
                // the head is gone from memory but its samples are in the
                // WAL: put them back so nothing is lost
                let (head, wal) = Self::replay_head(&self.dir)?;
                self.head = head;
                self.wal = wal;
                return Err(error);
            }
        };
        self.blocks.push(block);
        self.blocks.sort_by_key(|block| block.meta().min_ms);
        self.wal.truncate()?;
        Ok(Some(path))
    }

    /// Removes the block at `path` from the store (its files stay) and
    /// returns it.
    pub(crate) fn take_block(&mut self, path: &Path) -> Option<Block> {
        let index = self.blocks.iter().position(|block| block.path() == path)?;
        Some(self.blocks.remove(index))
    }

    /// Opens the WAL of `dir` and rebuilds the head from it.
    fn replay_head(dir: &Path) -> Result<(Head, Wal), TsdbError> {
        let mut head = Head::default();
        let mut wal_ids: HashMap<u32, u32, FastHash> = HashMap::default();
        let wal = Wal::open(&dir.join("wal"), |record| match record {
            WalRecord::Series { id, labels } => {
                let (head_id, _) = head.get_or_create(&labels);
                wal_ids.insert(id, head_id);
            }
            WalRecord::Sample {
                id,
                timestamp_ms,
                value,
            } => {
                if let Some(head_id) = wal_ids.get(&id) {
                    // a replayed duplicate or out-of-order sample was
                    // rejected the first time too
                    let _ = head.append(*head_id, timestamp_ms, value);
                }
            }
        })?;
        Ok((head, wal))
    }

    /// Deletes every block that ends before `keep_from_ms`; returns how many.
    pub fn apply_retention(&mut self, keep_from_ms: i64) -> Result<usize, TsdbError> {
        let (expired, kept): (Vec<Block>, Vec<Block>) = std::mem::take(&mut self.blocks)
            .into_iter()
            .partition(|block| block.meta().max_ms < keep_from_ms);
        self.blocks = kept;
        for block in &expired {
            std::fs::remove_dir_all(block.path()).map_err(io_error(block.path()))?;
        }
        Ok(expired.len())
    }

    /// The blocks overlapping `[start_ms, end_ms]`.
    fn blocks_in(&self, start_ms: i64, end_ms: i64) -> impl Iterator<Item = &Block> {
        self.blocks
            .iter()
            .filter(move |block| block.meta().max_ms >= start_ms && block.meta().min_ms <= end_ms)
    }

    /// Series matching `matchers` with their samples in `[start_ms, end_ms]`,
    /// merged across blocks and head. Only series the postings select are
    /// touched.
    pub fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, TsdbError> {
        let mut merged: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut sources = 0usize;
        for block in self.blocks_in(start_ms, end_ms) {
            sources += 1;
            for id in block.index().select(matchers) {
                let chunks = block.chunks(id).iter().map(ChunkRef::from);
                let mut samples = Vec::new();
                collect_chunks(chunks, start_ms, end_ms, &mut samples, block.path())?;
                if !samples.is_empty() {
                    merged
                        .entry(block.index().labels(id))
                        .or_default()
                        .append(&mut samples);
                }
            }
        }
        sources += 1;
        for id in self.head.index.select(matchers) {
            let chunks = self.head.series[id as usize].chunks();
            let mut samples = Vec::new();
            collect_chunks(chunks, start_ms, end_ms, &mut samples, &self.dir)?;
            if !samples.is_empty() {
                merged
                    .entry(self.head.index.labels(id))
                    .or_default()
                    .append(&mut samples);
            }
        }
        Ok(merged
            .into_iter()
            .map(|(labels, mut samples)| {
                if sources > 1 {
                    samples.sort_by_key(|(timestamp_ms, _)| *timestamp_ms);
                    samples.dedup_by_key(|(timestamp_ms, _)| *timestamp_ms);
                }
                SeriesData { labels, samples }
            })
            .collect())
    }

    /// Label sets of the series with samples in the range (chunk headers
    /// are enough: nothing is decoded).
    pub fn series(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, TsdbError> {
        let overlaps = |chunk: ChunkRef<'_>| chunk.last_ms >= start_ms && chunk.first_ms <= end_ms;
        let mut found = BTreeSet::new();
        for block in self.blocks_in(start_ms, end_ms) {
            for id in block.index().select(matchers) {
                if block.chunks(id).iter().map(ChunkRef::from).any(overlaps) {
                    found.insert(block.index().labels(id));
                }
            }
        }
        for id in self.head.index.select(matchers) {
            if self.head.series[id as usize].chunks().any(overlaps) {
                found.insert(self.head.index.labels(id));
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Every label name, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: BTreeSet<&str> = self.head.index.label_names().collect();
        for block in &self.blocks {
            names.extend(block.index().label_names());
        }
        names.into_iter().map(str::to_string).collect()
    }

    /// Values of label `name` among series matching `matchers`, sorted.
    pub fn label_values(&self, name: &str, matchers: &[LabelMatcher]) -> Vec<String> {
        let mut values = BTreeSet::new();
        let indexes = std::iter::once(&self.head.index).chain(self.blocks.iter().map(Block::index));
        for index in indexes {
            if matchers.is_empty() {
                // straight from the postings' value lists
                values.extend(index.values_of(name));
                continue;
            }
            for id in index.select(matchers) {
                let value = index.value_by_name(id, name);
                if !value.is_empty() {
                    values.insert(value);
                }
            }
        }
        values.into_iter().map(str::to_string).collect()
    }

    /// Sizes of head, blocks and WAL.
    pub fn stats(&self) -> TsdbStats {
        TsdbStats {
            head_series: self.head.series.len(),
            head_samples: self.head.samples,
            head_bytes: self.head.heap_bytes() + self.wal.heap_bytes(),
            blocks: self.blocks.len(),
            block_samples: self
                .blocks
                .iter()
                .map(|block| block.meta().num_samples)
                .sum(),
            block_bytes: self
                .blocks
                .iter()
                .map(|block| sightline_vocab::fs::dir_size(block.path()))
                .sum(),
            wal_bytes: self.wal.size_on_disk(),
        }
    }

    /// Oldest and newest timestamp in the head, when it holds samples.
    pub fn head_range(&self) -> Option<(i64, i64)> {
        self.head.min_ms.zip(self.head.max_ms)
    }

    /// The blocks, oldest first.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }
}

/// Appends the samples of `chunks` within `[start_ms, end_ms]` to `into`,
/// skipping chunks outside the range without decoding them.
fn collect_chunks<'a>(
    chunks: impl Iterator<Item = ChunkRef<'a>>,
    start_ms: i64,
    end_ms: i64,
    into: &mut Vec<(i64, f64)>,
    path: &Path,
) -> Result<(), TsdbError> {
    for chunk in chunks {
        if chunk.last_ms < start_ms || chunk.first_ms > end_ms {
            continue;
        }
        let decoded = chunk::decode_each(chunk.bytes, chunk.count, |timestamp_ms, value| {
            if timestamp_ms >= start_ms && timestamp_ms <= end_ms {
                into.push((timestamp_ms, value));
            }
        });
        if decoded.is_none() {
            return Err(TsdbError::Corrupt {
                path: path.to_path_buf(),
                reason: "undecodable chunk".into(),
            });
        }
    }
    Ok(())
}

impl Queryable for TimeSeriesStore {
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        TimeSeriesStore::select(self, matchers, start_ms, end_ms)
            .map_err(|error| QueryError::Storage(error.to_string()))
    }
}

#[cfg(test)]
mod tests;
