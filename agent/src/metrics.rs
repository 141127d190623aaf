//! The agent's own telemetry: typed counters with bounded labels, rendered
//! in the Prometheus text format on `GET /metrics`.
//!
//! Labels never carry file paths or other unbounded values: one agent
//! tails thousands of files over its life.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
    /// Any other retryable status.
    Other,
}

impl RetryReason {
    const ALL: [RetryReason; 4] = [
        RetryReason::Unavailable,
        RetryReason::ResourceExhausted,
        RetryReason::DeadlineExceeded,
        RetryReason::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RetryReason::Unavailable => "unavailable",
            RetryReason::ResourceExhausted => "resource_exhausted",
            RetryReason::DeadlineExceeded => "deadline_exceeded",
            RetryReason::Other => "other",
        }
    }
}

/// All counters of one agent. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
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
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        counter(
            &mut out,
            "sightline_agent_lines_read_total",
            "Lines read from log files.",
            load(&self.lines_read),
        );
        counter(
            &mut out,
            "sightline_agent_bytes_read_total",
            "Bytes read from log files.",
            load(&self.bytes_read),
        );
        counter(
            &mut out,
            "sightline_agent_read_errors_total",
            "Failed reads of log files.",
            load(&self.read_errors),
        );
        counter(
            &mut out,
            "sightline_agent_records_sent_total",
            "Records acknowledged by the collector.",
            load(&self.records_sent),
        );
        counter(
            &mut out,
            "sightline_agent_batches_sent_total",
            "Batches acknowledged by the collector.",
            load(&self.batches_sent),
        );
        header(
            &mut out,
            "sightline_agent_records_failed_total",
            "Records given up on, by reason.",
            "counter",
        );
        for reason in FailureReason::ALL {
            let value = load(&self.records_failed[reason as usize]);
            let _ = writeln!(
                out,
                "sightline_agent_records_failed_total{{reason=\"{}\"}} {value}",
                reason.label()
            );
        }
        header(
            &mut out,
            "sightline_agent_send_retries_total",
            "Export attempts retried, by reason.",
            "counter",
        );
        for reason in RetryReason::ALL {
            let value = load(&self.send_retries[reason as usize]);
            let _ = writeln!(
                out,
                "sightline_agent_send_retries_total{{reason=\"{}\"}} {value}",
                reason.label()
            );
        }
        counter(
            &mut out,
            "sightline_agent_checkpoint_writes_total",
            "Checkpoint files written.",
            load(&self.checkpoint_writes),
        );
        counter(
            &mut out,
            "sightline_agent_checkpoint_errors_total",
            "Checkpoint writes that failed.",
            load(&self.checkpoint_errors),
        );
        header(
            &mut out,
            "sightline_agent_files_watched",
            "Files currently tailed.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "sightline_agent_files_watched {}",
            self.files_watched.load(Ordering::Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
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
        let text = metrics.render_prometheus();
        for expected in [
            "# TYPE sightline_agent_lines_read_total counter\nsightline_agent_lines_read_total 3\n",
            "sightline_agent_bytes_read_total 120\n",
            "sightline_agent_records_sent_total 3\n",
            "sightline_agent_records_failed_total{reason=\"rejected\"} 2\n",
            "sightline_agent_records_failed_total{reason=\"partial_success\"} 0\n",
            "sightline_agent_send_retries_total{reason=\"unavailable\"} 1\n",
            "sightline_agent_files_watched 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
