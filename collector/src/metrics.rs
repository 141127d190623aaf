//! The collector's own metrics, served at `/metrics` in Prometheus text format.
//!
//! Counters are plain atomics; labels come from fixed enums only (signal,
//! rejection reason), so cardinality is bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sightline_vocab::exposition::{Kind, Writer};

use sightline_pipeline::{Batch, PipelineMetrics};

/// Why a record was refused while the rest of its batch was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Timestamp,
    TooLarge,
    Malformed,
}

impl RejectReason {
    const ALL: [RejectReason; 3] = [
        RejectReason::Timestamp,
        RejectReason::TooLarge,
        RejectReason::Malformed,
    ];

    fn label(self) -> &'static str {
        match self {
            RejectReason::Timestamp => "timestamp",
            RejectReason::TooLarge => "too_large",
            RejectReason::Malformed => "malformed",
        }
    }
}

/// Which limit refused a record or a request, for
/// `sightline_collector_limited_total{limit="..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-record-bytes`.
    RecordBytes,
    /// `--max-attributes`.
    Attributes,
    /// `--max-attribute-key-bytes`.
    AttributeKeyBytes,
    /// `--max-attribute-value-bytes`.
    AttributeValueBytes,
    /// The received request body size.
    BodyBytes,
    /// The decompressed request body size.
    DecodedBytes,
    /// `--ingest-rate-limit-bytes`, per client address.
    IngestRate,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::RecordBytes,
        Limit::Attributes,
        Limit::AttributeKeyBytes,
        Limit::AttributeValueBytes,
        Limit::BodyBytes,
        Limit::DecodedBytes,
        Limit::IngestRate,
    ];

    /// The label value, which is also the limit's name in error messages.
    pub fn label(self) -> &'static str {
        match self {
            Limit::RecordBytes => "max_record_bytes",
            Limit::Attributes => "max_attributes",
            Limit::AttributeKeyBytes => "max_attribute_key_bytes",
            Limit::AttributeValueBytes => "max_attribute_value_bytes",
            Limit::BodyBytes => "max_body_bytes",
            Limit::DecodedBytes => "max_decoded_bytes",
            Limit::IngestRate => "ingest_rate",
        }
    }
}

#[derive(Debug, Default)]
pub struct CollectorMetrics {
    limited: [AtomicU64; 7],
    log_records: AtomicU64,
    spans: AtomicU64,
    rejected: [AtomicU64; 3],
    busy_refusals: AtomicU64,
    wal_bytes_written: AtomicU64,
    commits: AtomicU64,
    commit_nanos: AtomicU64,
    retention_partitions_dropped: AtomicU64,
    /// 1 when the last configuration (re)load succeeded.
    config_reload_successful: AtomicU64,
    /// Unix seconds of the last successful (re)load, as `f64` bits.
    config_reload_success_seconds: AtomicU64,
    /// Cluster mode's partition ownership counters.
    cluster: std::sync::OnceLock<(
        std::sync::Arc<sightline_cluster::NodeStats>,
        std::sync::Arc<sightline_cluster::cache::CacheStats>,
        std::sync::Arc<sightline_cluster::metrics::reader::BlockCacheStats>,
    )>,
}

/// Sizes read from disk when `/metrics` is scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskUsage {
    pub wal_bytes: u64,
    pub log_index_bytes: u64,
    pub span_store_bytes: u64,
    pub log_records: u64,
    pub memory_budget_in_use: u64,
}

impl PipelineMetrics for CollectorMetrics {
    fn ingested(&self, batch: &Batch) {
        match batch {
            Batch::Logs(records) => self
                .log_records
                .fetch_add(records.len() as u64, Ordering::Relaxed),
            Batch::Spans(spans) => self.spans.fetch_add(spans.len() as u64, Ordering::Relaxed),
        };
    }

