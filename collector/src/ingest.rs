//! What every receiver calls: per-record checks, then the durable pipeline.
//!
//! Receivers (OTLP gRPC and HTTP, Elasticsearch `_bulk`) decode their wire
//! format into store records and hand them to [`Ingest`]. Records that fail a
//! check are reported back with their index and the reason while the rest of
//! the batch is stored, as OTLP partial success and `_bulk` per-item errors
//! require.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sightline_store::{LogRecord, Span};
use sightline_vocab::clock::now_nanos;

use crate::metrics::{CollectorMetrics, Limit, RejectReason};
use crate::ratelimit::{RateLimited, RateLimiter};
use sightline_metrics::log_metrics::LogMetrics;
use sightline_metrics::span_metrics::SpanMetrics;
use sightline_pipeline::{Batch, IngestError, Pipeline};

/// Memory a decoded record takes, as a multiple of its JSON size.
const DECODED_MEMORY_FACTOR: usize = 3;

/// Default of [`Limits::max_attributes`].
pub const DEFAULT_MAX_ATTRIBUTES: usize = 1_000;
/// Default of [`Limits::max_attribute_key_bytes`].
pub const DEFAULT_MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
/// Default of [`Limits::max_attribute_value_bytes`].
pub const DEFAULT_MAX_ATTRIBUTE_VALUE_BYTES: usize = 64 * 1024;

/// Per-record limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Records older than this are outside retention and refused.
    pub retention: Duration,
    /// Records further in the future than this are refused (a broken clock).
    pub max_future: Duration,
    /// Largest record (body plus attributes) accepted, in bytes.
    pub max_record_bytes: usize,
    /// Most attributes a log record or span may have (its own, not the
    /// resource's); a record with more is refused, not truncated.
    pub max_attributes: usize,
    /// Longest attribute key accepted, in bytes.
    pub max_attribute_key_bytes: usize,
    /// Longest attribute value accepted, in bytes (a string's length, or
    /// the sum over an array's or map's strings).
    pub max_attribute_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            retention: Duration::from_secs(30 * 86_400),
            max_future: Duration::from_secs(86_400),
            max_record_bytes: 1024 * 1024,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            max_attribute_key_bytes: DEFAULT_MAX_ATTRIBUTE_KEY_BYTES,
            max_attribute_value_bytes: DEFAULT_MAX_ATTRIBUTE_VALUE_BYTES,
        }
    }
}

/// One refused record: its index in the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub reason: String,
}

/// The receivers' shared entry point.
#[derive(Clone)]
pub struct Ingest {
    pipeline: Pipeline,
    limits: Arc<Limits>,
    metrics: Arc<CollectorMetrics>,
    span_metrics: Arc<SpanMetrics>,
    log_metrics: Option<Arc<LogMetrics>>,
    rate_limiter: Option<Arc<RateLimiter>>,
    /// Cluster mode: batches go to the partitioned log instead of the
    /// local pipeline.
    cluster: Option<ClusterSink>,
}

/// Where batches go in cluster mode, and the bound on bytes in flight to it.
#[derive(Clone)]
struct ClusterSink {
    log: sightline_cluster::ClusterLog,
    in_flight: sightline_pipeline::Admission,
}

impl Ingest {
    pub fn new(pipeline: Pipeline, limits: Limits, metrics: Arc<CollectorMetrics>) -> Ingest {
        Ingest {
            pipeline,
            limits: Arc::new(limits),
            metrics,
            span_metrics: Arc::default(),
            log_metrics: None,
            rate_limiter: None,
            cluster: None,
        }
    }

    /// Cluster mode: every accepted batch is published to `log` (split by
    /// partition) and acknowledged once the stream acknowledged it, with
    /// at most `in_flight`'s budget of bytes in flight.
    pub fn with_cluster_log(
        mut self,
        log: sightline_cluster::ClusterLog,
        in_flight: sightline_pipeline::Admission,
    ) -> Ingest {
        self.cluster = Some(ClusterSink {
            log,
            in_flight,
        });
        self
    }

