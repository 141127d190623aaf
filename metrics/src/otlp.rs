//! OTLP metrics -> Prometheus time series, for the gRPC `MetricsService`
//! (the collector's `grpc::metrics_service`) and OTLP/HTTP `/v1/metrics`
//! (its `otlp_http::metrics_router`).
//!
//! # OTLP-to-Prometheus naming
//!
//! The translation follows what Prometheus' own OTLP receiver does (with its
//! default `UnderscoreEscapingWithSuffixes` strategy), so dashboards written
//! for Prometheus find the same names:
//!
//! - **Metric names**: every run of characters outside `[a-zA-Z0-9:]` becomes
//!   one `_` (`http.server.duration` -> `http_server_duration`); a name that
//!   starts with a digit gets a leading `_`.
//! - **Units** are appended as a word unless the name already contains it:
//!   `s` -> `_seconds`, `ms` -> `_milliseconds`, `us` -> `_microseconds`,
//!   `ns` -> `_nanoseconds`, `min`/`h`/`d` -> `_minutes`/`_hours`/`_days`,
//!   `By` -> `_bytes` (`KiBy`, `MiBy`, `GiBy`, `KBy`, `MBy`, `GBy` likewise),
//!   `m` -> `_meters`, `V`, `A`, `J`, `W`, `g`, `Hz`, `Cel` -> `_volts`, ...,
//!   `%` -> `_percent`; `X/Y` -> `_X_per_Y` (`By/s` -> `_bytes_per_second`);
//!   annotations in braces (`{request}`) are dropped; `1` on a gauge ->
//!   `_ratio`. Unknown units are appended sanitized.
//! - **Types**: a monotonic cumulative Sum is a counter and ends in `_total`
//!   (a `total` already in the name moves to the end); a non-monotonic Sum
//!   and a Gauge are gauges; a Histogram becomes the classic
//!   `<name>_bucket{le="..."}` (cumulative counts, the last one `le="+Inf"`),
//!   `<name>_sum` and `<name>_count`; a Summary becomes
//!   `<name>{quantile="..."}`, `<name>_sum` and `<name>_count`.
//! - **Labels**: data point attributes become labels, names sanitized like
//!   metric names (a leading digit gets `key_`); values of attributes whose
//!   sanitized names collide are joined with `;`.
//! - **Resource**: `service.namespace` + `/` + `service.name` (or just
//!   `service.name`) -> `job`, `service.instance.id` -> `instance`; the other
//!   resource attributes go on one `target_info{job, instance, ...} 1` series
//!   per resource, joinable on `job`/`instance` as in Prometheus.
//! - **Metadata**: type, `description` as help and the unit word go to
//!   [`MetricStore::set_metadata`].
//! - A data point flagged `NO_RECORDED_VALUE` is stored as a staleness
//!   marker.
//!
//! # Delta temporality
//!
//! Prometheus series are cumulative. Delta Sums and Histograms are converted
//! by keeping a running total per produced series in memory
//! ([`DeltaTotals`]), bounded at [`MAX_DELTA_SERIES`] series; points of new
//! series beyond it are refused with a partial-success message. The totals
//! are not persisted: after a restart a delta series starts again from zero,
//! which PromQL's `rate` and `increase` read as a counter reset.
//!
//! # What is refused
//!
//! Exponential histograms (Prometheus would store them as native histograms,
//! which Sightline does not), points without a value, Sums and Histograms
//! with an unspecified temporality, and samples the store refuses (out of
//! order). They are counted in `rejected_data_points` of the OTLP partial
//! success with a message saying why; the rest of the request is stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint, exemplar, metric,
    number_data_point,
};
use sightline_tsdb::exemplars::MAX_LABEL_CHARS;
use sightline_tsdb::promql::{format_value, stale_nan};
use sightline_tsdb::{Exemplar, Labels, MetricMetadata, SampleLog};
use sightline_vocab::clock::now_ms;

/// Most series whose delta points are summed into running totals.
pub const MAX_DELTA_SERIES: usize = 100_000;

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const NO_RECORDED_VALUE: u32 = 1;

/// Most labels a series may have (`__name__` and `le` included), here and
/// on remote write; a data point or series with more is refused.
pub const MAX_LABELS_PER_SERIES: usize = 64;

/// How many distinct reasons a partial-success message lists.
const REASONS_SHOWN: usize = 5;

