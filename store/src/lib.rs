//! The log and span stores, and the queries that read them.
//!
//! The store is a library with no network and no async runtime: the collector
//! calls it from blocking threads. The metrics half (time series, PromQL,
//! rules) is the `sightline-tsdb` crate; this crate knows nothing of it.
//!
//! - [`LogStore`]: log records in one tantivy index per UTC day. The record
//!   is kept whole (as it arrived) in a stored field and its parts are
//!   indexed for search: `body` tokenized, `attributes` and `resource` as
//!   JSON fields, the correlation ids (`trace_id`, `span_id`, `request_id`)
//!   as raw terms; [`LogQuery`] and [`LogMatcher`] speak the log query
//!   language over the index and over one record in memory.
//! - [`SpanStore`]: spans in a tantivy index keyed by trace id, so every span of
//!   a trace comes back from one term lookup, and a summary per trace
//!   ([`TraceSummary`], recomputed when spans arrive late) for trace search.
//! - [`DurableLog`]: where acknowledged batches ([`Batch`]) stay until the
//!   stores commit them; [`wal`] ([`LocalWal`]) is the one on the local disk.
//! - [`DataDir`]: where each store's directory is under the data directory.
//! - [`SavedSearches`]: named log queries and the alerts made from them,
//!   one versioned file of the data directory.
//! - the data model both share: [`LogRecord`], [`Span`].
//!
//! Nothing outside this crate knows a file layout or a tantivy schema; nothing
//! in this crate knows about OTLP, HTTP or the agent.

mod batch;
mod durable;
mod error;
pub mod files;
mod histogram;
mod layout;
mod logs;
mod model;
pub mod pipes;
mod query;
pub mod reader;
mod reserve;
pub mod saved;
mod spans;
mod streams;
pub mod traces;
pub mod wal;

pub use batch::{Batch, EncodedBatch};
pub use durable::{Checkpoint, DurableLog, LogEntry, PartitionId, Position, SINGLE_PARTITION};
pub use error::{Result, StoreError};
pub use layout::DataDir;
pub use logs::{
    Cursor, Histogram, HistogramBucket, LOG_PARTITION_FORMAT_VERSION, LogHit, LogQuery,
    LogSearchResult, LogStore, log_index_schema, log_index_tokenizers, record_position, record_seq,
    validate_log_query,
};
pub use model::{LogRecord, SharedResource, Span, SpanEvent, SpanLink, SpanStatus};
pub use query::LogMatcher;
pub use reader::{LogReader, SpanReader, TailSink};
pub use reserve::DiskReserve;
pub use saved::{SavedSearch, SavedSearches, SearchAlert};
pub use spans::{Operation, SPAN_STORE_FORMAT_VERSION, SpanStore, TraceQuery};
pub use traces::TraceSummary;
pub use wal::LocalWal;

pub use sightline_vocab::fs::dir_size;

/// Tantivy's smallest budget per writer thread (its
/// `MEMORY_BUDGET_NUM_BYTES_MIN`, which it does not export).
const SMALL_WRITER_BYTES: usize = 15_000_000;

/// How big a store's index writers are. Each tantivy segment writer starts
/// with a term hash table sized to its memory budget (zeroed, then walked
/// whole when the segment is written), a fixed cost per segment that a
/// long-lived store pays rarely and a store built once for a small batch
/// pays every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Writers {
    /// The ingest path's: large budgets, tantivy's thread count.
    #[default]
    Ingest,
    /// One thread at tantivy's minimum budget, for stores that index one
    /// batch and close (cluster mode's splits).
    Small,
    /// None: the store is read only (a split read from object storage).
    ReadOnly,
}

impl Writers {
    /// An index writer of `ingest_bytes` (divided between tantivy's threads)
    /// for [`Writers::Ingest`], one thread at the minimum for `Small`.
    fn writer<D: tantivy::Document>(
        self,
        index: &tantivy::Index,
        ingest_bytes: usize,
    ) -> tantivy::Result<tantivy::IndexWriter<D>> {
        match self {
            Writers::Ingest => index.writer(ingest_bytes),
            Writers::Small => index.writer_with_num_threads(1, SMALL_WRITER_BYTES),
            Writers::ReadOnly => Err(tantivy::TantivyError::InvalidArgument(
                "the store is read only".into(),
            )),
        }
    }

    /// [`Writers::writer`] with one indexing thread for `Ingest` too, for
    /// indexes whose documents share their terms in groups (a trace's
    /// spans): several threads would each build a segment, and each
    /// segment's term dictionary, with the same terms.
    fn one_thread_writer<D: tantivy::Document>(
        self,
        index: &tantivy::Index,
        ingest_bytes: usize,
    ) -> tantivy::Result<tantivy::IndexWriter<D>> {
        match self {
            Writers::Ingest => index.writer_with_num_threads(1, ingest_bytes),
            Writers::Small | Writers::ReadOnly => self.writer(index, ingest_bytes),
        }
    }
}
