//! The span store: spans in a tantivy index looked up by trace id, and a
//! second index of trace summaries for search on whole-trace properties.
//!
//! Both indexes commit with the WAL position they reached. Adding spans marks
//! their traces dirty; [`SpanStore::commit`] commits the spans, recomputes the
//! summary of every dirty trace from all of its stored spans (so late and
//! out-of-order spans update it), and commits the summaries. A replay after a
//! crash marks traces dirty again for every WAL entry the summaries had not
//! committed, even when the spans themselves had been.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::{HashMap, HashSet, HashSetExt};

use crate::Writers;

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, RangeQuery, TermQuery, TermSetQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextOptions, Value,
};
use tantivy::{
    Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use crate::error::{Result, StoreError};
use crate::files::StoreFiles;
use crate::model::Span;
use crate::traces::{TraceSummary, operation_key, summarize};

/// The format of the span store (its two indexes' schemas and the commit
/// payload): 1, the first; 2, times and durations kept as fast columns only
/// (range queries and sorting read the columns; format 1 also indexed every
/// distinct nanosecond value as a term, which no query read and which cost
/// a term dictionary entry per span at ingest); 3, `request_id` no longer
/// indexed per span (the summary of each trace lists its request ids, and
/// [`SpanStore::trace_ids_for_request`] asks the summaries, in every
/// format). Stores of formats 1 and 2 open and keep their schema. A change
/// is a new version, with a fixture in `tests/fixtures/` (`tests/formats.rs`).
pub const SPAN_STORE_FORMAT_VERSION: u32 = 3;

const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;
const SUMMARY_WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

/// Upper bound on the spans one trace lookup returns.
pub(crate) const MAX_SPANS_PER_TRACE: usize = 100_000;

/// Largest number of traces one search returns.
pub(crate) const MAX_TRACE_SEARCH_LIMIT: usize = 1_000;

struct SpanFields {
    trace_id: Field,
    service: Field,
    operation: Field,
    start_time: Field,
    link_trace_id: Field,
    source: Field,
}

/// How a numeric field of the given format is kept: format 1 also indexed it.
fn time_options(format: u32) -> tantivy::schema::NumericOptions {
    if format == 1 {
        (INDEXED | FAST).into()
    } else {
        FAST.into()
    }
}

fn span_schema(format: u32) -> (Schema, SpanFields) {
    let mut builder = Schema::builder();
    let trace_id = builder.add_text_field("trace_id", STRING);
    let service = builder.add_text_field("service", STRING);
    let operation = builder.add_text_field("operation", STRING);
    let start_time = builder.add_i64_field("start_time", time_options(format));
    // Format 3 keeps the field, neither indexed nor stored, so that the
    // fields after it keep their numbers in every format.
    let request_id = if format < 3 {
        STRING
    } else {
        TextOptions::default()
    };
    builder.add_text_field("request_id", request_id);
    let link_trace_id = builder.add_text_field("link_trace_id", STRING);
    let source = builder.add_text_field("source", STORED);
    let fields = SpanFields {
        trace_id,
        service,
        operation,
        start_time,
        link_trace_id,
        source,
    };
    (builder.build(), fields)
}

struct SummaryFields {
    trace_id: Field,
    start_time: Field,
    duration: Field,
    service: Field,
    operation: Field,
    tag: Field,
    error_count: Field,
    request_id: Field,
    source: Field,
}

fn summary_schema(format: u32) -> (Schema, SummaryFields) {
    let mut builder = Schema::builder();
    let fields = SummaryFields {
        trace_id: builder.add_text_field("trace_id", STRING),
        start_time: builder.add_i64_field("start_time", time_options(format)),
        duration: builder.add_i64_field("duration", time_options(format)),
        service: builder.add_text_field("service", STRING),
        operation: builder.add_text_field("operation", STRING),
        tag: builder.add_text_field("tag", STRING),
        error_count: builder.add_i64_field("error_count", INDEXED),
        request_id: builder.add_text_field("request_id", STRING),
        source: builder.add_text_field("source", STORED),
    };
    (builder.build(), fields)
}

/// The span and summary schemas of every format this version reads, the
/// current one first, with the current format's field handles.
fn schemas() -> (Vec<Schema>, SpanFields, Vec<Schema>, SummaryFields) {
    let (span, fields) = span_schema(SPAN_STORE_FORMAT_VERSION);
    let (summary, summary_fields) = summary_schema(SPAN_STORE_FORMAT_VERSION);
    let (mut spans, mut summaries) = (vec![span], vec![summary]);
    for format in (1..SPAN_STORE_FORMAT_VERSION).rev() {
        spans.push(span_schema(format).0);
        summaries.push(summary_schema(format).0);
    }
    (spans, fields, summaries, summary_fields)
}

/// Separates an operation's name from its span kind in the span index's
/// `operation` terms. Spans stored before kinds were indexed have no kind.
const OPERATION_KIND_SEPARATOR: char = '\0';

/// One operation of a service: a span name under one span kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Operation {
    pub name: String,
    /// The span kind as stored (`server`, `client`, `producer`, `consumer`,
    /// `internal`, `unspecified`), empty for spans stored before kinds were
    /// indexed.
    pub span_kind: String,
}

