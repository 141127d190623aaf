//! The log store: one tantivy index partition per UTC day.
//!
//! A partition lives in `<dir>/<YYYY-MM-DD>/` and is self-describing: its
//! schema and settings are in tantivy's `meta.json`, and every commit carries
//! the write-ahead-log position it reached as its payload (`{"wal_position":
//! N}`). Records are routed to the partition of their timestamp's day;
//! retention drops whole partitions. Searches run over the partitions that
//! overlap the time range and merge the results newest first.
//!
//! The message and the parsed attributes are split into words by the
//! [`WORD_TOKENIZER`] (tantivy's `default` tokenizer, which drops words of
//! 40 bytes or more, with a limit of [`MAX_WORD_BYTES`] instead, so digests
//! and long ids can be searched). A partition keeps the schema it was
//! created with: partitions created before kept the `default` tokenizer, and
//! open and search as before (their long words were not indexed); the query
//! parser's words are the same for both below 40 bytes.
//!
//! Every record gets a sequence number from the WAL position of its batch and
//! its place in the batch (`position << 20 | index`): with the timestamp, it
//! orders records totally, which makes cursors (search-after) stable while
//! ingest goes on, and identifies one record for "show context".

use sightline_vocab::clock::now_nanos;
use sightline_vocab::fs::dir_size;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::columnar::Column;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, JsonObjectOptions, NumericOptions, STORED, STRING,
    Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::tokenizer::{
    LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenizerManager,
};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, SegmentReader,
    TantivyDocument, Term,
};

use crate::Writers;
use crate::error::{Result, StoreError};
use crate::files::StoreFiles;
use crate::model::LogRecord;
use crate::query::Prepared;
use crate::streams::Streams;

/// The format of the day partitions this version creates: 5, format 4
/// without a term per record where no query needs one: the timestamp is a
/// fast column only (ranges read it; an exact time becomes a one-value
/// range), a span id is indexed by its first hex digits ([`span_key`]),
/// and the indexed numbers (`severity_number`, `stream_id`) have no field
/// norms. Format 4 is format 3 with the record's values as fast columns
/// for aggregations ([`COLUMNS`]).
/// Format 3 is a schema for logs at volume ([`lean_schema`]): the
/// resource kept once per stream ([`crate::streams`]) instead of in every
/// document, the promoted `request_id` indexed once, attributes without
/// fast columns (numbers in a fast field of their own, the paths present
/// in `keys`), no field norms on whole-value fields; its partitions are
/// read and written, and aggregations skip them. Format 2 (every document holds its resource; the
/// message and attributes split by [`WORD_TOKENIZER`]) and format 1
/// (tantivy's `default` tokenizer) partitions are still read and written:
/// a partition's format is in its own schema. A change of the schema or of
/// what a record's document holds is a new version, with a fixture in
/// `tests/fixtures/` (`tests/formats.rs`).
pub const LOG_PARTITION_FORMAT_VERSION: u32 = 5;

/// Memory each partition's tantivy writer may use for in-flight segments.
const WRITER_MEMORY_BYTES: usize = 96 * 1024 * 1024;

/// Largest number of records one search may return.
pub(crate) const MAX_SEARCH_LIMIT: usize = 10_000;

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Bits of a record's sequence number that hold its index in its batch.
const SEQ_INDEX_BITS: u32 = 20;

/// The manifest that says up to which WAL position every partition is committed.
const MANIFEST: &str = "committed.json";

/// The longest word (in UTF-8 bytes) the message and attributes index;
/// longer words are dropped at indexing, so they cannot be searched.
pub(crate) const MAX_WORD_BYTES: usize = 255;

/// The tokenizer of the message and the attributes in partitions created
/// by this version: words (runs of letters and digits) up to
/// [`MAX_WORD_BYTES`], lowercased. The name is kept in each partition's
/// schema, so a later change of the limit needs a new name.
const WORD_TOKENIZER: &str = "words_255";

/// tantivy's tokenizers plus [`WORD_TOKENIZER`]; every partition and the
/// query parser use these. Public for the benchmark's bare tantivy index of
/// [`log_index_schema`].
pub fn log_index_tokenizers() -> TokenizerManager {
    let manager = TokenizerManager::default();
    manager.register(
        WORD_TOKENIZER,
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_WORD_BYTES + 1))
            .filter(LowerCaser)
            .build(),
    );
    manager
}

/// The sequence number of the `index`-th record of the log entry at
/// `position`: with the timestamp, the record's id and cursor. Whoever holds
/// the entry before it is indexed (a cluster's partition owner) gives its
/// records the ids the store will.
pub fn record_seq(position: u64, index: usize) -> u64 {
    (position << SEQ_INDEX_BITS) | (index as u64 & ((1 << SEQ_INDEX_BITS) - 1))
}

/// The entry position and the place in it of a record's sequence number:
/// the inverse of [`record_seq`].
pub fn record_position(seq: u64) -> (u64, usize) {
    (
        seq >> SEQ_INDEX_BITS,
        (seq & ((1 << SEQ_INDEX_BITS) - 1)) as usize,
    )
}

/// Checks a log query string without a store: what
/// [`LogStore::validate_query`] checks (for a reader of many stores, which
/// must refuse a bad query even where no store is searched).
pub fn validate_log_query(query: &str) -> Result<()> {
    static RECORDS: std::sync::OnceLock<Format> = std::sync::OnceLock::new();
    prepare_query(RECORDS.get_or_init(|| Format::new(log_schema())), query).map(drop)
}

/// `query` parsed and normalized once for every partition (`None`:
/// everything), and built once for format 2 so that an error shows even
/// where no partition would build it.
fn prepare_query(records: &Format, query: &str) -> Result<Option<Prepared>> {
    if query.trim().is_empty() {
        return Ok(None);
    }
    if crate::pipes::has_pipes(query) {
        return Err(StoreError::InvalidQuery(
            "this query has pipes (`| stats`, `| timechart`), whose answer is a table: ask /api/logs/stats; a search takes the words before the first `|`".into(),
        ));
    }
    let prepared = crate::query::prepare(&records.schema, query)?;
    let view = crate::query::IndexView {
        parser: &records.parser,
        schema: &records.schema,
        lean: None,
    };
    crate::query::build_for(&view, &prepared)?;
    Ok(Some(prepared))
}

/// A search over the log store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogQuery {
    /// Query string (`field:value`, AND/OR/NOT, phrases, ranges). Empty matches all.
    pub query: String,
    /// Inclusive lower bound on the record timestamp, nanoseconds.
    pub start: Option<i64>,
    /// Exclusive upper bound on the record timestamp, nanoseconds.
    pub end: Option<i64>,
    /// Number of records to return, newest first.
    pub limit: usize,
    /// Return only records older than this cursor (from a previous page).
    pub after: Option<Cursor>,
}

/// A position in the newest-first order of records: the last record of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub timestamp: i64,
    pub seq: u64,
}

