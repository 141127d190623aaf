//! [`ClusterMetrics`]: the cluster's samples as one
//! [`MetricReader`], for the Prometheus HTTP API and the rules of any node.
//!
//! A select reads, in one statement, the published blocks overlapping its
//! range and every metrics partition's checkpoint; asks every live node for
//! what its partitions hold past those checkpoints (its heads, and blocks
//! cut but not yet in that list), this node's own heads in process; reads
//! the blocks as a store gateway does, never whole: each block's index
//! (`index.bin`: postings, chunk time ranges, where each series' chunks lie
//! in `series.bin`), then only the byte ranges of the series the query
//! selects, both through one bounded cache (least recently used evicted);
//! and merges them by series, each timestamp
//! once (a retried write stores a sample twice; the same sample is in a
//! block and an owner's memory for a moment after a publish). Every
//! metrics partition must be answered by its owner: a partition whose owner
//! is gone (until its lease expires and another takes it) fails the query
//! with its number, rather than answering without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sightline_store::PartitionId;
use sightline_tsdb::promql::{QueryError, Queryable};
use sightline_tsdb::{
    BlockIndex, LabelMatcher, Labels, MatchKind, MetricMetadata, MetricReader, SeriesChunks,
    SeriesData, SeriesMerge,
};

use super::{HeadPart, MetricHeads, decode_heads, encode_heads};
use crate::metastore::{BlockRow, Metastore};
use crate::query::Peers;
use crate::splits::SplitStorage;

/// The internal API's heads endpoint.
pub const METRICS_PATH: &str = "/internal/v1/metrics";

/// How long a root waits for a node's heads.
const HEADS_TIMEOUT: Duration = Duration::from_secs(30);

/// The object beside a block's `series.bin` that indexes it.
pub(crate) const INDEX_FILE: &str = "index.bin";

/// Blocks read at once by one query.
const CONCURRENT_DOWNLOADS: usize = 8;

/// A root's question to a node about its heads.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct HeadsRequest {
    /// The checkpoint of every metrics partition in the root's snapshot.
    pub checkpoints: BTreeMap<PartitionId, u64>,
    /// (`=`, `!=`, `=~`, `!~`; name; value)
    pub matchers: Vec<(String, String, String)>,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Label sets only, no samples (series and label listings).
    #[serde(default)]
    pub series_only: bool,
}

fn kind_name(kind: MatchKind) -> &'static str {
    match kind {
        MatchKind::Equal => "=",
        MatchKind::NotEqual => "!=",
        MatchKind::Regex => "=~",
        MatchKind::NotRegex => "!~",
    }
}

fn matchers_of(wire: &[(String, String, String)]) -> Result<Vec<LabelMatcher>, String> {
    wire.iter()
        .map(|(kind, name, value)| {
            let kind = match kind.as_str() {
                "=" => MatchKind::Equal,
                "!=" => MatchKind::NotEqual,
                "=~" => MatchKind::Regex,
                "!~" => MatchKind::NotRegex,
                other => return Err(format!("unknown matcher kind {other:?}")),
            };
            LabelMatcher::new(kind, name, value).map_err(|error| format!("matcher {name}: {error}"))
        })
        .collect()
}

/// Counters of block reads, on the collector's `/metrics`.
#[derive(Debug, Default)]
pub struct BlockCacheStats {
    pub hits: AtomicU64,
    pub downloads: AtomicU64,
    pub range_reads: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub evictions: AtomicU64,
    pub cached_bytes: AtomicU64,
}

