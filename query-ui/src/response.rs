//! The query API's response bodies as types: the contract with its clients.
//!
//! Field names are the wire names (Jaeger's and OTLP's camelCase,
//! Prometheus' mixed case, our own snake_case), so a rename here is a
//! visible change of the contract; `api_shapes` checks every endpoint's JSON
//! against a checked-in snapshot, and `scripts/typecheck` checks that the
//! snapshots the UI reads satisfy its JSDoc types (`assets/*.js`, through
//! `contract.mjs`). Handlers build these values; none of them writes JSON
//! by hand.
//!
//! - ours: [`ErrorBody`], [`LogPage`], [`LogTerms`], [`LogContext`],
//!   [`TraceSearch`], [`RequestStory`], [`DashboardList`] (the store's
//!   `Histogram` and a dashboard's own JSON are answered as they are);
//! - Jaeger's query API: [`JaegerResponse`] around [`JaegerTrace`]s, names or
//!   [`Operation`]s; v3 answers OTLP JSON, [`OtlpTracesData`];
//! - the Prometheus HTTP API: [`PromSuccess`] around [`QueryData`],
//!   [`PromLabels`], [`RuleGroups`], [`Alerts`], ..., and [`PromErrorBody`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use sightline_store::{LogHit, Span, TraceSummary};
use sightline_tsdb::Labels;

// ---- ours: errors, logs, trace search, request story, dashboards ---------------

/// Every error of our own endpoints: `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: String,
}

/// `GET /api/logs`: a page of matching records, newest first.
#[derive(Debug, Serialize)]
pub(crate) struct LogPage {
    pub(crate) records: Vec<LogHit>,
    /// Matching records in all, ignoring the cursor.
    pub(crate) total_hits: usize,
    /// The `cursor` of the next page; `null` on the last.
    pub(crate) next_cursor: Option<String>,
}

/// `GET /api/logs/terms`: top values of a field among the newest matching records.
#[derive(Debug, Serialize)]
pub(crate) struct LogTerms {
    pub(crate) field: String,
    /// Records looked at.
    pub(crate) sampled: usize,
    /// Records among them that have the field.
    pub(crate) present: usize,
    pub(crate) values: Vec<TermCount>,
}

#[derive(Debug, Serialize)]
pub(crate) struct TermCount {
    pub(crate) value: String,
    pub(crate) count: u64,
}

/// `GET /api/logs/context/{id}`: the record and its neighbours, in stream order.
#[derive(Debug, Serialize)]
pub(crate) struct LogContext {
    pub(crate) records: Vec<LogHit>,
}

/// `GET /api/trace-search`: summaries of whole traces, newest first.
#[derive(Debug, Serialize)]
pub(crate) struct TraceSearch {
    pub(crate) traces: Vec<TraceSearchHit>,
}

/// A trace summary and whether the trace looks complete.
#[derive(Debug, Serialize)]
pub(crate) struct TraceSearchHit {
    #[serde(flatten)]
    pub(crate) summary: TraceSummary,
    /// Quiet for the idle timeout, with a root and no orphans.
    pub(crate) complete: bool,
}

/// `GET /api/requests/{id}`: everything one request did.
#[derive(Debug, Serialize)]
pub(crate) struct RequestStory {
    pub(crate) id: String,
    /// `request_id` or `trace_id`: what `id` was taken for.
    pub(crate) kind: &'static str,
    pub(crate) request_ids: BTreeSet<String>,
    pub(crate) trace_ids: BTreeSet<String>,
    /// Timeline entries per service.
    pub(crate) services: BTreeMap<String, usize>,
    /// Earliest entry, nanoseconds.
    pub(crate) start: i64,
    /// Latest span end or record, nanoseconds.
    pub(crate) end: i64,
    pub(crate) duration: i64,
    pub(crate) span_count: usize,
    pub(crate) log_count: usize,
    /// Entries that are errors.
    pub(crate) errors: usize,
    /// Span ids on the critical paths of the request's traces.
    pub(crate) critical_path: Vec<String>,
    pub(crate) bottleneck: Option<Bottleneck>,
    /// Spans and log records in time order.
    pub(crate) timeline: Vec<TimelineEntry>,
}