/// Running totals of delta series, to store them as cumulative ones.
#[derive(Debug, Default)]
pub struct DeltaTotals {
    totals: Mutex<HashMap<Labels, f64>>,
    /// The sample log sums the points (cluster mode: the series' partition
    /// owner, where every point of a series meets, whichever collector
    /// received it): they go to [`Translation::deltas`] as they are.
    in_log: bool,
}

impl DeltaTotals {
    /// Totals kept by the sample log, not here.
    pub fn in_log() -> DeltaTotals {
        DeltaTotals {
            in_log: true,
            ..DeltaTotals::default()
        }
    }

    /// Adds `delta` to the series' total and returns the new total, or `None`
    /// when the series is new and the map is full.
    fn add(&self, labels: &Labels, delta: f64) -> Option<f64> {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(total) = totals.get_mut(labels) {
            *total += delta;
            return Some(*total);
        }
        if totals.len() >= MAX_DELTA_SERIES {
            return None;
        }
        totals.insert(labels.clone(), delta);
        Some(delta)
    }
}

/// The result of translating one export request.
#[derive(Debug, Default)]
pub struct Translation {
    pub samples: Vec<(Labels, i64, f64)>,
    /// Delta points for a log that sums them ([`DeltaTotals::in_log`]).
    pub deltas: Vec<(Labels, i64, f64)>,
    pub metadata: BTreeMap<String, MetricMetadata>,
    /// The points' exemplars, each on its series (a histogram's on the
    /// bucket its value falls in).
    pub exemplars: Vec<(Arc<Labels>, Exemplar)>,
    /// Data points that produced no sample.
    pub rejected: usize,
    /// Why, one entry per distinct reason, with how many points.
    pub reasons: BTreeMap<String, usize>,
}

impl Translation {
    fn reject(&mut self, points: usize, reason: impl Into<String>) {
        self.rejected += points;
        *self.reasons.entry(reason.into()).or_default() += points;
    }

    /// The partial-success message: each reason with its count.
    pub fn message(&self) -> String {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .take(REASONS_SHOWN)
            .map(|(reason, count)| format!("{count} data points: {reason}"))
            .collect();
        if self.reasons.len() > REASONS_SHOWN {
            parts.push(format!(
                "and {} more reasons",
                self.reasons.len() - REASONS_SHOWN
            ));
        }
        parts.join("; ")
    }
}

/// Stores OTLP metric exports in the [`MetricStore`]; shared by the gRPC and
/// HTTP receivers.
#[derive(Debug, Clone)]
pub struct OtlpMetrics {
    store: Arc<dyn SampleLog>,
    deltas: Arc<DeltaTotals>,
}

/// The store's write-ahead log failed: nothing of the request may be
/// acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("failed to store the data points: {0}")]
pub struct StorageError(pub String);

impl OtlpMetrics {
    pub fn new(store: Arc<dyn SampleLog>) -> OtlpMetrics {
        let deltas = if store.sums_deltas() {
            DeltaTotals::in_log()
        } else {
            DeltaTotals::default()
        };
        OtlpMetrics {
            store,
            deltas: Arc::new(deltas),
        }
    }

    /// Translates and appends on the blocking pool; returns only after the
    /// samples are durable, with the partial success when points were refused.
    pub async fn export(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Option<ExportMetricsPartialSuccess>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.export_blocking(request))
            .await
            .map_err(|error| StorageError(error.to_string()))?
    }

    fn export_blocking(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Option<ExportMetricsPartialSuccess>, StorageError> {
        let mut translation = translate(request, &self.deltas, now_ms());
        for (metric, metadata) in std::mem::take(&mut translation.metadata) {
            self.store.set_metadata(&metric, metadata);
        }
        let deltas = std::mem::take(&mut translation.deltas);
        if !deltas.is_empty() {
            let outcome = self
                .store
                .append_deltas(&deltas)
                .map_err(|error| StorageError(error.to_string()))?;
            for (_, error) in &outcome.rejected {
                translation.reject(1, error.to_string());
            }
        }
        if !translation.samples.is_empty() {
            let outcome = self
                .store
                .append(&translation.samples)
                .map_err(|error| StorageError(error.to_string()))?;
            for (_, error) in &outcome.rejected {
                let reason = match error {
                    sightline_tsdb::TsdbError::OutOfOrder { .. } => {
                        "out of order sample (older than the newest of its series)".to_string()
                    }
                    other => other.to_string(),
                };
                translation.reject(1, reason);
            }
        }
        // Exemplars are kept once their samples are durable; a refused one
        // (out of order, labels too long) refuses no data point.
        self.store.append_exemplars(&translation.exemplars);
        Ok(
            (translation.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: translation.rejected as i64,
                error_message: translation.message(),
            }),
        )
    }
}

