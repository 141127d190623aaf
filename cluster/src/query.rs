//! Reading the cluster's published splits as one store: any node answers
//! every log and trace query the query API asks, with the answers one
//! store holding all the splits' records would give.
//!
//! The split list comes from PostgreSQL for the query's time range (and,
//! for a trace, for the one partition its id hashes to; for a record's
//! context, its stream's partition); each split is opened through the
//! [`SplitCache`]; each answers for its part and the parts merge with the
//! store's own merge rules (`sightline_store::reader`). A trace whose spans
//! several splits hold (late spans, cut by a split boundary) is summarized
//! again from all of them, so a trace search on whole-trace properties
//! judges the whole trace.
//!
//! Methods block (the query API calls them on blocking threads) and drive
//! the async metastore and object storage through the runtime's handle.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use sightline_store::reader::{self, LogReader, SpanReader};
use sightline_store::{
    Cursor, Histogram, LogHit, LogQuery, LogSearchResult, Operation, PartitionId, Result, Span,
    StoreError, TraceQuery, TraceSummary,
};

use crate::cache::{OpenSplit, SplitCache};
use crate::fresh::{FRESH_PATH, FreshAnswer, FreshQuestion, FreshRequest};
use crate::metastore::{Metastore, SplitRow};
use crate::partition;
use crate::splits::SplitStorage;

/// Splits opened at once while a query gathers them.
const CONCURRENT_OPENS: usize = 8;

/// How long a root waits for an owner's fresh data.
const FRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's splits, and the owners' fresh data, as a [`LogReader`]
/// and [`SpanReader`].
pub struct ClusterReader {
    metastore: Metastore,
    cache: SplitCache,
    runtime: tokio::runtime::Handle,
    peers: Peers,
}

/// How this node reaches the others' internal API.
pub struct Peers {
    http: reqwest::Client,
    /// The query token the nodes share, when the query port asks for one.
    token: Option<String>,
    /// Nodes whose heartbeat is this recent are asked.
    ttl: Duration,
}

impl Peers {
    pub fn new(token: Option<String>, ttl: Duration) -> anyhow::Result<Peers> {
        Ok(Peers {
            http: reqwest::Client::builder().timeout(FRESH_TIMEOUT).build()?,
            token,
            ttl,
        })
    }
}

fn unavailable(error: anyhow::Error) -> StoreError {
    StoreError::Unavailable(format!("{error:#}"))
}

impl ClusterReader {
    /// A reader with its own metastore connection and a split cache of at
    /// most `cache_bytes` in `cache_dir`.
    pub async fn connect(
        postgres: &str,
        storage: SplitStorage,
        cache_dir: &Path,
        cache_bytes: u64,
        peers: Peers,
    ) -> anyhow::Result<ClusterReader> {
        Ok(ClusterReader {
            metastore: Metastore::connect(postgres).await?,
            cache: SplitCache::new(cache_dir, cache_bytes, storage)?,
            runtime: tokio::runtime::Handle::current(),
            peers,
        })
    }

    /// Opens one split through the cache.
    pub(crate) async fn open_split(&self, row: &SplitRow) -> anyhow::Result<Arc<OpenSplit>> {
        self.cache.open(row).await
    }

    /// The splits of `[start, end)` (of `partition`), open, and the fresh
    /// answers of every live node to `question` past the same snapshot's
    /// checkpoints. An owner that does not answer in time is left out
    /// (its fresh records show once published).
    fn with_fresh(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
        question: FreshQuestion,
    ) -> Result<(Vec<Arc<OpenSplit>>, Vec<FreshAnswer>)> {
        let (rows, seen, nodes) = self.runtime.block_on(async {
            self.metastore
                .reconnect_if_closed()
                .await
                .map_err(unavailable)?;
            let (rows, seen) = self
                .metastore
                .snapshot(start, end, partition)
                .await
                .map_err(unavailable)?;
            let nodes = self
                .metastore
                .live_addresses(self.peers.ttl)
                .await
                .map_err(unavailable)?;
            Ok::<_, StoreError>((rows, seen, nodes))
        })?;
        let request = FreshRequest { seen, question };
        let asked = self
            .runtime
            .block_on(futures::future::join_all(nodes.iter().map(
                |(node, address)| {
                    let request = &request;
                    async move {
                        let mut call = self
                            .peers
                            .http
                            .post(format!("http://{address}{FRESH_PATH}"))
                            .json(request);
                        if let Some(token) = &self.peers.token {
                            call = call.bearer_auth(token);
                        }
                        let response = call.send().await.map_err(|error| error.to_string())?;
                        let status = response.status();
                        if status == reqwest::StatusCode::BAD_REQUEST {
                            let message = response.text().await.unwrap_or_default();
                            return Ok(Err(StoreError::InvalidQuery(message)));
                        }
                        if !status.is_success() {
                            let message = response.text().await.unwrap_or_default();
                            return Err(format!("{status}: {message}"));
                        }
                        let answer: FreshAnswer =
                            response.json().await.map_err(|error| error.to_string())?;
                        tracing::trace!(node, "fresh data answered");
                        Ok(Ok(answer))
                    }
                },
            )));
        let mut answers = Vec::new();
        for ((node, _), answer) in nodes.iter().zip(asked) {
            match answer {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(invalid)) => return Err(invalid),
                Err(error) => {
                    tracing::warn!(node, %error, "a node's fresh data is left out of a query")
                }
            }
        }
        Ok((self.open(rows)?, answers))
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
        self.runtime.block_on(async {
            futures::stream::iter(rows)
                .map(|row| async move { self.cache.open(&row).await })
                .buffered(CONCURRENT_OPENS)
                .try_collect()
                .await
                .map_err(unavailable)
        })
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

