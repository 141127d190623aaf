//! Log-derived metrics: counters defined in the config file from a log query
//! and a few label fields, incremented as records are ingested.
//!
//! ```yaml
//! log_metrics:
//!   - name: failed_logins_total
//!     help: Failed logins by client address
//!     query: 'body:"login failed"'
//!     labels: [ip_address]
//! ```
//!
//! makes "more than 10 failed logins in a minute from one IP" an ordinary
//! alert rule: `sum by (ip_address) (increase(failed_logins_total[1m])) > 10`.
//!
//! - **Where records are counted.** the collector's `Ingest::logs` matches
//!   the accepted records of a batch against every query (the in-memory
//!   [`LogMatcher`], the same syntax as `/api/logs`) and adds the counts only
//!   once the batch is durable in the WAL: each acknowledged record is
//!   counted once, a refused batch (over capacity) not at all.
//! - **Labels.** `service`, `severity`, `trace_id`, `span_id`, `request_id`,
//!   `resource.<path>` and attribute paths (`ip_address`, `user.id`, or
//!   `attributes.<path>`); the label name is the field's last part
//!   sanitized (`resource.k8s.pod.name` -> `k8s_pod_name`). A record without
//!   the field has no such label.
//! - **Bounded.** At most [`MAX_SERIES_PER_METRIC`] label combinations per
//!   metric; records that would add one more are not counted, and
//!   `sightline_log_metric_series_dropped_total{metric}` counts them (a
//!   warning is logged the first time).
//! - **Flushed.** Every [`FLUSH_INTERVAL`] each counter's current value is
//!   appended to the metric store with the flush time, so they are ordinary
//!   counters for PromQL. A combination seen for the first time also gets a
//!   `0` at the previous flush, so `increase` counts its first records.
//!   Counts live in memory: after a restart they start again from zero,
//!   which `rate` and `increase` read as a counter reset.
//! - **Saved searches' alerts.** Besides the config file's metrics, the set
//!   made from saved searches ([`LogMetrics::set_searches`]) changes at run
//!   time: a new metric is held (counted, not flushed) until its history
//!   from the stored records is written ([`LogMetrics::release`] with the
//!   backfill's totals), so its series stay in time order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sightline_store::{LogMatcher, LogRecord};
use sightline_tsdb::{Labels, MetricMetadata, SampleLog, TsdbError};
use sightline_vocab::names::is_metric_name;
use tokio::sync::watch;

use crate::config_file::LogMetricConfig;
use crate::otlp::label_name;

/// Most label combinations one log-derived metric keeps.
pub const MAX_SERIES_PER_METRIC: usize = 10_000;

/// How often counters are written to the metric store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The series counting records that found no room under the bound.
pub const DROPPED_METRIC: &str = "sightline_log_metric_series_dropped_total";

/// A `log_metrics` entry that cannot be used, named by its position.
#[derive(Debug, thiserror::Error)]
pub enum LogMetricsError {
    #[error(
        "log_metrics[{index}]: invalid metric name {name:?} (expected [a-zA-Z_:][a-zA-Z0-9_:]*)"
    )]
    InvalidName { index: usize, name: String },
    #[error("log_metrics[{index}] ({name}): invalid query: {reason}")]
    InvalidQuery {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("log_metrics[{index}]: metric {name:?} is defined twice")]
    Duplicate { index: usize, name: String },
    #[error("metric {name:?} is a log_metrics metric of the config file")]
    Configured { name: String },
}

/// Where a label's value comes from in a record.
#[derive(Debug, Clone)]
enum Field {
    Service,
    Severity,
    TraceId,
    SpanId,
    RequestId,
    Resource(String),
    Attribute(String),
}

impl Field {
    fn parse(field: &str) -> Field {
        match field {
            "service" => Field::Service,
            "severity" => Field::Severity,
            "trace_id" => Field::TraceId,
            "span_id" => Field::SpanId,
            "request_id" => Field::RequestId,
            _ => match field.strip_prefix("resource.") {
                Some(path) => Field::Resource(path.to_string()),
                None => Field::Attribute(
                    field
                        .strip_prefix("attributes.")
                        .unwrap_or(field)
                        .to_string(),
                ),
            },
        }
    }

    fn value(&self, record: &LogRecord) -> String {
        match self {
            Field::Service => record.service.clone(),
            Field::Severity => record.severity_text.clone(),
            Field::TraceId => record.trace_id.clone().unwrap_or_default(),
            Field::SpanId => record.span_id.clone().unwrap_or_default(),
            Field::RequestId => record.request_id.clone().unwrap_or_default(),
            Field::Resource(path) => json_path(&record.resource, path),
            Field::Attribute(path) => json_path(&record.attributes, path),
        }
    }
}

