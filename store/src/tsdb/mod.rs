//! The time-series store: Prometheus-style samples on disk.
//!
//! - A series is a sorted label set ([`Labels`], with `__name__`); an
//!   inverted index label=value -> series ids answers selectors
//!   ([`LabelMatcher`]: `=`, `!=`, `=~`, `!~`, regexes fully anchored).
//! - New samples go to the in-memory head, compressed as they arrive in
//!   Gorilla chunks of at most 120 samples (delta-of-delta timestamps, XOR
//!   floats; see `chunk.rs`), and to a write-ahead log that
//!   [`TimeSeriesStore::commit`] fsyncs and [`TimeSeriesStore::open`] replays.
//! - [`TimeSeriesStore::cut_block`] writes the whole head as an immutable
//!   block, a directory of its own (`blocks/<min>-<max>/`: `meta.json` with
//!   time range and format version, `series.bin` with labels and chunks),
//!   then empties the head and truncates the WAL. Blocks are opened by path.
//! - Retention ([`TimeSeriesStore::apply_retention`]) deletes whole blocks.
//! - Staleness markers (the NaN `0x7ff0000000000002`) are stored bit-exact;
//!   the PromQL engine honours them.
//!
//! Out-of-order samples (older than a series' newest sample in the head) are
//! rejected.

mod block;
mod chunk;
mod labels;
mod shared;
mod wal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub use block::{BLOCK_FORMAT_VERSION, Block, BlockMeta};
pub use labels::{LabelMatcher, Labels, METRIC_NAME, MatchKind, matches_all};
pub use shared::{AppendOutcome, MetricMetadata, MetricStore};

use chunk::ChunkEncoder;
use wal::{Wal, WalRecord};

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
    /// Heap bytes of the head: labels, index and chunks, approximately.
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

impl SealedChunk {
    fn from_encoder(encoder: &ChunkEncoder) -> Self {
        SealedChunk {
            first_ms: encoder.first_ms(),
            last_ms: encoder.last_ms(),
            count: encoder.count(),
            bytes: encoder.bytes().into(),
        }
    }

    pub(crate) fn decode(&self) -> Option<Vec<(i64, f64)>> {
        chunk::decode(&self.bytes, self.count)
    }
}

#[derive(Debug)]
struct HeadSeries {
    labels: Labels,
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

    fn all_chunks(&self) -> Vec<SealedChunk> {
        let mut chunks = self.sealed.clone();
        if self.open.count() > 0 {
            chunks.push(SealedChunk::from_encoder(&self.open));
        }
        chunks
    }
}

/// The in-memory head and its inverted index.
#[derive(Debug, Default)]
struct Head {
    series: Vec<HeadSeries>,
    ids: HashMap<Labels, u32>,
    postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
    samples: u64,
    min_ms: Option<i64>,
    max_ms: Option<i64>,
}

impl Head {
    fn get_or_create(&mut self, labels: &Labels) -> (u32, bool) {
        if let Some(id) = self.ids.get(labels) {
            return (*id, false);
        }
        let id = self.series.len() as u32;
        self.series.push(HeadSeries {
            labels: labels.clone(),
            sealed: Vec::new(),
            open: ChunkEncoder::default(),
        });
        self.ids.insert(labels.clone(), id);
        for (name, value) in labels.iter() {
            self.postings
                .entry(name.to_string())
                .or_default()
                .entry(value.to_string())
                .or_default()
                .push(id);
        }
        (id, true)
    }

