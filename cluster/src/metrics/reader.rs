//! [`ClusterMetrics`]: the cluster's samples as one
//! [`MetricReader`], for the Prometheus HTTP API and the rules of any node.
//!
//! A select reads, in one statement, the published blocks overlapping its
//! range and every metrics partition's checkpoint; asks every live node for
//! what its partitions hold past those checkpoints (its heads, and blocks
//! cut but not yet in that list), this node's own heads in process; reads
//! the blocks through a bounded cache of decoded blocks (downloaded once,
//! least recently used evicted); and merges them by series, each timestamp
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
    Block, LabelMatcher, Labels, MatchKind, MetricMetadata, MetricReader, SeriesData, SeriesMerge,
};

use super::{HeadPart, MetricHeads, decode_heads, encode_heads};
use crate::metastore::{BlockRow, Metastore};
use crate::query::Peers;
use crate::splits::SplitStorage;

/// The internal API's heads endpoint.
pub const METRICS_PATH: &str = "/internal/v1/metrics";

/// How long a root waits for a node's heads.
const HEADS_TIMEOUT: Duration = Duration::from_secs(30);

/// Blocks downloaded at once by one query.
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
                "Block reads answered from the decoded-block cache.",
                load(&self.hits),
            ),
            (
                "sightline_cluster_block_downloads_total",
                "counter",
                "Blocks of samples fetched from object storage.",
                load(&self.downloads),
            ),
            (
                "sightline_cluster_block_downloaded_bytes_total",
                "counter",
                "Bytes of blocks fetched from object storage.",
                load(&self.downloaded_bytes),
            ),
            (
                "sightline_cluster_block_cache_evictions_total",
                "counter",
                "Blocks evicted from the decoded-block cache.",
                load(&self.evictions),
            ),
            (
                "sightline_cluster_block_cache_bytes",
                "gauge",
                "Bytes of decoded blocks the cache holds.",
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

/// Decoded blocks by id, least recently used evicted past `limit` bytes.
struct BlockCache {
    blocks: Mutex<lru::LruCache<String, Arc<Block>>>,
    bytes: AtomicU64,
    limit: u64,
    stats: Arc<BlockCacheStats>,
}

impl BlockCache {
    fn get(&self, block_id: &str) -> Option<Arc<Block>> {
        let found = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(block_id)
            .cloned();
        if found.is_some() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn insert(&self, block_id: &str, block: Arc<Block>) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let size = block.bytes();
        if let Some(previous) = blocks.put(block_id.to_string(), block) {
            self.bytes.fetch_sub(previous.bytes(), Ordering::Relaxed);
        }
        let mut total = self.bytes.fetch_add(size, Ordering::Relaxed) + size;
        // Always keep the newest, even when it alone is over the limit:
        // the query that loaded it reads it next.
        while total > self.limit && blocks.len() > 1 {
            let Some((_, evicted)) = blocks.pop_lru() else {
                break;
            };
            total = self.bytes.fetch_sub(evicted.bytes(), Ordering::Relaxed) - evicted.bytes();
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.cached_bytes.store(total, Ordering::Relaxed);
    }
}

/// The cluster's samples (blocks in object storage, owners' heads) as one
/// store.
pub struct ClusterMetrics {
    metastore: Arc<Metastore>,
    storage: SplitStorage,
    cache: BlockCache,
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
            storage,
            cache: BlockCache {
                blocks: Mutex::new(lru::LruCache::unbounded()),
                bytes: AtomicU64::new(0),
                limit: cache_bytes,
                stats: Arc::default(),
            },
            heads,
            peers,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The block cache's counters.
    pub fn cache_stats(&self) -> Arc<BlockCacheStats> {
        self.cache.stats.clone()
    }

    /// A block this node published: queries here read it without a download.
    pub(crate) fn adopt(&self, row: &BlockRow, block: Arc<Block>) {
        self.cache.insert(&row.block_id, block);
    }

    /// The block of `row`, from the cache or object storage.
    async fn block(&self, row: &BlockRow) -> anyhow::Result<Arc<Block>> {
        if let Some(block) = self.cache.get(&row.block_id) {
            return Ok(block);
        }
        let (meta_key, series_key) = (
            super::owner::block_key(&row.block_id, "meta.json"),
            super::owner::block_key(&row.block_id, "series.bin"),
        );
        let (meta, series) =
            futures::try_join!(self.storage.get(&meta_key), self.storage.get(&series_key))?;
        self.cache.stats.downloads.fetch_add(1, Ordering::Relaxed);
        self.cache
            .stats
            .downloaded_bytes
            .fetch_add(series.len() as u64, Ordering::Relaxed);
        let name = std::path::PathBuf::from(series_key);
        let block =
            tokio::task::spawn_blocking(move || Block::decode(&name, &meta, &series)).await??;
        let block = Arc::new(block);
        self.cache.insert(&row.block_id, block.clone());
        Ok(block)
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
            let block = self.block(row).await?;
            merged.add_all(block.select(matchers, start_ms, end_ms)?);
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
        let own_id = self.peers_node_id();
        let (http, token, scheme) = (
            self.peers.http().clone(),
            self.peers.token().map(str::to_string),
            self.peers.scheme(),
        );
        let calls =
            nodes
                .into_iter()
                .filter(|(node, _)| *node != own_id)
                .map(move |(node, address)| {
                    let (http, token, body) = (http.clone(), token.clone(), body.clone());
                    let url = format!("{scheme}://{address}{METRICS_PATH}");
                    async move {
                        let answer = call(&http, token.as_deref(), &url, body).await;
                        (node, answer)
                    }
                });
        let remote = self.runtime.spawn(futures::future::join_all(calls));
        let mut parts = self
            .heads
            .answer(&checkpoints, matchers, start_ms, end_ms, series_only)
            .map_err(QueryError::Storage)?;
        let blocks = self.runtime.block_on(async {
            use futures::StreamExt as _;
            futures::stream::iter(rows.iter().map(|row| self.block(row)))
                .buffer_unordered(CONCURRENT_DOWNLOADS)
                .collect::<Vec<_>>()
                .await
        });
        let mut merged = SeriesMerge::default();
        for block in blocks {
            let block = block.map_err(|error| storage_error(format!("{error:#}")))?;
            if series_only {
                for labels in block.series(matchers, start_ms, end_ms) {
                    merged.add_labels(labels);
                }
            } else {
                merged.add_all(
                    block
                        .select(matchers, start_ms, end_ms)
                        .map_err(storage_error)?,
                );
            }
        }
        for (node, answer) in self.runtime.block_on(remote).map_err(storage_error)? {
            match answer {
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

    fn peers_node_id(&self) -> String {
        self.peers.node_id().to_string()
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

async fn call(
    http: &reqwest::Client,
    token: Option<&str>,
    url: &str,
    body: Vec<u8>,
) -> Result<Vec<HeadPart>, String> {
    let response = crate::query::post_internal(http, token, url, body, HEADS_TIMEOUT).await?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|error| error.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    decode_heads(&bytes)
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