/// Translates a whole export request (see the module docs for the rules).
pub fn translate(
    request: ExportMetricsServiceRequest,
    deltas: &DeltaTotals,
    now_ms: i64,
) -> Translation {
    let mut translation = Translation::default();
    for resource_metrics in request.resource_metrics {
        let attributes = resource_metrics
            .resource
            .map(|resource| resource.attributes)
            .unwrap_or_default();
        let target = Target::from_resource(&attributes);
        let first_sample = translation.samples.len();
        for scope_metrics in resource_metrics.scope_metrics {
            for metric in scope_metrics.metrics {
                translate_metric(metric, &target, deltas, now_ms, &mut translation);
            }
        }
        let newest_ms = translation.samples[first_sample..]
            .iter()
            .map(|(_, timestamp_ms, _)| *timestamp_ms)
            .max();
        if let Some(newest_ms) = newest_ms
            && !target.info.is_empty()
        {
            let mut labels = target.info.clone();
            labels.push(("__name__".to_string(), "target_info".to_string()));
            labels.extend(target.labels.iter().cloned());
            translation
                .samples
                .push((Labels::new(labels), newest_ms, 1.0));
            translation.metadata.insert(
                "target_info".into(),
                MetricMetadata {
                    kind: "gauge".into(),
                    help: "Target metadata".into(),
                    unit: String::new(),
                },
            );
        }
    }
    translation
}

/// `job` and `instance` of a resource, and its other attributes for `target_info`.
struct Target {
    labels: Vec<(String, String)>,
    info: Vec<(String, String)>,
}

impl Target {
    fn from_resource(attributes: &[KeyValue]) -> Target {
        let find = |key: &str| {
            attributes
                .iter()
                .find(|attribute| attribute.key == key)
                .map(|attribute| attribute_text(attribute.value.as_ref()))
                .filter(|text| !text.is_empty())
        };
        let mut labels = Vec::new();
        let job = match (find("service.namespace"), find("service.name")) {
            (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
            (None, Some(name)) => Some(name),
            _ => None,
        };
        if let Some(job) = job {
            labels.push(("job".to_string(), job));
        }
        if let Some(instance) = find("service.instance.id") {
            labels.push(("instance".to_string(), instance));
        }
        let info = attribute_labels(attributes.iter().filter(|attribute| {
            !matches!(
                attribute.key.as_str(),
                "service.name" | "service.namespace" | "service.instance.id"
            )
        }));
        Target { labels, info }
    }
}

fn translate_metric(
    metric: Metric,
    target: &Target,
    deltas: &DeltaTotals,
    now_ms: i64,
    translation: &mut Translation,
) {
    let Some(data) = metric.data else {
        return;
    };
    let (kind, temporality, is_counter) = match &data {
        metric::Data::Gauge(_) => ("gauge", AggregationTemporality::Cumulative as i32, false),
        metric::Data::Sum(sum) => {
            let kind = if sum.is_monotonic { "counter" } else { "gauge" };
            (kind, sum.aggregation_temporality, sum.is_monotonic)
        }
        metric::Data::Histogram(histogram) => {
            ("histogram", histogram.aggregation_temporality, false)
        }
        metric::Data::Summary(_) => ("summary", AggregationTemporality::Cumulative as i32, false),
        metric::Data::ExponentialHistogram(histogram) => {
            translation.reject(
                histogram.data_points.len(),
                format!(
                    "{}: exponential histograms are not supported (Sightline has no native histograms); export explicit-bucket histograms",
                    metric.name
                ),
            );
            return;
        }
    };
    let unit = unit_words(&metric.unit);
    let name = metric_name(
        &metric.name,
        &unit,
        kind == "gauge" && metric.unit == "1",
        is_counter,
    );
    let delta = temporality == AggregationTemporality::Delta as i32;
    if temporality == AggregationTemporality::Unspecified as i32 {
        let points = match &data {
            metric::Data::Sum(sum) => sum.data_points.len(),
            metric::Data::Histogram(histogram) => histogram.data_points.len(),
            _ => 0,
        };
        translation.reject(
            points,
            format!("{}: aggregation temporality is unspecified", metric.name),
        );
        return;
    }
    translation.metadata.insert(
        name.clone(),
        MetricMetadata {
            kind: kind.to_string(),
            help: metric.description.clone(),
            unit: unit.clone(),
        },
    );
    let mut out = Output {
        target,
        deltas: if delta { Some(deltas) } else { None },
        now_ms,
        translation,
        metric_name: &metric.name,
    };
    match data {
        metric::Data::Gauge(gauge) => {
            for point in gauge.data_points {
                out.number(&name, point);
            }
        }
        metric::Data::Sum(sum) => {
            for point in sum.data_points {
                out.number(&name, point);
            }
        }
        metric::Data::Histogram(histogram) => {
            for point in histogram.data_points {
                out.histogram(&name, point);
            }
        }
        metric::Data::Summary(summary) => {
            for point in summary.data_points {
                let labels = out.labels(&point.attributes);
                let timestamp_ms = out.timestamp(point.time_unix_nano);
                let stale = point.flags & NO_RECORDED_VALUE != 0;
                let value = |value: f64| if stale { stale_nan() } else { value };
                for quantile in &point.quantile_values {
                    out.push(
                        &name,
                        &labels,
                        Some(("quantile", format_value(quantile.quantile))),
                        timestamp_ms,
                        value(quantile.value),
                    );
                }
                out.push(
                    &format!("{name}_sum"),
                    &labels,
                    None,
                    timestamp_ms,
                    value(point.sum),
                );
                let count = value(point.count as f64);
                out.push(&format!("{name}_count"), &labels, None, timestamp_ms, count);
            }
        }
        metric::Data::ExponentialHistogram(_) => {}
    }
}

/// Writes the samples of one metric's points.
struct Output<'a> {
    target: &'a Target,
    /// Set for delta temporality: values are added to running totals.
    deltas: Option<&'a DeltaTotals>,
    now_ms: i64,
    translation: &'a mut Translation,
    metric_name: &'a str,
}