impl Cursor {
    /// The opaque text form used in URLs: `<timestamp>-<seq>`.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.timestamp, self.seq)
    }

    pub fn decode(text: &str) -> Result<Cursor> {
        let invalid = || StoreError::InvalidQuery(format!("invalid cursor {text:?}"));
        let (timestamp, seq) = text.rsplit_once('-').ok_or_else(invalid)?;
        Ok(Cursor {
            timestamp: timestamp.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// One stored record and where it is in the order of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogHit {
    /// Identifies the record (for context lookups) and is its cursor.
    pub id: String,
    #[serde(flatten)]
    pub record: LogRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogSearchResult {
    /// Matching records, newest first, at most `limit`.
    pub hits: Vec<LogHit>,
    /// How many records matched in all (ignoring the cursor).
    pub total_hits: usize,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// A date histogram of matching records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub interval: i64,
    pub buckets: Vec<HistogramBucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Start of the bucket, nanoseconds.
    pub start: i64,
    pub count: u64,
    /// Count per severity text (`ERROR`, `INFO`, ... and `""` for none).
    pub by_severity: BTreeMap<String, u64>,
}

impl Histogram {
    /// Most buckets one histogram may have.
    pub const MAX_BUCKETS: usize = 10_000;

    /// Zero counts in every bucket of `[start, end)`: buckets aligned to
    /// multiples of `interval` (at least 1 ns), empty buckets included.
    pub fn empty(start: i64, end: i64, interval: i64) -> Result<Histogram> {
        let interval = interval.max(1);
        let first_bucket = start.div_euclid(interval);
        let bucket_count =
            usize::try_from((end - 1).div_euclid(interval) - first_bucket + 1).unwrap_or(0);
        if bucket_count > Self::MAX_BUCKETS {
            return Err(StoreError::InvalidQuery(format!(
                "histogram would have {bucket_count} buckets; use a larger interval (at most {} buckets)",
                Self::MAX_BUCKETS
            )));
        }
        Ok(Histogram {
            interval,
            buckets: (0..bucket_count)
                .map(|index| HistogramBucket {
                    start: (first_bucket + index as i64) * interval,
                    count: 0,
                    by_severity: BTreeMap::new(),
                })
                .collect(),
        })
    }

    /// Adds `other`'s counts, bucket by bucket (both of the same layout).
    pub fn add(&mut self, other: &Histogram) {
        for (bucket, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            bucket.count += theirs.count;
            for (severity, count) in &theirs.by_severity {
                *bucket.by_severity.entry(severity.clone()).or_default() += count;
            }
        }
    }
}

#[derive(Clone)]
struct LogFields {
    timestamp: Field,
    seq: Field,
    severity: Field,
    severity_number: Field,
    service: Field,
    body: Field,
    attributes: Field,
    trace_id: Field,
    span_id: Field,
    request_id: Field,
    stream: Field,
    source: Field,
    layout: Layout,
}

/// Where a partition keeps what differs between formats.
#[derive(Clone, Copy)]
enum Layout {
    /// Formats 1 and 2: each document indexes and stores its resource.
    Records { resource: Field },
    /// Formats 3 to 5: see [`lean_schema`].
    Streams {
        stream_id: Field,
        /// Format 3: `numbers`, the numeric and boolean attributes by
        /// path. Formats 4 and 5: `columns` ([`COLUMNS`]).
        numbers: Field,
        keys: Field,
        /// Formats 4 and 5: `numbers` is [`COLUMNS`].
        columns: bool,
        /// Format 5: `span_id` holds [`span_key`]s.
        span_keys: bool,
    },
}

/// The formats a partition may be in, for the store to read and write them.
struct Formats {
    /// Formats 1 and 2, and the query language's view of a record.
    records: Format,
    /// Format 3.
    lean3: Format,
    /// Format 4.
    lean4: Format,
    /// Format 5, which new partitions are created in.
    lean: Format,
}

impl Formats {
    fn new() -> Formats {
        Formats {
            records: Format::new(log_schema()),
            lean3: Format::new(lean_schema(3)),
            lean4: Format::new(lean_schema(4)),
            lean: Format::new(lean_schema(LOG_PARTITION_FORMAT_VERSION)),
        }
    }

    /// The format of an existing partition's index, from its schema.
    fn of(&self, schema: &Schema) -> Option<Kind> {
        [
            (Kind::Records, &self.records),
            (Kind::Lean3, &self.lean3),
            (Kind::Lean4, &self.lean4),
            (Kind::Lean, &self.lean),
        ]
        .into_iter()
        .find(|(_, format)| same_fields(schema, &format.schema))
        .map(|(kind, _)| kind)
    }

    fn get(&self, kind: Kind) -> &Format {
        match kind {
            Kind::Records => &self.records,
            Kind::Lean3 => &self.lean3,
            Kind::Lean4 => &self.lean4,
            Kind::Lean => &self.lean,
        }
    }
}

/// Which of the [`Formats`] a partition is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Records,
    Lean3,
    Lean4,
    Lean,
}

impl Kind {
    /// Whether the partition has [`COLUMNS`], which aggregations read.
    fn has_columns(self) -> bool {
        matches!(self, Kind::Lean4 | Kind::Lean)
    }
}

/// The schema of format 2 log partitions, which is also the query
/// language's view of a record (every field a query may name). Public so
/// a benchmark can index the same documents into a bare tantivy index with
/// it (the baseline the store is measured against); only this crate writes
/// partitions.
pub fn log_index_schema() -> Schema {
    log_schema().0
}

fn log_schema() -> (Schema, LogFields) {
    log_schema_with(WORD_TOKENIZER)
}

/// The JSON field of format 3 that holds the numeric and boolean attributes.
const NUMBERS: &str = "numbers";

/// The JSON field of format 4 that holds a record's values as fast columns,
/// for aggregations (`| stats ... by service, error_type`) and numeric
/// ranges: `service`, `resource.<key>` and `attributes.<path>`, numbers,
/// booleans and strings of at most [`MAX_COLUMN_BYTES`].
pub(crate) const COLUMNS: &str = "columns";

/// The longest string value (in UTF-8 bytes) kept in [`COLUMNS`]: group
/// keys are names, codes and ids; longer values (messages, stack traces)
/// would only grow the column dictionaries.
pub(crate) const MAX_COLUMN_BYTES: usize = 256;

/// The schema of format 3, 4 and 5 partitions (`format`), for logs at
/// volume. Each field is indexed with only what its
/// queries need:
/// - the resource is not in the document: `stream_id` refers to the
///   partition's [`Streams`], and resource queries become stream sets;
/// - `attributes` are words with positions (phrases), without fast
///   columns: their numbers and booleans go to `numbers`, a fast JSON field
///   that ranges read, and the paths a record has to `keys`, which
///   `field:*` reads; a text range reads the words' terms;
/// - the attribute a `request_id` was promoted from is not indexed again;
/// - whole-value fields have no field norms (nothing scores by length);
/// - format 4 replaces `numbers` by [`COLUMNS`], which holds the numbers at
///   `attributes.<path>` and, for aggregations, the service, the resource
///   and the short strings too (dictionary-encoded per segment: a value
///   repeated by a stream costs a few bits per record);
/// - format 5 does not index what fast columns answer: the timestamp,
///   unique per record, was a term of the dictionary per record (an eighth
///   of its size) that no query read, since tantivy answers ranges on a fast
///   field from its column; the indexed numbers have no field norms; and
///   `span_id` holds each id's [`span_key`], not the id, which was the
///   other term per record.
fn lean_schema(format: u32) -> (Schema, LogFields) {
    let columns = format >= 4;
    // Field norms of numbers (a byte per document each) are only read by
    // `severity_number:*`, which the terms answer as well.
    let indexed_number = || {
        if format >= 5 {
            NumericOptions::default().set_indexed()
        } else {
            NumericOptions::from(INDEXED)
        }
    };
    let raw = || {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        )
    };
    let mut builder = Schema::builder();
    let words = || {
        TextFieldIndexing::default()
            .set_tokenizer(WORD_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
    };
    let timestamp = if format >= 5 {
        builder.add_i64_field("timestamp", FAST)
    } else {
        builder.add_i64_field("timestamp", INDEXED | FAST)
    };
    let seq = builder.add_u64_field("seq", FAST);
    let severity = builder.add_text_field("severity", raw() | FAST);
    let severity_number = builder.add_i64_field("severity_number", indexed_number());
    let service = builder.add_text_field("service", raw());
    let body = builder.add_text_field("body", TextOptions::default().set_indexing_options(words()));
    let attributes = builder.add_json_field(
        "attributes",
        JsonObjectOptions::default()
            .set_indexing_options(words())
            .set_expand_dots_enabled(),
    );
    let fields = LogFields {
        timestamp,
        seq,
        severity,
        severity_number,
        service,
        body,
        attributes,
        trace_id: builder.add_text_field("trace_id", raw()),
        span_id: builder.add_text_field("span_id", raw()),
        request_id: builder.add_text_field("request_id", raw()),
        stream: builder.add_text_field("stream", raw()),
        source: builder.add_text_field("source", STORED),
        layout: Layout::Streams {
            stream_id: builder.add_u64_field("stream_id", indexed_number().set_stored()),
            // Strings in a fast JSON field without a tokenizer are kept
            // whole.
            numbers: builder.add_json_field(
                if columns { COLUMNS } else { NUMBERS },
                JsonObjectOptions::from(FAST).set_expand_dots_enabled(),
            ),
            keys: builder.add_text_field("keys", raw()),
            columns,
            span_keys: format >= 5,
        },
    };
    (builder.build(), fields)
}

/// The schema with `words` as the tokenizer of the message and the
/// attributes (`default` in partitions created before [`WORD_TOKENIZER`]).
fn log_schema_with(words: &str) -> (Schema, LogFields) {
    let mut builder = Schema::builder();
    let json_options = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(words)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_expand_dots_enabled()
        // Fast columns for parsed fields make numeric ranges on them work
        // (`http.status:[500 TO 599]`).
        .set_fast("raw");
    // Resource values are identifiers (pod, namespace, container, host):
    // matched whole, as Loki matches labels, with no positions or fast
    // columns, which would cost disk for every record of a stream.
    let resource_options = JsonObjectOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        )
        .set_expand_dots_enabled();
    let fields = LogFields {
        timestamp: builder.add_i64_field("timestamp", INDEXED | FAST),
        seq: builder.add_u64_field("seq", FAST),
        severity: builder.add_text_field("severity", STRING | FAST),
        severity_number: builder.add_i64_field("severity_number", INDEXED),
        service: builder.add_text_field("service", STRING),
        body: builder.add_text_field(
            "body",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(words)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            ),
        ),
        attributes: builder.add_json_field("attributes", json_options),
        layout: Layout::Records {
            resource: builder.add_json_field("resource", resource_options),
        },
        trace_id: builder.add_text_field("trace_id", STRING),
        span_id: builder.add_text_field("span_id", STRING),
        request_id: builder.add_text_field("request_id", STRING),
        stream: builder.add_text_field("stream", STRING),
        source: builder.add_text_field("source", STORED),
    };
    (builder.build(), fields)
}

/// The UTC day a timestamp falls in, as days since the epoch.
fn day_of(timestamp: i64) -> i64 {
    timestamp.div_euclid(NANOS_PER_DAY)
}

