//! Reading the cluster's published splits, and what owners have not
//! published yet, as one store: any node answers every log and trace
//! query the query API asks, with the answers one store holding all the
//! records would give.
//!
//! The node asked is the root. It reads, in one statement, the split list
//! for the query's time range (a trace: the one partition its id hashes
//! to) and every partition's checkpoint; gives each split to the live node
//! rendezvous hashing on the split id picks (a leaf: `/internal/v1/leaf`,
//! read through that node's [`SplitCache`]; the root reads its own share
//! meanwhile, and the share of a leaf that fails); asks every live node for
//! its partitions' records past those checkpoints (`/internal/v1/fresh`,
//! [`crate::fresh`]); and merges every part with the store's own merge
//! rules (`sightline_store::reader`). A trace whose spans several splits
//! hold (late spans, cut by a split boundary) is summarized again from all
//! of them, so a trace search on whole-trace properties judges the whole
//! trace. A record's context walks the splits outward from its time.
//!
//! Methods block (the query API calls them on blocking threads) and drive
//! the async metastore, object storage and the other nodes through the
//! runtime's handle.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use sightline_store::pipes::{Aggregated, Pipeline, StatsTable};
use sightline_store::reader::{self, LogReader, SpanReader};
use sightline_store::{
    Cursor, Histogram, LogHit, LogQuery, LogSearchResult, Operation, PartitionId, Result, Span,
    StoreError, TraceQuery, TraceSummary,
};

use crate::cache::{OpenSplit, SplitCache};
use crate::fresh::{
    self, FRESH_PATH, FreshAnswer, FreshQuestion, FreshRequest, LEAF_PATH, LeafRequest,
};
use crate::metastore::{Metastore, SplitRow};
use crate::partition;
use crate::splits::SplitStorage;

/// Splits opened at once while a query gathers them.
const CONCURRENT_OPENS: usize = 8;

/// How long a root waits for an owner's fresh data.
const FRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a root waits for a leaf's share of the splits before reading
/// them itself (half the query API's time limit).
const LEAF_TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster's splits, and the owners' fresh data, as a [`LogReader`]
/// and [`SpanReader`].
pub struct ClusterReader {
    metastore: Arc<Metastore>,
    cache: SplitCache,
    runtime: tokio::runtime::Handle,
    peers: Peers,
}

/// How this node reaches the others' internal API.
#[derive(Clone)]
pub struct Peers {
    /// This node's id: the splits rendezvous hashing gives it are read here.
    node_id: String,
    http: reqwest::Client,
    /// The query token the nodes share, when the query port asks for one.
    token: Option<String>,
    /// Nodes whose heartbeat is this recent are asked.
    ttl: Duration,
    /// `https` when the nodes' query ports have TLS.
    scheme: &'static str,
}

impl Peers {
    /// Peers called over plain HTTP.
    pub fn new(node_id: String, token: Option<String>, ttl: Duration) -> anyhow::Result<Peers> {
        Ok(Peers {
            node_id,
            http: reqwest::Client::builder().build()?,
            token,
            ttl,
            scheme: "http",
        })
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
    pub(crate) fn scheme(&self) -> &'static str {
        self.scheme
    }
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// POSTs `body` to `path` of every node of `nodes` (id, address) but
    /// this one, at once; each node's answer body or why there is none.
    pub(crate) fn call_others(
        &self,
        nodes: Vec<(String, String)>,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Vec<(String, std::result::Result<bytes::Bytes, String>)>>
    + Send
    + 'static {
        let peers = self.clone();
        let calls = nodes
            .into_iter()
            .filter(|(node, _)| *node != self.node_id)
            .map(move |(node, address)| {
                let (peers, body) = (peers.clone(), body.clone());
                async move {
                    let url = format!("{}://{address}{path}", peers.scheme);
                    let answer = async {
                        let response =
                            post_internal(&peers.http, peers.token(), &url, body, timeout).await?;
                        let status = response.status();
                        let bytes = response.bytes().await.map_err(|error| error.to_string())?;
                        if !status.is_success() {
                            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
                        }
                        Ok(bytes)
                    }
                    .await;
                    (node, answer)
                }
            });
        futures::future::join_all(calls)
    }