    /// Limits each client's ingest rate (see [`crate::ratelimit`]).
    pub fn with_rate_limiter(mut self, rate_limiter: Option<Arc<RateLimiter>>) -> Ingest {
        self.rate_limiter = rate_limiter;
        self
    }

    /// Charges a request of `bytes` from `client` to its rate, when limited.
    pub fn admit(&self, client: Option<IpAddr>, bytes: usize) -> Result<(), RateLimited> {
        crate::ratelimit::admit(self.rate_limiter.as_deref(), client, bytes)
    }

    /// Counts acknowledged log records into the config's log-derived metrics.
    pub fn with_log_metrics(mut self, log_metrics: Arc<LogMetrics>) -> Ingest {
        // Kept even when empty: saved searches' alerts add metrics at run time.
        self.log_metrics = Some(log_metrics);
        self
    }

    pub fn metrics(&self) -> &Arc<CollectorMetrics> {
        &self.metrics
    }

    /// Counts ingested spans into `span_metrics` (RED metrics and
    /// service-graph edges) instead of an aggregation of its own.
    pub fn with_span_metrics(mut self, span_metrics: Arc<SpanMetrics>) -> Ingest {
        self.span_metrics = span_metrics;
        self
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Cluster mode's log, when in cluster mode.
    pub fn cluster_log(&self) -> Option<sightline_cluster::ClusterLog> {
        self.cluster.as_ref().map(|sink| sink.log.clone())
    }

    /// Checks each record, stores the good ones durably, and returns the
    /// refused ones. `size_bytes` is the request's size as received.
    pub async fn logs(
        &self,
        records: Vec<LogRecord>,
        size_bytes: usize,
    ) -> Result<Vec<Rejection>, IngestError> {
        let now = now_nanos();
        let mut rejections = Vec::new();
        let mut accepted = Vec::with_capacity(records.len());
        let mut accepted_bytes = 0;
        for (index, record) in records.into_iter().enumerate() {
            match self
                .check_log(&record, now)
                .and_then(|size| self.check_message_size(&record, size).map(|()| size))
            {
                Ok(size) => {
                    accepted_bytes += size;
                    accepted.push(record);
                }
                Err((reason_kind, limit, reason)) => {
                    self.metrics.rejected(reason_kind, 1);
                    if let Some(limit) = limit {
                        self.metrics.limited(limit);
                    }
                    rejections.push(Rejection { index, reason });
                }
            }
        }
        // Decoded records take several times their JSON size in memory (maps,
        // per-record copies of the resource, the encoded WAL payload): charge
        // that, not the compact wire size, against the memory budget.
        let charged = size_bytes.max(accepted_bytes.saturating_mul(DECODED_MEMORY_FACTOR));
        // Matched now (the batch moves into the pipeline), counted once the
        // batch is durable: each acknowledged record exactly once.
        let pending = self
            .log_metrics
            .as_ref()
            .map(|log_metrics| log_metrics.observe(&accepted));
        self.store(Batch::Logs(accepted), charged).await?;
        if let (Some(log_metrics), Some(pending)) = (&self.log_metrics, pending) {
            log_metrics.apply(pending);
        }
        Ok(rejections)
    }

    /// Stores the spans that pass the attribute limits and returns the
    /// refused ones, by index in `spans`.
    pub async fn spans(
        &self,
        spans: Vec<Span>,
        size_bytes: usize,
    ) -> Result<Vec<Rejection>, IngestError> {
        let mut rejections = Vec::new();
        let mut accepted = Vec::with_capacity(spans.len());
        for (index, span) in spans.into_iter().enumerate() {
            let checked = check_attributes(&self.limits, &span.attributes)
                .map_err(|(limit, reason)| (Some(limit), reason))
                .and_then(|()| {
                    self.check_message_size(&span, span_size(&span))
                        .map_err(|(_, limit, reason)| (limit, reason))
                });
            match checked {
                Ok(()) => accepted.push(span),
                Err((limit, reason)) => {
                    self.metrics.rejected(RejectReason::TooLarge, 1);
                    if let Some(limit) = limit {
                        self.metrics.limited(limit);
                    }
                    rejections.push(Rejection { index, reason });
                }
            }
        }
        let spans = accepted;
        let charged = size_bytes.saturating_mul(DECODED_MEMORY_FACTOR + 1);
        // Summarised now (the batch moves into the pipeline), counted once
        // the batch is durable: each acknowledged span exactly once.
        let pending = self.span_metrics.observe(&spans);
        self.store(Batch::Spans(spans), charged).await?;
        self.span_metrics.apply(pending);
        Ok(rejections)
    }

    /// Records a rejection found while decoding (before [`Ingest::logs`]).
    pub fn count_malformed(&self, count: u64) {
        self.metrics.rejected(RejectReason::Malformed, count);
    }

    async fn store(&self, batch: Batch, size_bytes: usize) -> Result<(), IngestError> {
        let result = match &self.cluster {
            Some(cluster) => publish(cluster, &self.metrics, batch, size_bytes).await,
            None => self.pipeline.ingest(batch, size_bytes).await,
        };
        if matches!(result, Err(IngestError::Busy)) {
            self.metrics.busy();
        }
        result
    }

    /// In cluster mode, refuses an item whose JSON would not fit in one
    /// message of the cluster log (the NATS servers' `max_payload`), so it
    /// is refused alone and the rest of its batch is kept. Only items whose
    /// approximate size `approximate` is within a factor of 8 of the limit
    /// (JSON escaping can multiply a string's size by 6) are serialized to
    /// measure.
    fn check_message_size<T: serde::Serialize>(
        &self,
        item: &T,
        approximate: usize,
    ) -> Result<(), (RejectReason, Option<Limit>, String)> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        // Room for the batch's envelope (`{"logs":[...]}`).
        let limit = cluster.log.max_message().saturating_sub(64);
        if approximate <= limit / 8 {
            return Ok(());
        }
        let mut counter = ByteCounter(0);
        if serde_json::to_writer(&mut counter, item).is_err() || counter.0 > limit {
            return Err((
                RejectReason::TooLarge,
                None,
                format!(
                    "item of {} bytes as JSON is over the cluster log's message limit ({limit} bytes, the NATS servers' max_payload)",
                    counter.0
                ),
            ));
        }
        Ok(())
    }