fn day_name(day: i64) -> String {
    let date = time::Date::from_julian_day(2_440_588 + day as i32).unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn parse_day_name(name: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(name, format).ok()?;
    Some(i64::from(date.to_julian_day()) - 2_440_588)
}

/// The key of a record's stream: the same container's same output stream.
pub(crate) fn stream_key(record: &LogRecord) -> String {
    let resource = |key: &str| {
        record
            .resource
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("")
    };
    let stream = record
        .attributes
        .get("log.iostream")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let source = match resource("k8s.pod.uid") {
        "" => resource("log.file.path"),
        uid => uid,
    };
    format!(
        "{}|{}|{}|{}|{}",
        record.service,
        resource("host.name"),
        source,
        resource("k8s.container.name"),
        stream
    )
}

#[derive(Serialize, Deserialize)]
struct CommitPayload {
    wal_position: u64,
}

struct Partition {
    day: i64,
    dir: PathBuf,
    /// Format 3 and 4 partitions' streams; `None` in older formats, whose
    /// documents hold their resource.
    streams: Option<Mutex<Streams>>,
    /// The partition's format.
    kind: Kind,
    index: Index,
    writer: Mutex<Option<IndexWriter>>,
    reader: IndexReader,
    /// WAL position this partition's last commit reached.
    committed_position: AtomicU64,
    dirty: AtomicBool,
    writers: Writers,
}

impl Partition {
    /// Opens the partition in `dir` in the format it was created with, or
    /// creates it in the current one (`formats.lean`).
    fn open(dir: &Path, day: i64, formats: &Formats, writers: Writers) -> Result<Partition> {
        std::fs::create_dir_all(dir)?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let settings = IndexSettings {
            docstore_compression: Compressor::Zstd(ZstdCompressor {
                compression_level: Some(3),
            }),
            docstore_blocksize: 64 * 1024,
            ..IndexSettings::default()
        };
        let (index, kind) = if Index::exists(&directory).map_err(tantivy::TantivyError::from)? {
            Partition::open_index(Box::new(directory), dir, formats)?
        } else {
            (
                Index::builder()
                    .schema(formats.lean.schema.clone())
                    .settings(settings)
                    .tokenizers(log_index_tokenizers())
                    .open_or_create(directory)?,
                Kind::Lean,
            )
        };
        let streams = if kind == Kind::Records {
            None
        } else {
            Some(Mutex::new(Streams::open(dir)?))
        };
        Partition::with_index(day, dir, (kind, streams), index, writers)
    }

    /// Opens the existing partition of `files`, read only (`label` names it
    /// in errors).
    fn open_read_only(
        files: &StoreFiles,
        label: &Path,
        day: i64,
        formats: &Formats,
    ) -> Result<Partition> {
        let directory = files.directory();
        let (index, kind) = Partition::open_index(directory.clone(), label, formats)?;
        let streams = if kind != Kind::Records {
            let text = if files.contains(crate::streams::STREAMS_FILE) {
                directory
                    .atomic_read(Path::new(crate::streams::STREAMS_FILE))
                    .map_err(|error| StoreError::Io(std::io::Error::other(error)))?
            } else {
                Vec::new()
            };
            let path = label.join(crate::streams::STREAMS_FILE);
            Some(Mutex::new(Streams::read_only(path, &text)?))
        } else {
            None
        };
        Partition::with_index(day, label, (kind, streams), index, Writers::ReadOnly)
    }

    /// The existing index in `directory`, with its own schema (which may
    /// name an older word tokenizer: its documents were indexed with it),
    /// and its format.
    fn open_index(
        directory: Box<dyn tantivy::Directory>,
        dir: &Path,
        formats: &Formats,
    ) -> Result<(Index, Kind)> {
        let mut index = Index::open(directory)?;
        index.set_tokenizers(log_index_tokenizers());
        let kind = formats.of(&index.schema()).ok_or_else(|| {
            StoreError::Index(tantivy::TantivyError::SchemaError(format!(
                "log partition {} has fields this version does not know",
                dir.display()
            )))
        })?;
        Ok((index, kind))
    }

    fn with_index(
        day: i64,
        dir: &Path,
        (kind, streams): (Kind, Option<Mutex<Streams>>),
        index: Index,
        writers: Writers,
    ) -> Result<Partition> {
        let committed_position = index
            .load_metas()?
            .payload
            .and_then(|payload| serde_json::from_str::<CommitPayload>(&payload).ok())
            .map_or(0, |payload| payload.wal_position);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Partition {
            day,
            dir: dir.to_path_buf(),
            streams,
            kind,
            index,
            writer: Mutex::new(None),
            reader,
            committed_position: AtomicU64::new(committed_position),
            dirty: AtomicBool::new(false),
            writers,
        })
    }

    fn add(&self, documents: Vec<TantivyDocument>) -> Result<()> {
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if writer.is_none() {
            *writer = Some(self.writers.writer(&self.index, WRITER_MEMORY_BYTES)?);
        }
        let writer = writer
            .as_ref()
            .ok_or_else(|| StoreError::Io(std::io::Error::other("no writer")))?;
        for document in documents {
            writer.add_document(document)?;
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn commit(&self, position: u64) -> Result<()> {
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(writer) = guard.as_mut() else {
            return Ok(());
        };
        // The streams the commit's documents refer to are on disk first.
        if let Some(streams) = &self.streams {
            streams
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .persist()?;
        }
        let mut prepared = writer.prepare_commit()?;
        let payload = serde_json::to_string(&CommitPayload {
            wal_position: position,
        })
        .unwrap_or_default();
        prepared.set_payload(&payload);
        if let Err(error) = prepared.commit() {
            // The writer is unusable after a failed commit: drop it, documents
            // added since the last commit come back from the WAL.
            *guard = None;
            return Err(error.into());
        }
        drop(guard);
        self.dirty.store(false, Ordering::Release);
        self.committed_position.store(position, Ordering::Release);
        self.reader.reload()?;
        Ok(())
    }

    /// Drops the writer's uncommitted documents (after a failed commit elsewhere).
    fn rollback(&self) {
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *guard = None;
        self.dirty.store(false, Ordering::Release);
    }

    fn close_writer(&self) {
        if !self.dirty.load(Ordering::Acquire) {
            let mut guard = self
                .writer
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(writer) = guard.take() {
                let _ = writer.wait_merging_threads();
            }
        }
    }
}

/// Whether a partition's schema has the fields of `expected`, with the same
/// names, numbers, value types and indexing (format 5 differs from 4 only
/// in what is indexed), so that documents and queries built with `expected`
/// mean the same in it (tokenizers may differ).
fn same_fields(schema: &Schema, expected: &Schema) -> bool {
    let fields: Vec<_> = schema.fields().collect();
    let expected: Vec<_> = expected.fields().collect();
    fields.len() == expected.len()
        && fields
            .iter()
            .zip(&expected)
            .all(|((field, entry), (want, want_entry))| {
                field == want
                    && entry.name() == want_entry.name()
                    && entry.field_type().value_type() == want_entry.field_type().value_type()
                    && entry.is_indexed() == want_entry.is_indexed()
            })
}

/// One partition format: its schema, fields and query parser.
struct Format {
    schema: Schema,
    fields: LogFields,
    parser: QueryParser,
}

impl Format {
    fn new((schema, fields): (Schema, LogFields)) -> Format {
        let mut parser = QueryParser::new(
            schema.clone(),
            vec![fields.body, fields.attributes],
            log_index_tokenizers(),
        );
        // `payment declined` means both words, as in Quickwit and Kibana's KQL.
        parser.set_conjunction_by_default();
        // Wildcards (`ship*`) become regex queries on single terms.
        parser.allow_regexes();
        Format {
            schema,
            fields,
            parser,
        }
    }
}

/// Log records on disk, one tantivy index per UTC day.
///
/// Writes ([`LogStore::add`]) become visible and durable at
/// [`LogStore::commit`]. All methods block: call them from a blocking thread.
pub struct LogStore {
    dir: PathBuf,
    formats: Formats,
    partitions: RwLock<BTreeMap<i64, Arc<Partition>>>,
    /// WAL position up to which every partition is committed (the manifest).
    committed_position: AtomicU64,
    writers: Writers,
}

impl LogStore {
    /// Opens every partition under `dir`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<LogStore> {
        LogStore::open_with(dir, Writers::Ingest)
    }

    /// [`LogStore::open`] with index writers of the given size.
    pub fn open_with(dir: &Path, writers: Writers) -> Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let formats = Formats::new();
        let mut partitions = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(day) = entry.file_name().to_str().and_then(parse_day_name) else {
                continue;
            };
            if entry.file_type()?.is_dir() {
                let partition = Partition::open(&entry.path(), day, &formats, writers)?;
                partitions.insert(day, Arc::new(partition));
            }
        }
        let committed_position = std::fs::read_to_string(dir.join(MANIFEST))
            .ok()
            .and_then(|text| serde_json::from_str::<CommitPayload>(&text).ok())
            .map_or(0, |payload| payload.wal_position);
        Ok(LogStore {
            dir: dir.to_path_buf(),
            formats,
            partitions: RwLock::new(partitions),
            committed_position: AtomicU64::new(committed_position),
            writers,
        })
    }

    /// Opens the log store whose files are `files` (a split in object
    /// storage), read only; `label` names it in errors.
    pub fn open_read_only(files: &StoreFiles, label: &Path) -> Result<LogStore> {
        let formats = Formats::new();
        let mut partitions = BTreeMap::new();
        for name in files.subdirectories() {
            let Some(day) = parse_day_name(&name) else {
                continue;
            };
            let partition =
                Partition::open_read_only(&files.sub(&name), &label.join(&name), day, &formats)?;
            partitions.insert(day, Arc::new(partition));
        }
        Ok(LogStore {
            dir: label.to_path_buf(),
            formats,
            partitions: RwLock::new(partitions),
            committed_position: AtomicU64::new(0),
            writers: Writers::ReadOnly,
        })
    }

    /// Reads every partition's index metadata, as every query does first
    /// (see [`crate::files::warm_up`]).
    pub fn warm_up(&self) -> Result<()> {
        for partition in self.read_partitions().values() {
            crate::files::warm_up(&partition.reader.searcher())?;
        }
        Ok(())
    }

    /// WAL position below which every record is committed: replay from here.
    pub fn committed_position(&self) -> u64 {
        self.committed_position.load(Ordering::Acquire)
    }

    /// Adds the records of the WAL entry at `position`. Records whose
    /// partition already committed past `position` are skipped, so a replay
    /// never indexes a record twice.
    pub fn add(&self, position: u64, records: &[LogRecord]) -> Result<()> {
        let encoded = crate::batch::item_sources(records);
        self.add_encoded(position, records.iter().cloned().zip(encoded.sources()))
    }

    /// [`LogStore::add`] for a caller that owns the records and already has
    /// each one's JSON, exactly `serde_json::to_string(&record)` (the WAL
    /// writer has it): the records are moved into their documents and the
    /// JSON is kept as the stored source, so nothing is copied or serialized
    /// a second time on the ingest path.
    pub fn add_encoded<'a>(
        &self,
        position: u64,
        records: impl IntoIterator<Item = (LogRecord, &'a str)>,
    ) -> Result<()> {
        let mut by_day: BTreeMap<i64, Vec<(LogRecord, &str, u64)>> = BTreeMap::new();
        for (index, (record, source)) in records.into_iter().enumerate() {
            let seq = record_seq(position, index);
            by_day
                .entry(day_of(record.timestamp))
                .or_default()
                .push((record, source, seq));
        }
        for (day, records) in by_day {
            let partition = self.partition_for_write(day)?;
            if position < partition.committed_position.load(Ordering::Acquire) {
                continue;
            }
            let documents = match &partition.streams {
                Some(streams) => {
                    let mut streams = streams.lock().unwrap_or_else(|poison| poison.into_inner());
                    let mut last = LastStream::default();
                    records
                        .into_iter()
                        .map(|(record, source, seq)| {
                            let stream = last.of(&mut streams, &record.resource);
                            let fields = &self.formats.get(partition.kind).fields;
                            lean_document(fields, record, source, seq, stream)
                        })
                        .collect()
                }
                None => records
                    .into_iter()
                    .map(|(record, source, seq)| {
                        records_document(&self.formats.records.fields, record, source, seq)
                    })
                    .collect(),
            };
            partition.add(documents)?;
        }
        Ok(())
    }

    /// Commits every partition written since the last commit, recording that
    /// everything below `position` is in; then makes it visible to searches.
    pub fn commit(&self, position: u64) -> Result<()> {
        let partitions: Vec<_> = self.read_partitions().values().cloned().collect();
        let mut first_error = None;
        for partition in &partitions {
            if let Err(error) = partition.commit(position) {
                // The caller reports the failure (the collector once, not
                // at every retry); the partition is detail.
                tracing::debug!(partition = %day_name(partition.day), %error, "failed to commit log partition");
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            for partition in &partitions {
                partition.rollback();
            }
            return Err(error);
        }
        let manifest = serde_json::to_vec(&CommitPayload {
            wal_position: position,
        })
        .unwrap_or_default();
        write_atomically(&self.dir.join(MANIFEST), &manifest)?;
        self.committed_position.store(position, Ordering::Release);
        // Writers of partitions older than yesterday are rarely written again: free their memory.
        let today = day_of(now_nanos());
        for partition in partitions.iter().filter(|p| p.day < today - 1) {
            partition.close_writer();
        }
        Ok(())
    }

    /// Drops every document added since the last commit (after a failed
    /// add or commit); the caller adds them again from the WAL.
    pub fn rollback(&self) {
        for partition in self.read_partitions().values() {
            partition.rollback();
        }
    }

    /// Deletes every partition whose whole day is older than `keep_from`
    /// (nanoseconds). Returns the names of the partitions dropped.
    pub fn drop_partitions_before(&self, keep_from: i64) -> Result<Vec<String>> {
        let cutoff_day = day_of(keep_from);
        let dropped: Vec<Arc<Partition>> = {
            let mut partitions = self
                .partitions
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            let old_days: Vec<i64> = partitions
                .range(..cutoff_day)
                .map(|(day, _)| *day)
                .collect();
            old_days
                .iter()
                .filter_map(|day| partitions.remove(day))
                .collect()
        };
        let mut names = Vec::new();
        for partition in dropped {
            partition.rollback();
            std::fs::remove_dir_all(&partition.dir)?;
            names.push(day_name(partition.day));
        }
        Ok(names)
    }

    /// Bytes on disk of all partitions.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.dir)
    }

    /// Names (`YYYY-MM-DD`) of the partitions, oldest first.
    pub fn partition_names(&self) -> Vec<String> {
        self.read_partitions()
            .keys()
            .map(|day| day_name(*day))
            .collect()
    }

    /// Number of committed records in all partitions.
    pub fn num_records(&self) -> u64 {
        self.read_partitions()
            .values()
            .map(|p| p.reader.searcher().num_docs())
            .sum()
    }

    /// Checks a query string without running it.
    pub fn validate_query(&self, query: &str) -> Result<()> {
        self.prepare_query(query).map(drop)
    }

    /// `query` parsed and normalized once for every partition (`None`:
    /// everything), and built once for format 2 so that an error shows
    /// even where no partition would build it.
    fn prepare_query(&self, query: &str) -> Result<Option<Prepared>> {
        prepare_query(&self.formats.records, query)
    }

    /// Runs a search; records come back newest first.
    pub fn search(&self, query: &LogQuery) -> Result<LogSearchResult> {
        let limit = query.limit.clamp(1, MAX_SEARCH_LIMIT);
        let prepared = self.prepare_query(&query.query)?;
        let upper = match query.after {
            Some(cursor) => Some(
                query
                    .end
                    .map_or(cursor.timestamp + 1, |end| end.min(cursor.timestamp + 1)),
            ),
            None => query.end,
        };
        let mut total_hits = 0;
        let mut candidates: Vec<(Cursor, Arc<Partition>, DocAddress)> = Vec::new();
        // Every partition of the range is counted, also those newer than a
        // cursor: each page of one search reports the same total.
        for partition in self
            .partitions_overlapping(query.start, query.end)
            .into_iter()
            .rev()
        {
            let text_query = self.partition_query(&partition, prepared.as_ref())?;
            let timestamp = self.format_of(&partition).fields.timestamp;
            let filtered = with_time_range(timestamp, text_query.box_clone(), query.start, upper);
            let counted = with_time_range(timestamp, text_query, query.start, query.end);
            let searcher = partition.reader.searcher();
            total_hits += searcher.search(&counted, &Count)?;
            // A partition that starts after the cursor holds no candidate.
            if upper.is_some_and(|upper| partition.day * NANOS_PER_DAY >= upper) {
                continue;
            }
            // Partitions are newest first: once `limit` candidates are newer
            // than everything this partition can hold, the rest cannot matter.
            let partition_end = (partition.day + 1) * NANOS_PER_DAY;
            if candidates.len() >= limit && candidates[limit - 1].0.timestamp >= partition_end {
                continue;
            }
            let after = query.after;
            let top = TopDocs::with_limit(limit).order_by(move |segment: &SegmentReader| {
                let sort_key = SortKey::for_segment(segment);
                move |doc: DocId| {
                    sort_key
                        .key(doc)
                        .filter(|key| after.is_none_or(|after| *key < after))
                        .unwrap_or(EXCLUDED)
                }
            });
            for (key, address) in searcher.search(&filtered, &top)? {
                if key != EXCLUDED {
                    candidates.push((key, partition.clone(), address));
                }
            }
            candidates.sort_by_key(|candidate| std::cmp::Reverse(candidate.0));
            candidates.truncate(limit);
        }
        let next = (candidates.len() == limit).then(|| candidates[limit - 1].0);
        let hits = candidates
            .into_iter()
            .map(|(cursor, partition, address)| {
                let record = self.load_record(&partition, address)?;
                Ok(LogHit {
                    id: cursor.encode(),
                    record,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LogSearchResult {
            hits,
            total_hits,
            next,
        })
    }

    /// Counts matching records per `interval` nanoseconds, split by severity.
    /// Buckets are aligned to multiples of `interval`; empty buckets are included.
    pub fn histogram(&self, query: &str, start: i64, end: i64, interval: i64) -> Result<Histogram> {
        let prepared = self.prepare_query(query)?;
        let mut histogram = Histogram::empty(start, end, interval)?;
        let interval = histogram.interval;
        let first_bucket = start.div_euclid(interval);
        let bucket_count = histogram.buckets.len();
        for partition in self.partitions_overlapping(Some(start), Some(end)) {
            let text_query = self.partition_query(&partition, prepared.as_ref())?;
            let timestamp = self.format_of(&partition).fields.timestamp;
            let ranged = with_time_range(timestamp, text_query, Some(start), Some(end));
            let searcher = partition.reader.searcher();
            let collector = crate::histogram::HistogramCollector {
                interval,
                first_bucket,
                bucket_count,
            };
            let partition_counts = searcher.search(&ranged, &collector)?;
            for (bucket, severities) in histogram.buckets.iter_mut().zip(partition_counts) {
                for (severity, count) in severities {
                    bucket.count += count;
                    *bucket.by_severity.entry(severity).or_default() += count;
                }
            }
        }
        Ok(histogram)
    }

    /// Answers a query's pipes ([`crate::pipes`]) over the records its
    /// search matches in `[start, end)`, with tantivy's aggregations on
    /// the `columns` of format 4 partitions; older partitions are counted
    /// as skipped. Merge with other stores' answers, then
    /// [`crate::pipes::Aggregated::finish`].
    pub fn aggregate(
        &self,
        pipeline: &crate::pipes::Pipeline,
        start: i64,
        end: i64,
    ) -> Result<crate::pipes::Aggregated> {
        let prepared = self.prepare_query(&pipeline.search)?;
        let request = pipeline.aggregations(start, end)?;
        let mut answer = crate::pipes::Aggregated::default();
        for partition in self.partitions_overlapping(Some(start), Some(end)) {
            let text_query = self.partition_query(&partition, prepared.as_ref())?;
            let timestamp = self.format_of(&partition).fields.timestamp;
            let ranged = with_time_range(timestamp, text_query, Some(start), Some(end));
            let searcher = partition.reader.searcher();
            if !partition.kind.has_columns() {
                let skipped = searcher.search(&ranged, &Count)? as u64;
                answer.merge(crate::pipes::Aggregated::skipped(
                    skipped,
                    day_name(partition.day),
                ))?;
                continue;
            }
            let collector = tantivy::aggregation::DistributedAggregationCollector::from_aggs(
                request.clone(),
                crate::pipes::context(),
            );
            let (matched, results) = searcher.search(&ranged, &(Count, collector))?;
            answer.merge(crate::pipes::Aggregated::new(results, matched as u64))?;
        }
        Ok(answer)
    }

    /// The `before` records preceding and `after` records following the
    /// record `id` in the same stream (same container, same stdout/stderr),
    /// oldest first, the record itself included.
    pub fn context(&self, id: &str, before: usize, after: usize) -> Result<Vec<LogHit>> {
        let anchor = self
            .record(id)?
            .ok_or_else(|| StoreError::NotFound(format!("log record {id}")))?;
        let (older, newer) = self.neighbours(&anchor, before, after)?;
        Ok(crate::reader::assemble_context(
            anchor,
            vec![older],
            vec![newer],
            before,
            after,
        ))
    }

    /// Every record with its sequence number ([`record_seq`]), in no
    /// order: what a merge of stores re-indexes, ids kept. Holds them all
    /// in memory (a cluster split's records).
    pub fn records(&self) -> Result<Vec<(u64, LogRecord)>> {
        let mut records = Vec::new();
        for partition in self.read_partitions().values() {
            let searcher = partition.reader.searcher();
            for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
                let keys = SortKey::for_segment(segment);
                for doc in segment.doc_ids_alive() {
                    let Some(key) = keys.key(doc) else { continue };
                    let address = DocAddress::new(ordinal as u32, doc);
                    records.push((key.seq, self.load_record(partition, address)?));
                }
            }
        }
        Ok(records)
    }

    /// The record `id` (its cursor), if this store holds it.
    pub fn record(&self, id: &str) -> Result<Option<LogHit>> {
        let cursor = Cursor::decode(id)?;
        let anchor_query = LogQuery {
            query: String::new(),
            start: Some(cursor.timestamp),
            end: Some(cursor.timestamp + 1),
            limit: MAX_SEARCH_LIMIT,
            after: None,
        };
        Ok(self
            .search(&anchor_query)?
            .hits
            .into_iter()
            .find(|hit| hit.id == id))
    }

    /// Up to `before` records of `anchor`'s stream older than it (newest
    /// first) and up to `after` newer (oldest first). The anchor need not
    /// be in this store: a cluster's splits each answer for their part.
    pub fn neighbours(
        &self,
        anchor: &LogHit,
        before: usize,
        after: usize,
    ) -> Result<(Vec<LogHit>, Vec<LogHit>)> {
        let cursor = Cursor::decode(&anchor.id)?;
        let stream = stream_key(&anchor.record);
        let stream_query = |partition: &Partition| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(self.format_of(partition).fields.stream, &stream),
                IndexRecordOption::Basic,
            ))
        };
        // Older: newest-first search after the anchor.
        let older = self.search_with(&stream_query, None, None, before, Some(cursor), false)?;
        // Newer: oldest-first search from the anchor on.
        let newer = self.search_with(
            &stream_query,
            Some(cursor.timestamp),
            None,
            after,
            Some(cursor),
            true,
        )?;
        Ok((older, newer))
    }

    /// Newest-first (or, with `ascending`, oldest-first) records of a parsed
    /// query strictly beyond `cursor` in that order.
    fn search_with(
        &self,
        query: &dyn Fn(&Partition) -> Box<dyn Query>,
        start: Option<i64>,
        end: Option<i64>,
        limit: usize,
        cursor: Option<Cursor>,
        ascending: bool,
    ) -> Result<Vec<LogHit>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(MAX_SEARCH_LIMIT);
        let (start, end) = match (cursor, ascending) {
            (Some(c), true) => (Some(start.map_or(c.timestamp, |s| s.max(c.timestamp))), end),
            (Some(c), false) => (
                start,
                Some(end.map_or(c.timestamp + 1, |e| e.min(c.timestamp + 1))),
            ),
            (None, _) => (start, end),
        };
        let mut candidates: Vec<(Cursor, Arc<Partition>, DocAddress)> = Vec::new();
        for partition in self.partitions_overlapping(start, end) {
            let timestamp = self.format_of(&partition).fields.timestamp;
            let ranged = with_time_range(timestamp, query(&partition), start, end);
            let searcher = partition.reader.searcher();
            let top = TopDocs::with_limit(limit).order_by(move |segment: &SegmentReader| {
                let sort_key = SortKey::for_segment(segment);
                move |doc: DocId| {
                    let Some(key) = sort_key.key(doc) else {
                        return (i64::MIN, 0);
                    };
                    let beyond = cursor.is_none_or(|c| if ascending { key > c } else { key < c });
                    match (beyond, ascending) {
                        (false, _) => (i64::MIN, 0),
                        // Ascending order ranks by the mirrored key.
                        (true, true) => (i64::MAX - key.timestamp, u64::MAX - key.seq),
                        (true, false) => (key.timestamp, key.seq),
                    }
                }
            });
            for (key, address) in searcher.search(&ranged, &top)? {
                if key != (i64::MIN, 0) {
                    let (timestamp, seq) = key;
                    let cursor = if ascending {
                        Cursor {
                            timestamp: i64::MAX - timestamp,
                            seq: u64::MAX - seq,
                        }
                    } else {
                        Cursor { timestamp, seq }
                    };
                    candidates.push((cursor, partition.clone(), address));
                }
            }
        }
        if ascending {
            candidates.sort_by_key(|candidate| candidate.0);
        } else {
            candidates.sort_by_key(|candidate| std::cmp::Reverse(candidate.0));
        }
        candidates.truncate(limit);
        candidates
            .into_iter()
            .map(|(cursor, partition, address)| {
                Ok(LogHit {
                    id: cursor.encode(),
                    record: self.load_record(&partition, address)?,
                })
            })
            .collect()
    }

    fn read_partitions(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<i64, Arc<Partition>>> {
        self.partitions
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn partition_for_write(&self, day: i64) -> Result<Arc<Partition>> {
        if let Some(partition) = self.read_partitions().get(&day) {
            return Ok(partition.clone());
        }
        let mut partitions = self
            .partitions
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(partition) = partitions.get(&day) {
            return Ok(partition.clone());
        }
        if self.writers == Writers::ReadOnly {
            return Err(StoreError::Index(tantivy::TantivyError::InvalidArgument(
                "the log store is read only".into(),
            )));
        }
        let partition = Arc::new(Partition::open(
            &self.dir.join(day_name(day)),
            day,
            &self.formats,
            self.writers,
        )?);
        partitions.insert(day, partition.clone());
        Ok(partition)
    }

    /// Partitions that may hold records in `[start, end)`, oldest first.
    fn partitions_overlapping(&self, start: Option<i64>, end: Option<i64>) -> Vec<Arc<Partition>> {
        let first = start.map_or(i64::MIN, day_of);
        let last = end.map_or(i64::MAX, |end| day_of(end.saturating_sub(1)));
        if first > last {
            return Vec::new();
        }
        self.read_partitions()
            .range(first..=last)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn format_of(&self, partition: &Partition) -> &Format {
        self.formats.get(partition.kind)
    }

    /// `query` built for `partition`'s format (and, in format 3, its streams).
    fn partition_query(
        &self,
        partition: &Partition,
        query: Option<&Prepared>,
    ) -> Result<Box<dyn Query>> {
        let Some(query) = query else {
            return Ok(Box::new(AllQuery));
        };
        let format = self.format_of(partition);
        let Some(streams) = &partition.streams else {
            let view = crate::query::IndexView {
                parser: &format.parser,
                schema: &format.schema,
                lean: None,
            };
            return crate::query::build_for(&view, query);
        };
        let Layout::Streams {
            stream_id,
            keys,
            columns,
            span_keys,
            ..
        } = format.fields.layout
        else {
            return Err(StoreError::CorruptDocument(
                "a partition with streams has no stream field".into(),
            ));
        };
        let streams = streams.lock().unwrap_or_else(|poison| poison.into_inner());
        let view = crate::query::IndexView {
            parser: &format.parser,
            schema: &format.schema,
            lean: Some(crate::query::LeanView {
                stream_id,
                keys,
                numbers: if columns {
                    "columns.attributes"
                } else {
                    NUMBERS
                },
                streams: &streams,
                span_keys,
            }),
        };
        crate::query::build_for(&view, query)
    }

    /// The record at `address` of `partition`, with its resource.
    fn load_record(&self, partition: &Partition, address: DocAddress) -> Result<LogRecord> {
        let fields = &self.format_of(partition).fields;
        let doc: TantivyDocument = partition.reader.searcher().doc(address)?;
        let source = doc
            .get_first(fields.source)
            .and_then(|value| value.as_str())
            .ok_or_else(|| StoreError::CorruptDocument("log record without source".into()))?;
        let mut record: LogRecord = serde_json::from_str(source)
            .map_err(|error| StoreError::CorruptDocument(error.to_string()))?;
        if let (Some(streams), Layout::Streams { stream_id, .. }) =
            (&partition.streams, fields.layout)
            && record.resource.is_empty()
        {
            let id = doc
                .get_first(stream_id)
                .and_then(|value| value.as_u64())
                .ok_or_else(|| StoreError::CorruptDocument("log record without stream".into()))?;
            let streams = streams.lock().unwrap_or_else(|poison| poison.into_inner());
            let resource = streams.resource(id).ok_or_else(|| {
                StoreError::CorruptDocument(format!(
                    "log record of stream {id}, which {} does not have",
                    crate::streams::STREAMS_FILE
                ))
            })?;
            record.resource = resource;
        }
        Ok(record)
    }
}

/// `query` limited to records whose `timestamp` is in `[start, end)`.
fn with_time_range(
    timestamp: Field,
    query: Box<dyn Query>,
    start: Option<i64>,
    end: Option<i64>,
) -> Box<dyn Query> {
    if start.is_none() && end.is_none() {
        return query;
    }
    let to_term = |nanos: i64| Term::from_field_i64(timestamp, nanos);
    let lower = start.map_or(Bound::Unbounded, |s| Bound::Included(to_term(s)));
    let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(to_term(e)));
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, query),
        (Occur::Must, Box::new(RangeQuery::new(lower, upper))),
    ]))
}