    /// Every split holding spans of `trace_id`'s partition.
    fn trace_splits(&self, trace_id: &str) -> Result<Vec<Arc<OpenSplit>>> {
        let splits = self.splits(None, None, Some(partition::of_trace(trace_id)))?;
        Ok(splits
            .into_iter()
            .filter(|split| split.row.spans > 0)
            .collect())
    }

    fn span_splits(&self) -> Result<Vec<Arc<OpenSplit>>> {
        let splits = self.splits(None, None, None)?;
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

    fn search(&self, query: &LogQuery) -> Result<LogSearchResult> {
        sightline_store::validate_log_query(&query.query)?;
        let (splits, fresh) = self.with_fresh(
            query.start,
            query.end,
            None,
            FreshQuestion::Search(query.clone()),
        )?;
        let mut pages = splits
            .iter()
            .filter(|split| split.row.logs > 0)
            .map(|split| split.logs.search(query))
            .collect::<Result<Vec<_>>>()?;
        pages.extend(fresh.into_iter().filter_map(|answer| match answer {
            FreshAnswer::Search(page) => Some(page),
            _ => None,
        }));
        Ok(reader::merge_pages(pages, query.limit))
    }

    fn histogram(&self, query: &str, start: i64, end: i64, interval: i64) -> Result<Histogram> {
        sightline_store::validate_log_query(query)?;
        let mut histogram = Histogram::empty(start, end, interval)?;
        let (splits, fresh) = self.with_fresh(
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
        for split in splits {
            if split.row.logs > 0 {
                histogram.add(&split.logs.histogram(query, start, end, interval)?);
            }
        }
        for answer in fresh {
            if let FreshAnswer::Histogram(part) = answer {
                histogram.add(&part);
            }
        }
        Ok(histogram)
    }

    fn context(&self, id: &str, before: usize, after: usize) -> Result<Vec<LogHit>> {
        let cursor = Cursor::decode(id)?;
        let mut anchor = None;
        for split in self.splits(Some(cursor.timestamp), Some(cursor.timestamp + 1), None)? {
            if let Some(found) = split.logs.record(id)? {
                anchor = Some(found);
                break;
            }
        }
        let anchor = anchor.ok_or_else(|| StoreError::NotFound(format!("log record {id}")))?;
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
        let mut older: Vec<LogHit> = Vec::new();
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
        let mut newer: Vec<LogHit> = Vec::new();
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
        let (splits, fresh) = self.with_fresh(
            None,
            None,
            Some(partition::of_trace(trace_id)),
            FreshQuestion::Trace(trace_id.to_string()),
        )?;
        let mut parts = splits
            .iter()
            .filter(|split| split.row.spans > 0)
            .map(|split| split.spans.trace(trace_id))
            .collect::<Result<Vec<_>>>()?;
        parts.extend(fresh.into_iter().filter_map(|answer| match answer {
            FreshAnswer::Trace(spans) => Some(spans),
            _ => None,
        }));
        Ok(reader::merge_trace(parts))
    }

    fn trace_ids_for_request(&self, request_id: &str) -> Result<Vec<String>> {
        let parts = self
            .span_splits()?
            .iter()
            .map(|split| split.spans.trace_ids_for_request(request_id))
            .collect::<Result<Vec<_>>>()?;
        Ok(reader::merge_names(parts))
    }

    fn traces_linking_to(&self, trace_id: &str) -> Result<Vec<String>> {
        let parts = self
            .span_splits()?
            .iter()
            .map(|split| split.spans.traces_linking_to(trace_id))
            .collect::<Result<Vec<_>>>()?;
        Ok(reader::merge_names(parts))
    }

    fn summary(&self, trace_id: &str) -> Result<Option<TraceSummary>> {
        Ok(
            Self::whole_summary(trace_id, &self.trace_splits(trace_id)?)?
                .map(|(summary, _)| summary.stored()),
        )
    }

    fn search_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>> {
        let parts = self
            .splits(query.start, query.end, None)?
            .iter()
            .filter(|split| split.row.spans > 0)
            .map(|split| split.spans.search_traces(query))
            .collect::<Result<Vec<_>>>()?;
        // Every found trace is judged whole: a split boundary or a late span
        // may have cut it, and a part's summary is not the trace's.
        let found: BTreeSet<String> = parts
            .into_iter()
            .flatten()
            .map(|summary| summary.trace_id)
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
        Ok(reader::newest_traces(whole, query.limit))
    }

    fn services(&self) -> Result<Vec<String>> {
        let parts = self
            .span_splits()?
            .iter()
            .map(|split| split.spans.services())
            .collect::<Result<Vec<_>>>()?;
        Ok(reader::merge_names(parts))
    }

    fn operations_with_kinds(&self, service: &str, kind: Option<&str>) -> Result<Vec<Operation>> {
        let parts = self
            .span_splits()?
            .iter()
            .map(|split| split.spans.operations_with_kinds(service, None))
            .collect::<Result<Vec<_>>>()?;
        Ok(reader::merge_operations(parts)
            .into_iter()
            .filter(|operation| {
                kind.is_none_or(|kind| operation.span_kind.eq_ignore_ascii_case(kind))
            })
            .collect())
    }
}