/// The critical-path span with the largest self time.
#[derive(Debug, Serialize)]
pub(crate) struct Bottleneck {
    pub(crate) span_id: String,
    pub(crate) trace_id: String,
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) self_time: i64,
}

/// One entry of a request's timeline, `"type": "span"` or `"type": "log"`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum TimelineEntry {
    Span(SpanEntry),
    Log(LogEntry),
}

impl TimelineEntry {
    /// Span start or record time, nanoseconds.
    pub(crate) fn time(&self) -> i64 {
        match self {
            TimelineEntry::Span(entry) => entry.time,
            TimelineEntry::Log(entry) => entry.time,
        }
    }

    pub(crate) fn service(&self) -> &str {
        match self {
            TimelineEntry::Span(entry) => &entry.span.service,
            TimelineEntry::Log(entry) => &entry.hit.record.service,
        }
    }

    pub(crate) fn is_error(&self) -> bool {
        match self {
            TimelineEntry::Span(entry) => entry.error,
            TimelineEntry::Log(entry) => entry.error,
        }
    }
}

/// A span with its timing in the request.
#[derive(Debug, Serialize)]
pub(crate) struct SpanEntry {
    #[serde(flatten)]
    pub(crate) span: Span,
    /// The span's start, nanoseconds.
    pub(crate) time: i64,
    pub(crate) duration: i64,
    /// Its duration less its children's, nanoseconds.
    pub(crate) self_time: i64,
    pub(crate) on_critical_path: bool,
    /// The span's status is error.
    pub(crate) error: bool,
}

/// A log record of the request.
#[derive(Debug, Serialize)]
pub(crate) struct LogEntry {
    #[serde(flatten)]
    pub(crate) hit: LogHit,
    /// The record's timestamp, nanoseconds.
    pub(crate) time: i64,
    /// ERROR or FATAL (severity number 17 and above).
    pub(crate) error: bool,
}

/// `GET /api/dashboards`: every `*.json` of the dashboards directory, by
/// file name.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardList {
    /// The directory read (`--dashboards-dir`), `null` when none is set.
    pub(crate) directory: Option<String>,
    pub(crate) dashboards: Vec<DashboardEntry>,
}

/// A dashboard of the list; one whose file does not parse has its `error`
/// and no `tags`.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardEntry {
    pub(crate) uid: String,
    /// The dashboard's title, or the file name.
    pub(crate) title: String,
    pub(crate) file: String,
    /// The dashboard's `tags` as written (`[]` when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tags: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

// ---- Jaeger's query API -------------------------------------------------------

/// Jaeger's envelope: `{"data", "total", "limit", "offset", "errors"}`.
#[derive(Debug, Serialize)]
pub(crate) struct JaegerResponse<T> {
    pub(crate) data: T,
    pub(crate) total: usize,
    pub(crate) limit: usize,
    pub(crate) offset: usize,
    pub(crate) errors: Option<Vec<JaegerError>>,
}