/// A document with the fields every format indexes alike: the time and
/// sequence, severity, service and message.
fn common_document(f: &LogFields, record: &LogRecord, seq: u64) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_i64(f.timestamp, record.timestamp);
    doc.add_u64(f.seq, seq);
    doc.add_text(f.severity, &record.severity_text);
    doc.add_i64(f.severity_number, i64::from(record.severity_number));
    doc.add_text(f.service, &record.service);
    doc.add_text(f.body, &record.body);
    doc
}

/// The format 1 and 2 document of `record`, whose JSON is `source`.
fn records_document(f: &LogFields, record: LogRecord, source: &str, seq: u64) -> TantivyDocument {
    let stream = stream_key(&record);
    let Layout::Records {
        resource: resource_field,
    } = f.layout
    else {
        return TantivyDocument::default();
    };
    let mut doc = common_document(f, &record, seq);
    let LogRecord {
        resource,
        attributes,
        trace_id,
        span_id,
        request_id,
        ..
    } = record;
    // Borrowed as JSON values: no copy into an intermediate map.
    doc.add_field_value(f.attributes, &serde_json::Value::Object(attributes));
    doc.add_field_value(
        resource_field,
        &serde_json::Value::Object(Arc::unwrap_or_clone(resource)),
    );
    for (field, id) in [
        (f.trace_id, trace_id),
        (f.span_id, span_id),
        (f.request_id, request_id),
    ] {
        if let Some(id) = id {
            doc.add_text(field, id);
        }
    }
    doc.add_text(f.stream, stream);
    doc.add_text(f.source, source);
    doc
}