    /// Checks one record; returns its approximate JSON size when it passes.
    fn check_log(
        &self,
        record: &LogRecord,
        now: i64,
    ) -> Result<usize, (RejectReason, Option<Limit>, String)> {
        let oldest = now.saturating_sub(nanos(self.limits.retention));
        let newest = now.saturating_add(nanos(self.limits.max_future));
        if record.timestamp < oldest || record.timestamp > newest {
            return Err((
                RejectReason::Timestamp,
                None,
                format!(
                    "timestamp {} is outside the accepted window (retention {}, at most {} ahead)",
                    format_nanos(record.timestamp),
                    humantime::format_duration(self.limits.retention),
                    humantime::format_duration(self.limits.max_future),
                ),
            ));
        }
        check_attributes(&self.limits, &record.attributes)
            .map_err(|(limit, reason)| (RejectReason::TooLarge, Some(limit), reason))?;
        let size = record.body.len() + json_size(&record.attributes) + json_size(&record.resource);
        if size > self.limits.max_record_bytes {
            return Err((
                RejectReason::TooLarge,
                Some(Limit::RecordBytes),
                format!(
                    "record of {size} bytes is over max_record_bytes ({} bytes)",
                    self.limits.max_record_bytes
                ),
            ));
        }
        Ok(size)
    }
}