    /// Peers called over HTTPS (their query ports have TLS), their
    /// certificates checked against the PEM certificates of `ca` (the
    /// system's roots when `None`).
    pub fn with_tls(mut self, ca: Option<&Path>) -> anyhow::Result<Peers> {
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("failed to read cluster.peer_ca {}", ca.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("cluster.peer_ca {} is not PEM certificates", ca.display())
            })?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "cluster.peer_ca {} holds no certificate",
                ca.display()
            );
            builder = builder.tls_built_in_root_certs(false);
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        self.http = builder.build()?;
        self.scheme = "https";
        Ok(self)
    }
}

fn unavailable(error: anyhow::Error) -> StoreError {
    StoreError::Unavailable(format!("{error:#}"))
}

impl ClusterReader {
    /// A reader with its own metastore connection and a split cache in
    /// `cache_dir`.
    pub async fn connect(
        postgres: &str,
        storage: SplitStorage,
        cache_dir: &Path,
        cache: crate::cache::CacheSettings,
        peers: Peers,
    ) -> anyhow::Result<ClusterReader> {
        Ok(ClusterReader {
            metastore: Arc::new(Metastore::connect(postgres).await?),
            cache: SplitCache::new(cache_dir, cache, storage)?,
            runtime: tokio::runtime::Handle::current(),
            peers,
        })
    }