/// The stream of the previous record of a batch, which the next one
/// usually shares: its resource is compared, not serialized again.
#[derive(Default)]
struct LastStream {
    resource: crate::SharedResource,
    json: String,
    /// Format 4's columns of the resource (`resource.{key}`), an object
    /// built once per stream rather than once per record.
    columns: serde_json::Value,
    id: u64,
    known: bool,
}

/// What a document takes from its record's stream.
struct StreamOf<'a> {
    id: u64,
    /// The resource's JSON, as the stream table holds it.
    json: &'a str,
    columns: &'a serde_json::Value,
}

impl LastStream {
    /// The stream of `resource`: its number, JSON and columns.
    fn of(&mut self, streams: &mut Streams, resource: &crate::SharedResource) -> StreamOf<'_> {
        // Records of one OTLP resource share its map: the pointer settles it.
        if !self.known || !(Arc::ptr_eq(&self.resource, resource) || self.resource == *resource) {
            // Serializing a map of JSON values cannot fail.
            self.json = serde_json::to_string(resource).unwrap_or_default();
            self.id = streams.id(resource, &self.json);
            self.columns = serde_json::Value::Object(
                resource
                    .iter()
                    .filter_map(|(key, value)| {
                        Some((format!("resource.{key}"), column_value(value)?))
                    })
                    .collect(),
            );
            self.resource = Arc::clone(resource);
            self.known = true;
        }
        StreamOf {
            id: self.id,
            json: &self.json,
            columns: &self.columns,
        }
    }
}

/// `source` (a record's JSON) without its resource, which is `resource`
/// serialized: `serde_json` writes `,"resource":{..}` once, after the
/// service, and a string value cannot hold that text unescaped. A source
/// where it is not found is kept whole (reads prefer a source's own
/// resource).
fn without_resource<'a>(source: &'a str, resource: &str) -> Cow<'a, str> {
    const KEY: &str = ",\"resource\":";
    if let Some(at) = source.find(KEY) {
        let value = at + KEY.len();
        if source[value..].starts_with(resource) {
            let rest = &source[value + resource.len()..];
            let mut kept = String::with_capacity(at + rest.len());
            kept.push_str(&source[..at]);
            kept.push_str(rest);
            return Cow::Owned(kept);
        }
    }
    Cow::Borrowed(source)
}

/// The format 3 document of `record`, whose JSON is `source`, in stream
/// `stream` (its number and its resource's JSON).
fn lean_document(
    f: &LogFields,
    record: LogRecord,
    source: &str,
    seq: u64,
    stream_of: StreamOf<'_>,
) -> TantivyDocument {
    let stream = stream_key(&record);
    let Layout::Streams {
        stream_id: stream_id_field,
        numbers: numbers_field,
        keys: keys_field,
        columns,
        span_keys,
    } = f.layout
    else {
        return TantivyDocument::default();
    };
    let mut doc = common_document(f, &record, seq);
    let LogRecord {
        mut attributes,
        trace_id,
        span_id,
        request_id,
        service,
        ..
    } = record;
    let mut paths = Vec::new();
    let mut numbers = serde_json::Map::new();
    let mut path = String::from("attributes");
    let values = if columns {
        numbers.insert("service".into(), serde_json::Value::String(service));
        // The resource's columns go in as a second object of the same
        // field, borrowed from the stream: its paths (`resource.…`) are
        // apart from the attributes' (`attributes.…`), so the columns
        // are those of one merged object.
        if stream_of.columns.as_object().is_some_and(|c| !c.is_empty()) {
            doc.add_field_value(numbers_field, stream_of.columns);
        }
        Values::Columns
    } else {
        Values::Numbers
    };
    attribute_paths(&attributes, &mut path, &mut paths, &mut numbers, values);
    if !paths.is_empty() {
        paths.push("attributes".to_string());
    }
    // The promoted request id is indexed once, as `request_id`.
    if let Some(id) = &request_id
        && attributes.get("request_id").and_then(|v| v.as_str()) == Some(id)
    {
        attributes.remove("request_id");
    }
    doc.add_field_value(f.attributes, &serde_json::Value::Object(attributes));
    if !numbers.is_empty() {
        doc.add_field_value(numbers_field, &serde_json::Value::Object(numbers));
    }
    for (field, name, id) in [
        (f.trace_id, "trace_id", trace_id),
        (f.span_id, "span_id", span_id),
        (f.request_id, "request_id", request_id),
    ] {
        if let Some(id) = id {
            if span_keys && name == "span_id" {
                doc.add_text(field, span_key(&id));
            } else {
                doc.add_text(field, id);
            }
            paths.push(name.to_string());
        }
    }
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        doc.add_text(keys_field, path);
    }
    doc.add_u64(stream_id_field, stream_of.id);
    doc.add_text(f.stream, stream);
    doc.add_text(f.source, without_resource(source, stream_of.json));
    doc
}

