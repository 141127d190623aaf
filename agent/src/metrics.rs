//! The agent's own telemetry: typed counters with bounded labels, rendered
//! in the Prometheus text format on `GET /metrics`.
//!
//! Labels never carry file paths or other unbounded values: one agent
//! tails thousands of files over its life. Per-file series are labelled by
//! namespace, pod, container and file name, and exist only while the file
//! is tailed or has records in flight, so their number is bounded by the
//! containers on the node.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sightline_vocab::exposition::{Kind, Writer};
use tokio::sync::Semaphore;

use crate::identity::{Fingerprint, ResetReason};

/// Bounded labels of a file's series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLabels {
    /// Kubernetes namespace, empty outside Kubernetes.
    pub namespace: String,
    /// Pod name, empty outside Kubernetes.
    pub pod: String,
    /// Container name, if known.
    pub container: String,
    /// File name (not the path), e.g. `0.log`.
    pub file: String,
}

/// Counters and gauges of one tailed file.
#[derive(Debug, Default)]
pub struct FileStats {
    labels: FileLabels,
    lines_read: AtomicU64,
    bytes_read: AtomicU64,
    size: AtomicU64,
    acked: AtomicU64,
    fingerprint: AtomicU64,
}

impl FileStats {
    /// Stats for a file with these labels.
    pub fn new(labels: FileLabels) -> FileStats {
        FileStats {
            labels,
            ..FileStats::default()
        }
    }

    /// Lines and bytes read from the file.
    pub fn add_read(&self, lines: u64, bytes: u64) {
        self.lines_read.fetch_add(lines, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The file's size as last seen.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Records the file's size.
    pub fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// Records the acknowledged offset.
    pub fn set_acked(&self, offset: u64) {
        self.acked.store(offset, Ordering::Relaxed);
    }

    /// The acknowledged offset.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Fingerprint of the bytes read so far from the start of the file.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::unpack(self.fingerprint.load(Ordering::Relaxed))
    }

    /// Records the fingerprint.
    pub fn set_fingerprint(&self, fingerprint: Fingerprint) {
        self.fingerprint
            .store(fingerprint.pack(), Ordering::Relaxed);
    }
}

/// Why records were given up on (they are logged, counted, never silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The collector refused the whole batch with a non-retryable status.
    Rejected,
    /// The collector accepted the batch but reported rejected records.
    PartialSuccess,
}

impl FailureReason {
    const ALL: [FailureReason; 2] = [FailureReason::Rejected, FailureReason::PartialSuccess];

    fn label(self) -> &'static str {
        match self {
            FailureReason::Rejected => "rejected",
            FailureReason::PartialSuccess => "partial_success",
        }
    }
}

/// Why an export was retried: the gRPC status, folded to a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// `UNAVAILABLE`, including "cannot connect".
    Unavailable,
    /// `RESOURCE_EXHAUSTED`: the collector pushes back.
    ResourceExhausted,
    /// `DEADLINE_EXCEEDED`: the export timed out.
    DeadlineExceeded,
    /// `UNAUTHENTICATED` / `PERMISSION_DENIED`: a token the collector does
    /// not accept. Retried, not dropped: the lines wait in their files
    /// until an operator fixes the token.
    Unauthenticated,
    /// Any other retryable status.
    Other,
}

impl RetryReason {
    const ALL: [RetryReason; 5] = [
        RetryReason::Unavailable,
        RetryReason::ResourceExhausted,
        RetryReason::DeadlineExceeded,
        RetryReason::Unauthenticated,
        RetryReason::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RetryReason::Unavailable => "unavailable",
            RetryReason::ResourceExhausted => "resource_exhausted",
            RetryReason::DeadlineExceeded => "deadline_exceeded",
            RetryReason::Unauthenticated => "unauthenticated",
            RetryReason::Other => "other",
        }
    }
}

/// Why bytes of a log file could never be read: a fixed set, the `reason`
/// label of `sightline_agent_bytes_lost_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The file was deleted (or found nowhere after a restart) before it
    /// was read to its end: its size last seen minus the offset reached.
    Removed,
    /// The file was cut in place (copytruncate) or rewritten: the largest
    /// size seen before the cut minus the offset read.
    Truncated,
}

