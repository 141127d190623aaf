//! Fresh data: what is acknowledged but not yet in a split the reader
//! listed, served by the partition's owner, so a record is searchable on
//! every node about as soon as its owner has read it, once and only once.
//!
//! The root reads the split list and every partition's checkpoint in one
//! snapshot ([`crate::Metastore::snapshot`]) and sends each node the
//! checkpoints it saw (`seen`). An owner answers, for each partition it
//! holds, from what lies at or past `seen`: the entries it has read and
//! not published (decoded, searched in memory with the query language's
//! record matcher) and the splits it published after the root's snapshot
//! (kept in its split cache). Everything below `seen` is in a split the
//! root listed; everything at or past it is in no split the root listed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sightline_store::reader;
use sightline_store::{
    Batch, Histogram, LogQuery, LogSearchResult, Operation, PartitionId, Span, TraceQuery,
    TraceSummary, record_seq,
};

use crate::cache::OpenSplit;
use crate::metastore::SplitRow;
use crate::splits::Decoded;

/// Splits an owner remembers having published, per partition, for roots
/// whose snapshot is older than them (seconds old at most).
const REMEMBERED_SPLITS: usize = 8;

/// What an owner holds of one partition beyond its checkpoint.
#[derive(Default)]
pub(crate) struct Unpublished {
    /// The first sequence not in a published split.
    pub from: u64,
    /// Entries read and not yet published, in sequence order.
    pub entries: Vec<Decoded>,
    /// The last splits this owner published, oldest first.
    pub published: VecDeque<SplitRow>,
}

impl Unpublished {
    /// After publishing `row`: its entries leave, it is remembered.
    pub(crate) fn published(&mut self, row: SplitRow) {
        self.from = row.to;
        let to = row.to;
        self.entries.retain(|(sequence, _)| *sequence >= to);
        self.published.push_back(row);
        while self.published.len() > REMEMBERED_SPLITS {
            self.published.pop_front();
        }
    }
}

/// The partitions this node owns, as its partition tasks share them with
/// the fresh-data handler.
#[derive(Default)]
pub struct FreshPartitions {
    owned: Mutex<HashMap<PartitionId, Arc<RwLock<Unpublished>>>>,
}