/// A search on whole-trace properties. Every given condition must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TraceQuery {
    /// Some span of the trace belongs to this service.
    pub service: Option<String>,
    /// Some span of `service` (or of any service) has this operation name.
    pub operation: Option<String>,
    /// Some span carries each of these attribute values.
    pub tags: Vec<(String, String)>,
    /// Whole-trace duration bounds, nanoseconds, inclusive.
    pub min_duration: Option<i64>,
    pub max_duration: Option<i64>,
    pub errors_only: bool,
    /// Trace start bounds, nanoseconds: `[start, end)`.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: usize,
}

impl TraceQuery {
    /// Whether a trace's summary meets every condition, as
    /// [`SpanStore::search_traces`] decides over its summary index (for a
    /// summary recomputed after merging a trace's parts).
    pub fn matches(&self, summary: &TraceSummary) -> bool {
        let service_ok = self
            .service
            .as_ref()
            .is_none_or(|service| summary.services.contains(service));
        let operation_ok = self.operation.as_ref().is_none_or(|operation| {
            summary.operations.iter().any(|key| match &self.service {
                Some(service) => *key == operation_key(service, operation),
                None => key
                    .split_once('/')
                    .is_some_and(|(_, name)| name == operation),
            })
        });
        let tags_ok = self
            .tags
            .iter()
            .all(|(key, value)| summary.tags.contains(&format!("{key}={value}")));
        let duration_ok = self.min_duration.is_none_or(|min| summary.duration >= min)
            && self.max_duration.is_none_or(|max| summary.duration <= max);
        let errors_ok = !self.errors_only || summary.error_count > 0;
        let start_ok = self.start.is_none_or(|start| summary.start_time >= start)
            && self.end.is_none_or(|end| summary.start_time < end);
        service_ok && operation_ok && tags_ok && duration_ok && errors_ok && start_ok
    }
}

#[derive(Serialize, Deserialize)]
struct CommitPayload {
    wal_position: u64,
}

/// One tantivy index with its writer and reader, committed with a WAL position.
struct TantivyIndex {
    index: Index,
    /// Made at the first write: a store only read (a cluster's split) has
    /// no writer, its threads or its lock.
    writer: Mutex<Option<IndexWriter>>,
    memory: usize,
    writers: Writers,
    reader: IndexReader,
    committed_position: AtomicU64,
}

/// The index writer of a [`TantivyIndex`], held.
struct WriterGuard<'a>(std::sync::MutexGuard<'a, Option<IndexWriter>>);

impl std::ops::Deref for WriterGuard<'_> {
    type Target = IndexWriter;
    fn deref(&self) -> &IndexWriter {
        self.0
            .as_ref()
            .expect("TantivyIndex::writer made the writer")
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut IndexWriter {
        self.0
            .as_mut()
            .expect("TantivyIndex::writer made the writer")
    }
}

impl TantivyIndex {
    /// Opens the index in `dir`, or creates it with the first of `schemas`
    /// (the current format's); an existing index may have any of them.
    fn open(
        dir: &Path,
        schemas: &[Schema],
        memory: usize,
        writers: Writers,
    ) -> Result<TantivyIndex> {
        std::fs::create_dir_all(dir)?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = if Index::exists(&directory).map_err(tantivy::TantivyError::from)? {
            Index::open(directory)?
        } else {
            Index::create(directory, schemas[0].clone(), Default::default())?
        };
        known_schema(&index, schemas, dir)?;
        TantivyIndex::with_index(index, memory, writers)
    }

    /// The existing index of `files`, read only.
    fn open_read_only(
        files: &StoreFiles,
        label: &Path,
        schemas: &[Schema],
    ) -> Result<TantivyIndex> {
        let index = Index::open(files.directory())?;
        known_schema(&index, schemas, label)?;
        TantivyIndex::with_index(index, 0, Writers::ReadOnly)
    }

    fn with_index(index: Index, memory: usize, writers: Writers) -> Result<TantivyIndex> {
        let committed_position = index
            .load_metas()?
            .payload
            .and_then(|payload| serde_json::from_str::<CommitPayload>(&payload).ok())
            .map_or(0, |payload| payload.wal_position);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(TantivyIndex {
            index,
            writer: Mutex::new(None),
            memory,
            writers,
            reader,
            committed_position: AtomicU64::new(committed_position),
        })
    }

    fn writer(&self) -> Result<WriterGuard<'_>> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if writer.is_none() {
            *writer = Some(self.writers.one_thread_writer(&self.index, self.memory)?);
        }
        Ok(WriterGuard(writer))
    }

    fn committed_position(&self) -> u64 {
        self.committed_position.load(Ordering::Acquire)
    }

    fn commit(&self, position: u64) -> Result<()> {
        let mut writer = self.writer()?;
        let mut prepared = writer.prepare_commit()?;
        let payload = serde_json::to_string(&CommitPayload {
            wal_position: position,
        })
        .unwrap_or_default();
        prepared.set_payload(&payload);
        if let Err(error) = prepared.commit() {
            if let Err(rollback_error) = writer.rollback() {
                tracing::error!(%rollback_error, "failed to roll back after a failed commit");
            }
            return Err(error.into());
        }
        drop(writer);
        self.committed_position.store(position, Ordering::Release);
        self.reader.reload()?;
        Ok(())
    }

    fn rollback(&self) {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(writer) = writer.as_mut()
            && let Err(error) = writer.rollback()
        {
            tracing::error!(%error, "failed to roll back an index writer");
        }
    }
}