    pub(crate) fn count_leaf_request(&self) {
        self.cache
            .stats
            .leaf_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every answer to `question` over the published splits of `[start,
    /// end)` (of `partition`) and the owners' fresh data past the same
    /// snapshot: each split is read by the live node rendezvous hashing
    /// gives it (this node reads its own share meanwhile); a node that
    /// fails its share has it read here instead. Every live node is asked
    /// for its fresh data; one that does not answer in time is left out
    /// (its fresh records show once published).
    fn gather(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
        question: FreshQuestion,
    ) -> Result<Vec<FreshAnswer>> {
        self.gather_parts(start, end, partition, question, true)
    }

    /// [`ClusterReader::gather`] of the owners' fresh data alone (past the
    /// checkpoints of a snapshot taken now), no split read.
    fn gather_fresh(&self, question: FreshQuestion) -> Result<Vec<FreshAnswer>> {
        // The snapshot's split list is not read: an empty time range.
        self.gather_parts(Some(0), Some(0), None, question, false)
    }

    fn gather_parts(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
        question: FreshQuestion,
        read_splits: bool,
    ) -> Result<Vec<FreshAnswer>> {
        let (rows, seen, nodes) = self.runtime.block_on(async {
            self.metastore
                .reconnect_if_closed()
                .await
                .map_err(unavailable)?;
            // Both statements in flight at once on the one connection.
            let (snapshot, nodes) = tokio::join!(
                self.metastore.snapshot(start, end, partition),
                self.metastore.live_addresses(self.peers.ttl)
            );
            let (rows, seen) = snapshot.map_err(unavailable)?;
            Ok::<_, StoreError>((rows, seen, nodes.map_err(unavailable)?))
        })?;
        // Only splits holding what the question reads.
        let spans = question.reads_spans();
        let rows: Vec<SplitRow> = rows
            .into_iter()
            .filter(|row| read_splits && if spans { row.spans > 0 } else { row.logs > 0 })
            .collect();
        let live: Vec<String> = nodes.iter().map(|(node, _)| node.clone()).collect();
        let mut mine = Vec::new();
        let mut theirs: BTreeMap<String, Vec<SplitRow>> = BTreeMap::new();
        for row in rows {
            match partition::reader_of(&row.split_id, &live) {
                Some(node) if node != self.peers.node_id => {
                    theirs.entry(node.to_string()).or_default().push(row)
                }
                _ => mine.push(row),
            }
        }
        let fresh = FreshRequest { seen, question };
        let mut calls: Vec<Call> = Vec::new();
        for (node, address) in &nodes {
            let body = serde_json::to_vec(&fresh).map_err(|e| unavailable(e.into()))?;
            calls.push((
                node.clone(),
                format!("{}://{address}{FRESH_PATH}", self.peers.scheme),
                None,
                body,
            ));
            if let Some(splits) = theirs.remove(node) {
                let leaf = LeafRequest {
                    splits: splits.clone(),
                    question: fresh.question.clone(),
                };
                let body = serde_json::to_vec(&leaf).map_err(|e| unavailable(e.into()))?;
                calls.push((
                    node.clone(),
                    format!("{}://{address}{LEAF_PATH}", self.peers.scheme),
                    Some(splits),
                    body,
                ));
            }
        }
        // Other nodes work while this one reads its own share.
        let (http, token) = (self.peers.http.clone(), self.peers.token.clone());
        let remote = self
            .runtime
            .spawn(futures::future::join_all(calls.into_iter().map(
                move |(node, url, splits, body)| {
                    let (http, token) = (http.clone(), token.clone());
                    async move {
                        let timeout = if splits.is_some() {
                            LEAF_TIMEOUT
                        } else {
                            FRESH_TIMEOUT
                        };
                        let answer = call(&http, token.as_deref(), &url, body, timeout).await;
                        (node, splits, answer)
                    }
                },
            )));
        let mut answers = answer_in_parallel(&fresh.question, &self.open(mine)?)?;
        let remote = self
            .runtime
            .block_on(remote)
            .map_err(|error| unavailable(error.into()))?;
        for (node, splits, answer) in remote {
            match (answer, splits) {
                (Ok(Ok(answer)), _) => answers.extend(answer),
                (Ok(Err(invalid)), _) => return Err(invalid),
                (Err(error), Some(splits)) => {
                    tracing::warn!(node, %error, splits = splits.len(), "a leaf failed; reading its splits here");
                    self.cache
                        .stats
                        .leaf_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    answers.extend(answer_in_parallel(&fresh.question, &self.open(splits)?)?);
                }
                (Err(error), None) => {
                    tracing::warn!(node, %error, "a node's fresh data is left out of a query")
                }
            }
        }
        Ok(answers)
    }
    /// The split cache's counters.
    pub fn cache_stats(&self) -> Arc<crate::cache::CacheStats> {
        self.cache.stats.clone()
    }

    /// The published splits of `[start, end)` (of `partition` when given),
    /// open.
    fn splits(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
    ) -> Result<Vec<Arc<OpenSplit>>> {
        let rows = self.rows(start, end, partition)?;
        self.open(rows)
    }

    /// The published splits' rows (nothing opened).
    fn rows(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
    ) -> Result<Vec<SplitRow>> {
        self.runtime.block_on(async {
            self.metastore
                .reconnect_if_closed()
                .await
                .map_err(unavailable)?;
            self.metastore
                .splits_where(start, end, partition)
                .await
                .map_err(unavailable)
        })
    }

    /// Opens `rows`' splits, several at once.
    fn open(&self, rows: Vec<SplitRow>) -> Result<Vec<Arc<OpenSplit>>> {
        self.runtime
            .block_on(self.open_splits(rows))
            .map_err(unavailable)
    }

    /// Opens `rows`' splits through the cache, several at once.
    pub(crate) async fn open_splits(
        &self,
        rows: Vec<SplitRow>,
    ) -> anyhow::Result<Vec<Arc<OpenSplit>>> {
        futures::stream::iter(rows)
            .map(|row| async move { self.cache.open(&row).await })
            .buffered(CONCURRENT_OPENS)
            .try_collect()
            .await
    }

    /// Spans of `trace_ids` (all of `partition`) in its published splits
    /// holding spans of `since` or later: what a split being cut adds to
    /// its traces' summaries.
    pub fn earlier_spans(
        &self,
        partition: PartitionId,
        trace_ids: &[String],
        since: i64,
    ) -> Result<Vec<Span>> {
        let parts = self
            .splits(Some(since), None, Some(partition))?
            .iter()
            .filter(|split| split.row.spans > 0)
            .map(|split| split.spans.traces(trace_ids))
            .collect::<Result<Vec<_>>>()?;
        Ok(reader::merge_trace(parts))
    }

    /// Keeps a split this node just cut and published in the cache, so its
    /// own queries and later cuts do not download it again.
    pub async fn adopt(&self, row: &crate::metastore::SplitRow, dir: std::path::PathBuf) {
        if let Err(error) = self.cache.adopt(row, dir).await {
            tracing::debug!(split = %row.split_id, %error, "a published split was not kept in the cache");
        }
    }

    /// Names (services, trace ids) every part gives, merged.
    fn names(&self, question: FreshQuestion) -> Result<Vec<String>> {
        let parts = self
            .gather(None, None, None, question)?
            .into_iter()
            .filter_map(|answer| match answer {
                FreshAnswer::Names(names) => Some(names),
                _ => None,
            })
            .collect();
        Ok(reader::merge_names(parts))
    }

    /// Every split holding spans of `trace_id`'s partition.
    fn trace_splits(&self, trace_id: &str) -> Result<Vec<Arc<OpenSplit>>> {
        let splits = self.splits(None, None, Some(partition::of_trace(trace_id)))?;
        Ok(splits
            .into_iter()
            .filter(|split| split.row.spans > 0)
            .collect())
    }

    /// The whole summary of a trace out of `splits`, every split of its
    /// partition holding spans; `true` when recomputed from its spans
    /// (with the search keys a stored summary drops).
    fn whole_summary(
        trace_id: &str,
        splits: &[Arc<OpenSplit>],
    ) -> Result<Option<(TraceSummary, bool)>> {
        let mut parts = Vec::new();
        for split in splits {
            parts.extend(split.spans.summary(trace_id)?);
        }
        reader::merge_summaries(trace_id, parts, || {
            let spans = splits
                .iter()
                .map(|split| split.spans.trace(trace_id))
                .collect::<Result<Vec<_>>>()?;
            Ok(reader::merge_trace(spans))
        })
    }
}

impl LogReader for ClusterReader {
    fn validate_query(&self, query: &str) -> Result<()> {
        sightline_store::validate_log_query(query)
    }