impl FreshPartitions {
    /// Registers an owned partition; unregistered when the guard drops
    /// (the partition task ends, however it ends).
    pub(crate) fn register(self: &Arc<Self>, partition: PartitionId, from: u64) -> FreshGuard {
        let unpublished = Arc::new(RwLock::new(Unpublished {
            from,
            ..Unpublished::default()
        }));
        self.lock().insert(partition, unpublished.clone());
        FreshGuard {
            partitions: self.clone(),
            partition,
            unpublished,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionId, Arc<RwLock<Unpublished>>>> {
        self.owned
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn owned(&self) -> Vec<(PartitionId, Arc<RwLock<Unpublished>>)> {
        self.lock()
            .iter()
            .map(|(partition, unpublished)| (*partition, unpublished.clone()))
            .collect()
    }
}

/// An owned partition's registration.
pub(crate) struct FreshGuard {
    partitions: Arc<FreshPartitions>,
    partition: PartitionId,
    pub unpublished: Arc<RwLock<Unpublished>>,
}

impl FreshGuard {
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Unpublished> {
        self.unpublished
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for FreshGuard {
    fn drop(&mut self) {
        let mut owned = self.partitions.lock();
        if owned
            .get(&self.partition)
            .is_some_and(|current| Arc::ptr_eq(current, &self.unpublished))
        {
            owned.remove(&self.partition);
        }
    }
}

/// A root's question to the owners.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreshRequest {
    /// Each partition's checkpoint in the root's snapshot; a partition
    /// absent has none published (1).
    pub seen: BTreeMap<PartitionId, u64>,
    pub question: FreshQuestion,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FreshQuestion {
    Search(LogQuery),
    Histogram {
        query: String,
        start: i64,
        end: i64,
        interval: i64,
    },
    Trace(String),
    /// Whole-trace search: the traces each part finds (the root judges
    /// each found trace whole).
    SearchTraces(TraceQuery),
    Services,
    Operations(String),
    TraceIdsForRequest(String),
    TracesLinkingTo(String),
}

impl FreshQuestion {
    /// Whether the question reads spans (else log records).
    pub fn reads_spans(&self) -> bool {
        !matches!(
            self,
            FreshQuestion::Search(_) | FreshQuestion::Histogram { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FreshAnswer {
    Search(LogSearchResult),
    Histogram(Histogram),
    Trace(Vec<Span>),
    Summaries(Vec<TraceSummary>),
    /// Services, trace ids: sorted, each once.
    Names(Vec<String>),
    Operations(Vec<Operation>),
}

/// What one owned partition holds past `seen`: its entries, and the
/// remembered splits the root did not list (to open).
pub(crate) struct PartitionPart {
    pub entries: Vec<Decoded>,
    pub splits: Vec<SplitRow>,
}

/// The owned partitions' parts past the root's checkpoints (only `only`
/// when given: a trace's partition).
pub(crate) fn parts(
    partitions: &FreshPartitions,
    seen: &BTreeMap<PartitionId, u64>,
    only: Option<PartitionId>,
) -> Vec<PartitionPart> {
    let mut parts = Vec::new();
    for (partition, unpublished) in partitions.owned() {
        if only.is_some_and(|only| only != partition) {
            continue;
        }
        let seen = seen.get(&partition).copied().unwrap_or(1);
        let unpublished = unpublished
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        parts.push(PartitionPart {
            entries: unpublished
                .entries
                .iter()
                .filter(|(sequence, _)| *sequence >= seen)
                .cloned()
                .collect(),
            splits: unpublished
                .published
                .iter()
                .filter(|row| row.from >= seen)
                .cloned()
                .collect(),
        });
    }
    parts
}

/// Answers `question` over `entries` and the opened `splits`. Blocks.
pub(crate) fn answer(
    question: &FreshQuestion,
    entries: &[Decoded],
    splits: &[Arc<OpenSplit>],
) -> sightline_store::Result<FreshAnswer> {
    let records = || {
        entries
            .iter()
            .flat_map(|(sequence, batch)| match batch.as_ref() {
                Batch::Logs(records) => records
                    .iter()
                    .enumerate()
                    .map(|(index, record)| (record_seq(*sequence, index), record))
                    .collect::<Vec<_>>(),
                Batch::Spans(_) => Vec::new(),
            })
    };
    let spans = || {
        entries.iter().flat_map(|(_, batch)| match batch.as_ref() {
            Batch::Spans(spans) => spans.iter().collect::<Vec<_>>(),
            Batch::Logs(_) => Vec::new(),
        })
    };
    Ok(match question {
        FreshQuestion::Search(query) => {
            let mut pages = vec![reader::search_records(records(), query)?];
            for split in splits {
                pages.push(split.logs.search(query)?);
            }
            FreshAnswer::Search(reader::merge_pages(pages, query.limit))
        }
        FreshQuestion::Histogram {
            query,
            start,
            end,
            interval,
        } => {
            let mut histogram = reader::histogram_records(
                records().map(|(_, record)| record),
                query,
                *start,
                *end,
                *interval,
            )?;
            for split in splits {
                histogram.add(&split.logs.histogram(query, *start, *end, *interval)?);
            }
            FreshAnswer::Histogram(histogram)
        }
        FreshQuestion::Trace(trace_id) => {
            let trace_id = trace_id.to_ascii_lowercase();
            let mut parts: Vec<Vec<Span>> = vec![
                entries
                    .iter()
                    .flat_map(|(_, batch)| match batch.as_ref() {
                        Batch::Spans(spans) => spans
                            .iter()
                            .filter(|span| span.trace_id.eq_ignore_ascii_case(&trace_id))
                            .cloned()
                            .collect::<Vec<_>>(),
                        Batch::Logs(_) => Vec::new(),
                    })
                    .collect(),
            ];
            for split in splits {
                parts.push(split.spans.trace(&trace_id)?);
            }
            FreshAnswer::Trace(reader::merge_trace(parts))
        }
        // Traces not yet in a split have no summary: found once published.
        FreshQuestion::SearchTraces(query) => {
            let mut found = Vec::new();
            for split in splits {
                found.extend(split.spans.search_traces(query)?);
            }
            FreshAnswer::Summaries(found)
        }
        FreshQuestion::Services => {
            let mut parts = vec![spans().map(|span| span.service.clone()).collect()];
            for split in splits {
                parts.push(split.spans.services()?);
            }
            FreshAnswer::Names(reader::merge_names(parts))
        }
        FreshQuestion::Operations(service) => {
            let mut parts = vec![
                spans()
                    .filter(|span| span.service == *service)
                    .map(|span| Operation {
                        name: span.name.clone(),
                        span_kind: span.kind.clone(),
                    })
                    .collect(),
            ];
            for split in splits {
                parts.push(split.spans.operations_with_kinds(service, None)?);
            }
            FreshAnswer::Operations(reader::merge_operations(parts))
        }
        FreshQuestion::TraceIdsForRequest(request_id) => {
            let mut parts = vec![
                spans()
                    .filter(|span| span.request_id.as_deref() == Some(request_id.as_str()))
                    .map(|span| span.trace_id.clone())
                    .collect(),
            ];
            for split in splits {
                parts.push(split.spans.trace_ids_for_request(request_id)?);
            }
            FreshAnswer::Names(reader::merge_names(parts))
        }
        FreshQuestion::TracesLinkingTo(trace_id) => {
            let mut parts = vec![
                spans()
                    .filter(|span| {
                        span.links
                            .iter()
                            .any(|link| link.trace_id.eq_ignore_ascii_case(trace_id))
                    })
                    .map(|span| span.trace_id.clone())
                    .collect(),
            ];
            for split in splits {
                parts.push(split.spans.traces_linking_to(trace_id)?);
            }
            FreshAnswer::Names(reader::merge_names(parts))
        }
    })
}

/// The path of the internal API's fresh-data endpoint on the query port.
pub const FRESH_PATH: &str = "/internal/v1/fresh";

/// The path of the internal API's leaf endpoint: a query over the splits
/// the root gives, read through this node's split cache.
pub const LEAF_PATH: &str = "/internal/v1/leaf";

/// A root's share of a query for one leaf.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafRequest {
    pub splits: Vec<SplitRow>,
    pub question: FreshQuestion,
}

/// Serves [`FRESH_PATH`]: this node's partitions' fresh data.
pub(crate) struct FreshServer {
    pub partitions: Arc<FreshPartitions>,
    pub reader: Arc<crate::query::ClusterReader>,
}

/// The internal API's routes (mounted behind the query port's token).
pub(crate) fn router(server: Arc<FreshServer>) -> axum::Router {
    axum::Router::new()
        .route(FRESH_PATH, axum::routing::post(serve))
        .route(LEAF_PATH, axum::routing::post(serve_leaf))
        .with_state(server)
}

async fn serve(
    axum::extract::State(server): axum::extract::State<Arc<FreshServer>>,
    axum::Json(request): axum::Json<FreshRequest>,
) -> Result<axum::Json<FreshAnswer>, (axum::http::StatusCode, String)> {
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let only = match &request.question {
        FreshQuestion::Trace(trace_id) => Some(crate::partition::of_trace(trace_id)),
        _ => None,
    };
    let mut entries = Vec::new();
    let mut splits = Vec::new();
    for part in parts(&server.partitions, &request.seen, only) {
        entries.extend(part.entries);
        for row in part.splits {
            splits.push(
                server
                    .reader
                    .open_split(&row)
                    .await
                    .map_err(|error| failed(format!("{error:#}")))?,
            );
        }
    }
    respond(request.question, entries, splits).await
}

async fn serve_leaf(
    axum::extract::State(server): axum::extract::State<Arc<FreshServer>>,
    axum::Json(request): axum::Json<LeafRequest>,
) -> Result<axum::Json<FreshAnswer>, (axum::http::StatusCode, String)> {
    server.reader.count_leaf_request();
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let mut splits = Vec::new();
    for row in &request.splits {
        splits.push(
            server
                .reader
                .open_split(row)
                .await
                .map_err(|error| failed(format!("{error:#}")))?,
        );
    }
    respond(request.question, Vec::new(), splits).await
}

/// Answers on a blocking thread: 400 for a query the store refuses, 503
/// for anything else.
async fn respond(
    question: FreshQuestion,
    entries: Vec<Decoded>,
    splits: Vec<Arc<OpenSplit>>,
) -> Result<axum::Json<FreshAnswer>, (axum::http::StatusCode, String)> {
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let answered = tokio::task::spawn_blocking(move || answer(&question, &entries, &splits))
        .await
        .map_err(|error| failed(error.to_string()))?;
    match answered {
        Ok(answer) => Ok(axum::Json(answer)),
        Err(sightline_store::StoreError::InvalidQuery(message)) => {
            Err((axum::http::StatusCode::BAD_REQUEST, message))
        }
        Err(error) => Err(failed(error.to_string())),
    }
}