impl BlockCacheStats {
    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "sightline_cluster_block_cache_hits_total",
                "counter",
                "Block indexes and series chunks answered from the block cache.",
                load(&self.hits),
            ),
            (
                "sightline_cluster_block_downloads_total",
                "counter",
                "Block indexes fetched from object storage.",
                load(&self.downloads),
            ),
            (
                "sightline_cluster_block_range_reads_total",
                "counter",
                "Series' chunk byte ranges fetched from object storage.",
                load(&self.range_reads),
            ),
            (
                "sightline_cluster_block_downloaded_bytes_total",
                "counter",
                "Bytes of block indexes and chunks fetched from object storage.",
                load(&self.downloaded_bytes),
            ),
            (
                "sightline_cluster_block_cache_evictions_total",
                "counter",
                "Block indexes and series chunks evicted from the block cache.",
                load(&self.evictions),
            ),
            (
                "sightline_cluster_block_cache_bytes",
                "gauge",
                "Bytes of block indexes and series chunks the cache holds.",
                load(&self.cached_bytes),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

/// What the block cache holds: a block's index, or one series' chunks.
#[derive(Clone)]
enum Cached {
    Index(Arc<BlockIndex>),
    Chunks(Arc<SeriesChunks>),
}

impl Cached {
    fn bytes(&self) -> u64 {
        match self {
            Cached::Index(index) => index.heap_bytes(),
            Cached::Chunks(chunks) => chunks.bytes(),
        }
    }
}

/// Key of a block's index in the cache (series ids are below it).
const INDEX: u32 = u32::MAX;

/// Block indexes and series chunks by (block id, series id or [`INDEX`]),
/// least recently used evicted past `limit` bytes: like a store gateway's
/// index-header and chunks caches, in one budget.
struct BlockCache {
    entries: Mutex<lru::LruCache<(String, u32), Cached>>,
    bytes: AtomicU64,
    limit: u64,
    stats: Arc<BlockCacheStats>,
}

impl BlockCache {
    fn get(&self, block_id: &str, series: u32) -> Option<Cached> {
        let found = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(block_id.to_string(), series))
            .cloned();
        if found.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn insert(&self, block_id: &str, series: u32, value: Cached) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let size = value.bytes();
        if let Some(previous) = entries.put((block_id.to_string(), series), value) {
            self.bytes.fetch_sub(previous.bytes(), Ordering::Relaxed);
        }
        let mut total = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        // Always keep the newest, even when it alone is over the limit:
        // the query that loaded it reads it next.
        while total > self.limit && entries.len() > 1 {
            let Some((_, evicted)) = entries.pop_lru() else {
                break;
            };
            let size = evicted.bytes();
            total = self.bytes.fetch_sub(size, Ordering::Relaxed) - size;
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.cached_bytes.store(total, Ordering::Relaxed);
    }
}

/// Reads published blocks from object storage through the block cache.
pub(crate) struct BlockReader {
    storage: SplitStorage,
    cache: BlockCache,
}

impl BlockReader {
    pub(crate) fn new(storage: SplitStorage, cache_bytes: u64) -> BlockReader {
        BlockReader {
            storage,
            cache: BlockCache {
                entries: Mutex::new(lru::LruCache::unbounded()),
                bytes: AtomicU64::new(0),
                limit: cache_bytes,
                stats: Arc::default(),
            },
        }
    }

    /// The index of block `block_id`, from the cache or object storage (a
    /// block published before blocks had an `index.bin` is downloaded
    /// whole once and its index built here).
    async fn index(&self, block_id: &str) -> anyhow::Result<Arc<BlockIndex>> {
        if let Some(Cached::Index(index)) = self.cache.get(block_id, INDEX) {
            return Ok(index);
        }
        let index_key = super::owner::block_key(block_id, INDEX_FILE);
        let name = std::path::PathBuf::from(&index_key);
        let (bytes, fetched) = match self.storage.get_opt(&index_key).await? {
            Some(bytes) => {
                let fetched = bytes.len();
                (bytes, fetched)
            }
            None => {
                let (meta, series) = super::owner::download_block(&self.storage, block_id).await?;
                let fetched = meta.len() + series.len();
                let name = name.clone();
                let built =
                    tokio::task::spawn_blocking(move || BlockIndex::build(&name, &meta, &series))
                        .await??;
                (bytes::Bytes::from(built), fetched)
            }
        };
        self.cache.stats.downloads.fetch_add(1, Ordering::Relaxed);
        self.cache
            .stats
            .downloaded_bytes
            .fetch_add(fetched as u64, Ordering::Relaxed);
        let index = Arc::new(
            tokio::task::spawn_blocking(move || BlockIndex::decode(&name, &bytes)).await??,
        );
        self.cache
            .insert(block_id, INDEX, Cached::Index(index.clone()));
        Ok(index)
    }

    /// Series of block `block_id` matching `matchers` in the range: its index,
    /// then the chunks of the selected series only (from the cache, the
    /// others by byte-range reads of `series.bin`). Label sets only, no
    /// samples, when `series_only`.
    pub(crate) async fn read_block(
        &self,
        block_id: &str,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
        series_only: bool,
    ) -> anyhow::Result<Vec<SeriesData>> {
        let index = self.index(block_id).await?;
        let ids = index.matching(matchers, start_ms, end_ms);
        if series_only {
            return Ok(ids
                .into_iter()
                .map(|id| SeriesData {
                    labels: index.labels(id),
                    samples: Vec::new(),
                })
                .collect());
        }
        let mut chunks: Vec<Option<Arc<SeriesChunks>>> = ids
            .iter()
            .map(|id| match self.cache.get(block_id, *id) {
                Some(Cached::Chunks(chunks)) => Some(chunks),
                _ => None,
            })
            .collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|at| chunks[*at].is_none()).collect();
        if !missing.is_empty() {
            let ranges: Vec<std::ops::Range<u64>> = missing
                .iter()
                .map(|at| index.byte_range(ids[*at]))
                .collect();
            let series_key = super::owner::block_key(block_id, "series.bin");
            let fetched = self.storage.get_ranges(&series_key, &ranges).await?;
            let stats = &self.cache.stats;
            stats
                .range_reads
                .fetch_add(ranges.len() as u64, Ordering::Relaxed);
            for (at, bytes) in missing.into_iter().zip(fetched) {
                stats
                    .downloaded_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let read = Arc::new(index.read_chunks(ids[at], &bytes)?);
                self.cache
                    .insert(block_id, ids[at], Cached::Chunks(read.clone()));
                chunks[at] = Some(read);
            }
        }
        let mut found = Vec::with_capacity(ids.len());
        for (id, chunks) in ids.into_iter().zip(chunks) {
            if let Some(chunks) = chunks {
                found.extend(index.samples(id, &chunks, start_ms, end_ms)?);
            }
        }
        Ok(found)
    }
}