impl<T> JaegerResponse<Vec<T>> {
    /// The items with their count as `total`.
    pub(crate) fn counted(data: Vec<T>) -> Self {
        JaegerResponse {
            total: data.len(),
            data,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct JaegerError {
    pub(crate) code: u16,
    pub(crate) msg: String,
}

/// An operation and its span kind, as Jaeger names them.
#[derive(Debug, Serialize)]
pub(crate) struct Operation {
    pub(crate) name: String,
    #[serde(rename = "spanKind")]
    pub(crate) span_kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JaegerTrace {
    #[serde(rename = "traceID")]
    pub(crate) trace_id: String,
    pub(crate) spans: Vec<JaegerSpan>,
    /// By process id (`p1`, `p2`, ...).
    pub(crate) processes: BTreeMap<String, JaegerProcess>,
    pub(crate) warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JaegerProcess {
    pub(crate) service_name: String,
    pub(crate) tags: Vec<JaegerTag>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JaegerSpan {
    #[serde(rename = "traceID")]
    pub(crate) trace_id: String,
    #[serde(rename = "spanID")]
    pub(crate) span_id: String,
    pub(crate) flags: u32,
    pub(crate) operation_name: String,
    pub(crate) references: Vec<JaegerReference>,
    /// Microseconds since the epoch.
    pub(crate) start_time: i64,
    /// Microseconds.
    pub(crate) duration: i64,
    pub(crate) tags: Vec<JaegerTag>,
    pub(crate) logs: Vec<JaegerLog>,
    #[serde(rename = "processID")]
    pub(crate) process_id: String,
    pub(crate) warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct JaegerReference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    #[serde(rename = "refType")]
    pub(crate) ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub(crate) trace_id: String,
    #[serde(rename = "spanID")]
    pub(crate) span_id: String,
}

/// A span event.
#[derive(Debug, Serialize)]
pub(crate) struct JaegerLog {
    /// Microseconds since the epoch.
    pub(crate) timestamp: i64,
    pub(crate) fields: Vec<JaegerTag>,
}

/// A key-value tag: `type` is `string`, `bool`, `int64` or `float64`.
#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct JaegerTag {
    pub(crate) key: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) value: Value,
}

// ---- OTLP JSON (Jaeger's v3 API) -------------------------------------------------

/// `GET /api/v3/traces...`: `{"result": TracesData}`.
#[derive(Debug, Serialize)]
pub(crate) struct V3Traces {
    pub(crate) result: OtlpTracesData,
}

/// `GET /api/v3/services`.
#[derive(Debug, Serialize)]
pub(crate) struct V3Services {
    pub(crate) services: Vec<String>,
}

/// `GET /api/v3/operations`.
#[derive(Debug, Serialize)]
pub(crate) struct V3Operations {
    pub(crate) operations: Vec<Operation>,
}

/// OTLP's `TracesData` in its JSON mapping: ids in hex, times as decimal strings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtlpTracesData {
    pub(crate) resource_spans: Vec<OtlpResourceSpans>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtlpResourceSpans {
    pub(crate) resource: OtlpResource,
    pub(crate) scope_spans: Vec<OtlpScopeSpans>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OtlpResource {
    pub(crate) attributes: Vec<OtlpKeyValue>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OtlpScopeSpans {
    /// The instrumentation scope is not stored: always `{}`.
    pub(crate) scope: OtlpScope,
    pub(crate) spans: Vec<OtlpSpan>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OtlpScope {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtlpSpan {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    /// `""` for a root span.
    pub(crate) parent_span_id: String,
    pub(crate) name: String,
    /// `SpanKind`'s number (0 unspecified .. 5 consumer).
    pub(crate) kind: u8,
    pub(crate) start_time_unix_nano: String,
    pub(crate) end_time_unix_nano: String,
    pub(crate) attributes: Vec<OtlpKeyValue>,
    pub(crate) events: Vec<OtlpEvent>,
    pub(crate) links: Vec<OtlpLink>,
    pub(crate) status: OtlpStatus,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtlpEvent {
    pub(crate) time_unix_nano: String,
    pub(crate) name: String,
    pub(crate) attributes: Vec<OtlpKeyValue>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OtlpLink {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) attributes: Vec<OtlpKeyValue>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OtlpStatus {
    /// 0 unset, 1 ok, 2 error.
    pub(crate) code: u8,
    pub(crate) message: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct OtlpKeyValue {
    pub(crate) key: String,
    pub(crate) value: OtlpAnyValue,
}

/// OTLP's `AnyValue`: an object with one key naming the kind of value
/// (`stringValue`, `intValue` as a decimal string, ...), or `{}` for none.
#[derive(Debug)]
pub(crate) enum OtlpAnyValue {
    String(String),
    Bool(bool),
    /// The integer as a decimal string, as the JSON mapping writes 64-bit integers.
    Int(String),
    Double(serde_json::Number),
    Array(Vec<OtlpAnyValue>),
    KeyValues(Vec<OtlpKeyValue>),
    Empty,
}

impl Serialize for OtlpAnyValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Values<'a, T> {
            values: &'a [T],
        }
        let mut map =
            serializer.serialize_map(Some(usize::from(!matches!(self, OtlpAnyValue::Empty))))?;
        match self {
            OtlpAnyValue::String(text) => map.serialize_entry("stringValue", text)?,
            OtlpAnyValue::Bool(flag) => map.serialize_entry("boolValue", flag)?,
            OtlpAnyValue::Int(number) => map.serialize_entry("intValue", number)?,
            OtlpAnyValue::Double(number) => map.serialize_entry("doubleValue", number)?,
            OtlpAnyValue::Array(values) => map.serialize_entry("arrayValue", &Values { values })?,
            OtlpAnyValue::KeyValues(values) => {
                map.serialize_entry("kvlistValue", &Values { values })?
            }
            OtlpAnyValue::Empty => {}
        }
        map.end()
    }
}

// ---- the Prometheus HTTP API -----------------------------------------------------

/// Prometheus' success envelope, with `warnings` when there are any.
#[derive(Debug, Serialize)]
pub(crate) struct PromSuccess<T> {
    pub(crate) status: &'static str,
    pub(crate) data: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

/// Prometheus' error answer: `errorType` is `bad_data`, `execution`,
/// `timeout`, `unavailable` or `internal`.
#[derive(Debug, Serialize)]
pub(crate) struct PromErrorBody<'a> {
    pub(crate) status: &'static str,
    #[serde(rename = "errorType")]
    pub(crate) error_type: &'static str,
    pub(crate) error: &'a str,
}

/// A timestamp in Prometheus' JSON: Unix seconds, with the milliseconds as
/// a fraction when there are any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PromTime(pub(crate) i64);

impl Serialize for PromTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let millis = self.0;
        if millis % 1000 == 0 {
            serializer.serialize_i64(millis / 1000)
        } else {
            serializer.serialize_f64(millis as f64 / 1000.0)
        }
    }
}

/// `[time, "value"]`: the value as Prometheus formats it (`+Inf`, `NaN`, ...).
pub(crate) type PromPoint = (PromTime, String);

/// A series' labels as a JSON object, `__name__` included.
#[derive(Debug, Clone)]
pub(crate) struct PromLabels(pub(crate) Labels);

impl Serialize for PromLabels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter())
    }
}

/// `data` of `/api/v1/query` and `/api/v1/query_range`.
#[derive(Debug, Serialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
pub(crate) enum QueryData {
    Scalar(PromPoint),
    String(PromPoint),
    Vector(Vec<PromSample>),
    Matrix(Vec<PromSeries>),
}

#[derive(Debug, Serialize)]
pub(crate) struct PromSample {
    pub(crate) metric: PromLabels,
    pub(crate) value: PromPoint,
}

#[derive(Debug, Serialize)]
pub(crate) struct PromSeries {
    pub(crate) metric: PromLabels,
    pub(crate) values: Vec<PromPoint>,
}

/// One series of `/api/v1/query_exemplars`' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromSeriesExemplars {
    pub(crate) series_labels: PromLabels,
    pub(crate) exemplars: Vec<PromExemplar>,
}

/// `{"labels": {"trace_id": ...}, "value": "0.42", "timestamp": 1700000000.123}`
#[derive(Debug, Serialize)]
pub(crate) struct PromExemplar {
    pub(crate) labels: PromLabels,
    pub(crate) value: String,
    pub(crate) timestamp: PromTime,
}

/// One entry of `/api/v1/metadata`'s list per metric name.
#[derive(Debug, Serialize)]
pub(crate) struct MetricMetadataEntry {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) help: String,
    pub(crate) unit: String,
}

/// `data` of `/api/v1/rules`.
#[derive(Debug, Serialize)]
pub(crate) struct RuleGroups {
    pub(crate) groups: Vec<RuleGroupJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleGroupJson {
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) rules: Vec<RuleJson>,
    /// Seconds.
    pub(crate) interval: f64,
    pub(crate) limit: u64,
    /// Seconds.
    pub(crate) evaluation_time: f64,
    /// RFC 3339.
    pub(crate) last_evaluation: String,
}

/// A rule: what both kinds have, and the alerting rule's own fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleJson {
    pub(crate) name: String,
    pub(crate) query: String,
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub(crate) kind: RuleKindJson,
    /// `ok`, `err` or `unknown`.
    pub(crate) health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
    /// Seconds.
    pub(crate) evaluation_time: f64,
    /// RFC 3339; Go's zero time before the first evaluation.
    pub(crate) last_evaluation: String,
}