/// The term a format 5 partition indexes a span id as: the first
/// [`SPAN_KEY_CHARS`] characters of a lowercase hex id of at least 8 (every
/// OTLP span id), the whole id otherwise. Span ids are unique per record:
/// as whole terms they were the largest part of the term dictionary (19
/// bytes per record) and the costliest to build. A key is shared by one in
/// 65,536 hex span ids, and a query on span ids reads its candidates'
/// stored records and keeps those whose span id matches
/// ([`crate::query`]); the usual one, the UI's logs of a span, also names
/// the trace, so only that trace's records are read.
pub(crate) fn span_key(id: &str) -> &str {
    if is_span_key_hex(id) && id.len() >= 8 {
        &id[..SPAN_KEY_CHARS]
    } else {
        id
    }
}

/// Hex digits a [`span_key`] keeps of a hex span id.
pub(crate) const SPAN_KEY_CHARS: usize = 4;

/// Whether `text` is lowercase hex digits only.
pub(crate) fn is_span_key_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// What [`attribute_paths`] collects of the values, and under which key.
#[derive(Clone, Copy, PartialEq)]
enum Values {
    /// Format 3's `numbers`: numbers and booleans, by their path below
    /// `attributes`.
    Numbers,
    /// Format 4's [`COLUMNS`]: also the short strings, by their whole path.
    Columns,
}

impl Values {
    fn key(self, path: &str) -> String {
        match self {
            Values::Numbers => path["attributes.".len()..].to_string(),
            Values::Columns => path.to_string(),
        }
    }

    fn keeps(self, value: &serde_json::Value) -> bool {
        match self {
            Values::Numbers => matches!(
                value,
                serde_json::Value::Number(_) | serde_json::Value::Bool(_)
            ),
            Values::Columns => column_value(value).is_some(),
        }
    }
}

/// `value` as [`COLUMNS`] keeps it: numbers, booleans, strings of at most
/// [`MAX_COLUMN_BYTES`].
fn column_value(value: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::Number(_) | Value::Bool(_) => Some(value.clone()),
        Value::String(text) if text.len() <= MAX_COLUMN_BYTES => Some(value.clone()),
        _ => None,
    }
}

/// Collects the paths under `path` that have a value (`attributes.http`
/// and `attributes.http.status` for `{"http.status": 200}`: dots in keys
/// and nesting are the same path, as tantivy indexes them), and the
/// values `values` keeps by their dotted path.
fn attribute_paths(
    object: &serde_json::Map<String, serde_json::Value>,
    path: &mut String,
    paths: &mut Vec<String>,
    numbers: &mut serde_json::Map<String, serde_json::Value>,
    values: Values,
) {
    use serde_json::Value;
    for (key, value) in object {
        let length = path.len();
        path.push('.');
        path.push_str(key);
        let present = match value {
            Value::Null => false,
            Value::Object(inner) => {
                attribute_paths(inner, path, paths, numbers, values);
                false
            }
            Value::Number(_) | Value::Bool(_) | Value::String(_) => {
                if values.keeps(value) {
                    numbers.insert(values.key(path), value.clone());
                }
                true
            }
            Value::Array(items) => {
                let scalars: Vec<Value> = items
                    .iter()
                    .filter(|item| values.keeps(item))
                    .cloned()
                    .collect();
                for item in items {
                    if let Value::Object(inner) = item {
                        attribute_paths(inner, path, paths, numbers, values);
                    }
                }
                let present = items
                    .iter()
                    .any(|item| !matches!(item, Value::Null | Value::Object(_)));
                if !scalars.is_empty() {
                    numbers.insert(values.key(path), Value::Array(scalars));
                }
                present
            }
        };
        if present {
            // The path and every shorter one (`attributes.http`).
            for (at, _) in path.match_indices('.').skip(1) {
                paths.push(path[..at].to_string());
            }
            paths.push(path.clone());
        }
        path.truncate(length);
    }
}

/// The sort key of documents a search must not return: it ranks below every
/// real record, so such documents never push a real one out of the top.
const EXCLUDED: Cursor = Cursor {
    timestamp: i64::MIN,
    seq: 0,
};

/// Reads `(timestamp, seq)` of a document from the fast fields.
struct SortKey {
    timestamp: Column<i64>,
    seq: Column<u64>,
}

impl SortKey {
    fn for_segment(segment: &SegmentReader) -> SortKey {
        let fast = segment.fast_fields();
        SortKey {
            timestamp: fast
                .i64("timestamp")
                .unwrap_or_else(|_| Column::build_empty_column(segment.max_doc())),
            seq: fast
                .u64("seq")
                .unwrap_or_else(|_| Column::build_empty_column(segment.max_doc())),
        }
    }

    fn key(&self, doc: DocId) -> Option<Cursor> {
        Some(Cursor {
            timestamp: self.timestamp.first(doc)?,
            seq: self.seq.first(doc)?,
        })
    }
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: i64 = NANOS_PER_DAY;
    /// 2023-11-14T00:00:00Z
    const T0: i64 = 19_675 * DAY;

    fn record(timestamp: i64, body: &str, request_id: Option<&str>) -> LogRecord {
        let attributes =
            json!({"user_id": "u-42", "http": {"status": 500}, "log.iostream": "stdout"});
        let resource = json!({"k8s.pod.name": "gateway-abc12", "k8s.pod.uid": "uid-1", "service.name": "gateway"});
        LogRecord {
            timestamp,
            observed_timestamp: timestamp,
            severity_text: "INFO".into(),
            severity_number: 9,
            body: body.into(),
            service: "gateway".into(),
            resource: Arc::new(resource.as_object().unwrap().clone()),
            attributes: attributes.as_object().unwrap().clone(),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            span_id: Some("b7ad6b7169203331".into()),
            request_id: request_id.map(str::to_string),
        }
    }

    #[test]
    fn a_phrase_excluded_from_a_union_or_a_term_is_searched_without_a_panic() {
        // tantivy's phrase scorer asserts (in debug builds) that exclusion
        // never asks it for a document before the one it stopped at.
        let records: Vec<LogRecord> = (0..240)
            .map(|i: i64| {
                let mut r = record(
                    T0 + i * 250_000_000,
                    &format!("order {} step {}", i % 20, i % 5),
                    None,
                );
                r.service = ["gateway", "payment"][(i % 2) as usize].into();
                r
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        for (n, chunk) in records.chunks(7).enumerate() {
            store.add(n as u64, chunk).unwrap();
            store.commit(n as u64 + 1).unwrap();
        }
        for (query, expected) in [
            (
                "(order OR step) AND NOT \"step 4\"",
                records
                    .iter()
                    .filter(|r| !r.body.ends_with("step 4"))
                    .count(),
            ),
            (
                "service:payment AND NOT \"step 4\"",
                records
                    .iter()
                    .filter(|r| r.service == "payment" && !r.body.ends_with("step 4"))
                    .count(),
            ),
        ] {
            let found = store
                .search(&LogQuery {
                    query: query.into(),
                    limit: 1000,
                    ..LogQuery::default()
                })
                .unwrap();
            assert_eq!(found.total_hits, expected, "{query}");
            assert_eq!(found.hits.len(), expected, "{query}");
        }
    }

    fn store_with(records: &[LogRecord]) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.add(0, records).unwrap();
        store.commit(1).unwrap();
        (dir, store)
    }

    fn search(store: &LogStore, query: &str) -> Vec<String> {
        let query = LogQuery {
            query: query.into(),
            limit: 100,
            ..LogQuery::default()
        };
        store
            .search(&query)
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.record.body)
            .collect()
    }

    #[test]
    fn queries_find_the_right_records_newest_first() {
        let (_dir, store) = store_with(&[
            record(T0 + 1_000, "order created", Some("req-1")),
            record(T0 + 3_000, "payment declined", Some("req-2")),
            record(T0 + 2_000, "order shipped", Some("req-1")),
        ]);
        let cases: &[(&str, &[&str])] = &[
            ("", &["payment declined", "order shipped", "order created"]),
            ("request_id:req-1", &["order shipped", "order created"]),
            ("order", &["order shipped", "order created"]),
            ("\"payment declined\"", &["payment declined"]),
            ("order -shipped", &["order created"]),
            ("order AND NOT shipped", &["order created"]),
            ("NOT shipped", &["payment declined", "order created"]),
            ("order created", &["order created"]),
            (
                "shipped OR declined",
                &["payment declined", "order shipped"],
            ),
            ("user_id:u-42 AND declined", &["payment declined"]),
            ("attributes.http.status:500 AND created", &["order created"]),
            ("http.status:[400 TO 599] AND created", &["order created"]),
            (
                "attributes.http.status:[500 TO 500] AND created",
                &["order created"],
            ),
            // Bounds of two number types (found by fuzzing: tantivy took
            // the type of one bound and unwrapped the other as it).
            ("http.status:[499.5 TO 500] AND created", &["order created"]),
            ("http.status:[500 TO 500.5] AND created", &["order created"]),
            ("http.status:{500 TO 18446744073709551615]", &[]),
            ("http.status:[-1 TO 499.9]", &[]),
            (
                "resource.k8s.pod.name:gateway-abc12 AND shipped",
                &["order shipped"],
            ),
            (
                "service:gateway AND trace_id:0af7651916cd43dd8448eb211c80319c AND created",
                &["order created"],
            ),
            ("ship*", &["order shipped"]),
            ("body:ship*", &["order shipped"]),
            ("sh?pped", &["order shipped"]),
            ("*clined", &["payment declined"]),
            ("severity_number:>=9 AND declined", &["payment declined"]),
            ("request_id:nope", &[]),
        ];
        for (query, expected) in cases {
            assert_eq!(search(&store, query), *expected, "query {query:?}");
        }
    }