    /// Streams from every live node's owned partitions ([`crate::tail`]).
    fn subscribe(&self, query: &str, sink: Box<dyn sightline_store::TailSink>) -> Result<bool> {
        sightline_store::validate_log_query(query)?;
        self.runtime.spawn(crate::tail::follow(
            self.metastore.clone(),
            self.peers.clone(),
            query.to_string(),
            sink,
        ));
        Ok(true)
    }

    fn search(&self, query: &LogQuery) -> Result<LogSearchResult> {
        sightline_store::validate_log_query(&query.query)?;
        let answers = self.gather(
            query.start,
            query.end,
            None,
            FreshQuestion::Search(query.clone()),
        )?;
        let pages = answers
            .into_iter()
            .filter_map(|answer| match answer {
                FreshAnswer::Search(page) => Some(page),
                _ => None,
            })
            .collect();
        Ok(reader::merge_pages(pages, query.limit))
    }

    fn histogram(&self, query: &str, start: i64, end: i64, interval: i64) -> Result<Histogram> {
        sightline_store::validate_log_query(query)?;
        let mut histogram = Histogram::empty(start, end, interval)?;
        let answers = self.gather(
            Some(start),
            Some(end),
            None,
            FreshQuestion::Histogram {
                query: query.to_string(),
                start,
                end,
                interval,
            },
        )?;
        for answer in answers {
            if let FreshAnswer::Histogram(part) = answer {
                histogram.add(&part);
            }
        }
        Ok(histogram)
    }

    fn stats(&self, pipeline: &Pipeline, start: i64, end: i64) -> Result<StatsTable> {
        sightline_store::validate_log_query(&pipeline.search)?;
        let answers = self.gather(
            Some(start),
            Some(end),
            None,
            FreshQuestion::Stats {
                pipeline: pipeline.clone(),
                start,
                end,
            },
        )?;
        let mut whole = Aggregated::default();
        for answer in answers {
            if let FreshAnswer::Stats(part) = answer {
                whole.merge(part)?;
            }
        }
        whole.finish(pipeline, start, end)
    }