    fn append(&mut self, id: u32, timestamp_ms: i64, value: f64) -> Result<(), TsdbError> {
        let series = &mut self.series[id as usize];
        if let Some(newest_ms) = series.newest_ms()
            && timestamp_ms <= newest_ms
        {
            if timestamp_ms == newest_ms {
                return Ok(());
            }
            return Err(TsdbError::OutOfOrder {
                labels: series.labels.to_string(),
                timestamp_ms,
                newest_ms,
            });
        }
        if series.open.count() >= SAMPLES_PER_CHUNK {
            series.sealed.push(SealedChunk::from_encoder(&series.open));
            series.open = ChunkEncoder::default();
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
        Ok(())
    }

    /// Ids of series matching every matcher, using the postings for
    /// matchers that require their label.
    fn select_ids(&self, matchers: &[LabelMatcher]) -> Vec<u32> {
        let mut candidates: Option<BTreeSet<u32>> = None;
        for matcher in matchers.iter().filter(|matcher| matcher.requires_label()) {
            let mut matching = BTreeSet::new();
            if let Some(values) = self.postings.get(&matcher.name) {
                if matcher.kind == MatchKind::Equal {
                    if let Some(ids) = values.get(&matcher.value) {
                        matching.extend(ids.iter().copied());
                    }
                } else {
                    for (value, ids) in values {
                        if matcher.matches(value) {
                            matching.extend(ids.iter().copied());
                        }
                    }
                }
            }
            candidates = Some(match candidates {
                None => matching,
                Some(previous) => previous.intersection(&matching).copied().collect(),
            });
        }
        let candidates: Vec<u32> = match candidates {
            Some(ids) => ids.into_iter().collect(),
            None => (0..self.series.len() as u32).collect(),
        };
        candidates
            .into_iter()
            .filter(|id| matches_all(matchers, &self.series[*id as usize].labels))
            .collect()
    }

    fn heap_bytes(&self) -> usize {
        let mut bytes = self.series.capacity() * std::mem::size_of::<HeadSeries>();
        for series in &self.series {
            // the label set is held twice: in the series and as the id map's key
            bytes += 2 * series.labels.heap_bytes() + series.open.heap_bytes();
            for chunk in &series.sealed {
                bytes += std::mem::size_of::<SealedChunk>() + chunk.bytes.len();
            }
        }
        bytes += self.ids.capacity() * (std::mem::size_of::<Labels>() + 4 + 8);
        for values in self.postings.values() {
            for (value, ids) in values {
                bytes += value.capacity() + ids.capacity() * 4 + 64;
            }
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
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if path.is_dir() {
                blocks.push(Block::open(&path)?);
            }
        }
        blocks.sort_by_key(|block| block.meta().min_ms);
        let (wal, records) = Wal::open(&dir.join("wal"))?;
        let mut head = Head::default();
        let mut wal_ids: HashMap<u32, u32> = HashMap::new();
        for record in records {
            match record {
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
            }
        }
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
        self.head.append(id, timestamp_ms, value)?;
        if created {
            self.wal.add(&WalRecord::Series {
                id,
                labels: labels.clone(),
            });
        }
        self.wal.add(&WalRecord::Sample {
            id,
            timestamp_ms,
            value,
        });
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

    /// Writes the head as an immutable block, empties the head and truncates
    /// the WAL. Returns the block's path, or `None` when the head is empty.
    pub fn cut_block(&mut self) -> Result<Option<PathBuf>, TsdbError> {
        let (Some(min_ms), Some(max_ms)) = (self.head.min_ms, self.head.max_ms) else {
            return Ok(None);
        };
        self.commit()?;
        let mut series: Vec<(Labels, Vec<SealedChunk>)> = self
            .head
            .series
            .iter()
            .map(|series| (series.labels.clone(), series.all_chunks()))
            .filter(|(_, chunks)| !chunks.is_empty())
            .collect();
        series.sort_by(|left, right| left.0.cmp(&right.0));
        let path = Block::write(&self.dir.join("blocks"), min_ms, max_ms, &series)?;
        self.blocks.push(Block::open(&path)?);
        self.blocks.sort_by_key(|block| block.meta().min_ms);
        self.head = Head::default();
        self.wal.truncate()?;
        Ok(Some(path))
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

    /// Series matching `matchers` with their samples in `[start_ms, end_ms]`,
    /// merged across blocks and head.
    pub fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, TsdbError> {
        let mut merged: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        for block in &self.blocks {
            if block.meta().max_ms < start_ms || block.meta().min_ms > end_ms {
                continue;
            }
            for (labels, chunks) in block.series() {
                if !matches_all(matchers, labels) {
                    continue;
                }
                let samples = merged.entry(labels.clone()).or_default();
                for chunk in chunks {
                    collect_chunk(chunk, start_ms, end_ms, samples, block.path())?;
                }
            }
        }
        for id in self.head.select_ids(matchers) {
            let series = &self.head.series[id as usize];
            let samples = merged.entry(series.labels.clone()).or_default();
            for chunk in series.all_chunks() {
                collect_chunk(&chunk, start_ms, end_ms, samples, &self.dir)?;
            }
        }
        Ok(merged
            .into_iter()
            .filter(|(_, samples)| !samples.is_empty())
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|(timestamp_ms, _)| *timestamp_ms);
                samples.dedup_by_key(|(timestamp_ms, _)| *timestamp_ms);
                SeriesData { labels, samples }
            })
            .collect())
    }

    /// Label sets of the series with samples in the range.
    pub fn series(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, TsdbError> {
        Ok(self
            .select(matchers, start_ms, end_ms)?
            .into_iter()
            .map(|series| series.labels)
            .collect())
    }

    /// Every label name, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.head.postings.keys().cloned().collect();
        for block in &self.blocks {
            for (labels, _) in block.series() {
                names.extend(labels.iter().map(|(name, _)| name.to_string()));
            }
        }
        names.into_iter().collect()
    }

    /// Values of label `name` among series matching `matchers`, sorted.
    pub fn label_values(&self, name: &str, matchers: &[LabelMatcher]) -> Vec<String> {
        let mut values = BTreeSet::new();
        for id in self.head.select_ids(matchers) {
            let value = self.head.series[id as usize].labels.get(name);
            if !value.is_empty() {
                values.insert(value.to_string());
            }
        }
        for block in &self.blocks {
            for (labels, _) in block.series() {
                let value = labels.get(name);
                if !value.is_empty() && matches_all(matchers, labels) {
                    values.insert(value.to_string());
                }
            }
        }
        values.into_iter().collect()
    }

    /// Sizes of head, blocks and WAL.
    pub fn stats(&self) -> TsdbStats {
        TsdbStats {
            head_series: self.head.series.len(),
            head_samples: self.head.samples,
            head_bytes: self.head.heap_bytes(),
            blocks: self.blocks.len(),
            block_samples: self
                .blocks
                .iter()
                .map(|block| block.meta().num_samples)
                .sum(),
            block_bytes: self
                .blocks
                .iter()
                .map(|block| crate::dir_size(block.path()))
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

fn collect_chunk(
    chunk: &SealedChunk,
    start_ms: i64,
    end_ms: i64,
    into: &mut Vec<(i64, f64)>,
    path: &Path,
) -> Result<(), TsdbError> {
    if chunk.last_ms < start_ms || chunk.first_ms > end_ms {
        return Ok(());
    }
    let samples = chunk.decode().ok_or_else(|| TsdbError::Corrupt {
        path: path.to_path_buf(),
        reason: "undecodable chunk".into(),
    })?;
    into.extend(
        samples
            .into_iter()
            .filter(|(timestamp_ms, _)| *timestamp_ms >= start_ms && *timestamp_ms <= end_ms),
    );
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