/// The cluster's samples (blocks in object storage, owners' heads) as one
/// store.
pub struct ClusterMetrics {
    metastore: Arc<Metastore>,
    blocks: BlockReader,
    heads: Arc<MetricHeads>,
    peers: Peers,
    runtime: tokio::runtime::Handle,
}

fn storage_error(error: impl std::fmt::Display) -> QueryError {
    QueryError::Storage(error.to_string())
}

impl ClusterMetrics {
    pub(crate) fn new(
        metastore: Arc<Metastore>,
        storage: SplitStorage,
        cache_bytes: u64,
        heads: Arc<MetricHeads>,
        peers: Peers,
    ) -> ClusterMetrics {
        ClusterMetrics {
            metastore,
            blocks: BlockReader::new(storage, cache_bytes),
            heads,
            peers,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The block cache's counters.
    pub fn cache_stats(&self) -> Arc<BlockCacheStats> {
        self.blocks.cache.stats.clone()
    }

    /// A block this node published: queries here read its index without a
    /// download.
    pub(crate) fn adopt(&self, row: &BlockRow, index: Arc<BlockIndex>) {
        self.blocks
            .cache
            .insert(&row.block_id, INDEX, Cached::Index(index));
    }

    /// Series of `partition`'s published blocks matching `matchers` in the
    /// range (the owner's own history: delta totals start from it).
    pub(crate) async fn select_blocks(
        &self,
        partition: PartitionId,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> anyhow::Result<Vec<SeriesData>> {
        let (rows, _) = self.metastore.metric_snapshot(start_ms, end_ms).await?;
        let mut merged = SeriesMerge::default();
        for row in rows.iter().filter(|row| row.partition == partition) {
            merged.add_all(
                self.blocks
                    .read_block(&row.block_id, matchers, start_ms, end_ms, false)
                    .await?,
            );
        }
        Ok(merged.finish())
    }

    /// Every series matching `matchers` in the range, from blocks and
    /// heads, merged (labels only when `series_only`).
    fn gather(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
        series_only: bool,
    ) -> Result<Vec<SeriesData>, QueryError> {
        let (rows, checkpoints, nodes) = self.runtime.block_on(async {
            self.metastore
                .reconnect_if_closed()
                .await
                .map_err(storage_error)?;
            let (snapshot, nodes) = tokio::join!(
                self.metastore.metric_snapshot(start_ms, end_ms),
                self.metastore.live_addresses(self.peers.ttl())
            );
            let (rows, checkpoints) = snapshot.map_err(storage_error)?;
            Ok::<_, QueryError>((rows, checkpoints, nodes.map_err(storage_error)?))
        })?;
        let request = HeadsRequest {
            checkpoints: checkpoints.clone(),
            matchers: matchers
                .iter()
                .map(|matcher| {
                    (
                        kind_name(matcher.kind).to_string(),
                        matcher.name.clone(),
                        matcher.value.clone(),
                    )
                })
                .collect(),
            start_ms,
            end_ms,
            series_only,
        };
        let body = serde_json::to_vec(&request).map_err(storage_error)?;
        // The other nodes' heads, asked while this node reads its own and
        // the blocks.
        let remote =
            self.runtime.spawn(
                self.peers
                    .call_others(nodes, METRICS_PATH, body, HEADS_TIMEOUT),
            );
        let mut parts = self
            .heads
            .answer(&checkpoints, matchers, start_ms, end_ms, series_only)
            .map_err(QueryError::Storage)?;
        let blocks = self.runtime.block_on(async {
            use futures::StreamExt as _;
            futures::stream::iter(rows.iter().map(|row| {
                self.blocks
                    .read_block(&row.block_id, matchers, start_ms, end_ms, series_only)
            }))
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .collect::<Vec<_>>()
            .await
        });
        let mut merged = SeriesMerge::default();
        for block in blocks {
            let block = block.map_err(|error| storage_error(format!("{error:#}")))?;
            if series_only {
                for series in block {
                    merged.add_labels(series.labels);
                }
            } else {
                merged.add_all(block);
            }
        }
        for (node, answer) in self.runtime.block_on(remote).map_err(storage_error)? {
            match answer.and_then(|bytes| decode_heads(&bytes)) {
                Ok(answer) => parts.extend(answer),
                Err(error) => tracing::warn!(node, %error, "a node's metric heads did not answer"),
            }
        }
        // One answer per partition: its newest owner's (a node that lost
        // the partition without knowing it answers with an older epoch).
        let mut by_partition: BTreeMap<PartitionId, HeadPart> = BTreeMap::new();
        for part in parts {
            match by_partition.get(&part.partition) {
                Some(kept) if kept.epoch >= part.epoch => {}
                _ => {
                    by_partition.insert(part.partition, part);
                }
            }
        }
        let missing: Vec<PartitionId> = checkpoints
            .keys()
            .filter(|partition| !by_partition.contains_key(partition))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(QueryError::Storage(format!(
                "metrics partitions {missing:?} have no owner answering now (a node left and its partitions are being taken over); retry"
            )));
        }
        for part in by_partition.into_values() {
            merged.add_all(part.series);
        }
        Ok(merged
            .finish()
            .into_iter()
            .filter(|series| series_only || !series.samples.is_empty())
            .collect())
    }

    /// Answers another node's heads request from this node's heads.
    pub(crate) async fn serve_heads(
        &self,
        request: HeadsRequest,
    ) -> Result<Vec<u8>, (u16, String)> {
        let matchers = matchers_of(&request.matchers).map_err(|error| (400, error))?;
        let heads = self.heads.clone();
        let answered = tokio::task::spawn_blocking(move || {
            heads.answer(
                &request.checkpoints,
                &matchers,
                request.start_ms,
                request.end_ms,
                request.series_only,
            )
        })
        .await
        .map_err(|error| (503, error.to_string()))?;
        answered
            .map(|parts| encode_heads(&parts))
            .map_err(|error| (503, error))
    }
}

impl Queryable for ClusterMetrics {
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        self.gather(matchers, start_ms, end_ms, false)
    }
}

impl MetricReader for ClusterMetrics {
    fn series(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        Ok(self
            .gather(matchers, start_ms, end_ms, true)?
            .into_iter()
            .map(|series| series.labels)
            .collect())
    }