impl Output<'_> {
    fn labels(&self, attributes: &[KeyValue]) -> Vec<(String, String)> {
        let mut labels = attribute_labels(attributes.iter());
        // The resource's job and instance win over attributes of the same name.
        labels.retain(|(name, _)| !self.target.labels.iter().any(|(target, _)| target == name));
        labels.extend(self.target.labels.iter().cloned());
        labels
    }

    fn timestamp(&self, time_unix_nano: u64) -> i64 {
        if time_unix_nano == 0 {
            self.now_ms
        } else {
            i64::try_from(time_unix_nano / 1_000_000).unwrap_or(i64::MAX)
        }
    }

    fn series(name: &str, labels: &[(String, String)], extra: Option<(&str, String)>) -> Labels {
        let mut pairs = labels.to_vec();
        pairs.push(("__name__".to_string(), name.to_string()));
        if let Some((label, label_value)) = extra {
            pairs.push((label.to_string(), label_value));
        }
        Labels::new(pairs)
    }

    /// Keeps the point's exemplars for the series `series` (built only
    /// when there are exemplars) gives.
    fn exemplars<'e>(
        &mut self,
        exemplars: impl IntoIterator<Item = &'e opentelemetry_proto::tonic::metrics::v1::Exemplar>,
        series: impl FnOnce() -> Labels,
    ) {
        let mut series = Some(series);
        let mut shared: Option<Arc<Labels>> = None;
        for point in exemplars {
            let value = match point.value {
                Some(exemplar::Value::AsDouble(value)) => value,
                Some(exemplar::Value::AsInt(value)) => value as f64,
                None => continue,
            };
            let mut pairs: Vec<(String, String)> = Vec::new();
            if !point.trace_id.is_empty() {
                pairs.push(("trace_id".into(), hex::encode(&point.trace_id)));
            }
            if !point.span_id.is_empty() {
                pairs.push(("span_id".into(), hex::encode(&point.span_id)));
            }
            // Filtered attributes while the set stays within OpenMetrics'
            // limit, so the ids are never lost to them.
            let mut chars: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
            for (name, value) in attribute_labels(point.filtered_attributes.iter()) {
                let more = name.chars().count() + value.chars().count();
                if chars + more <= MAX_LABEL_CHARS && !pairs.iter().any(|(n, _)| *n == name) {
                    chars += more;
                    pairs.push((name, value));
                }
            }
            let labels = shared
                .get_or_insert_with(|| {
                    Arc::new(series.take().map(|make| make()).unwrap_or_default())
                })
                .clone();
            let exemplar = Exemplar {
                labels: Labels::new(pairs),
                value,
                timestamp_ms: self.timestamp(point.time_unix_nano),
            };
            self.translation.exemplars.push((labels, exemplar));
        }
    }

    fn push(
        &mut self,
        name: &str,
        labels: &[(String, String)],
        extra: Option<(&str, String)>,
        timestamp_ms: i64,
        value: f64,
    ) {
        let labels = Self::series(name, labels, extra);
        let value = match self.deltas {
            Some(deltas) if deltas.in_log => {
                self.translation.deltas.push((labels, timestamp_ms, value));
                return;
            }
            Some(deltas) if !sightline_tsdb::promql::is_stale_nan(value) => {
                match deltas.add(&labels, value) {
                    Some(total) => total,
                    None => {
                        self.translation.reject(
                            1,
                            format!(
                                "{}: delta series over the limit of {MAX_DELTA_SERIES} running totals",
                                self.metric_name
                            ),
                        );
                        return;
                    }
                }
            }
            _ => value,
        };
        self.translation.samples.push((labels, timestamp_ms, value));
    }

    /// Refuses the point when its series would have more than
    /// [`MAX_LABELS_PER_SERIES`] labels (`extra`: `__name__`, `le`).
    fn over_label_limit(&mut self, labels: &[(String, String)], extra: usize) -> bool {
        let count = labels.len() + extra;
        if count <= MAX_LABELS_PER_SERIES {
            return false;
        }
        let reason = format!(
            "{}: series with {count} labels, over max_labels_per_series ({MAX_LABELS_PER_SERIES})",
            self.metric_name
        );
        self.translation.reject(1, reason);
        true
    }

    fn number(&mut self, name: &str, point: NumberDataPoint) {
        let labels = self.labels(&point.attributes);
        if self.over_label_limit(&labels, 1) {
            return;
        }
        let timestamp_ms = self.timestamp(point.time_unix_nano);
        let value = if point.flags & NO_RECORDED_VALUE != 0 {
            stale_nan()
        } else {
            match point.value {
                Some(number_data_point::Value::AsDouble(value)) => value,
                Some(number_data_point::Value::AsInt(value)) => value as f64,
                None => {
                    let reason = format!("{}: data point without a value", self.metric_name);
                    self.translation.reject(1, reason);
                    return;
                }
            }
        };
        self.push(name, &labels, None, timestamp_ms, value);
        self.exemplars(&point.exemplars, || Self::series(name, &labels, None));
    }

    fn histogram(&mut self, name: &str, point: HistogramDataPoint) {
        let labels = self.labels(&point.attributes);
        if self.over_label_limit(&labels, 2) {
            return;
        }
        let timestamp_ms = self.timestamp(point.time_unix_nano);
        let stale = point.flags & NO_RECORDED_VALUE != 0;
        if !stale
            && !point.bucket_counts.is_empty()
            && point.bucket_counts.len() != point.explicit_bounds.len() + 1
        {
            let reason = format!(
                "{}: histogram with {} bucket counts for {} bounds (needs one more count than bounds)",
                self.metric_name,
                point.bucket_counts.len(),
                point.explicit_bounds.len()
            );
            self.translation.reject(1, reason);
            return;
        }
        let value = |value: f64| if stale { stale_nan() } else { value };
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (index, bound) in point.explicit_bounds.iter().enumerate() {
            cumulative += point.bucket_counts.get(index).copied().unwrap_or(0);
            let le = format_value(*bound);
            let count = value(cumulative as f64);
            self.push(&bucket_name, &labels, Some(("le", le)), timestamp_ms, count);
        }
        let count = value(point.count as f64);
        let infinity = Some(("le", "+Inf".to_string()));
        self.push(&bucket_name, &labels, infinity, timestamp_ms, count);
        if let Some(sum) = point.sum {
            self.push(
                &format!("{name}_sum"),
                &labels,
                None,
                timestamp_ms,
                value(sum),
            );
        }
        self.push(&format!("{name}_count"), &labels, None, timestamp_ms, count);
        // Each exemplar on the bucket its value falls in, as Prometheus'
        // OTLP translation puts them.
        for point_exemplar in &point.exemplars {
            let value = match point_exemplar.value {
                Some(exemplar::Value::AsDouble(value)) => value,
                Some(exemplar::Value::AsInt(value)) => value as f64,
                None => continue,
            };
            let le = point
                .explicit_bounds
                .iter()
                .find(|bound| value <= **bound)
                .map_or_else(|| "+Inf".to_string(), |bound| format_value(*bound));
            self.exemplars([point_exemplar], || {
                Self::series(&bucket_name, &labels, Some(("le", le)))
            });
        }
    }
}