    /// Searches each query and checks the bodies found, newest first, and
    /// that [`crate::LogMatcher`] (log-derived metrics) agrees with the index.
    fn assert_finds(store: &LogStore, records: &[LogRecord], cases: &[(&str, &[&str])]) {
        for (query, expected) in cases {
            let found = store.search(&LogQuery {
                query: query.to_string(),
                limit: 100,
                ..LogQuery::default()
            });
            let found: Vec<String> = match found {
                Ok(result) => result.hits.into_iter().map(|h| h.record.body).collect(),
                Err(error) => panic!("query {query:?}: {error}"),
            };
            assert_eq!(found, *expected, "query {query:?}");
            let matcher = crate::LogMatcher::new(query).unwrap();
            let mut matched: Vec<&LogRecord> = records
                .iter()
                .filter(|record| matcher.matches(record))
                .collect();
            matched.sort_by_key(|record| std::cmp::Reverse(record.timestamp));
            let matched: Vec<&str> = matched.iter().map(|r| r.body.as_str()).collect();
            assert_eq!(matched, *expected, "matcher, query {query:?}");
        }
    }

    #[test]
    fn span_ids_indexed_by_key_are_found_by_value_wildcard_range_and_set() {
        // Format 5 indexes a hex span id by its first four digits and
        // reads the candidates' records: ids that share a key, and a whole
        // id that is a key, are told apart.
        let with_span = |timestamp, body: &str, span: &str| {
            let mut record = record(T0 + timestamp, body, None);
            record.span_id = Some(span.into());
            record
        };
        let records = [
            with_span(6_000, "a", "00f067aa0ba902b7"),
            with_span(5_000, "b", "span-b"),
            with_span(4_000, "c", "00f067aa0ba902b8"),
            with_span(3_000, "d", ""),
            with_span(2_000, "e", "00f0"),
            with_span(1_000, "f", "00F067AA0BA902B7"),
            // An attribute of the same name holds another record's id.
            {
                let mut g = with_span(500, "g", "00f0ffffffffffff");
                g.attributes
                    .insert("span_id".into(), json!("00f067aa0ba902b7"));
                g
            },
        ];
        let (_dir, store) = store_with(&records);
        assert_finds(
            &store,
            &records,
            &[
                ("span_id:00f067aa0ba902b7", &["a"]),
                ("span_id:00f067aa0ba902b8", &["c"]),
                ("span_id:00F067AA0BA902B7", &["f"]),
                ("span_id:00f0", &["e"]),
                ("span_id:00f067aa0ba902b", &[]),
                ("span_id:span-b", &["b"]),
                ("span_id:00f067aa0ba902b?", &["a", "c"]),
                ("span_id:00f0*", &["a", "c", "e", "g"]),
                ("span_id:00f06*", &["a", "c"]),
                ("span_id:0*", &["a", "c", "e", "f", "g"]),
                ("span_id:*b7", &["a"]),
                ("span_id:span*", &["b"]),
                ("span_id: IN [span-b 00f0]", &["b", "e"]),
                ("span_id:[00f0 TO 00f1]", &["a", "c", "e", "g"]),
                ("span_id:{00f0 TO 00f1]", &["a", "c", "g"]),
                ("attributes.span_id:00f067aa0ba902b7", &["g"]),
                (
                    "trace_id:0af7651916cd43dd8448eb211c80319c AND span_id:00f067aa0ba902b8",
                    &["c"],
                ),
                (
                    "NOT span_id:00f067aa0ba902b7",
                    &["b", "c", "d", "e", "f", "g"],
                ),
                ("span_id:00f067aa0ba902b7 OR span_id:span-b", &["a", "b"]),
                ("span_id:*", &["a", "b", "c", "d", "e", "f", "g"]),
            ],
        );
    }

    #[test]
    fn field_star_means_the_field_exists_for_every_kind_of_field() {
        let mut bare = record(T0 + 1_000, "bare record", None);
        bare.trace_id = None;
        bare.span_id = None;
        bare.attributes.remove("user_id");
        Arc::make_mut(&mut bare.resource).remove("k8s.pod.name");
        let records = [record(T0 + 2_000, "full record", Some("req-1")), bare];
        let (_dir, store) = store_with(&records);
        let both: &[&str] = &["full record", "bare record"];
        assert_finds(
            &store,
            &records,
            &[
                ("request_id:*", &["full record"]),
                ("trace_id:*", &["full record"]),
                ("span_id:*", &["full record"]),
                ("NOT request_id:*", &["bare record"]),
                ("user_id:*", &["full record"]),
                ("attributes.user_id:*", &["full record"]),
                ("http:*", both),
                ("http.status:*", both),
                ("resource.k8s.pod.name:*", &["full record"]),
                ("resource.service.name:*", both),
                ("resource.nothing:*", &[]),
                ("service:*", both),
                ("severity:*", both),
                ("severity_number:*", both),
                ("body:*", both),
                ("timestamp:*", both),
                ("nothing:*", &[]),
                ("request_id:* AND full", &["full record"]),
            ],
        );
    }