/// `"type": "recording"`, or `"type": "alerting"` with the alert's fields.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum RuleKindJson {
    Recording,
    #[serde(rename_all = "camelCase")]
    Alerting {
        state: &'static str,
        /// `for`, seconds.
        duration: f64,
        /// Seconds.
        keep_firing_for: f64,
        annotations: BTreeMap<String, String>,
        alerts: Vec<AlertJson>,
    },
}

/// `data` of `/api/v1/alerts`.
#[derive(Debug, Serialize)]
pub(crate) struct Alerts {
    pub(crate) alerts: Vec<AlertJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlertJson {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// `inactive`, `pending` or `firing`.
    pub(crate) state: &'static str,
    /// RFC 3339.
    pub(crate) active_at: String,
    /// As Go's `strconv.FormatFloat(v, 'e', -1, 64)` writes it.
    pub(crate) value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) keep_firing_since: Option<String>,
}

/// `data` of `/api/v1/status/buildinfo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BuildInfo {
    pub(crate) version: &'static str,
    pub(crate) revision: &'static str,
    pub(crate) branch: &'static str,
    pub(crate) build_user: &'static str,
    pub(crate) build_date: &'static str,
    pub(crate) go_version: &'static str,
}

/// `data` of `/api/v1/status/flags`: the query settings under Prometheus' flag names.
#[derive(Debug, Serialize)]
pub(crate) struct QueryFlags {
    #[serde(rename = "query.lookback-delta")]
    pub(crate) lookback_delta: String,
    #[serde(rename = "query.max-concurrency")]
    pub(crate) max_concurrency: String,
    #[serde(rename = "query.timeout")]
    pub(crate) timeout: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prometheus_times_are_whole_seconds_or_fractions() {
        let points: Vec<PromPoint> = vec![
            (PromTime(1_700_000_000_000), "1".into()),
            (PromTime(1_700_000_000_500), "2".into()),
        ];
        assert_eq!(
            serde_json::to_value(points).unwrap(),
            json!([[1_700_000_000, "1"], [1_700_000_000.5, "2"]])
        );
    }