/// Attributes as labels: names sanitized, colliding names' values joined
/// with `;` (in the attributes' order), empty values dropped.
fn attribute_labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for attribute in attributes {
        let value = attribute_text(attribute.value.as_ref());
        if value.is_empty() {
            continue;
        }
        let name = label_name(&attribute.key);
        match labels.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, existing)) => {
                existing.push(';');
                existing.push_str(&value);
            }
            None => labels.push((name, value)),
        }
    }
    labels
}

fn attribute_text(value: Option<&AnyValue>) -> String {
    let Some(value) = value.and_then(|value| value.value.as_ref()) else {
        return String::new();
    };
    match value {
        any_value::Value::StringValue(text) => text.clone(),
        any_value::Value::BoolValue(flag) => flag.to_string(),
        any_value::Value::IntValue(number) => number.to_string(),
        any_value::Value::DoubleValue(number) => number.to_string(),
        any_value::Value::BytesValue(bytes) => hex::encode(bytes),
        any_value::Value::ArrayValue(array) => {
            let items: Vec<String> = array
                .values
                .iter()
                .map(|item| serde_json::Value::String(attribute_text(Some(item))).to_string())
                .collect();
            format!("[{}]", items.join(","))
        }
        any_value::Value::KvlistValue(list) => {
            let object: serde_json::Map<String, serde_json::Value> = list
                .values
                .iter()
                .map(|entry| {
                    (
                        entry.key.clone(),
                        attribute_text(entry.value.as_ref()).into(),
                    )
                })
                .collect();
            serde_json::Value::Object(object).to_string()
        }
        any_value::Value::StringValueStrindex(_) => String::new(),
    }
}