    #[test]
    fn words_search_identifying_fields_and_severity_ignores_case() {
        let gateway = record(T0 + 1_000, "order created", None);
        let mut payment = record(T0 + 2_000, "card charged", None);
        payment.service = "payment".into();
        payment.severity_text = "ERROR".into();
        payment.resource = Arc::new(
            json!({
                "service.name": "payment",
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "payment-7f9c2",
                "k8s.container.name": "payment-api",
                "host.name": "node-3",
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        let records = [gateway, payment];
        let (_dir, store) = store_with(&records);
        assert_finds(
            &store,
            &records,
            &[
                ("gateway", &["order created"]),
                ("payment", &["card charged"]),
                ("gateway-abc12", &["order created"]),
                ("shop", &["card charged"]),
                ("payment-api", &["card charged"]),
                ("node-3", &["card charged"]),
                ("gateway AND created", &["order created"]),
                ("gateway AND charged", &[]),
                ("gateway OR payment", &["card charged", "order created"]),
                ("NOT gateway", &["card charged"]),
                // Attribute values need their field (`log.iostream:stdout`).
                ("stdout", &[]),
                ("log.iostream:stdout", &["card charged", "order created"]),
                ("severity:ERROR", &["card charged"]),
                ("severity:error", &["card charged"]),
                ("severity:Error", &["card charged"]),
                (
                    "severity:(error OR info)",
                    &["card charged", "order created"],
                ),
                ("NOT severity:error", &["order created"]),
                ("severity:err*", &["card charged"]),
                // Wildcards: words of the message, identifying fields whole
                // (case-sensitive), attributes' words by path.
                ("gate*", &["order created"]),
                ("pay*", &["card charged"]),
                ("char*", &["card charged"]),
                ("payment-7f*", &["card charged"]),
                ("resource.k8s.pod.name:payment-*", &["card charged"]),
                ("resource.k8s.pod.name:Payment-*", &[]),
                ("service:pay*", &["card charged"]),
                ("service:Pay*", &[]),
                ("log.iostream:std*", &["card charged", "order created"]),
                (
                    "attributes.log.iostream:STD?UT",
                    &["card charged", "order created"],
                ),
                ("severity:IN [error warn]", &["card charged"]),
            ],
        );
    }

    #[test]
    fn long_words_are_searchable_and_unsearchable_terms_say_why() {
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let long_id = "x".repeat(MAX_WORD_BYTES);
        let mut uploaded = record(T0 + 1_000, &format!("uploaded blob sha256:{digest}"), None);
        uploaded
            .attributes
            .insert("object".into(), json!(format!("blobs/{long_id}")));
        let records = [uploaded, record(T0 + 2_000, "other", None)];
        let (_dir, store) = store_with(&records);
        let found = &["uploaded blob sha256:".to_string() + digest];
        let found: Vec<&str> = found.iter().map(String::as_str).collect();
        let with_digest = format!("body:{digest}");
        let phrase = format!("\"sha256:{digest}\"");
        let attribute = format!("object:{long_id}");
        assert_finds(
            &store,
            &records,
            &[
                (digest, &found),
                (&with_digest, &found),
                (&phrase, &found),
                (&attribute, &found),
            ],
        );
        let too_long = "y".repeat(MAX_WORD_BYTES + 1);
        for (text, expected) in [
            (too_long.clone(), "longer than 255 bytes"),
            (format!("uploaded AND {too_long}"), "longer than 255 bytes"),
            (format!("body:\"a {too_long}\""), "longer than 255 bytes"),
            ("body:\"...\"".to_string(), "no word to search for"),
            ("user_id:\"--\"".to_string(), "no word to search for"),
        ] {
            let error = store
                .search(&LogQuery {
                    query: text.clone(),
                    limit: 1,
                    ..LogQuery::default()
                })
                .unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidQuery(_)),
                "{text}: {error}"
            );
            let message = error.to_string();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(!message.contains("Only excluding"), "{text}: {message}");
            assert!(
                crate::LogMatcher::new(&text).is_err(),
                "the matcher refuses {text} too"
            );
        }
    }

    #[test]
    fn a_partition_keeps_each_resource_once_and_answers_as_if_each_record_had_it() {
        let mut records = Vec::new();
        for index in 0..200 {
            let mut record = record(T0 + index, &format!("line {index}"), None);
            let pod = if index % 2 == 0 {
                "gateway-abc12"
            } else {
                "gateway-xyz34"
            };
            Arc::make_mut(&mut record.resource).insert("k8s.pod.name".into(), json!(pod));
            records.push(record);
        }
        // A request id that is promoted, and one that is not (a number).
        records[0].request_id = Some("req-7".into());
        records[0]
            .attributes
            .insert("request_id".into(), json!("req-7"));
        records[1].attributes.insert("request_id".into(), json!(42));
        records[2].attributes.insert("user_id".into(), json!("b-7"));
        let (dir, store) = store_with(&records);
        let streams = std::fs::read_to_string(
            dir.path()
                .join(day_name(day_of(T0)))
                .join(crate::streams::STREAMS_FILE),
        )
        .unwrap();
        assert_eq!(streams.lines().count(), 2, "{streams}");
        // Records come back whole, resource included, also after a reopen.
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        let all = store
            .search(&LogQuery {
                query: String::new(),
                limit: 1000,
                ..LogQuery::default()
            })
            .unwrap();
        let mut found: Vec<LogRecord> = all.hits.into_iter().map(|hit| hit.record).collect();
        found.reverse();
        assert_eq!(found, records);
        let count = |query: &str| {
            let query = LogQuery {
                query: query.into(),
                limit: 1,
                ..LogQuery::default()
            };
            store.search(&query).unwrap().total_hits
        };
        assert_eq!(count("resource.k8s.pod.name:gateway-xyz34"), 100);
        assert_eq!(count("resource.k8s.pod.name:gateway-*"), 200);
        assert_eq!(count("gateway-abc12"), 100);
        assert_eq!(count("NOT resource.k8s.pod.name:gateway-abc12"), 100);
        assert_eq!(count("resource.k8s.pod.name:nothing"), 0);
        assert_eq!(count("resource.k8s.pod.name:nothing AND line"), 0);
        assert_eq!(count("resource.k8s.pod.name:*"), 200);
        assert_eq!(count("resource.k8s.pod.name:[gateway-b TO gateway-z]"), 100);
        assert_eq!(search(&store, "attributes.request_id:req-7"), ["line 0"]);
        assert_eq!(search(&store, "request_id:req-7"), ["line 0"]);
        assert_eq!(search(&store, "attributes.request_id:42"), ["line 1"]);
        assert_eq!(count("attributes.request_id:*"), 2);
        assert_eq!(search(&store, "user_id:[a TO c]"), ["line 2"]);
        assert_eq!(count("user_id:[u TO v]"), 199);
        assert_eq!(count("http.status:[500 TO 500]"), 200);
        assert_eq!(count("http.status:{500 TO *]"), 0);
        assert_eq!(count("http:*"), 200);
        // The stream's resource is on disk before the commit that refers
        // to it: a new stream, committed, reopened.
        let mut late = record(T0 + 500, "late", None);
        Arc::make_mut(&mut late.resource).insert("k8s.pod.name".into(), json!("gateway-new"));
        store.add(5, std::slice::from_ref(&late)).unwrap();
        store.commit(6).unwrap();
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        let hits = store
            .search(&LogQuery {
                query: "resource.k8s.pod.name:gateway-new".into(),
                limit: 10,
                ..LogQuery::default()
            })
            .unwrap()
            .hits;
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].record, late);
    }

    #[test]
    fn partitions_of_the_first_schema_open_and_stay_searchable() {
        let dir = tempfile::tempdir().unwrap();
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let old = record(T0 + 1_000, &format!("old blob {digest}"), Some("req-old"));
        {
            // A day partition written before words up to 255 bytes were
            // indexed: its meta.json names tantivy's `default` tokenizer.
            let (schema, fields) = log_schema_with("default");
            let partition = dir.path().join(day_name(day_of(T0)));
            std::fs::create_dir_all(&partition).unwrap();
            let index = Index::create_in_dir(&partition, schema).unwrap();
            let mut writer: IndexWriter = index.writer(15_000_000).unwrap();
            let source = serde_json::to_string(&old).unwrap();
            writer
                .add_document(records_document(&fields, old.clone(), &source, 1))
                .unwrap();
            writer.commit().unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        let new = record(T0 + DAY, &format!("new blob {digest}"), Some("req-new"));
        let late = record(T0 + 2_000, &format!("late blob {digest}"), None);
        store.add(5, &[new.clone(), late.clone()]).unwrap();
        store.commit(6).unwrap();
        // The old partition keeps its tokenizer, also for records written to
        // it now: words of 40 bytes or more are not in it, the rest is.
        assert_eq!(
            search(&store, "blob"),
            [
                "new blob ".to_string() + digest,
                "late blob ".to_string() + digest,
                "old blob ".to_string() + digest
            ]
        );
        assert_eq!(search(&store, digest), ["new blob ".to_string() + digest]);
        assert_eq!(
            search(&store, "request_id:req-old"),
            ["old blob ".to_string() + digest]
        );
        assert_eq!(
            search(&store, "gateway AND old"),
            ["old blob ".to_string() + digest]
        );
        assert_eq!(
            search(&store, "request_id:* AND old"),
            ["old blob ".to_string() + digest]
        );
    }

    #[test]
    fn a_bad_query_is_an_error_with_a_position() {
        let (_dir, store) = store_with(&[record(T0, "x", None)]);
        for (text, expected) in [
            ("body:(unclosed", "position"),
            ("nosuchfield:", "position"),
            ("timestamp:abc", "valid integer"),
            // found by fuzzing: tantivy asserts on a NUL in a field path
            (
                "user.id:42 \0ND -user.na\0\0me:bob",
                "NUL character at position 11",
            ),
            // found by fuzzing: tantivy panicked on bounds of two kinds
            (
                "http.status:[500 TO =99]",
                "the range on http.status has bounds of two kinds: 500 is a number and =99 is text",
            ),
            (
                "user.created:[2024-01-01T00:00:00Z TO 5]",
                "2024-01-01T00:00:00Z is a date and 5 is a number",
            ),
        ] {
            let query = LogQuery {
                query: text.into(),
                limit: 1,
                ..LogQuery::default()
            };
            let error = store.search(&query).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidQuery(_)),
                "{text}: {error}"
            );
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn time_range_limit_and_cursor_pages_are_stable_under_ingest() {
        let records: Vec<_> = (0..10)
            .map(|i| record(T0 + i * 1_000, &format!("r{i}"), None))
            .collect();
        let (_dir, store) = store_with(&records);
        let query = LogQuery {
            start: Some(T0 + 2_000),
            end: Some(T0 + 5_000),
            limit: 10,
            ..LogQuery::default()
        };
        let result = store.search(&query).unwrap();
        assert_eq!(result.total_hits, 3);
        assert_eq!(
            result
                .hits
                .iter()
                .map(|h| h.record.body.as_str())
                .collect::<Vec<_>>(),
            ["r4", "r3", "r2"]
        );

        let mut pages = Vec::new();
        let mut query = LogQuery {
            limit: 4,
            ..LogQuery::default()
        };
        loop {
            let page = store.search(&query).unwrap();
            pages.push(
                page.hits
                    .iter()
                    .map(|h| h.record.body.clone())
                    .collect::<Vec<_>>(),
            );
            // Newer records arriving between pages do not shift the next page.
            store
                .add(
                    100 + pages.len() as u64,
                    &[record(T0 + 20_000, "newer", None)],
                )
                .unwrap();
            store.commit(200 + pages.len() as u64).unwrap();
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        assert_eq!(
            pages,
            [
                vec!["r9", "r8", "r7", "r6"],
                vec!["r5", "r4", "r3", "r2"],
                vec!["r1", "r0"]
            ]
        );
    }

    #[test]
    fn every_page_of_a_search_across_midnight_has_the_same_total() {
        // Three records on each side of a UTC midnight: two day partitions.
        let records: Vec<_> = (-3..3)
            .map(|i| record(T0 + i * 1_000, &format!("r{i}"), None))
            .collect();
        let (_dir, store) = store_with(&records);
        let mut query = LogQuery {
            limit: 2,
            ..LogQuery::default()
        };
        let mut totals = Vec::new();
        let mut bodies = Vec::new();
        loop {
            let page = store.search(&query).unwrap();
            totals.push(page.total_hits);
            bodies.extend(page.hits.into_iter().map(|hit| hit.record.body));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        assert_eq!(bodies, ["r2", "r1", "r0", "r-1", "r-2", "r-3"]);
        assert!(totals.iter().all(|total| *total == 6), "{totals:?}");
    }

    #[test]
    fn records_with_equal_timestamps_page_without_loss_or_repeat() {
        let records: Vec<_> = (0..7)
            .map(|i| record(T0, &format!("same{i}"), None))
            .collect();
        let (_dir, store) = store_with(&records);
        let mut seen = Vec::new();
        let mut query = LogQuery {
            limit: 3,
            ..LogQuery::default()
        };
        loop {
            let page = store.search(&query).unwrap();
            seen.extend(page.hits.iter().map(|h| h.record.body.clone()));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, (0..7).map(|i| format!("same{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn records_go_to_day_partitions_and_retention_drops_whole_days() {
        let (_dir, store) = store_with(&[
            record(T0 - DAY + 5, "day before", None),
            record(T0 + 5, "day zero", None),
            record(T0 + DAY + 5, "day after", None),
        ]);
        assert_eq!(
            store.partition_names(),
            ["2023-11-13", "2023-11-14", "2023-11-15"]
        );
        assert_eq!(search(&store, ""), ["day after", "day zero", "day before"]);
        let query = LogQuery {
            start: Some(T0),
            end: Some(T0 + DAY),
            limit: 10,
            ..LogQuery::default()
        };
        assert_eq!(store.search(&query).unwrap().hits.len(), 1);
        let dropped = store.drop_partitions_before(T0 + 10).unwrap();
        assert_eq!(dropped, ["2023-11-13"]);
        assert_eq!(search(&store, ""), ["day after", "day zero"]);
        assert!(store.disk_bytes() > 0);
    }

    #[test]
    fn replay_below_the_committed_position_indexes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            store.add(10, &[record(T0, "committed", None)]).unwrap();
            store.commit(20).unwrap();
            // Added but never committed: a crash before the commit.
            store.add(20, &[record(T0, "lost in crash", None)]).unwrap();
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.committed_position(), 20);
        // Replaying the WAL from the start: position 10 is skipped, 20 is indexed.
        store.add(10, &[record(T0, "committed", None)]).unwrap();
        store.add(20, &[record(T0, "lost in crash", None)]).unwrap();
        store.commit(30).unwrap();
        let mut bodies = search(&store, "");
        bodies.sort();
        assert_eq!(bodies, ["committed", "lost in crash"]);
        let reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(reopened.committed_position(), 30);
        assert_eq!(reopened.num_records(), 2);
    }

    #[test]
    fn histogram_counts_by_bucket_and_severity() {
        let mut error = record(T0 + 1_500, "boom", None);
        error.severity_text = "ERROR".into();
        let (_dir, store) = store_with(&[
            record(T0 + 100, "a", None),
            record(T0 + 900, "b", None),
            error,
            record(T0 + 3_100, "d", None),
        ]);
        let histogram = store.histogram("", T0, T0 + 4_000, 1_000).unwrap();
        let counts: Vec<u64> = histogram.buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, [2, 1, 0, 1]);
        assert_eq!(histogram.buckets[0].start, T0);
        assert_eq!(
            histogram.buckets[1].by_severity,
            BTreeMap::from([("ERROR".to_string(), 1)])
        );
        assert_eq!(
            histogram.buckets[0].by_severity,
            BTreeMap::from([("INFO".to_string(), 2)])
        );
        let only_errors = store
            .histogram("severity:ERROR", T0, T0 + 4_000, 1_000)
            .unwrap();
        assert_eq!(only_errors.buckets.iter().map(|b| b.count).sum::<u64>(), 1);
        assert!(
            store.histogram("", T0, T0 + 1_000_000, 1).is_err(),
            "too many buckets is an error"
        );
    }

    #[test]
    fn context_returns_neighbours_in_the_same_stream() {
        let mut other_pod = record(T0 + 2_500, "other pod", None);
        Arc::make_mut(&mut other_pod.resource).insert("k8s.pod.uid".into(), json!("uid-2"));
        let mut records: Vec<_> = (0..6)
            .map(|i| record(T0 + i * 1_000, &format!("line{i}"), None))
            .collect();
        records.push(other_pod);
        let (_dir, store) = store_with(&records);
        let anchor = store
            .search(&LogQuery {
                query: "line3".into(),
                limit: 1,
                ..LogQuery::default()
            })
            .unwrap()
            .hits
            .remove(0);
        let context = store.context(&anchor.id, 2, 1).unwrap();
        let bodies: Vec<_> = context.iter().map(|h| h.record.body.as_str()).collect();
        assert_eq!(bodies, ["line1", "line2", "line3", "line4"]);
        assert!(matches!(
            store.context("1-2", 1, 1),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.context("garbage", 1, 1),
            Err(StoreError::InvalidQuery(_))
        ));
    }
}