    fn context(&self, id: &str, before: usize, after: usize) -> Result<Vec<LogHit>> {
        let cursor = Cursor::decode(id)?;
        // The record, from a split of its time or, unpublished, its owner.
        let anchor = self
            .gather(
                Some(cursor.timestamp),
                Some(cursor.timestamp + 1),
                None,
                FreshQuestion::Record(id.to_string()),
            )?
            .into_iter()
            .find_map(|answer| match answer {
                FreshAnswer::Record(found) => found,
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound(format!("log record {id}")))?;
        // Its unpublished neighbours, from the owners, asked before the
        // split list below is read: a split published in between is in
        // both (its records once, by id), never in neither.
        let mut older: Vec<LogHit> = Vec::new();
        let mut newer: Vec<LogHit> = Vec::new();
        for answer in self.gather_fresh(FreshQuestion::Neighbours {
            anchor: anchor.clone(),
            before,
            after,
        })? {
            if let FreshAnswer::Neighbours(more_older, more_newer) = answer {
                older.extend(more_older);
                newer.extend(more_newer);
            }
        }
        // A stream's records may be in any partition (its resource may vary
        // in attributes the stream's key ignores): the splits are visited
        // outward from the anchor's time, until none can hold a nearer one.
        let rows: Vec<SplitRow> = self
            .rows(None, None, None)?
            .into_iter()
            .filter(|row| row.logs > 0)
            .collect();
        let mut older_rows: Vec<SplitRow> = rows
            .iter()
            .filter(|row| row.min_time <= cursor.timestamp)
            .cloned()
            .collect();
        older_rows.sort_by_key(|row| Reverse(row.max_time));
        let mut newer_rows: Vec<SplitRow> = rows
            .into_iter()
            .filter(|row| row.max_time >= cursor.timestamp)
            .collect();
        newer_rows.sort_by_key(|row| row.min_time);
        for row in older_rows {
            if before == 0
                || (older.len() >= before && kth_time(&older, before, true) > row.max_time)
            {
                break;
            }
            for split in self.open(vec![row])? {
                older.extend(split.logs.neighbours(&anchor, before, 0)?.0);
            }
        }
        for row in newer_rows {
            if after == 0 || (newer.len() >= after && kth_time(&newer, after, false) < row.min_time)
            {
                break;
            }
            for split in self.open(vec![row])? {
                newer.extend(split.logs.neighbours(&anchor, 0, after)?.1);
            }
        }
        Ok(reader::assemble_context(
            anchor,
            vec![older],
            vec![newer],
            before,
            after,
        ))
    }
}

/// Answers over `splits` on up to as many threads as there are cores,
/// each a share of the splits (the caller merges the parts).
pub(crate) fn answer_in_parallel(
    question: &FreshQuestion,
    splits: &[Arc<OpenSplit>],
) -> Result<Vec<FreshAnswer>> {
    // Splits on the local disk keep a core busy each; splits read by range
    // mostly wait on object storage, so more of them are read at once.
    let threads = if splits.iter().any(|split| split.by_range()) {
        RANGE_READERS
    } else {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 4)
    }
    .min(splits.len().max(1));
    if threads == 1 {
        return Ok(vec![fresh::answer(question, &[], splits)?]);
    }
    let share = splits.len().div_ceil(threads);
    let parts: Vec<Vec<Arc<OpenSplit>>> = splits.chunks(share).map(<[_]>::to_vec).collect();
    // The runtime's blocking threads, kept between queries: with a dozen
    // threads spawned per query, a warm lookup over 50 splits took 5.9 ms
    // (p50, 10M records) against 3.6 with these (BENCHMARKS.md).
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return parts
            .iter()
            .map(|part| fresh::answer(question, &[], part))
            .collect();
    };
    let tasks = parts.into_iter().map(|part| {
        let question = question.clone();
        runtime.spawn_blocking(move || fresh::answer(&question, &[], &part))
    });
    runtime
        .block_on(futures::future::join_all(tasks))
        .into_iter()
        .map(|joined| {
            joined.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "a split reader thread panicked".into(),
                ))
            })
        })
        .collect()
}

/// Threads a query's splits are read on when some are read by range.
const RANGE_READERS: usize = 16;

/// A call of another node's internal API: the node, the URL, the splits
/// of a leaf request (none for fresh data), the JSON body.
type Call = (String, String, Option<Vec<SplitRow>>, Vec<u8>);

/// One call of another node's internal API: its answer, a refusal of the
/// query itself (400: the same query fails everywhere), or why it failed.
async fn call(
    http: &reqwest::Client,
    token: Option<&str>,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> std::result::Result<Result<Vec<FreshAnswer>>, String> {
    let response = post_internal(http, token, url, body, timeout).await?;
    let status = response.status();
    if status == reqwest::StatusCode::BAD_REQUEST {
        let message = response.text().await.unwrap_or_default();
        return Ok(Err(StoreError::InvalidQuery(message)));
    }
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default();
        return Err(format!("{status}: {message}"));
    }
    let answers: Vec<FreshAnswer> = response.json().await.map_err(|error| error.to_string())?;
    Ok(Ok(answers))
}