/// Fails unless `index` has one of the `schemas` this version knows. Every
/// format has the same fields in the same order, so the current format's
/// field handles address any of them.
fn known_schema(index: &Index, schemas: &[Schema], label: &Path) -> Result<()> {
    if schemas.contains(&index.schema()) {
        return Ok(());
    }
    Err(StoreError::Index(tantivy::TantivyError::SchemaError(
        format!("{} has fields this version does not know", label.display()),
    )))
}

/// Spans and trace summaries on disk.
///
/// Like [`crate::LogStore`], writes are visible and durable after
/// [`SpanStore::commit`], and every method blocks.
pub struct SpanStore {
    spans: TantivyIndex,
    summaries: TantivyIndex,
    fields: SpanFields,
    summary_fields: SummaryFields,
    /// Traces whose summary must be recomputed at the next commit.
    dirty: Mutex<HashSet<String>>,
    /// Every span of recently touched traces, so a summary update reads
    /// memory rather than the doc store; see [`RecentTraces`].
    recent: Mutex<RecentTraces>,
}

/// Spans recently written are kept by trace so that recomputing a summary
/// (several times per trace, as each service's spans arrive in their own
/// batch) does not read them back from the doc store. An entry always holds
/// every span of its trace: it starts either from a full read of the store at
/// commit or with a trace's very first spans, and every later span is
/// appended. It is cleared wholesale when too large or after a rollback.
#[derive(Default)]
struct RecentTraces {
    traces: HashMap<String, Vec<Span>>,
    spans: usize,
}

/// Frees a cleared recent-trace cache on a thread of its own: a hundred
/// thousand spans with their attribute maps take the indexer, which every
/// commit waits for, a fifth of its time to free.
fn drop_aside(cache: RecentTraces) {
    let spawned = std::thread::Builder::new()
        .name("span-cache-free".into())
        .spawn(move || drop(cache));
    // Without a thread (the process is out of them), `spawn` drops the
    // closure, and the cache with it, here.
    if let Err(error) = spawned {
        tracing::debug!(%error, "freeing the recent-trace cache in place");
    }
}

/// Spans the recent-trace cache holds before it is cleared.
const MAX_RECENT_SPANS: usize = 100_000;

impl SpanStore {
    /// Opens (or creates) the store in `dir`: spans in `dir/spans`, summaries
    /// in `dir/summaries`.
    pub fn open(dir: &Path) -> Result<SpanStore> {
        SpanStore::open_with(dir, Writers::Ingest)
    }

    /// [`SpanStore::open`] with index writers of the given size.
    pub fn open_with(dir: &Path, writers: Writers) -> Result<SpanStore> {
        let (schemas, fields, summary_schemas, summary_fields) = schemas();
        Ok(SpanStore {
            spans: TantivyIndex::open(&dir.join("spans"), &schemas, WRITER_MEMORY_BYTES, writers)?,
            summaries: TantivyIndex::open(
                &dir.join("summaries"),
                &summary_schemas,
                SUMMARY_WRITER_MEMORY_BYTES,
                writers,
            )?,
            fields,
            summary_fields,
            dirty: Mutex::new(HashSet::new()),
            recent: Mutex::new(RecentTraces::default()),
        })
    }

    /// Opens the span store whose files are `files` (a split in object
    /// storage), read only; `label` names it in errors.
    pub fn open_read_only(files: &StoreFiles, label: &Path) -> Result<SpanStore> {
        let (schemas, fields, summary_schemas, summary_fields) = schemas();
        Ok(SpanStore {
            spans: TantivyIndex::open_read_only(
                &files.sub("spans"),
                &label.join("spans"),
                &schemas,
            )?,
            summaries: TantivyIndex::open_read_only(
                &files.sub("summaries"),
                &label.join("summaries"),
                &summary_schemas,
            )?,
            fields,
            summary_fields,
            dirty: Mutex::new(HashSet::new()),
            recent: Mutex::new(RecentTraces::default()),
        })
    }

    /// Reads both indexes' metadata, as every query does first (see
    /// [`crate::files::warm_up`]).
    pub fn warm_up(&self) -> Result<()> {
        crate::files::warm_up(&self.spans.reader.searcher())?;
        crate::files::warm_up(&self.summaries.reader.searcher())
    }

    /// WAL position below which every span and summary is committed.
    pub fn committed_position(&self) -> u64 {
        self.spans
            .committed_position()
            .min(self.summaries.committed_position())
    }

    /// Adds the spans of the WAL entry at `position`. Spans a commit already
    /// covers are skipped, so a replay never stores a span twice; their traces
    /// are still marked for a summary update if the summaries lag.
    pub fn add(&self, position: u64, spans: &[Span]) -> Result<()> {
        let encoded = crate::batch::item_sources(spans);
        self.add_encoded(position, spans.iter().cloned().zip(encoded.sources()))
    }