/// The value at a dotted path (a key with dots, or nested objects) as text.
fn json_path(object: &serde_json::Map<String, serde_json::Value>, path: &str) -> String {
    if let Some(value) = object.get(path) {
        return match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
    }
    for (index, _) in path.match_indices('.') {
        if let Some(serde_json::Value::Object(inner)) = object.get(&path[..index]) {
            let found = json_path(inner, &path[index + 1..]);
            if !found.is_empty() {
                return found;
            }
        }
    }
    String::new()
}

struct LogMetric {
    name: String,
    help: String,
    /// The definition, to tell a changed one from the same one.
    config: LogMetricConfig,
    matcher: LogMatcher,
    /// (label name, where its value comes from).
    labels: Vec<(String, Field)>,
    /// False while its history is being written: counted, not flushed.
    flushing: AtomicBool,
    state: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Label values (in `labels` order) -> count.
    counts: HashMap<Vec<String>, u64>,
    /// Combinations not yet written to the store.
    unflushed: Vec<Vec<String>>,
    dropped: u64,
    warned: bool,
}

/// The label a record field becomes: its last part sanitized
/// (`resource.k8s.pod.name` -> `k8s_pod_name`, `attributes.ip_address` ->
/// `ip_address`).
pub fn label_for(field: &str) -> String {
    let path = field
        .strip_prefix("resource.")
        .or_else(|| field.strip_prefix("attributes."))
        .unwrap_or(field);
    label_name(path)
}

impl LogMetric {
    /// Checks the query; the error is the reason.
    fn new(config: &LogMetricConfig, flushing: bool) -> Result<LogMetric, String> {
        let matcher = LogMatcher::new(&config.query).map_err(|error| error.to_string())?;
        let labels = config
            .labels
            .iter()
            .map(|field| (label_for(field), Field::parse(field)))
            .collect();
        Ok(LogMetric {
            name: config.name.clone(),
            help: config.help.clone(),
            config: config.clone(),
            matcher,
            labels,
            flushing: AtomicBool::new(flushing),
            state: Mutex::default(),
        })
    }
}

/// Counts a batch matched but not yet acknowledged: per metric, label
/// values -> records.
#[derive(Default)]
pub struct Pending {
    counts: Vec<(Arc<LogMetric>, Counts)>,
}

/// Label values -> records.
type Counts = HashMap<Vec<String>, u64>;

/// Every log-derived metric: the config file's and the saved searches'.
pub struct LogMetrics {
    configured: Vec<Arc<LogMetric>>,
    searches: RwLock<Vec<Arc<LogMetric>>>,
    last_flush_ms: Mutex<Option<i64>>,
}

impl std::fmt::Debug for LogMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = Vec::new();
        self.for_each_metric(|metric| names.push(metric.name.clone()));
        formatter
            .debug_struct("LogMetrics")
            .field("metrics", &names)
            .finish()
    }
}