/// Publishes a batch to the cluster log: acknowledged only once the stream
/// has it; an outage or a full stream is backpressure (retry later).
async fn publish(
    cluster: &ClusterSink,
    metrics: &CollectorMetrics,
    batch: Batch,
    size_bytes: usize,
) -> Result<(), IngestError> {
    if batch.is_empty() {
        return Ok(());
    }
    // Counted once acknowledged (the batch moves into the publish).
    let (logs, spans) = match &batch {
        Batch::Logs(records) => (records.len() as u64, 0),
        Batch::Spans(spans) => (0, spans.len() as u64),
    };
    let _permit = cluster.in_flight.admit(size_bytes).await?;
    match cluster.log.publish(batch).await {
        Ok(_) => {
            metrics.published(logs, spans);
            Ok(())
        }
        Err(sightline_cluster::PublishError::TooLarge { size, limit }) => {
            Err(IngestError::Storage(format!(
                "a record of {size} bytes is over the cluster log's message limit of {limit} bytes"
            )))
        }
        Err(error) => {
            tracing::debug!(%error, "the cluster log refused a batch");
            Err(IngestError::Busy)
        }
    }
}

/// Checks the attribute count and each key's and value's size; the error
/// names the limit and the offending key.
fn check_attributes(
    limits: &Limits,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), (Limit, String)> {
    if attributes.len() > limits.max_attributes {
        return Err((
            Limit::Attributes,
            format!(
                "{} attributes is over max_attributes ({})",
                attributes.len(),
                limits.max_attributes
            ),
        ));
    }
    for (key, value) in attributes {
        if key.len() > limits.max_attribute_key_bytes {
            let shown: String = key.chars().take(32).collect();
            return Err((
                Limit::AttributeKeyBytes,
                format!(
                    "attribute key {shown:?}... of {} bytes is over max_attribute_key_bytes ({})",
                    key.len(),
                    limits.max_attribute_key_bytes
                ),
            ));
        }
        let value_bytes = json_value_size(value);
        if value_bytes > limits.max_attribute_value_bytes {
            return Err((
                Limit::AttributeValueBytes,
                format!(
                    "value of attribute {key:?} of {value_bytes} bytes is over max_attribute_value_bytes ({})",
                    limits.max_attribute_value_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// A cheap upper bound of a JSON value's encoded size.
fn json_value_size(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(text) => text.len() + 2,
        serde_json::Value::Array(items) => items.iter().map(json_value_size).sum::<usize>() + 2,
        serde_json::Value::Object(map) => json_size(map),
        _ => 8,
    }
}

/// A cheap upper bound of a JSON object's encoded size.
/// Counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A span's approximate JSON size: its strings and attribute maps.
fn span_size(span: &Span) -> usize {
    span.name.len()
        + span.status_message.len()
        + json_size(&span.attributes)
        + json_size(&span.resource)
        + span
            .events
            .iter()
            .map(|event| event.name.len() + json_size(&event.attributes))
            .sum::<usize>()
        + span
            .links
            .iter()
            .map(|link| json_size(&link.attributes))
            .sum::<usize>()
        + 512
}

fn json_size(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    map.iter()
        .map(|(key, value)| key.len() + 4 + json_value_size(value))
        .sum::<usize>()
        + 2
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

fn format_nanos(timestamp: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{timestamp}ns"))
}

/// A partial-success message: how many were refused and the first reasons.
pub fn summarize(rejections: &[Rejection], what: &str) -> String {
    const SHOWN: usize = 5;
    let mut message = format!("{} {what} rejected:", rejections.len());
    for rejection in rejections.iter().take(SHOWN) {
        message.push_str(&format!(" [{}] {};", rejection.index, rejection.reason));
    }
    if rejections.len() > SHOWN {
        message.push_str(&format!(" and {} more", rejections.len() - SHOWN));
    }
    message
}

/// The partial-success message of a traces export: spans without valid ids
/// (dropped while decoding) and spans over a limit.
pub fn spans_message(malformed: usize, limited: &[Rejection]) -> String {
    let mut parts = Vec::new();
    if malformed > 0 {
        parts.push(format!(
            "{malformed} spans had a missing or malformed trace_id or span_id"
        ));
    }
    if !limited.is_empty() {
        parts.push(summarize(limited, "spans"));
    }
    parts.join("; ")
}