    /// [`SpanStore::add`] for spans that come with their JSON (as
    /// [`crate::Batch::encode`] wrote it to the WAL), kept as each span's
    /// stored source instead of serializing it again. The spans move into
    /// the recent-trace cache.
    pub fn add_encoded<'a>(
        &self,
        position: u64,
        spans: impl IntoIterator<Item = (Span, &'a str)>,
    ) -> Result<()> {
        let spans: Vec<(Span, &str)> = spans.into_iter().collect();
        if position >= self.summaries.committed_position() {
            let mut dirty = self
                .dirty
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for (span, _) in &spans {
                if !dirty.contains(&span.trace_id) {
                    dirty.insert(span.trace_id.clone());
                }
            }
        }
        if position < self.spans.committed_position() {
            return Ok(());
        }
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let searcher = self.spans.reader.searcher();
        let writer = self.spans.writer()?;
        for (span, source) in spans {
            writer.add_document(self.to_document(&span, source))?;
            let recent = &mut *recent;
            if let Some(trace) = recent.traces.get_mut(&span.trace_id) {
                trace.push(span);
                recent.spans += 1;
                continue;
            }
            // A trace with nothing stored yet starts an entry here; one
            // with stored spans gets its entry from a full read at commit.
            let term = Term::from_field_text(self.fields.trace_id, &span.trace_id);
            if searcher.doc_freq(&term)? == 0 {
                recent.traces.insert(span.trace_id.clone(), vec![span]);
                recent.spans += 1;
            }
        }
        Ok(())
    }

    /// Commits the spans, then the summaries of every trace they touched,
    /// recording `position`.
    pub fn commit(&self, position: u64) -> Result<()> {
        self.spans.commit(position)?;
        let dirty: Vec<String> = {
            let mut dirty = self
                .dirty
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            std::mem::take(&mut *dirty).into_iter().collect()
        };
        let now = sightline_vocab::clock::now_nanos();
        let result = (|| {
            let writer = self.summaries.writer()?;
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for trace_id in &dirty {
                if !recent.traces.contains_key(trace_id) {
                    let stored = self.trace(trace_id)?;
                    recent.spans += stored.len();
                    recent.traces.insert(trace_id.clone(), stored);
                }
                let spans = &recent.traces[trace_id];
                if spans.is_empty() {
                    continue;
                }
                writer.delete_term(Term::from_field_text(
                    self.summary_fields.trace_id,
                    trace_id,
                ));
                writer.add_document(self.summary_document(summarize(trace_id, spans, now)))?;
            }
            drop(writer);
            if recent.spans > MAX_RECENT_SPANS {
                drop_aside(std::mem::take(&mut *recent));
            }
            drop(recent);
            self.summaries.commit(position)
        })();
        if result.is_err() {
            // Keep them for the next attempt.
            self.dirty
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .extend(dirty);
        }
        result
    }

    /// Drops every span and summary added since the last commit (after a
    /// failure); the caller adds them again from the WAL.
    pub fn rollback(&self) {
        self.spans.rollback();
        self.summaries.rollback();
        // Entries may hold spans that were just dropped.
        *self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = RecentTraces::default();
    }

    /// Number of committed spans.
    pub fn num_spans(&self) -> u64 {
        self.spans.reader.searcher().num_docs()
    }

    /// Every committed span of the trace, ordered by start time. Empty when
    /// the trace is unknown.
    pub fn trace(&self, trace_id: &str) -> Result<Vec<Span>> {
        let term = Term::from_field_text(self.fields.trace_id, &trace_id.to_ascii_lowercase());
        let mut spans = self.spans_matching(
            Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            MAX_SPANS_PER_TRACE,
        )?;
        spans.sort_by(|a, b| {
            a.start_time
                .cmp(&b.start_time)
                .then_with(|| a.span_id.cmp(&b.span_id))
        });
        Ok(spans)
    }