/// A label name: invalid characters become `_`, a leading digit gets `key_`.
pub fn label_name(key: &str) -> String {
    let mut name = sightline_vocab::names::underscored(key);
    if name.starts_with(|character: char| character.is_ascii_digit()) {
        name.insert_str(0, "key_");
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// The Prometheus name of an OTLP metric (see the module docs).
pub fn metric_name(name: &str, unit_words: &str, is_ratio: bool, is_counter: bool) -> String {
    let mut tokens: Vec<String> = name
        .split(|character: char| !(character.is_ascii_alphanumeric() || character == ':'))
        .filter(|token| !token.is_empty())
        .map(str::to_string)
        .collect();
    let mut suffixes: Vec<&str> = unit_words
        .split('_')
        .filter(|word| !word.is_empty())
        .collect();
    if is_ratio {
        suffixes = vec!["ratio"];
    }
    // Append the unit unless the name already ends with it.
    let already = tokens.len() >= suffixes.len()
        && tokens[tokens.len() - suffixes.len()..]
            .iter()
            .zip(&suffixes)
            .all(|(token, suffix)| token == suffix);
    if !already {
        tokens.extend(suffixes.iter().map(|suffix| suffix.to_string()));
    }
    if is_counter {
        tokens.retain(|token| token != "total");
        tokens.push("total".to_string());
    }
    let mut joined = tokens.join("_");
    if joined.starts_with(|character: char| character.is_ascii_digit()) {
        joined.insert(0, '_');
    }
    if joined.is_empty() {
        joined.push('_');
    }
    joined
}

/// The words a UCUM unit adds to a name (`By/s` -> `bytes_per_second`);
/// empty for `1`, for no unit and for annotations (`{request}`).
pub fn unit_words(unit: &str) -> String {
    let without_annotations: String = {
        let mut text = String::new();
        let mut depth = 0;
        for character in unit.chars() {
            match character {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                _ if depth == 0 => text.push(character),
                _ => {}
            }
        }
        text
    };
    let unit = without_annotations.trim();
    if unit.is_empty() || unit == "1" {
        return String::new();
    }
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main.trim(), Some(per.trim())),
        None => (unit, None),
    };
    let main_word = main_unit(main);
    let per_word = per.filter(|per| !per.is_empty()).map(per_unit);
    match (main_word.is_empty(), per_word) {
        (_, None) => main_word,
        (true, Some(per)) => format!("per_{per}"),
        (false, Some(per)) => format!("{main_word}_per_{per}"),
    }
}

fn main_unit(unit: &str) -> String {
    let word = match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => "",
        other => return sanitize_word(other),
    };
    word.to_string()
}

fn per_unit(unit: &str) -> String {
    let word = match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => return sanitize_word(other),
    };
    word.to_string()
}

