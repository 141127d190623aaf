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
use sightline_store::pipes::{Aggregated, Pipeline};
use sightline_store::reader;
use sightline_store::{
    Batch, Cursor, Histogram, LogHit, LogQuery, LogRecord, LogSearchResult, Operation, PartitionId,
    Span, TraceQuery, TraceSummary, record_seq,
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
/// the fresh-data handler, and the entries they read, announced to live
/// tails ([`crate::tail`]).
pub struct FreshPartitions {
    owned: Mutex<HashMap<PartitionId, Arc<RwLock<Unpublished>>>>,
    announcements: crate::tail::Announcements,
}

impl Default for FreshPartitions {
    fn default() -> FreshPartitions {
        FreshPartitions {
            owned: Mutex::default(),
            announcements: tokio::sync::broadcast::channel(crate::tail::ANNOUNCED).0,
        }
    }
}

impl FreshPartitions {
    pub(crate) fn announcements(&self) -> &crate::tail::Announcements {
        &self.announcements
    }

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

    /// Hands entries just read to the live tails, if any listen.
    pub(crate) fn announce(&self, entries: &[Decoded]) {
        let announcements = &self.partitions.announcements;
        if announcements.receiver_count() > 0 && !entries.is_empty() {
            let _ = announcements.send(Arc::new(entries.to_vec()));
        }
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
    /// The log record of this id.
    Record(String),
    /// Records of the anchor's stream around it (its context).
    Neighbours {
        anchor: LogHit,
        before: usize,
        after: usize,
    },
    /// Whole-trace search: the traces each part finds (the root judges
    /// each found trace whole).
    SearchTraces(TraceQuery),
    Services,
    Operations(String),
    TraceIdsForRequest(String),
    TracesLinkingTo(String),
    /// A query with pipes (`| stats`), whole: settings its text does not
    /// say (Loki's missing labels, series limit, bucket offset) included.
    Stats {
        pipeline: Pipeline,
        start: i64,
        end: i64,
    },
}

impl FreshQuestion {
    /// Whether the question reads spans (else log records).
    pub fn reads_spans(&self) -> bool {
        !matches!(
            self,
            FreshQuestion::Search(_)
                | FreshQuestion::Histogram { .. }
                | FreshQuestion::Stats { .. }
                | FreshQuestion::Record(_)
                | FreshQuestion::Neighbours { .. }
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FreshAnswer {
    Search(LogSearchResult),
    Histogram(Histogram),
    Stats(Aggregated),
    /// The record asked for, where found.
    Record(Option<LogHit>),
    /// Older (newest first) and newer (oldest first) neighbours.
    Neighbours(Vec<LogHit>, Vec<LogHit>),
    Trace(Vec<Span>),
    Summaries(Vec<TraceSummary>),
    /// Summaries of traces with unpublished spans, each from every span
    /// its owner holds of it (the unpublished ones and those of the
    /// partition's splits since shortly before): newer than any part of the
    /// trace a split holds, they supersede it.
    OwnerSummaries(Vec<TraceSummary>),
    /// Services, trace ids: sorted, each once.
    Names(Vec<String>),
    Operations(Vec<Operation>),
}

/// What one owned partition holds past `seen`: its entries, and the
/// remembered splits the root did not list (to open).
pub(crate) struct PartitionPart {
    pub partition: PartitionId,
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
            partition,
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
        FreshQuestion::Record(id) => {
            let at = Cursor::decode(id)?;
            let mut found = records()
                .find(|(seq, record)| *seq == at.seq && record.timestamp == at.timestamp)
                .map(|(_, record)| LogHit {
                    id: id.clone(),
                    record: record.clone(),
                });
            for split in splits {
                if found.is_some() {
                    break;
                }
                found = split.logs.record(id)?;
            }
            FreshAnswer::Record(found)
        }
        FreshQuestion::Neighbours {
            anchor,
            before,
            after,
        } => {
            let (mut older, mut newer) =
                reader::neighbour_records(records(), anchor, *before, *after)?;
            for split in splits {
                let (more_older, more_newer) = split.logs.neighbours(anchor, *before, *after)?;
                older.extend(more_older);
                newer.extend(more_newer);
            }
            FreshAnswer::Neighbours(older, newer)
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
        FreshQuestion::Stats {
            pipeline,
            start,
            end,
        } => {
            sightline_store::validate_log_query(&pipeline.search)?;
            let pipeline = pipeline.clone();
            let fresh: Vec<LogRecord> = records().map(|(_, record)| record.clone()).collect();
            let scratch = tempfile::tempdir()?;
            let mut answer =
                Aggregated::of_records(&fresh, &pipeline, *start, *end, scratch.path())?;
            for split in splits {
                answer.merge(split.logs.aggregate(&pipeline, *start, *end)?)?;
            }
            FreshAnswer::Stats(answer)
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

/// The internal API other nodes call: fresh data ([`FRESH_PATH`]), leaf
/// reads ([`LEAF_PATH`]) and live tails ([`crate::tail::TAIL_PATH`]).
pub(crate) struct InternalApi {
    pub partitions: Arc<FreshPartitions>,
    pub reader: Arc<crate::query::ClusterReader>,
    pub metrics: Arc<crate::metrics::ClusterMetrics>,
    pub rules: Arc<crate::metrics::ClusterRules>,
}

/// The internal API's routes (mounted behind the query port's token).
pub(crate) fn router(server: Arc<InternalApi>) -> axum::Router {
    axum::Router::new()
        .route(FRESH_PATH, axum::routing::post(serve))
        .route(LEAF_PATH, axum::routing::post(serve_leaf))
        .route(
            crate::metrics::reader::METRICS_PATH,
            axum::routing::post(crate::metrics::reader::serve),
        )
        .route(
            crate::metrics::rules::RULES_PATH,
            axum::routing::post(crate::metrics::rules::serve),
        )
        .route(
            crate::tail::TAIL_PATH,
            axum::routing::get(crate::tail::serve),
        )
        .with_state(server)
}

async fn serve(
    axum::extract::State(server): axum::extract::State<Arc<InternalApi>>,
    axum::Json(request): axum::Json<FreshRequest>,
) -> Result<axum::Json<Vec<FreshAnswer>>, (axum::http::StatusCode, String)> {
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let only = match &request.question {
        FreshQuestion::Trace(trace_id) => Some(crate::partition::of_trace(trace_id)),
        _ => None,
    };
    // A trace search also needs each partition's entries apart (its
    // owner's summaries); nothing else does.
    let traces = matches!(request.question, FreshQuestion::SearchTraces(_));
    let mut entries = Vec::new();
    let mut rows = Vec::new();
    let mut by_partition = Vec::new();
    for part in parts(&server.partitions, &request.seen, only) {
        if traces {
            by_partition.push((part.partition, part.entries.clone()));
        }
        entries.extend(part.entries);
        rows.extend(part.splits);
    }
    let splits = server
        .reader
        .open_splits(rows)
        .await
        .map_err(|error| failed(format!("{error:#}")))?;
    let question = request.question;
    let mut answers = respond(question.clone(), entries, splits).await?;
    if let FreshQuestion::SearchTraces(query) = question {
        let reader = server.reader.clone();
        let summaries =
            tokio::task::spawn_blocking(move || owner_summaries(&reader, &query, by_partition))
                .await
                .map_err(|error| failed(error.to_string()))?
                .map_err(|error| failed(error.to_string()))?;
        answers.0.push(FreshAnswer::OwnerSummaries(summaries));
    }
    Ok(answers)
}

/// The traces with unpublished spans in `parts` that meet `query`, each
/// summarized from all its spans this owner holds, newest first, at most
/// `query.limit`. Blocks.
fn owner_summaries(
    reader: &crate::query::ClusterReader,
    query: &TraceQuery,
    parts: Vec<(PartitionId, Vec<Decoded>)>,
) -> sightline_store::Result<Vec<TraceSummary>> {
    let now = sightline_vocab::clock::now_nanos();
    let mut found = Vec::new();
    for (partition, entries) in parts {
        let mut traces: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
        let mut first = i64::MAX;
        for (_, batch) in &entries {
            if let Batch::Spans(spans) = batch.as_ref() {
                for span in spans {
                    first = first.min(span.start_time);
                    traces
                        .entry(span.trace_id.as_str())
                        .or_default()
                        .push(span.clone());
                }
            }
        }
        if traces.is_empty() {
            continue;
        }
        let ids: Vec<String> = traces.keys().map(|id| id.to_string()).collect();
        let since = first.saturating_sub(crate::splits::TRACE_LOOKBACK_NANOS);
        let mut earlier: HashMap<String, Vec<Span>> = HashMap::new();
        for span in reader.earlier_spans(partition, &ids, since)? {
            earlier.entry(span.trace_id.clone()).or_default().push(span);
        }
        for (trace_id, spans) in traces {
            let parts = vec![earlier.remove(trace_id).unwrap_or_default(), spans];
            let summary =
                sightline_store::traces::summarize(trace_id, &reader::merge_trace(parts), now);
            if query.matches(&summary) {
                found.push(summary.stored());
            }
        }
    }
    Ok(reader::newest_traces(found, query.limit))
}

async fn serve_leaf(
    axum::extract::State(server): axum::extract::State<Arc<InternalApi>>,
    axum::Json(request): axum::Json<LeafRequest>,
) -> Result<axum::Json<Vec<FreshAnswer>>, (axum::http::StatusCode, String)> {
    server.reader.count_leaf_request();
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let splits = server
        .reader
        .open_splits(request.splits)
        .await
        .map_err(|error| failed(format!("{error:#}")))?;
    respond(request.question, Vec::new(), splits).await
}

/// Answers on blocking threads (one answer, or one per share of the
/// splits read side by side): 400 for a query the store refuses, 503 for
/// anything else.
async fn respond(
    question: FreshQuestion,
    entries: Vec<Decoded>,
    splits: Vec<Arc<OpenSplit>>,
) -> Result<axum::Json<Vec<FreshAnswer>>, (axum::http::StatusCode, String)> {
    let failed = |error: String| (axum::http::StatusCode::SERVICE_UNAVAILABLE, error);
    let answered = tokio::task::spawn_blocking(move || {
        if entries.is_empty() {
            crate::query::answer_in_parallel(&question, &splits)
        } else {
            answer(&question, &entries, &splits).map(|answer| vec![answer])
        }
    })
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