    /// Every committed span of the given traces, in no order.
    pub fn traces(&self, trace_ids: &[String]) -> Result<Vec<Span>> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let terms = trace_ids.iter().map(|trace_id| {
            Term::from_field_text(self.fields.trace_id, &trace_id.to_ascii_lowercase())
        });
        let limit = trace_ids
            .len()
            .saturating_mul(MAX_SPANS_PER_TRACE)
            .min(1 << 20);
        self.spans_matching(Box::new(TermSetQuery::new(terms)), limit)
    }

    /// Every span, in no order (a merge of stores re-indexes them).
    pub fn all_spans(&self) -> Result<Vec<Span>> {
        let count = self.num_spans() as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        self.spans_matching(Box::new(AllQuery), count)
    }

    /// Spans of traces that this store does not hold but its summaries
    /// must count: a cluster split's traces that began in earlier splits.
    /// Give them before the traces' new spans are added; the summaries
    /// written at the next commit are then of the whole traces, as far as
    /// they have come.
    pub fn add_earlier_spans(&self, spans: Vec<Span>) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for span in spans {
            recent.spans += 1;
            recent
                .traces
                .entry(span.trace_id.clone())
                .or_default()
                .push(span);
        }
    }

    /// Trace ids of spans that carry `request_id`, from the traces'
    /// summaries (each lists every request id of its spans).
    pub fn trace_ids_for_request(&self, request_id: &str) -> Result<Vec<String>> {
        let term = Term::from_field_text(self.summary_fields.request_id, request_id);
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let searcher = self.summaries.reader.searcher();
        let hits = searcher.search(&query, &TopDocs::with_limit(10_000).order_by_score())?;
        let ids: BTreeSet<String> = hits
            .into_iter()
            .map(|(_, address)| Ok(self.load_summary(&searcher, address)?.trace_id))
            .collect::<Result<_>>()?;
        Ok(ids.into_iter().collect())
    }

    /// Trace ids of spans that link to `trace_id` (async work started by it).
    pub fn traces_linking_to(&self, trace_id: &str) -> Result<Vec<String>> {
        let term = Term::from_field_text(self.fields.link_trace_id, &trace_id.to_ascii_lowercase());
        self.distinct_trace_ids(Box::new(TermQuery::new(term, IndexRecordOption::Basic)))
    }

    /// The summary of a trace, if any of its spans is stored.
    pub fn summary(&self, trace_id: &str) -> Result<Option<TraceSummary>> {
        let searcher = self.summaries.reader.searcher();
        let term =
            Term::from_field_text(self.summary_fields.trace_id, &trace_id.to_ascii_lowercase());
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        let hits = searcher.search(&query, &TopDocs::with_limit(1).order_by_score())?;
        hits.first()
            .map(|(_, address)| self.load_summary(&searcher, *address))
            .transpose()
    }

    /// Traces matching whole-trace conditions, newest first.
    pub fn search_traces(&self, query: &TraceQuery) -> Result<Vec<TraceSummary>> {
        let f = &self.summary_fields;
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        let range = |field: Field, lower: Option<i64>, upper: Bound<i64>| -> Box<dyn Query> {
            let lower = lower.map_or(Bound::Unbounded, |v| {
                Bound::Included(Term::from_field_i64(field, v))
            });
            let upper = match upper {
                Bound::Included(v) => Bound::Included(Term::from_field_i64(field, v)),
                Bound::Excluded(v) => Bound::Excluded(Term::from_field_i64(field, v)),
                Bound::Unbounded => Bound::Unbounded,
            };
            Box::new(RangeQuery::new(lower, upper))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if let Some(service) = &query.service {
            clauses.push((Occur::Must, term(f.service, service)));
        }
        if let Some(operation) = &query.operation {
            match &query.service {
                Some(service) => clauses.push((
                    Occur::Must,
                    term(f.operation, &operation_key(service, operation)),
                )),
                None => {
                    // Any service: match the operation name as a suffix of the key.
                    let pattern = format!(".*/{}", regex_syntax::escape(operation));
                    let regex = tantivy::query::RegexQuery::from_pattern(&pattern, f.operation)
                        .map_err(|error| StoreError::InvalidQuery(error.to_string()))?;
                    clauses.push((Occur::Must, Box::new(regex)));
                }
            }
        }
        for (key, value) in &query.tags {
            clauses.push((Occur::Must, term(f.tag, &format!("{key}={value}"))));
        }
        if query.min_duration.is_some() || query.max_duration.is_some() {
            let upper = query.max_duration.map_or(Bound::Unbounded, Bound::Included);
            clauses.push((Occur::Must, range(f.duration, query.min_duration, upper)));
        }
        if query.errors_only {
            clauses.push((Occur::Must, range(f.error_count, Some(1), Bound::Unbounded)));
        }
        if query.start.is_some() || query.end.is_some() {
            let upper = query.end.map_or(Bound::Unbounded, Bound::Excluded);
            clauses.push((Occur::Must, range(f.start_time, query.start, upper)));
        }
        let parsed: Box<dyn Query> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.summaries.reader.searcher();
        let limit = query.limit.clamp(1, MAX_TRACE_SEARCH_LIMIT);
        let top = TopDocs::with_limit(limit).order_by_fast_field::<i64>("start_time", Order::Desc);
        searcher
            .search(&parsed, &top)?
            .into_iter()
            .map(|(_, address)| self.load_summary(&searcher, address))
            .collect()
    }

    /// Every service with stored spans, sorted.
    pub fn services(&self) -> Result<Vec<String>> {
        Ok(self.terms(self.fields.service, "")?.into_iter().collect())
    }

    /// The operations of a service's spans: one per (name, span kind) pair,
    /// as Jaeger lists them, sorted; only those of `kind` when given
    /// (compared case-insensitively). Spans stored before kinds were indexed
    /// have an empty kind, unless a newer span of the same name has one.
    pub fn operations_with_kinds(
        &self,
        service: &str,
        kind: Option<&str>,
    ) -> Result<Vec<Operation>> {
        let prefix = operation_key(service, "");
        let mut kinded: BTreeSet<(String, String)> = BTreeSet::new();
        let mut unkinded: BTreeSet<String> = BTreeSet::new();
        for key in self.terms(self.fields.operation, &prefix)? {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            match rest.rsplit_once(OPERATION_KIND_SEPARATOR) {
                Some((name, span_kind)) => {
                    kinded.insert((name.to_string(), span_kind.to_string()));
                }
                None => {
                    unkinded.insert(rest.to_string());
                }
            }
        }
        for name in unkinded {
            let has_kind = kinded
                .range((name.clone(), String::new())..)
                .next()
                .is_some_and(|(kinded_name, _)| *kinded_name == name);
            if !has_kind {
                kinded.insert((name, String::new()));
            }
        }
        Ok(kinded
            .into_iter()
            .filter(|(_, span_kind)| kind.is_none_or(|kind| span_kind.eq_ignore_ascii_case(kind)))
            .map(|(name, span_kind)| Operation { name, span_kind })
            .collect())
    }

    /// Deletes spans and summaries of traces that started before `keep_from`
    /// (nanoseconds). Takes effect at the next commit.
    pub fn delete_before(&self, keep_from: i64) -> Result<()> {
        *self
            .recent
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = RecentTraces::default();
        let older = |field: Field| {
            RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_i64(field, keep_from)),
            )
        };
        self.spans
            .writer()?
            .delete_query(Box::new(older(self.fields.start_time)))?;
        self.summaries
            .writer()?
            .delete_query(Box::new(older(self.summary_fields.start_time)))?;
        Ok(())
    }

    /// Distinct terms of a field starting with `prefix`, across segments.
    fn terms(&self, field: Field, prefix: &str) -> Result<BTreeSet<String>> {
        let searcher = self.spans.reader.searcher();
        let mut terms = BTreeSet::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .into_stream()?;
            while stream.advance() {
                let Ok(term) = std::str::from_utf8(stream.key()) else {
                    continue;
                };
                if !term.starts_with(prefix) {
                    break;
                }
                terms.insert(term.to_string());
            }
        }
        Ok(terms)
    }

    fn distinct_trace_ids(&self, query: Box<dyn Query>) -> Result<Vec<String>> {
        let ids: BTreeSet<String> = self
            .spans_matching(query, 10_000)?
            .into_iter()
            .map(|span| span.trace_id)
            .collect();
        Ok(ids.into_iter().collect())
    }

    fn spans_matching(&self, query: Box<dyn Query>, limit: usize) -> Result<Vec<Span>> {
        let searcher = self.spans.reader.searcher();
        let hits = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        hits.into_iter()
            .map(|(_, address)| self.load_span(&searcher, address))
            .collect()
    }

    fn load_span(&self, searcher: &Searcher, address: tantivy::DocAddress) -> Result<Span> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let source = doc
            .get_first(self.fields.source)
            .and_then(|value| value.as_str())
            .ok_or_else(|| StoreError::CorruptDocument("span without source".into()))?;
        serde_json::from_str(source).map_err(|error| StoreError::CorruptDocument(error.to_string()))
    }

    fn load_summary(
        &self,
        searcher: &Searcher,
        address: tantivy::DocAddress,
    ) -> Result<TraceSummary> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let source = doc
            .get_first(self.summary_fields.source)
            .and_then(|value| value.as_str())
            .ok_or_else(|| StoreError::CorruptDocument("trace summary without source".into()))?;
        serde_json::from_str(source).map_err(|error| StoreError::CorruptDocument(error.to_string()))
    }

    fn to_document(&self, span: &Span, source: &str) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.trace_id, &span.trace_id);
        doc.add_text(f.service, &span.service);
        // The kind rides in the operation term (`service/name\0kind`): the
        // field only lists operations, and a new field would not open the
        // span indexes already on disk.
        let kind = span.kind.replace(OPERATION_KIND_SEPARATOR, "");
        let name = operation_key(&span.service, &span.name);
        doc.add_text(
            f.operation,
            format!("{name}{OPERATION_KIND_SEPARATOR}{kind}"),
        );
        doc.add_i64(f.start_time, span.start_time);
        for link in &span.links {
            doc.add_text(f.link_trace_id, &link.trace_id);
        }
        doc.add_text(f.source, source);
        doc
    }

    fn summary_document(&self, mut summary: TraceSummary) -> TantivyDocument {
        let f = &self.summary_fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.trace_id, &summary.trace_id);
        doc.add_i64(f.start_time, summary.start_time);
        doc.add_i64(f.duration, summary.duration);
        doc.add_i64(f.error_count, summary.error_count as i64);
        for service in &summary.services {
            doc.add_text(f.service, service);
        }
        for operation in &summary.operations {
            doc.add_text(f.operation, operation);
        }
        for tag in &summary.tags {
            doc.add_text(f.tag, tag);
        }
        for request_id in &summary.request_ids {
            doc.add_text(f.request_id, request_id);
        }
        // Search terms are indexed; the stored copy stays small.
        summary.operations = Vec::new();
        summary.tags = Vec::new();
        doc.add_text(
            f.source,
            serde_json::to_string(&summary).unwrap_or_default(),
        );
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanStatus;
    use crate::reader::SpanReader as _;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn span(
        trace_id: &str,
        span_id: &str,
        parent: Option<&str>,
        service: &str,
        start: i64,
        end: i64,
    ) -> Span {
        Span {
            trace_id: trace_id.into(),
            span_id: span_id.into(),
            parent_span_id: parent.map(str::to_string),
            name: format!("op-{span_id}"),
            service: service.into(),
            kind: "server".into(),
            start_time: start,
            end_time: end,
            ..Span::default()
        }
    }

    fn open(dir: &Path) -> SpanStore {
        SpanStore::open(dir).unwrap()
    }

    #[test]
    fn returns_every_span_of_a_trace_in_start_order_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .add(
                0,
                &[
                    span(TRACE, "00f067aa0ba902b7", None, "gateway", 100, 200),
                    span(
                        "ffffffffffffffffffffffffffffffff",
                        "1111111111111111",
                        None,
                        "other",
                        50,
                        60,
                    ),
                    span(
                        TRACE,
                        "00f067aa0ba902b8",
                        Some("00f067aa0ba902b7"),
                        "order",
                        110,
                        150,
                    ),
                ],
            )
            .unwrap();
        store.commit(1).unwrap();
        let spans = store.trace(TRACE).unwrap();
        let ids: Vec<_> = spans.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(ids, ["00f067aa0ba902b7", "00f067aa0ba902b8"]);
        assert!(
            store
                .trace("00000000000000000000000000000000")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.trace(&TRACE.to_uppercase()).unwrap().len(),
            2,
            "ids are case-insensitive"
        );
        assert_eq!(store.services().unwrap(), ["gateway", "order", "other"]);
        assert_eq!(store.operations("order").unwrap(), ["op-00f067aa0ba902b8"]);
    }

    #[test]
    fn operations_carry_their_span_kinds_and_filter_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let with = |id: &str, name: &str, kind: &str| Span {
            name: name.into(),
            kind: kind.into(),
            ..span(TRACE, id, None, "order", 100, 200)
        };
        store
            .add(
                0,
                &[
                    with("a1", "GET /orders", "server"),
                    with("a2", "GET /orders", "server"),
                    // One name under two kinds is two operations, as in Jaeger.
                    with("a3", "charge", "client"),
                    with("a4", "charge", "server"),
                    with("a5", "publish", "producer"),
                    with("a6", "tick", "unspecified"),
                ],
            )
            .unwrap();
        // Spans indexed before kinds were: their terms are `service/name`.
        for legacy in ["charge", "legacy"] {
            let mut doc = TantivyDocument::default();
            doc.add_text(store.fields.operation, operation_key("order", legacy));
            store.spans.writer().unwrap().add_document(doc).unwrap();
        }
        store.commit(1).unwrap();
        let pairs = |kind: Option<&str>| -> Vec<(String, String)> {
            store
                .operations_with_kinds("order", kind)
                .unwrap()
                .into_iter()
                .map(|operation| (operation.name, operation.span_kind))
                .collect()
        };
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(name, kind)| (name.to_string(), kind.to_string()))
                .collect()
        };
        assert_eq!(
            pairs(None),
            owned(&[
                ("GET /orders", "server"),
                ("charge", "client"),
                ("charge", "server"),
                ("legacy", ""),
                ("publish", "producer"),
                ("tick", "unspecified"),
            ])
        );
        assert_eq!(
            pairs(Some("server")),
            owned(&[("GET /orders", "server"), ("charge", "server")])
        );
        assert_eq!(pairs(Some("consumer")), owned(&[]));
        // The names alone, once each, and trace search by name are unchanged.
        assert_eq!(
            store.operations("order").unwrap(),
            ["GET /orders", "charge", "legacy", "publish", "tick"]
        );
        let by_operation = |operation: &str, service: Option<&str>| {
            store
                .search_traces(&TraceQuery {
                    service: service.map(str::to_string),
                    operation: Some(operation.into()),
                    limit: 10,
                    ..TraceQuery::default()
                })
                .unwrap()
                .len()
        };
        assert_eq!(by_operation("charge", Some("order")), 1);
        assert_eq!(by_operation("charge", None), 1);
    }

    #[test]
    fn late_and_out_of_order_spans_update_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // The child arrives first: the trace has no root yet.
        store
            .add(0, &[span(TRACE, "b", Some("a"), "order", 20, 50)])
            .unwrap();
        store.commit(1).unwrap();
        let summary = store.summary(TRACE).unwrap().unwrap();
        assert!(!summary.has_root);
        assert_eq!((summary.orphan_count, summary.span_count), (1, 1));

        // The root arrives late, then an error span later still.
        store
            .add(1, &[span(TRACE, "a", None, "gateway", 0, 100)])
            .unwrap();
        store.commit(2).unwrap();
        let mut failing = span(TRACE, "c", Some("a"), "payment", 60, 400);
        failing.status = SpanStatus::Error;
        store.add(2, &[failing]).unwrap();
        store.commit(3).unwrap();
        let summary = store.summary(TRACE).unwrap().unwrap();
        assert!(summary.has_root);
        assert_eq!(
            (
                summary.orphan_count,
                summary.span_count,
                summary.error_count
            ),
            (0, 3, 1)
        );
        assert_eq!(
            (summary.root_service.as_str(), summary.duration),
            ("gateway", 400)
        );
        assert_eq!(
            summary.critical_path,
            ["a", "c", "b"],
            "b ran before c, both on the path"
        );
        // One summary per trace, however often it was updated.
        assert_eq!(
            store
                .search_traces(&TraceQuery {
                    limit: 10,
                    ..TraceQuery::default()
                })
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn search_runs_on_whole_trace_properties() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let slow = "11111111111111111111111111111111";
        let fast = "22222222222222222222222222222222";
        let mut failing = span(slow, "s2", Some("s1"), "payment", 100, 900);
        failing.status = SpanStatus::Error;
        failing
            .attributes
            .insert("http.status_code".into(), 502.into());
        store
            .add(
                0,
                &[
                    span(slow, "s1", None, "gateway", 0, 1_000),
                    failing,
                    span(fast, "f1", None, "gateway", 2_000, 2_050),
                ],
            )
            .unwrap();
        store.commit(1).unwrap();
        let ids = |query: TraceQuery| -> Vec<String> {
            let query = TraceQuery { limit: 10, ..query };
            store
                .search_traces(&query)
                .unwrap()
                .into_iter()
                .map(|s| s.trace_id)
                .collect()
        };
        assert_eq!(ids(TraceQuery::default()), [fast, slow], "newest first");
        // Whole-trace duration, not single spans: payment's span alone is 800.
        assert_eq!(
            ids(TraceQuery {
                min_duration: Some(950),
                ..TraceQuery::default()
            }),
            [slow]
        );
        assert_eq!(
            ids(TraceQuery {
                max_duration: Some(100),
                ..TraceQuery::default()
            }),
            [fast]
        );
        assert_eq!(
            ids(TraceQuery {
                errors_only: true,
                ..TraceQuery::default()
            }),
            [slow]
        );
        assert_eq!(
            ids(TraceQuery {
                service: Some("payment".into()),
                ..TraceQuery::default()
            }),
            [slow]
        );
        let by_operation = TraceQuery {
            service: Some("gateway".into()),
            operation: Some("op-f1".into()),
            ..TraceQuery::default()
        };
        assert_eq!(ids(by_operation), [fast]);
        assert_eq!(
            ids(TraceQuery {
                operation: Some("op-s2".into()),
                ..TraceQuery::default()
            }),
            [slow]
        );
        let by_tag = TraceQuery {
            tags: vec![("http.status_code".into(), "502".into())],
            ..TraceQuery::default()
        };
        assert_eq!(ids(by_tag), [slow]);
        assert_eq!(
            ids(TraceQuery {
                start: Some(1_500),
                ..TraceQuery::default()
            }),
            [fast]
        );
    }

    #[test]
    fn a_trace_split_across_a_restart_is_whole_and_summaries_catch_up_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            store
                .add(0, &[span(TRACE, "a", None, "gateway", 0, 100)])
                .unwrap();
            store.commit(1).unwrap();
            // Spans committed, then a crash before the summaries committed:
            // simulate by committing only the span index.
            store
                .add(1, &[span(TRACE, "b", Some("a"), "order", 10, 300)])
                .unwrap();
            store.spans.commit(2).unwrap();
        }
        let store = open(dir.path());
        assert_eq!(
            store.committed_position(),
            1,
            "replay starts where the summaries stopped"
        );
        assert_eq!(store.summary(TRACE).unwrap().unwrap().span_count, 1);
        // The WAL replay hands the entry again: spans skip it, the summary updates.
        store
            .add(1, &[span(TRACE, "b", Some("a"), "order", 10, 300)])
            .unwrap();
        store.commit(2).unwrap();
        assert_eq!(store.trace(TRACE).unwrap().len(), 2, "no span stored twice");
        let summary = store.summary(TRACE).unwrap().unwrap();
        assert_eq!((summary.span_count, summary.duration), (2, 300));
    }

    #[test]
    fn a_very_large_trace_is_returned_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut spans = vec![span(TRACE, "root", None, "gateway", 0, 1_000_000)];
        for i in 0..10_000 {
            spans.push(span(
                TRACE,
                &format!("s{i:05}"),
                Some("root"),
                "worker",
                i,
                i + 50,
            ));
        }
        // Shuffled arrival: in chunks, last chunk first.
        for (position, chunk) in spans.chunks(1_000).rev().enumerate() {
            store.add(position as u64, chunk).unwrap();
        }
        store.commit(100).unwrap();
        assert_eq!(store.trace(TRACE).unwrap().len(), 10_001);
        let summary = store.summary(TRACE).unwrap().unwrap();
        assert_eq!(
            (summary.span_count, summary.orphan_count, summary.has_root),
            (10_001, 0, true)
        );
    }

    #[test]
    fn links_and_request_ids_find_related_traces() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let async_trace = "33333333333333333333333333333333";
        let mut order = span(TRACE, "a", None, "order", 0, 10);
        order.request_id = Some("req-9".into());
        let mut notification = span(async_trace, "n", None, "notification", 20, 30);
        notification.links.push(crate::model::SpanLink {
            trace_id: TRACE.into(),
            span_id: "a".into(),
            ..Default::default()
        });
        store.add(0, &[order, notification]).unwrap();
        store.commit(1).unwrap();
        assert_eq!(store.trace_ids_for_request("req-9").unwrap(), [TRACE]);
        assert_eq!(store.traces_linking_to(TRACE).unwrap(), [async_trace]);
        assert_eq!(
            store.summary(async_trace).unwrap().unwrap().linked_traces,
            [TRACE]
        );
    }

    #[test]
    fn retention_deletes_old_traces() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .add(0, &[span(TRACE, "a", None, "gateway", 100, 200)])
            .unwrap();
        store.commit(1).unwrap();
        store.delete_before(150).unwrap();
        store.commit(2).unwrap();
        assert!(store.trace(TRACE).unwrap().is_empty());
        assert!(store.summary(TRACE).unwrap().is_none());
    }
}