fn sanitize_word(word: &str) -> String {
    word.split(|character: char| !character.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, attribute, metric, number, request};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    #[test]
    fn delta_sums_and_histograms_are_summed_into_cumulative_series() {
        let deltas = DeltaTotals::default();
        let delta_request = |time: u64, value: f64| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![attribute("service.name", "worker")],
                    ..Resource::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(
                            "jobs.done",
                            "",
                            metric::Data::Sum(Sum {
                                data_points: vec![number(time, value, Vec::new())],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                                is_monotonic: true,
                            }),
                        ),
                        metric(
                            "job.size",
                            "By",
                            metric::Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    time_unix_nano: time,
                                    count: 2,
                                    sum: Some(value),
                                    bucket_counts: vec![1, 1],
                                    explicit_bounds: vec![100.0],
                                    ..HistogramDataPoint::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                            }),
                        ),
                    ],
                    ..ScopeMetrics::default()
                }],
                ..ResourceMetrics::default()
            }],
        };
        translate(delta_request(T0, 3.0), &deltas, 0);
        let second = translate(delta_request(T0 + 1_000_000_000, 4.0), &deltas, 0);
        assert_eq!(second.rejected, 0);
        let value_of = |name: &str, le: Option<&str>| {
            second
                .samples
                .iter()
                .find(|(labels, _, _)| {
                    labels.metric_name() == name && le.is_none_or(|le| labels.get("le") == le)
                })
                .map(|(_, _, value)| *value)
                .unwrap()
        };
        assert_eq!(value_of("jobs_done_total", None), 7.0);
        assert_eq!(value_of("job_size_bytes_sum", None), 7.0);
        assert_eq!(value_of("job_size_bytes_count", None), 4.0);
        assert_eq!(value_of("job_size_bytes_bucket", Some("100")), 2.0);
        assert_eq!(value_of("job_size_bytes_bucket", Some("+Inf")), 4.0);
    }

    #[test]
    fn series_with_too_many_labels_are_refused_and_the_rest_kept() {
        let wide: Vec<KeyValue> = (0..MAX_LABELS_PER_SERIES)
            .map(|index| attribute(&format!("a{index}"), "v"))
            .collect();
        let mut request = request(T0);
        let metrics = &mut request.resource_metrics[0].scope_metrics[0].metrics;
        let kept = metrics.len();
        metrics.push(metric(
            "wide.gauge",
            "",
            metric::Data::Gauge(Gauge {
                data_points: vec![number(T0, 1.0, wide)],
            }),
        ));
        let translation = translate(request, &DeltaTotals::default(), 0);
        let message = translation.message();
        assert!(
            message.contains("1 data points: wide.gauge: series with")
                && message.contains("over max_labels_per_series (64)"),
            "{message}"
        );
        assert!(kept > 0);
        assert!(
            translation
                .samples
                .iter()
                .all(|(labels, _, _)| labels.len() <= MAX_LABELS_PER_SERIES
                    && labels.metric_name() != "wide_gauge")
        );
        assert!(!translation.samples.is_empty());
    }

    /// Exemplars keep their trace and span ids (hex) and the filtered
    /// attributes that fit, a histogram's on the bucket of their value.
    #[test]
    fn exemplars_go_to_their_series_and_bucket_with_their_ids() {
        use opentelemetry_proto::tonic::metrics::v1::Exemplar as OtlpExemplar;
        let exemplar = |value: f64, trace: u8, attributes: Vec<KeyValue>| OtlpExemplar {
            filtered_attributes: attributes,
            time_unix_nano: T0 + 1_000_000,
            span_id: vec![trace; 8],
            trace_id: vec![trace; 16],
            value: Some(exemplar::Value::AsDouble(value)),
        };
        let mut request = request(T0);
        let metrics = &mut request.resource_metrics[0].scope_metrics[0].metrics;
        metrics.push(metric(
            "checkout.duration",
            "s",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: T0,
                    count: 3,
                    sum: Some(4.0),
                    bucket_counts: vec![1, 1, 1],
                    explicit_bounds: vec![0.5, 2.5],
                    exemplars: vec![
                        exemplar(0.2, 1, vec![attribute("user", "u-1")]),
                        exemplar(1.0, 2, vec![attribute("comment", &"x".repeat(100))]),
                        exemplar(9.0, 3, Vec::new()),
                    ],
                    ..HistogramDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ));
        let mut gauge_point = number(T0, 7.0, Vec::new());
        gauge_point.exemplars = vec![exemplar(7.0, 4, Vec::new())];
        metrics.push(metric(
            "queue.depth",
            "",
            metric::Data::Gauge(Gauge {
                data_points: vec![gauge_point],
            }),
        ));
        let translation = translate(request, &DeltaTotals::default(), 0);
        let found: Vec<(String, String, String, f64)> = translation
            .exemplars
            .iter()
            .map(|(series, exemplar)| {
                (
                    format!("{}{{le={:?}}}", series.metric_name(), series.get("le")),
                    exemplar.labels.get("trace_id").to_string(),
                    exemplar.labels.to_string(),
                    exemplar.value,
                )
            })
            .collect();
        let ids = |byte: u8| (hex::encode(vec![byte; 16]), hex::encode(vec![byte; 8]));
        let (trace1, span1) = ids(1);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert_eq!(found[0].0, "checkout_duration_seconds_bucket{le=\"0.5\"}");
        assert_eq!(found[0].1, trace1);
        assert_eq!(
            found[0].2,
            format!("{{span_id=\"{span1}\", trace_id=\"{trace1}\", user=\"u-1\"}}")
        );
        // An attribute that would pass OpenMetrics' 128 characters is left out.
        assert_eq!(found[1].0, "checkout_duration_seconds_bucket{le=\"2.5\"}");
        assert!(!found[1].2.contains("comment"), "{}", found[1].2);
        assert_eq!(found[2].0, "checkout_duration_seconds_bucket{le=\"+Inf\"}");
        assert_eq!(found[2].3, 9.0);
        assert_eq!(found[3].0, "queue_depth{le=\"\"}");
        assert_eq!(found[3].1, ids(4).0);
        assert!(
            translation
                .exemplars
                .iter()
                .all(|(_, exemplar)| exemplar.timestamp_ms == (T0 / 1_000_000 + 1) as i64)
        );
        // The series carry the resource's job and instance, as the samples do.
        let bucket = &translation.exemplars[0].0;
        assert!(
            translation
                .samples
                .iter()
                .any(|(labels, _, _)| labels == bucket.as_ref()),
            "{bucket}"
        );
    }

    #[test]
    fn points_that_cannot_be_translated_are_counted_with_a_reason() {
        let mut request = request(T0);
        let metrics = &mut request.resource_metrics[0].scope_metrics[0].metrics;
        metrics.push(metric(
            "broken.histogram",
            "",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![1.0],
                    ..HistogramDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ));
        metrics.push(metric(
            "no.temporality",
            "",
            metric::Data::Sum(Sum {
                data_points: vec![number(T0, 1.0, Vec::new())],
                aggregation_temporality: 0,
                is_monotonic: true,
            }),
        ));
        let translation = translate(request, &DeltaTotals::default(), 0);
        assert_eq!(translation.rejected, 4);
        let message = translation.message();
        assert!(
            message.contains("broken.histogram: histogram with 3 bucket counts for 1 bounds"),
            "{message}"
        );
        assert!(
            message.contains("no.temporality: aggregation temporality is unspecified"),
            "{message}"
        );
        assert!(
            message.contains("2 data points: latency.native"),
            "{message}"
        );
    }

    #[test]
    fn names_follow_prometheus_translation() {
        let cases = [
            // (name, unit, gauge with unit 1, counter) -> expected
            (
                "http.server.request.duration",
                "s",
                false,
                false,
                "http_server_request_duration_seconds",
            ),
            (
                "http.server.requests",
                "{request}",
                false,
                true,
                "http_server_requests_total",
            ),
            (
                "process.runtime.memory",
                "By",
                false,
                false,
                "process_runtime_memory_bytes",
            ),
            ("network.io", "By", false, true, "network_io_bytes_total"),
            ("requests.total", "1", false, true, "requests_total"),
            ("cpu.utilization", "1", true, false, "cpu_utilization_ratio"),
            ("latency_seconds", "s", false, false, "latency_seconds"),
            (
                "queue-latency",
                "ms",
                false,
                false,
                "queue_latency_milliseconds",
            ),
            (
                "throughput",
                "By/s",
                false,
                false,
                "throughput_bytes_per_second",
            ),
            ("requests", "1/s", false, false, "requests_per_second"),
            ("2xx.count", "", false, true, "_2xx_count_total"),
            ("weird", "foo.bar", false, false, "weird_foo_bar"),
        ];
        for (name, unit, ratio, counter, expected) in cases {
            assert_eq!(
                metric_name(name, &unit_words(unit), ratio, counter),
                expected,
                "{name} [{unit}]"
            );
        }
        assert_eq!(
            label_name("http.response.status_code"),
            "http_response_status_code"
        );
        assert_eq!(label_name("0day"), "key_0day");
    }
}