    fn label_names(&self) -> Result<Vec<String>, QueryError> {
        let mut names = std::collections::BTreeSet::new();
        for labels in self.series(&LabelMatcher::any_series(), i64::MIN, i64::MAX)? {
            names.extend(labels.iter().map(|(name, _)| name.to_string()));
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(&self, name: &str) -> Result<Vec<String>, QueryError> {
        let mut values = std::collections::BTreeSet::new();
        for labels in self.series(&LabelMatcher::any_series(), i64::MIN, i64::MAX)? {
            let value = labels.get(name);
            if !value.is_empty() {
                values.insert(value.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }

    fn metadata(&self) -> Result<BTreeMap<String, MetricMetadata>, QueryError> {
        let rows = self
            .runtime
            .block_on(self.metastore.metric_metadata())
            .map_err(storage_error)?;
        Ok(rows
            .into_iter()
            .map(|(metric, kind, help, unit)| (metric, MetricMetadata { kind, help, unit }))
            .collect())
    }
}

/// `POST /internal/v1/metrics` (JSON [`HeadsRequest`]; the answer in the
/// heads format of [`super`]).
pub(crate) async fn serve(
    axum::extract::State(server): axum::extract::State<Arc<crate::fresh::InternalApi>>,
    axum::Json(request): axum::Json<HeadsRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match server.metrics.serve_heads(request).await {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            body,
        )
            .into_response(),
        Err((status, message)) => (
            axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE),
            message,
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_tsdb::{Block, TimeSeriesStore};

    /// A block of 500 series x 40 samples, its files and its `index.bin`.
    fn block() -> (tempfile::TempDir, Block, Vec<(&'static str, bytes::Bytes)>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = TimeSeriesStore::open(dir.path()).unwrap();
        for step in 0..40i64 {
            for instance in 0..500 {
                let labels = Labels::new([
                    ("__name__", "requests_total".to_string()),
                    ("instance", format!("i-{instance}")),
                ]);
                store
                    .append(&labels, step * 15_000, (step * instance) as f64)
                    .unwrap();
            }
        }
        store.commit().unwrap();
        let path = store.cut_block().unwrap().unwrap();
        let meta = std::fs::read(path.join("meta.json")).unwrap();
        let series = std::fs::read(path.join("series.bin")).unwrap();
        let index = BlockIndex::build(&path, &meta, &series).unwrap();
        let files = vec![
            ("meta.json", meta.into()),
            ("series.bin", series.into()),
            (INDEX_FILE, index.into()),
        ];
        (dir, Block::open(&path).unwrap(), files)
    }

    async fn upload(storage: &SplitStorage, block_id: &str, files: &[(&str, bytes::Bytes)]) {
        for (file, bytes) in files {
            storage
                .put(
                    &super::super::owner::block_key(block_id, file),
                    bytes.clone(),
                )
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_block_is_read_by_its_index_and_the_selected_series_byte_ranges() {
        let (_dir, block, files) = block();
        let storage =
            SplitStorage::with_store(Arc::new(object_store::memory::InMemory::new()), "t/");
        upload(&storage, "b1", &files).await;
        // A block uploaded before blocks had an index: no `index.bin`.
        upload(&storage, "old", &files[..2]).await;
        let series_bytes = files[1].1.len() as u64;
        let reader = BlockReader::new(storage.clone(), 64 << 20);
        let stats = reader.cache.stats.clone();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let one = [LabelMatcher::equal("instance", "i-7")];
        let expected = block.select(&one, 100_000, 400_000).unwrap();
        assert_eq!(expected.len(), 1);

        let found = reader
            .read_block("b1", &one, 100_000, 400_000, false)
            .await
            .unwrap();
        assert_eq!(found, expected);
        assert_eq!(load(&stats.downloads), 1);
        assert_eq!(load(&stats.range_reads), 1);
        let downloaded = load(&stats.downloaded_bytes);
        assert!(
            downloaded < series_bytes / 2,
            "read {downloaded} bytes of a {series_bytes}-byte block for one series"
        );
        // Again: index and chunks from the cache, nothing fetched.
        let again = reader
            .read_block("b1", &one, 100_000, 400_000, false)
            .await
            .unwrap();
        assert_eq!(again, expected);
        assert_eq!(load(&stats.downloaded_bytes), downloaded);
        assert_eq!(load(&stats.hits), 2);

        // Every series, and label sets only, from either block.
        let every = LabelMatcher::any_series();
        for block_id in ["b1", "old"] {
            let all = reader
                .read_block(block_id, &every, i64::MIN, i64::MAX, false)
                .await
                .unwrap();
            assert_eq!(all, block.select(&every, i64::MIN, i64::MAX).unwrap());
            let labels: Vec<Labels> = reader
                .read_block(block_id, &every, 0, 10_000, true)
                .await
                .unwrap()
                .into_iter()
                .map(|series| series.labels)
                .collect();
            assert_eq!(labels, block.series(&every, 0, 10_000));
        }

        // A cache of one entry's worth keeps only the newest.
        let small = BlockReader::new(storage.clone(), 1);
        small
            .read_block("b1", &every, i64::MIN, i64::MAX, false)
            .await
            .unwrap();
        assert_eq!(load(&small.cache.stats.evictions), 500);
        assert!(load(&small.cache.stats.cached_bytes) < 4096);

        // Chunk bytes that do not match the index are an error naming the
        // block and the series, not wrong samples.
        let mut corrupt = files.clone();
        let mut series = corrupt[1].1.to_vec();
        let middle = series.len() / 2;
        series[middle] ^= 0xff;
        corrupt[1].1 = series.into();
        upload(&storage, "bad", &corrupt).await;
        let error = reader
            .read_block("bad", &every, i64::MIN, i64::MAX, false)
            .await
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains("blocks/bad/index.bin") && error.contains("checksum"),
            "{error}"
        );
    }
}