impl LogMetrics {
    /// Validates the config's entries (names, queries) once, at start.
    pub fn from_config(configs: &[LogMetricConfig]) -> Result<LogMetrics, LogMetricsError> {
        let mut metrics: Vec<Arc<LogMetric>> = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            if !is_metric_name(&config.name) {
                return Err(LogMetricsError::InvalidName {
                    index,
                    name: config.name.clone(),
                });
            }
            if metrics.iter().any(|metric| metric.name == config.name) {
                return Err(LogMetricsError::Duplicate {
                    index,
                    name: config.name.clone(),
                });
            }
            let metric =
                LogMetric::new(config, true).map_err(|reason| LogMetricsError::InvalidQuery {
                    index,
                    name: config.name.clone(),
                    reason,
                })?;
            metrics.push(Arc::new(metric));
        }
        Ok(LogMetrics {
            configured: metrics,
            searches: RwLock::default(),
            last_flush_ms: Mutex::new(None),
        })
    }

    /// Calls `each` with the config file's metrics, then the saved
    /// searches', under the read lock (no copy of the set per batch).
    fn for_each_metric(&self, mut each: impl FnMut(&Arc<LogMetric>)) {
        let searches = self.searches.read().unwrap_or_else(|e| e.into_inner());
        self.configured
            .iter()
            .chain(searches.iter())
            .for_each(&mut each);
    }

    pub fn is_empty(&self) -> bool {
        self.configured.is_empty()
            && self
                .searches
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Replaces the saved searches' metrics with `configs`. A metric whose
    /// definition did not change keeps its counts; a new or changed one
    /// starts from zero, held (counted, not flushed) until
    /// [`LogMetrics::release`] when `hold` says so. Returns the new or
    /// changed metrics' names; nothing changes on an error.
    pub fn set_searches(
        &self,
        configs: &[LogMetricConfig],
        hold: bool,
    ) -> Result<Vec<String>, LogMetricsError> {
        let mut searches = self.searches.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<LogMetric>> = Vec::with_capacity(configs.len());
        let mut started = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            if !is_metric_name(&config.name) {
                return Err(LogMetricsError::InvalidName {
                    index,
                    name: config.name.clone(),
                });
            }
            if self
                .configured
                .iter()
                .any(|metric| metric.name == config.name)
            {
                return Err(LogMetricsError::Configured {
                    name: config.name.clone(),
                });
            }
            if next.iter().any(|metric| metric.name == config.name) {
                return Err(LogMetricsError::Duplicate {
                    index,
                    name: config.name.clone(),
                });
            }
            let kept = searches
                .iter()
                .find(|metric| metric.config == *config)
                .cloned();
            let metric = match kept {
                Some(metric) => metric,
                None => {
                    started.push(config.name.clone());
                    Arc::new(LogMetric::new(config, !hold).map_err(|reason| {
                        LogMetricsError::InvalidQuery {
                            index,
                            name: config.name.clone(),
                            reason,
                        }
                    })?)
                }
            };
            next.push(metric);
        }
        *searches = next;
        Ok(started)
    }

    /// Starts flushing a held metric, adding `history` (label values ->
    /// records counted before it started, the backfill's totals) to its
    /// counts: those combinations continue their written history instead
    /// of starting at `0`.
    pub fn release(&self, name: &str, history: HashMap<Vec<String>, u64>) {
        let searches = self.searches.read().unwrap_or_else(|e| e.into_inner());
        let Some(metric) = searches.iter().find(|metric| metric.name == name) else {
            return;
        };
        let mut state = metric.state.lock().unwrap_or_else(|e| e.into_inner());
        for (values, count) in history {
            if !state.counts.contains_key(&values) && state.counts.len() >= MAX_SERIES_PER_METRIC {
                continue;
            }
            state.unflushed.retain(|unflushed| *unflushed != values);
            *state.counts.entry(values).or_default() += count;
        }
        metric.flushing.store(true, Ordering::Release);
    }

    /// Matches a batch; nothing is counted until [`LogMetrics::apply`].
    pub fn observe(&self, records: &[LogRecord]) -> Pending {
        let mut pending = Pending::default();
        self.for_each_metric(|metric| {
            let mut counts: HashMap<Vec<String>, u64> = HashMap::new();
            for record in records {
                if !metric.matcher.matches(record) {
                    continue;
                }
                let values = metric
                    .labels
                    .iter()
                    .map(|(_, field)| field.value(record))
                    .collect();
                *counts.entry(values).or_default() += 1;
            }
            if !counts.is_empty() {
                pending.counts.push((metric.clone(), counts));
            }
        });
        pending
    }

    /// Adds the counts of an acknowledged batch.
    pub fn apply(&self, pending: Pending) {
        for (metric, counts) in pending.counts {
            let mut state = metric.state.lock().unwrap_or_else(|e| e.into_inner());
            for (values, count) in counts {
                if let Some(total) = state.counts.get_mut(&values) {
                    *total += count;
                    continue;
                }
                if state.counts.len() >= MAX_SERIES_PER_METRIC {
                    state.dropped += count;
                    if !state.warned {
                        state.warned = true;
                        tracing::warn!(
                            metric = %metric.name,
                            limit = MAX_SERIES_PER_METRIC,
                            "log metric has too many label combinations; new ones are not counted"
                        );
                    }
                    continue;
                }
                state.unflushed.push(values.clone());
                state.counts.insert(values, count);
            }
        }
    }

    /// Appends every counter's value at `now_ms` (and a `0` at the previous
    /// flush for new combinations) to the store.
    pub fn flush(&self, store: &dyn SampleLog, now_ms: i64) -> Result<(), TsdbError> {
        let previous_ms = {
            let mut last = self.last_flush_ms.lock().unwrap_or_else(|e| e.into_inner());
            let previous = last.unwrap_or(now_ms - FLUSH_INTERVAL.as_millis() as i64);
            *last = Some(now_ms);
            previous.min(now_ms - 1)
        };
        let mut samples = Vec::new();
        self.for_each_metric(|metric| {
            if !metric.flushing.load(Ordering::Acquire) {
                return;
            }
            store.set_metadata(
                &metric.name,
                MetricMetadata {
                    kind: "counter".into(),
                    help: metric.help.clone(),
                    unit: String::new(),
                },
            );
            let mut state = metric.state.lock().unwrap_or_else(|e| e.into_inner());
            let labels_of = |values: &[String]| {
                let mut pairs = vec![("__name__".to_string(), metric.name.clone())];
                pairs.extend(
                    metric
                        .labels
                        .iter()
                        .map(|(name, _)| name.clone())
                        .zip(values.iter().cloned()),
                );
                Labels::new(pairs)
            };
            for values in std::mem::take(&mut state.unflushed) {
                samples.push((labels_of(&values), previous_ms, 0.0));
            }
            for (values, count) in &state.counts {
                samples.push((labels_of(values), now_ms, *count as f64));
            }
            if state.dropped > 0 {
                let labels = Labels::new([("__name__", DROPPED_METRIC), ("metric", &metric.name)]);
                samples.push((labels, now_ms, state.dropped as f64));
            }
        });
        if samples.is_empty() {
            return Ok(());
        }
        let outcome = store.append(&samples)?;
        if let Some((_, error)) = outcome.rejected.first() {
            tracing::warn!(%error, rejected = outcome.rejected.len(), "log metric samples refused");
        }
        Ok(())
    }
}

