//! Every on-disk format of Sightline, and the queries that read them.
//!
//! The store is a library with no network and no async runtime: the collector
//! calls it from blocking threads. It holds two halves.
//!
//! Logs and traces:
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
//! - [`wal`]: the collector's write-ahead log of acknowledged batches.
//! - the data model both share: [`LogRecord`], [`Span`].
//!
//! Metrics (the Prometheus-compatible half):
//!
//! - [`tsdb`]: the time-series store: interned labels and postings, Gorilla
//!   chunks, the head with its own WAL, immutable blocks, retention;
//!   [`tsdb::MetricStore`] is the store as the collector shares it.
//! - [`promql`]: PromQL evaluation over it (parsed by `promql-parser`), with
//!   the query limits: nesting, the sample budget, cancellation.
//! - [`rules`]: Prometheus rule files, the clock-free rule engine (alert
//!   states, `ALERTS`, `ALERTS_FOR_STATE`) and `promtool test rules`.
//!
//! Nothing outside this crate knows a file layout or a tantivy schema; nothing
//! in this crate knows about OTLP, HTTP or the agent.

mod error;
mod histogram;
mod logs;
mod model;
pub mod promql;
mod query;
pub mod rules;
mod spans;
pub mod traces;
pub mod tsdb;
pub mod wal;

pub use error::{Result, StoreError};
pub use logs::{
    Cursor, Histogram, HistogramBucket, LogHit, LogQuery, LogSearchResult, LogStore,
    log_index_schema, log_index_tokenizers,
};
pub use model::{LogRecord, Span, SpanEvent, SpanLink, SpanStatus};
pub use query::LogMatcher;
pub use spans::{Operation, SpanStore, TraceQuery};
pub use traces::TraceSummary;

/// Bytes on disk under `dir`, recursively.
pub fn dir_size(dir: &std::path::Path) -> u64 {
    logs::dir_size(dir)
}