impl LossReason {
    const ALL: [LossReason; 2] = [LossReason::Removed, LossReason::Truncated];

    fn label(self) -> &'static str {
        match self {
            LossReason::Removed => "removed",
            LossReason::Truncated => "truncated",
        }
    }
}

/// Why records never left the node on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A `filters.drop_patterns` regex matched.
    Filter,
}

/// All counters of one agent. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    files: Mutex<Vec<Weak<FileStats>>>,
    checkpoint_resets: [AtomicU64; 2],
    bytes_lost: [AtomicU64; LossReason::ALL.len()],
    records_dropped: AtomicU64,
    records_redacted: AtomicU64,
    lines_truncated: AtomicU64,
    files_excluded: AtomicU64,
    config_reloads: AtomicU64,
    config_reload_errors: AtomicU64,
    budget: OnceLock<(Arc<Semaphore>, usize)>,
    oldest_unacked_read_nanos: AtomicU64,
    lines_read: AtomicU64,
    bytes_read: AtomicU64,
    read_errors: AtomicU64,
    records_sent: AtomicU64,
    batches_sent: AtomicU64,
    records_failed: [AtomicU64; FailureReason::ALL.len()],
    send_retries: [AtomicU64; RetryReason::ALL.len()],
    checkpoint_writes: AtomicU64,
    checkpoint_errors: AtomicU64,
    files_watched: AtomicI64,
}