/// Flushes every [`FLUSH_INTERVAL`] until `stop`, then once more.
pub async fn flush_loop(
    log_metrics: Arc<LogMetrics>,
    store: Arc<dyn SampleLog>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        let (log_metrics, store) = (log_metrics.clone(), store.clone());
        let now_ms = sightline_vocab::clock::now_nanos() / 1_000_000;
        match tokio::task::spawn_blocking(move || log_metrics.flush(&*store, now_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "failed to flush log metrics"),
            Err(error) => tracing::error!(%error, "log metrics flush task failed"),
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_tsdb::promql::{Engine, Value};

    fn config(yaml: &str) -> Vec<LogMetricConfig> {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn label_combinations_are_bounded_and_the_overflow_counted() {
        let log_metrics = LogMetrics::from_config(&config(
            "[{name: errors_total, query: 'severity:ERROR', labels: [resource.k8s.pod.name]}]",
        ))
        .unwrap();
        let mut records = Vec::new();
        for pod in 0..MAX_SERIES_PER_METRIC + 5 {
            let mut record = LogRecord {
                severity_text: "ERROR".into(),
                ..LogRecord::default()
            };
            std::sync::Arc::make_mut(&mut record.resource)
                .insert("k8s.pod.name".into(), format!("pod-{pod}").into());
            records.push(record);
        }
        log_metrics.apply(log_metrics.observe(&records));
        let dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(dir.path()).unwrap();
        log_metrics.flush(&store, 10_000).unwrap();
        let value = Engine::default()
            .instant_query(
                &*store.reader(),
                &format!("count(errors_total) or {DROPPED_METRIC}"),
                10_000,
            )
            .unwrap();
        let Value::Vector(samples) = value else {
            panic!("not a vector: {value:?}")
        };
        let mut values: Vec<f64> = samples.iter().map(|sample| sample.value).collect();
        values.sort_by(f64::total_cmp);
        assert_eq!(values, vec![5.0, MAX_SERIES_PER_METRIC as f64]);
        let dropped = samples
            .iter()
            .find(|sample| sample.labels.metric_name() == DROPPED_METRIC)
            .unwrap();
        assert_eq!(dropped.labels.get("metric"), "errors_total");
        assert!(
            store
                .reader()
                .label_names()
                .contains(&"k8s_pod_name".to_string()),
            "the label is named after the resource path"
        );
    }

    #[test]
    fn bad_entries_are_named_at_start() {
        let error = LogMetrics::from_config(&config(
            "[{name: ok_total, query: 'a'}, {name: 'bad-name', query: 'a'}]",
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "log_metrics[1]: invalid metric name \"bad-name\" (expected [a-zA-Z_:][a-zA-Z0-9_:]*)"
        );
        let error = LogMetrics::from_config(&config("[{name: x_total, query: 'service:(auth'}]"))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("log_metrics[0] (x_total): invalid query:"),
            "{error}"
        );
    }
}