    fn wal_appended_bytes(&self, bytes: usize) {
        self.wal_bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn committed(&self, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl CollectorMetrics {
    pub fn rejected(&self, reason: RejectReason, count: u64) {
        let index = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[index].fetch_add(count, Ordering::Relaxed);
    }

    /// A record or request refused by `limit`.
    pub fn limited(&self, limit: Limit) {
        let index = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.limited[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn busy(&self) {
        self.busy_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub fn partitions_dropped(&self, count: u64) {
        self.retention_partitions_dropped
            .fetch_add(count, Ordering::Relaxed);
    }

    /// The outcome of a configuration load (the one at start, or a reload).
    pub fn config_loaded(&self, success: bool) {
        self.config_reload_successful
            .store(u64::from(success), Ordering::Relaxed);
        if success {
            let now_seconds = (sightline_vocab::clock::now_nanos() / 1_000_000_000) as f64;
            self.config_reload_success_seconds
                .store(now_seconds.to_bits(), Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self, disk: DiskUsage) -> String {
        let mut out = String::with_capacity(2048);
        let mut writer = Writer::new(&mut out);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        // Each sample has at most one label.
        type Sample<'a> = (Option<(&'a str, &'a str)>, f64);
        let mut metric = |name: &str, kind: Kind, help: &str, samples: &[Sample<'_>]| {
            writer.family(name, kind, help);
            for (label, value) in samples {
                writer.sample(name, label.as_slice(), *value);
            }
        };
        metric(
            "sightline_collector_ingested_total",
            Kind::Counter,
            "Records and spans durably accepted (in the WAL and acknowledged).",
            &[
                (Some(("signal", "logs")), load(&self.log_records) as f64),
                (Some(("signal", "traces")), load(&self.spans) as f64),
            ],
        );
        let rejected: Vec<Sample<'_>> = RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(reason, count)| (Some(("reason", reason.label())), load(count) as f64))
            .collect();
        metric(
            "sightline_collector_rejected_records_total",
            Kind::Counter,
            "Records refused while the rest of their batch was kept.",
            &rejected,
        );
        let limited: Vec<Sample<'_>> = Limit::ALL
            .iter()
            .zip(&self.limited)
            .map(|(limit, count)| (Some(("limit", limit.label())), load(count) as f64))
            .collect();
        metric(
            "sightline_collector_limited_total",
            Kind::Counter,
            "Records and requests refused by a size or count limit, by limit.",
            &limited,
        );
        metric(
            "sightline_collector_busy_refusals_total",
            Kind::Counter,
            "Requests refused with RESOURCE_EXHAUSTED / 429 because ingest was at capacity.",
            &[(None, load(&self.busy_refusals) as f64)],
        );
        metric(
            "sightline_collector_wal_written_bytes_total",
            Kind::Counter,
            "Bytes appended to the write-ahead log.",
            &[(None, load(&self.wal_bytes_written) as f64)],
        );
        metric(
            "sightline_collector_wal_bytes",
            Kind::Gauge,
            "Bytes the write-ahead log holds on disk (the indexing backlog).",
            &[(None, disk.wal_bytes as f64)],
        );
        metric(
            "sightline_collector_index_commits_total",
            Kind::Counter,
            "Index commits.",
            &[(None, load(&self.commits) as f64)],
        );
        metric(
            "sightline_collector_index_commit_seconds_total",
            Kind::Counter,
            "Time spent committing indexes.",
            &[(None, load(&self.commit_nanos) as f64 / 1e9)],
        );
        metric(
            "sightline_collector_disk_bytes",
            Kind::Gauge,
            "Bytes on disk per store.",
            &[
                (Some(("store", "logs")), disk.log_index_bytes as f64),
                (Some(("store", "spans")), disk.span_store_bytes as f64),
                (Some(("store", "wal")), disk.wal_bytes as f64),
            ],
        );
        metric(
            "sightline_collector_log_records",
            Kind::Gauge,
            "Log records stored.",
            &[(None, disk.log_records as f64)],
        );
        metric(
            "sightline_collector_memory_budget_in_use_bytes",
            Kind::Gauge,
            "Bytes of batches in flight between receivers and indexes.",
            &[(None, disk.memory_budget_in_use as f64)],
        );
        metric(
            "sightline_collector_retention_dropped_partitions_total",
            Kind::Counter,
            "Day partitions deleted by retention.",
            &[(None, load(&self.retention_partitions_dropped) as f64)],
        );
        let reload_successful = load(&self.config_reload_successful) as f64;
        let reload_seconds = f64::from_bits(load(&self.config_reload_success_seconds)).floor();
        // Also under Prometheus' names, which dashboards and alerts use.
        for prefix in ["sightline", "prometheus"] {
            metric(
                &format!("{prefix}_config_last_reload_successful"),
                Kind::Gauge,
                "Whether the last configuration reload attempt was successful.",
                &[(None, reload_successful)],
            );
            metric(
                &format!("{prefix}_config_last_reload_success_timestamp_seconds"),
                Kind::Gauge,
                "Timestamp of the last successful configuration reload.",
                &[(None, reload_seconds)],
            );
        }
        if let Some((node, cache, blocks)) = self.cluster.get() {
            out.push_str(&node.render());
            out.push_str(&cache.render());
            out.push_str(&blocks.render());
        }
        out
    }

    /// Exposes cluster mode's counters with the collector's.
    pub fn set_cluster(
        &self,
        node: std::sync::Arc<sightline_cluster::NodeStats>,
        cache: std::sync::Arc<sightline_cluster::cache::CacheStats>,
        blocks: std::sync::Arc<sightline_cluster::metrics::reader::BlockCacheStats>,
    ) {
        let _ = self.cluster.set((node, cache, blocks));
    }

    /// Counts records and spans acknowledged in cluster mode (published to
    /// the cluster log instead of the local pipeline).
    pub fn published(&self, logs: u64, spans: u64) {
        self.log_records.fetch_add(logs, Ordering::Relaxed);
        self.spans.fetch_add(spans, Ordering::Relaxed);
    }
}