impl Metrics {
    /// Starts the per-file series of a file; they end when `stats` is
    /// dropped (reader stopped and no record of the file in flight).
    pub fn track_file(&self, stats: &Arc<FileStats>) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|file| file.strong_count() > 0);
        files.push(Arc::downgrade(stats));
    }

    /// A stored offset was not trusted and a file is read from its start.
    pub fn add_checkpoint_reset(&self, reason: ResetReason) {
        let index = match reason {
            ResetReason::Truncated => 0,
            ResetReason::Fingerprint => 1,
        };
        self.checkpoint_resets[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of files removed before they were read to their end.
    pub fn add_bytes_lost(&self, bytes: u64) {
        self.add_lost(LossReason::Removed, bytes);
    }

    /// Bytes that can never be read, by reason.
    pub fn add_lost(&self, reason: LossReason, bytes: u64) {
        self.bytes_lost[reason as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes lost so far, all reasons.
    pub fn bytes_lost(&self) -> u64 {
        LossReason::ALL
            .iter()
            .map(|reason| self.lost(*reason))
            .sum()
    }

    /// Bytes lost so far for `reason`.
    pub fn lost(&self, reason: LossReason) -> u64 {
        self.bytes_lost[reason as usize].load(Ordering::Relaxed)
    }

    /// Records dropped on purpose.
    pub fn add_dropped(&self, _reason: DropReason, records: u64) {
        self.records_dropped.fetch_add(records, Ordering::Relaxed);
    }

    /// Records in which something was masked.
    pub fn add_redacted(&self, records: u64) {
        self.records_redacted.fetch_add(records, Ordering::Relaxed);
    }

    /// Messages cut at the size limit.
    pub fn add_truncated(&self, records: u64) {
        self.lines_truncated.fetch_add(records, Ordering::Relaxed);
    }

    /// A file was not tailed because a filter excludes its container.
    pub fn add_file_excluded(&self) {
        self.files_excluded.fetch_add(1, Ordering::Relaxed);
    }

    /// A SIGHUP reload finished.
    pub fn add_config_reload(&self, ok: bool) {
        let counter = if ok {
            &self.config_reloads
        } else {
            &self.config_reload_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The memory budget to report on (set once at start).
    pub(crate) fn watch_budget(&self, budget: Arc<Semaphore>, limit: usize) {
        let _ = self.budget.set((budget, limit));
    }

    /// Bytes of the memory budget in use.
    pub fn budget_in_use(&self) -> u64 {
        self.budget.get().map_or(0, |(budget, limit)| {
            limit.saturating_sub(budget.available_permits()) as u64
        })
    }

    fn budget_limit(&self) -> u64 {
        self.budget.get().map_or(0, |(_, limit)| *limit as u64)
    }

    /// Wall-clock read time (Unix ns) of the oldest record the sink is
    /// trying to deliver; 0 when nothing is waiting.
    pub fn set_oldest_unacked(&self, read_unix_nanos: u64) {
        self.oldest_unacked_read_nanos
            .store(read_unix_nanos, Ordering::Relaxed);
    }

    /// Lines and bytes taken from a file.
    pub fn add_read(&self, lines: u64, bytes: u64) {
        self.lines_read.fetch_add(lines, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A read from a file failed.
    pub fn add_read_error(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch of `records` was acknowledged by the collector.
    pub fn add_sent(&self, records: u64) {
        self.records_sent.fetch_add(records, Ordering::Relaxed);
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Records were given up on.
    pub fn add_failed(&self, reason: FailureReason, records: u64) {
        self.records_failed[reason as usize].fetch_add(records, Ordering::Relaxed);
    }

    /// An export is retried.
    pub fn add_retry(&self, reason: RetryReason) {
        self.send_retries[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint write finished.
    pub fn add_checkpoint_write(&self, ok: bool) {
        let counter = if ok {
            &self.checkpoint_writes
        } else {
            &self.checkpoint_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A file started (`+1`) or stopped (`-1`) being tailed.
    pub fn add_files_watched(&self, delta: i64) {
        self.files_watched.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records acknowledged so far (tests and the admin page read this).
    pub fn records_sent(&self) -> u64 {
        self.records_sent.load(Ordering::Relaxed)
    }

    /// Renders every metric in the Prometheus text format 0.0.4.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut writer = Writer::new(&mut out);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        counter(
            &mut writer,
            "sightline_agent_lines_read_total",
            "Lines read from log files.",
            load(&self.lines_read),
        );
        counter(
            &mut writer,
            "sightline_agent_bytes_read_total",
            "Bytes read from log files.",
            load(&self.bytes_read),
        );
        counter(
            &mut writer,
            "sightline_agent_read_errors_total",
            "Failed reads of log files.",
            load(&self.read_errors),
        );
        counter(
            &mut writer,
            "sightline_agent_records_sent_total",
            "Records acknowledged by the collector.",
            load(&self.records_sent),
        );
        counter(
            &mut writer,
            "sightline_agent_batches_sent_total",
            "Batches acknowledged by the collector.",
            load(&self.batches_sent),
        );
        writer.family(
            "sightline_agent_records_failed_total",
            Kind::Counter,
            "Records given up on, by reason.",
        );
        for reason in FailureReason::ALL {
            let value = load(&self.records_failed[reason as usize]);
            writer.sample(
                "sightline_agent_records_failed_total",
                &[("reason", reason.label())],
                value,
            );
        }
        writer.family(
            "sightline_agent_send_retries_total",
            Kind::Counter,
            "Export attempts retried, by reason.",
        );
        for reason in RetryReason::ALL {
            let value = load(&self.send_retries[reason as usize]);
            writer.sample(
                "sightline_agent_send_retries_total",
                &[("reason", reason.label())],
                value,
            );
        }
        counter(
            &mut writer,
            "sightline_agent_checkpoint_writes_total",
            "Checkpoint files written.",
            load(&self.checkpoint_writes),
        );
        counter(
            &mut writer,
            "sightline_agent_checkpoint_errors_total",
            "Checkpoint writes that failed.",
            load(&self.checkpoint_errors),
        );
        writer.family(
            "sightline_agent_files_watched",
            Kind::Gauge,
            "Files currently tailed.",
        );
        writer.sample(
            "sightline_agent_files_watched",
            &[],
            self.files_watched.load(Ordering::Relaxed),
        );
        writer.family(
            "sightline_agent_checkpoint_resets_total",
            Kind::Counter,
            "Files read from their start because the stored offset did not fit them.",
        );
        for (index, reason) in ["truncated", "fingerprint"].iter().enumerate() {
            writer.sample(
                "sightline_agent_checkpoint_resets_total",
                &[("reason", *reason)],
                load(&self.checkpoint_resets[index]),
            );
        }
        writer.family(
            "sightline_agent_bytes_lost_total",
            Kind::Counter,
            "Bytes that could never be read, by reason: files removed, or cut in place (copytruncate), before they were read.",
        );
        for reason in LossReason::ALL {
            writer.sample(
                "sightline_agent_bytes_lost_total",
                &[("reason", reason.label())],
                self.lost(reason),
            );
        }
        counter(
            &mut writer,
            "sightline_agent_records_dropped_total",
            "Records dropped by filters.",
            load(&self.records_dropped),
        );
        counter(
            &mut writer,
            "sightline_agent_records_redacted_total",
            "Records in which a secret was masked.",
            load(&self.records_redacted),
        );
        counter(
            &mut writer,
            "sightline_agent_records_truncated_total",
            "Messages cut at the size limit (flagged log.truncated).",
            load(&self.lines_truncated),
        );
        counter(
            &mut writer,
            "sightline_agent_files_excluded_total",
            "Files not tailed because a filter excludes their container.",
            load(&self.files_excluded),
        );
        counter(
            &mut writer,
            "sightline_agent_config_reloads_total",
            "Configuration reloads applied (SIGHUP).",
            load(&self.config_reloads),
        );
        counter(
            &mut writer,
            "sightline_agent_config_reload_errors_total",
            "Configuration reloads refused because the file was invalid.",
            load(&self.config_reload_errors),
        );
        gauge(
            &mut writer,
            "sightline_agent_memory_budget_bytes",
            "Limit on bytes read and not yet acknowledged.",
            self.budget_limit() as i64,
        );
        gauge(
            &mut writer,
            "sightline_agent_memory_budget_in_use_bytes",
            "Bytes read and not yet acknowledged.",
            self.budget_in_use() as i64,
        );
        let oldest = self.oldest_unacked_read_nanos.load(Ordering::Relaxed);
        let age_seconds = if oldest == 0 {
            0.0
        } else {
            sightline_vocab::clock::now_nanos_u64().saturating_sub(oldest) as f64 / 1e9
        };
        writer.family(
            "sightline_agent_oldest_unacked_age_seconds",
            Kind::Gauge,
            "Age of the oldest record read and not yet acknowledged.",
        );
        // Milliseconds are precision enough.
        writer.sample(
            "sightline_agent_oldest_unacked_age_seconds",
            &[],
            (age_seconds * 1e3).round() / 1e3,
        );
        self.render_files(&mut writer);
        out
    }

    fn render_files(&self, writer: &mut Writer<'_>) {
        let files: Vec<Arc<FileStats>> = {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.retain(|file| file.strong_count() > 0);
            files.iter().filter_map(Weak::upgrade).collect()
        };
        let series = [
            (
                "sightline_agent_file_lines_read_total",
                "Lines read, per tailed file.",
                Kind::Counter,
            ),
            (
                "sightline_agent_file_bytes_read_total",
                "Bytes read, per tailed file.",
                Kind::Counter,
            ),
            (
                "sightline_agent_file_bytes_behind",
                "File size minus acknowledged offset, per tailed file.",
                Kind::Gauge,
            ),
        ];
        // Generations of one stream (a renamed file and its successor,
        // a file cut in place and read again) share their labels: one
        // series each, summed, as the text format allows no duplicates.
        let mut streams: Vec<(&FileLabels, [u64; 3])> = Vec::new();
        for file in &files {
            let values = [
                file.lines_read.load(Ordering::Relaxed),
                file.bytes_read.load(Ordering::Relaxed),
                file.size().saturating_sub(file.acked()),
            ];
            match streams
                .iter_mut()
                .find(|(labels, _)| **labels == file.labels)
            {
                Some((_, sums)) => {
                    for (sum, value) in sums.iter_mut().zip(values) {
                        *sum += value;
                    }
                }
                None => streams.push((&file.labels, values)),
            }
        }
        for (index, (name, help, kind)) in series.iter().enumerate() {
            writer.family(name, *kind, help);
            for (labels, values) in &streams {
                let labels = [
                    ("namespace", labels.namespace.as_str()),
                    ("pod", labels.pod.as_str()),
                    ("container", labels.container.as_str()),
                    ("file", labels.file.as_str()),
                ];
                writer.sample(name, &labels, values[index]);
            }
        }
    }
}

fn gauge(writer: &mut Writer<'_>, name: &str, help: &str, value: i64) {
    writer.family(name, Kind::Gauge, help);
    writer.sample(name, &[], value);
}

fn counter(writer: &mut Writer<'_>, name: &str, help: &str, value: u64) {
    writer.family(name, Kind::Counter, help);
    writer.sample(name, &[], value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.add_read(3, 120);
        metrics.add_sent(3);
        metrics.add_failed(FailureReason::Rejected, 2);
        metrics.add_retry(RetryReason::Unavailable);
        metrics.add_files_watched(1);
        let file = Arc::new(FileStats::new(FileLabels {
            namespace: "shop".to_owned(),
            pod: "p".to_owned(),
            container: "c".to_owned(),
            file: "0.log".to_owned(),
        }));
        file.add_read(2, 100);
        file.set_size(100);
        file.set_acked(40);
        metrics.track_file(&file);
        let text = metrics.render_prometheus();
        for expected in [
            "# TYPE sightline_agent_lines_read_total counter\nsightline_agent_lines_read_total 3\n",
            "sightline_agent_bytes_read_total 120\n",
            "sightline_agent_records_sent_total 3\n",
            "sightline_agent_records_failed_total{reason=\"rejected\"} 2\n",
            "sightline_agent_records_failed_total{reason=\"partial_success\"} 0\n",
            "sightline_agent_send_retries_total{reason=\"unavailable\"} 1\n",
            "sightline_agent_files_watched 1\n",
            "sightline_agent_file_bytes_behind{namespace=\"shop\",pod=\"p\",container=\"c\",file=\"0.log\"} 60\n",
            "sightline_agent_file_lines_read_total{namespace=\"shop\",pod=\"p\",container=\"c\",file=\"0.log\"} 2\n",
            "sightline_agent_bytes_lost_total{reason=\"removed\"} 0\n",
            "sightline_agent_bytes_lost_total{reason=\"truncated\"} 0\n",
            "sightline_agent_memory_budget_in_use_bytes 0\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        drop(file);
        let text = metrics.render_prometheus();
        assert!(!text.contains("file=\"0.log\""), "series end with the file");
    }

    #[test]
    fn generations_of_one_stream_make_one_series() {
        let metrics = Metrics::default();
        let labels = FileLabels {
            file: "0.log".to_owned(),
            ..FileLabels::default()
        };
        let renamed = Arc::new(FileStats::new(labels.clone()));
        let successor = Arc::new(FileStats::new(labels));
        renamed.add_read(3, 30);
        successor.add_read(2, 20);
        metrics.track_file(&renamed);
        metrics.track_file(&successor);
        let text = metrics.render_prometheus();
        let series = "sightline_agent_file_lines_read_total{namespace=\"\",pod=\"\",container=\"\",file=\"0.log\"}";
        assert_eq!(text.matches(series).count(), 1, "{text}");
        assert!(text.contains(&format!("{series} 5\n")), "{text}");
    }

    #[test]
    fn lost_bytes_are_counted_per_reason() {
        let metrics = Metrics::default();
        metrics.add_bytes_lost(10);
        metrics.add_lost(LossReason::Truncated, 64);
        metrics.add_lost(LossReason::Truncated, 36);
        assert_eq!(metrics.lost(LossReason::Removed), 10);
        assert_eq!(metrics.lost(LossReason::Truncated), 100);
        assert_eq!(metrics.bytes_lost(), 110);
        let text = metrics.render_prometheus();
        assert!(text.contains("sightline_agent_bytes_lost_total{reason=\"removed\"} 10\n"));
        assert!(text.contains("sightline_agent_bytes_lost_total{reason=\"truncated\"} 100\n"));
        assert_eq!(
            text.matches("# TYPE sightline_agent_bytes_lost_total counter")
                .count(),
            1
        );
    }
}