/// POSTs a JSON `body` to another node's internal API, with the nodes'
/// shared token: its response, or why it could not be sent.
pub(crate) async fn post_internal(
    http: &reqwest::Client,
    token: Option<&str>,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> std::result::Result<reqwest::Response, String> {
    let mut request = http
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.map_err(|error| error.to_string())
}

/// The timestamp of the `k`-th nearest hit: the k-th newest of `hits` when
/// looking back (`older`), the k-th oldest otherwise.
fn kth_time(hits: &[LogHit], k: usize, older: bool) -> i64 {
    let mut times: Vec<i64> = hits.iter().map(|hit| hit.record.timestamp).collect();
    if older {
        times.sort_by_key(|time| Reverse(*time));
    } else {
        times.sort();
    }
    times
        .get(k.max(1) - 1)
        .copied()
        .unwrap_or(if older { i64::MIN } else { i64::MAX })
}

impl SpanReader for ClusterReader {
    fn trace(&self, trace_id: &str) -> Result<Vec<Span>> {
        let answers = self.gather(
            None,
            None,
            Some(partition::of_trace(trace_id)),
            FreshQuestion::Trace(trace_id.to_string()),
        )?;
        let parts = answers
            .into_iter()
            .filter_map(|answer| match answer {
                FreshAnswer::Trace(spans) => Some(spans),
                _ => None,
            })
            .collect();
        Ok(reader::merge_trace(parts))
    }

    fn trace_ids_for_request(&self, request_id: &str) -> Result<Vec<String>> {
        self.names(FreshQuestion::TraceIdsForRequest(request_id.to_string()))
    }

    fn traces_linking_to(&self, trace_id: &str) -> Result<Vec<String>> {
        self.names(FreshQuestion::TracesLinkingTo(
            trace_id.to_ascii_lowercase(),
        ))
    }

    fn summary(&self, trace_id: &str) -> Result<Option<TraceSummary>> {
        Ok(
            Self::whole_summary(trace_id, &self.trace_splits(trace_id)?)?
                .map(|(summary, _)| summary.stored()),
        )
    }

    fn search_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>> {
        let mut parts: Vec<Vec<TraceSummary>> = Vec::new();
        // A trace with unpublished spans is summarized by its owner, from
        // all of them and its splits' (newer than any split's part).
        let mut owned: BTreeMap<String, TraceSummary> = BTreeMap::new();
        for answer in self.gather(
            query.start,
            query.end,
            None,
            FreshQuestion::SearchTraces(query.clone()),
        )? {
            match answer {
                FreshAnswer::Summaries(found) => parts.push(found),
                FreshAnswer::OwnerSummaries(found) => owned.extend(
                    found
                        .into_iter()
                        .map(|summary| (summary.trace_id.clone(), summary)),
                ),
                _ => {}
            }
        }
        // Every other found trace is judged whole: a split boundary or a
        // late span may have cut it, and a part's summary is not the trace's.
        let found: BTreeSet<String> = parts
            .into_iter()
            .flatten()
            .map(|summary| summary.trace_id)
            .filter(|trace_id| !owned.contains_key(trace_id))
            .collect();
        let mut by_partition: BTreeMap<PartitionId, Vec<Arc<OpenSplit>>> = BTreeMap::new();
        let mut whole = Vec::with_capacity(found.len());
        for trace_id in &found {
            let partition = partition::of_trace(trace_id);
            let splits = match by_partition.entry(partition) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(self.trace_splits(trace_id)?)
                }
            };
            // One part matched in its split; a recomputed whole is judged
            // again.
            match Self::whole_summary(trace_id, splits)? {
                Some((summary, false)) => whole.push(summary),
                Some((summary, true)) if query.matches(&summary) => whole.push(summary.stored()),
                _ => {}
            }
        }
        whole.extend(owned.into_values());
        Ok(reader::newest_traces(whole, query.limit))
    }

    fn services(&self) -> Result<Vec<String>> {
        self.names(FreshQuestion::Services)
    }

    fn operations_with_kinds(&self, service: &str, kind: Option<&str>) -> Result<Vec<Operation>> {
        let parts = self
            .gather(
                None,
                None,
                None,
                FreshQuestion::Operations(service.to_string()),
            )?
            .into_iter()
            .filter_map(|answer| match answer {
                FreshAnswer::Operations(operations) => Some(operations),
                _ => None,
            })
            .collect();
        Ok(reader::merge_operations(parts)
            .into_iter()
            .filter(|operation| {
                kind.is_none_or(|kind| operation.span_kind.eq_ignore_ascii_case(kind))
            })
            .collect())
    }
}