    #[test]
    fn otlp_any_values_name_their_kind_in_one_key() {
        let values = vec![
            OtlpAnyValue::String("a".into()),
            OtlpAnyValue::Int("42".into()),
            OtlpAnyValue::Array(vec![OtlpAnyValue::Bool(true)]),
            OtlpAnyValue::KeyValues(vec![OtlpKeyValue {
                key: "k".into(),
                value: OtlpAnyValue::Double(serde_json::Number::from_f64(1.5).unwrap()),
            }]),
            OtlpAnyValue::Empty,
        ];
        assert_eq!(
            serde_json::to_value(values).unwrap(),
            json!([
                {"stringValue": "a"},
                {"intValue": "42"},
                {"arrayValue": {"values": [{"boolValue": true}]}},
                {"kvlistValue": {"values": [{"key": "k", "value": {"doubleValue": 1.5}}]}},
                {}
            ])
        );
    }

    #[test]
    fn a_rule_is_typed_recording_or_alerting_with_the_alerts_fields() {
        let rule = RuleJson {
            name: "r".into(),
            query: "up".into(),
            labels: BTreeMap::new(),
            kind: RuleKindJson::Recording,
            health: "ok",
            last_error: None,
            evaluation_time: 0.5,
            last_evaluation: "0001-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_value(&rule).unwrap(),
            json!({"name": "r", "query": "up", "labels": {}, "type": "recording", "health": "ok",
                   "evaluationTime": 0.5, "lastEvaluation": "0001-01-01T00:00:00Z"})
        );
        let alerting = RuleJson {
            kind: RuleKindJson::Alerting {
                state: "firing",
                duration: 60.0,
                keep_firing_for: 0.0,
                annotations: BTreeMap::new(),
                alerts: Vec::new(),
            },
            ..rule
        };
        let value = serde_json::to_value(&alerting).unwrap();
        assert_eq!(value["type"], "alerting");
        assert_eq!(value["keepFiringFor"], 0.0);
        assert_eq!(value["state"], "firing");
    }
}
