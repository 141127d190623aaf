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
//! - **Where records are counted.** [`crate::ingest::Ingest::logs`] matches
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use sightline_store::{LogMatcher, LogRecord};
use sightline_tsdb::{Labels, MetricMetadata, MetricStore, TsdbError};
use tokio::sync::watch;

use crate::config_file::LogMetricConfig;
use crate::otlp_metrics::label_name;

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
    matcher: LogMatcher,
    /// (label name, where its value comes from).
    labels: Vec<(String, Field)>,
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

/// Counts a batch matched but not yet acknowledged: (metric, label values)
/// -> records.
#[derive(Debug, Default)]
pub struct Pending {
    counts: HashMap<(usize, Vec<String>), u64>,
}

/// Every configured log-derived metric.
pub struct LogMetrics {
    metrics: Vec<LogMetric>,
    last_flush_ms: Mutex<Option<i64>>,
}

impl std::fmt::Debug for LogMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .metrics
            .iter()
            .map(|metric| metric.name.as_str())
            .collect();
        formatter
            .debug_struct("LogMetrics")
            .field("metrics", &names)
            .finish()
    }
}

impl LogMetrics {
    /// Validates the config's entries (names, queries) once, at start.
    pub fn from_config(configs: &[LogMetricConfig]) -> Result<LogMetrics, LogMetricsError> {
        let mut metrics: Vec<LogMetric> = Vec::with_capacity(configs.len());
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
            let matcher =
                LogMatcher::new(&config.query).map_err(|error| LogMetricsError::InvalidQuery {
                    index,
                    name: config.name.clone(),
                    reason: error.to_string(),
                })?;
            let labels = config
                .labels
                .iter()
                .map(|field| {
                    let path = field
                        .strip_prefix("resource.")
                        .or_else(|| field.strip_prefix("attributes."))
                        .unwrap_or(field);
                    let name = label_name(path);
                    (name, Field::parse(field))
                })
                .collect();
            metrics.push(LogMetric {
                name: config.name.clone(),
                help: config.help.clone(),
                matcher,
                labels,
                state: Mutex::default(),
            });
        }
        Ok(LogMetrics {
            metrics,
            last_flush_ms: Mutex::new(None),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Matches a batch; nothing is counted until [`LogMetrics::apply`].
    pub fn observe(&self, records: &[LogRecord]) -> Pending {
        let mut pending = Pending::default();
        for (index, metric) in self.metrics.iter().enumerate() {
            for record in records {
                if !metric.matcher.matches(record) {
                    continue;
                }
                let values = metric
                    .labels
                    .iter()
                    .map(|(_, field)| field.value(record))
                    .collect();
                *pending.counts.entry((index, values)).or_default() += 1;
            }
        }
        pending
    }

    /// Adds the counts of an acknowledged batch.
    pub fn apply(&self, pending: Pending) {
        for ((index, values), count) in pending.counts {
            let Some(metric) = self.metrics.get(index) else {
                continue;
            };
            let mut state = metric.state.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Appends every counter's value at `now_ms` (and a `0` at the previous
    /// flush for new combinations) to the store.
    pub fn flush(&self, store: &MetricStore, now_ms: i64) -> Result<(), TsdbError> {
        let previous_ms = {
            let mut last = self.last_flush_ms.lock().unwrap_or_else(|e| e.into_inner());
            let previous = last.unwrap_or(now_ms - FLUSH_INTERVAL.as_millis() as i64);
            *last = Some(now_ms);
            previous.min(now_ms - 1)
        };
        let mut samples = Vec::new();
        for metric in &self.metrics {
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
        }
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
    store: Arc<MetricStore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        let (log_metrics, store) = (log_metrics.clone(), store.clone());
        let now_ms = crate::ingest::now_nanos() / 1_000_000;
        match tokio::task::spawn_blocking(move || log_metrics.flush(&store, now_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "failed to flush log metrics"),
            Err(error) => tracing::error!(%error, "log metrics flush task failed"),
        }
        if stopping {
            return;
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters
            .all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Ingest, Limits};
    use crate::metrics::CollectorMetrics;
    use crate::pipeline::{Pipeline, PipelineConfig};
    use sightline_store::{LogStore, SpanStore};
    use sightline_tsdb::promql::{Engine, Value};

    fn config(yaml: &str) -> Vec<LogMetricConfig> {
        serde_norway::from_str(yaml).unwrap()
    }

    /// One OTLP/JSON log record from `service` with `body` and attributes.
    fn record(body: &str, ip: &str, time_nanos: i64) -> serde_json::Value {
        serde_json::json!({
            "timeUnixNano": time_nanos.to_string(),
            "severityText": "WARN",
            "body": {"stringValue": body},
            "attributes": [{"key": "ip_address", "value": {"stringValue": ip}}],
        })
    }

    #[tokio::test]
    async fn failed_logins_are_counted_per_ip_and_usable_in_a_rule_expression() {
        let log_metrics = Arc::new(
            LogMetrics::from_config(&config(
                r#"
- name: failed_logins_total
  help: Failed logins by client address
  query: 'body:"login failed" AND service:auth'
  labels: [ip_address, service]
"#,
            ))
            .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(LogStore::open(&dir.path().join("logs")).unwrap());
        let spans = Arc::new(SpanStore::open(&dir.path().join("spans")).unwrap());
        let metric_store = MetricStore::open(dir.path().join("metrics")).unwrap();
        let metrics = Arc::new(CollectorMetrics::default());
        let (pipeline, threads) = Pipeline::start(
            PipelineConfig::new(dir.path().join("wal")),
            logs,
            spans,
            metrics.clone(),
        )
        .unwrap();
        let ingest =
            Ingest::new(pipeline, Limits::default(), metrics).with_log_metrics(log_metrics.clone());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = crate::otlp_http::router(ingest);
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let now = crate::ingest::now_nanos();
        let mut auth_records = Vec::new();
        for attempt in 0..12 {
            auth_records.push(record(
                "Login failed for user bob",
                "10.0.0.1",
                now + attempt,
            ));
        }
        for attempt in 0..3 {
            auth_records.push(record(
                "login FAILED: bad password",
                "10.0.0.2",
                now + attempt,
            ));
        }
        auth_records.push(record("login succeeded", "10.0.0.1", now));
        let shop_records = vec![record("login failed", "10.0.0.3", now)];
        let body = serde_json::json!({"resourceLogs": [
            {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "auth"}}]},
             "scopeLogs": [{"logRecords": auth_records}]},
            {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
             "scopeLogs": [{"logRecords": shop_records}]},
        ]});
        let response = reqwest::Client::new()
            .post(format!("http://{address}/v1/logs"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "{}");

        let first_flush_ms = 1_000_000;
        log_metrics.flush(&metric_store, first_flush_ms).unwrap();
        let second_flush_ms = first_flush_ms + FLUSH_INTERVAL.as_millis() as i64;
        log_metrics.flush(&metric_store, second_flush_ms).unwrap();

        let value = Engine::default()
            .instant_query(
                &*metric_store.reader(),
                "sum by (ip_address) (increase(failed_logins_total[1m])) > 10",
                second_flush_ms,
            )
            .unwrap();
        let Value::Vector(firing) = value else {
            panic!("not a vector: {value:?}")
        };
        assert_eq!(firing.len(), 1, "{firing:?}");
        assert_eq!(firing[0].labels.get("ip_address"), "10.0.0.1");
        assert_eq!(firing[0].value, 12.0);

        let value = Engine::default()
            .instant_query(
                &*metric_store.reader(),
                "failed_logins_total",
                second_flush_ms,
            )
            .unwrap();
        let Value::Vector(counters) = value else {
            panic!("not a vector: {value:?}")
        };
        let mut counts: Vec<(String, String, f64)> = counters
            .iter()
            .map(|sample| {
                (
                    sample.labels.get("ip_address").to_string(),
                    sample.labels.get("service").to_string(),
                    sample.value,
                )
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            counts,
            vec![
                ("10.0.0.1".to_string(), "auth".to_string(), 12.0),
                ("10.0.0.2".to_string(), "auth".to_string(), 3.0),
            ]
        );
        assert_eq!(
            metric_store.metadata()["failed_logins_total"].kind,
            "counter"
        );

        server.abort();
        let _ = server.await;
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .unwrap();
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
            record
                .resource
                .insert("k8s.pod.name".into(), format!("pod-{pod}").into());
            records.push(record);
        }
        log_metrics.apply(log_metrics.observe(&records));
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path()).unwrap();
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
