//! Trace handlers: the Jaeger query API (v2 JSON and v3), our trace search on
//! whole-trace properties, and one request's whole story.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use sightline_store::traces::{critical_path, self_times};
use sightline_store::{LogQuery, Span, SpanStatus, TraceQuery, TraceSummary};

use crate::QueryState;
use crate::error::ApiError;
use crate::jaeger;
use crate::response::{
    Bottleneck, JaegerResponse, JaegerTrace, LogEntry, Operation, OtlpAnyValue, OtlpEvent,
    OtlpKeyValue, OtlpLink, OtlpResource, OtlpResourceSpans, OtlpScope, OtlpScopeSpans, OtlpSpan,
    OtlpStatus, OtlpTracesData, RequestStory, SpanEntry, TimelineEntry, TraceSearch,
    TraceSearchHit, V3Operations, V3Services, V3Traces,
};

/// Traces a search returns when no limit is given (Jaeger UI's default).
const DEFAULT_TRACE_LIMIT: usize = 20;

/// Log records one request story includes at most.
const STORY_LOG_LIMIT: usize = 5_000;

/// After this long without a new span, a trace with a root and no orphans is complete.
pub(crate) const IDLE_TIMEOUT_NANOS: i64 = 10 * 1_000_000_000;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, sightline_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

/// `GET /api/services`
pub(crate) async fn services(
    State(state): State<QueryState>,
) -> Result<Json<JaegerResponse<Vec<String>>>, ApiError> {
    let services = blocking(move || state.spans.services()).await?;
    Ok(Json(JaegerResponse::counted(services)))
}

/// `GET /api/services/{service}/operations`
pub(crate) async fn service_operations(
    State(state): State<QueryState>,
    Path(service): Path<String>,
) -> Result<Json<JaegerResponse<Vec<String>>>, ApiError> {
    let operations = blocking(move || state.spans.operations(&service)).await?;
    Ok(Json(JaegerResponse::counted(operations)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct OperationsParams {
    service: String,
    /// Only operations of this span kind: `spanKind` in Jaeger's v2 API,
    /// `span_kind` in v3.
    #[serde(rename = "spanKind", alias = "span_kind")]
    span_kind: Option<String>,
}

/// The operations of `params.service`, one per (name, span kind) pair, as
/// Jaeger's `{"name", "spanKind"}` objects.
async fn kinded_operations(
    state: QueryState,
    params: OperationsParams,
) -> Result<Vec<Operation>, ApiError> {
    let operations = blocking(move || {
        let kind = params.span_kind.as_deref().filter(|kind| !kind.is_empty());
        state.spans.operations_with_kinds(&params.service, kind)
    })
    .await?;
    Ok(operations
        .into_iter()
        .map(|operation| Operation {
            span_kind: jaeger::span_kind(&operation.span_kind).to_string(),
            name: operation.name,
        })
        .collect())
}

/// `GET /api/operations?service=&spanKind=` (Jaeger's newer form, with span kinds).
pub(crate) async fn operations(
    State(state): State<QueryState>,
    Query(params): Query<OperationsParams>,
) -> Result<Json<JaegerResponse<Vec<Operation>>>, ApiError> {
    let data = kinded_operations(state, params).await?;
    Ok(Json(JaegerResponse::counted(data)))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct JaegerSearchParams {
    service: Option<String>,
    operation: Option<String>,
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    /// Microseconds since the epoch, as Jaeger sends them.
    start: Option<i64>,
    end: Option<i64>,
    limit: Option<usize>,
}

/// `GET /api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=`
pub(crate) async fn jaeger_search(
    State(state): State<QueryState>,
    Query(params): Query<JaegerSearchParams>,
) -> Result<Json<JaegerResponse<Vec<JaegerTrace>>>, ApiError> {
    let (tags, errors_only) = parse_tags(params.tags.as_deref())?;
    let query = TraceQuery {
        service: params.service.filter(|s| !s.is_empty()),
        operation: params.operation.filter(|o| !o.is_empty() && o != "all"),
        tags,
        min_duration: params
            .min_duration
            .as_deref()
            .map(|d| parse_duration("minDuration", d))
            .transpose()?,
        max_duration: params
            .max_duration
            .as_deref()
            .map(|d| parse_duration("maxDuration", d))
            .transpose()?,
        errors_only,
        start: params.start.map(|micros| micros.saturating_mul(1_000)),
        end: params.end.map(|micros| micros.saturating_mul(1_000)),
        limit: params.limit.unwrap_or(DEFAULT_TRACE_LIMIT),
    };
    let traces = blocking(move || {
        let summaries = state.spans.search_traces(&query)?;
        summaries
            .iter()
            .map(|summary| state.spans.trace(&summary.trace_id))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(jaeger::traces_response(&traces)))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    /// `key=value` pairs separated by spaces, or a JSON object.
    tags: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    #[serde(default)]
    errors: bool,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/trace-search`: trace summaries matching whole-trace properties, newest first.
pub(crate) async fn search(
    State(state): State<QueryState>,
    Query(params): Query<SearchParams>,
) -> Result<Json<TraceSearch>, ApiError> {
    let (tags, errors_from_tags) = parse_tags(params.tags.as_deref())?;
    let query = TraceQuery {
        service: params.service.filter(|s| !s.is_empty()),
        operation: params.operation.filter(|o| !o.is_empty()),
        tags,
        min_duration: params
            .min_duration
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| parse_duration("min_duration", d))
            .transpose()?,
        max_duration: params
            .max_duration
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| parse_duration("max_duration", d))
            .transpose()?,
        errors_only: params.errors || errors_from_tags,
        start: crate::api::parse_optional_time("start", params.start.as_deref())?,
        end: crate::api::parse_optional_time("end", params.end.as_deref())?,
        limit: params.limit.unwrap_or(DEFAULT_TRACE_LIMIT),
    };
    let summaries = blocking(move || state.spans.search_traces(&query)).await?;
    let now = sightline_vocab::clock::now_nanos();
    let traces = summaries
        .into_iter()
        .map(|summary| search_hit(summary, now))
        .collect();
    Ok(Json(TraceSearch { traces }))
}

fn search_hit(summary: TraceSummary, now: i64) -> TraceSearchHit {
    TraceSearchHit {
        complete: summary.is_complete(now, IDLE_TIMEOUT_NANOS),
        summary,
    }
}

/// `GET /api/v3/traces/{trace_id}`: the trace as OTLP JSON.
pub(crate) async fn v3_trace(
    State(state): State<QueryState>,
    Path(trace_id): Path<String>,
) -> Result<Response, ApiError> {
    crate::api::check_trace_id(&trace_id)?;
    let lookup = trace_id.clone();
    let spans = blocking(move || state.spans.trace(&lookup)).await?;
    if spans.is_empty() {
        return Err(ApiError::NotFound(format!("trace {trace_id} not found")));
    }
    Ok(Json(V3Traces {
        result: otlp_traces_data(&spans),
    })
    .into_response())
}

/// `GET /api/v3/services`
pub(crate) async fn v3_services(
    State(state): State<QueryState>,
) -> Result<Json<V3Services>, ApiError> {
    let services = blocking(move || state.spans.services()).await?;
    Ok(Json(V3Services { services }))
}

/// `GET /api/v3/operations?service=&span_kind=`
pub(crate) async fn v3_operations(
    State(state): State<QueryState>,
    Query(params): Query<OperationsParams>,
) -> Result<Json<V3Operations>, ApiError> {
    let operations = kinded_operations(state, params).await?;
    Ok(Json(V3Operations { operations }))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct V3SearchParams {
    #[serde(rename = "query.service_name")]
    service_name: Option<String>,
    #[serde(rename = "query.operation_name")]
    operation_name: Option<String>,
    #[serde(rename = "query.start_time_min")]
    start_time_min: Option<String>,
    #[serde(rename = "query.start_time_max")]
    start_time_max: Option<String>,
    #[serde(rename = "query.duration_min")]
    duration_min: Option<String>,
    #[serde(rename = "query.duration_max")]
    duration_max: Option<String>,
    #[serde(rename = "query.num_traces")]
    num_traces: Option<usize>,
}

/// `GET /api/v3/traces?query.service_name=...`: matching traces as OTLP JSON.
pub(crate) async fn v3_search(
    State(state): State<QueryState>,
    Query(params): Query<V3SearchParams>,
) -> Result<Json<V3Traces>, ApiError> {
    let query = TraceQuery {
        service: params.service_name.filter(|s| !s.is_empty()),
        operation: params.operation_name.filter(|o| !o.is_empty()),
        min_duration: params
            .duration_min
            .as_deref()
            .map(|d| parse_duration("query.duration_min", d))
            .transpose()?,
        max_duration: params
            .duration_max
            .as_deref()
            .map(|d| parse_duration("query.duration_max", d))
            .transpose()?,
        start: crate::api::parse_optional_time(
            "query.start_time_min",
            params.start_time_min.as_deref(),
        )?,
        end: crate::api::parse_optional_time(
            "query.start_time_max",
            params.start_time_max.as_deref(),
        )?,
        limit: params.num_traces.unwrap_or(DEFAULT_TRACE_LIMIT),
        ..TraceQuery::default()
    };
    let spans = blocking(move || {
        let mut spans = Vec::new();
        for summary in state.spans.search_traces(&query)? {
            spans.extend(state.spans.trace(&summary.trace_id)?);
        }
        Ok(spans)
    })
    .await?;
    Ok(Json(V3Traces {
        result: otlp_traces_data(&spans),
    }))
}

/// Spans as OTLP JSON `TracesData`: grouped by resource, ids in hex, times
/// as decimal strings.
fn otlp_traces_data(spans: &[Span]) -> OtlpTracesData {
    let mut by_resource: BTreeMap<String, (Vec<OtlpKeyValue>, Vec<OtlpSpan>)> = BTreeMap::new();
    for span in spans {
        let key = serde_json::to_string(&span.resource).unwrap_or_default();
        let entry = by_resource
            .entry(key)
            .or_insert_with(|| (otlp_attributes(&span.resource), Vec::new()));
        let kind = match span.kind.as_str() {
            "internal" => 1,
            "server" => 2,
            "client" => 3,
            "producer" => 4,
            "consumer" => 5,
            _ => 0,
        };
        let status_code = match span.status {
            SpanStatus::Unset => 0,
            SpanStatus::Ok => 1,
            SpanStatus::Error => 2,
        };
        entry.1.push(OtlpSpan {
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            parent_span_id: span.parent_span_id.clone().unwrap_or_default(),
            name: span.name.clone(),
            kind,
            start_time_unix_nano: span.start_time.to_string(),
            end_time_unix_nano: span.end_time.to_string(),
            attributes: otlp_attributes(&span.attributes),
            events: span
                .events
                .iter()
                .map(|event| OtlpEvent {
                    time_unix_nano: event.time.to_string(),
                    name: event.name.clone(),
                    attributes: otlp_attributes(&event.attributes),
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|link| OtlpLink {
                    trace_id: link.trace_id.clone(),
                    span_id: link.span_id.clone(),
                    attributes: otlp_attributes(&link.attributes),
                })
                .collect(),
            status: OtlpStatus {
                code: status_code,
                message: span.status_message.clone(),
            },
        });
    }
    let resource_spans = by_resource
        .into_values()
        .map(|(attributes, spans)| OtlpResourceSpans {
            resource: OtlpResource { attributes },
            scope_spans: vec![OtlpScopeSpans {
                scope: OtlpScope {},
                spans,
            }],
        })
        .collect();
    OtlpTracesData { resource_spans }
}

fn otlp_attributes(map: &serde_json::Map<String, Value>) -> Vec<OtlpKeyValue> {
    fn any_value(value: &Value) -> OtlpAnyValue {
        match value {
            Value::String(text) => OtlpAnyValue::String(text.clone()),
            Value::Bool(flag) => OtlpAnyValue::Bool(*flag),
            Value::Number(number) if number.is_i64() || number.is_u64() => {
                OtlpAnyValue::Int(number.to_string())
            }
            Value::Number(number) => OtlpAnyValue::Double(number.clone()),
            Value::Array(items) => OtlpAnyValue::Array(items.iter().map(any_value).collect()),
            Value::Object(map) => OtlpAnyValue::KeyValues(otlp_attributes(map)),
            Value::Null => OtlpAnyValue::Empty,
        }
    }
    map.iter()
        .map(|(key, value)| OtlpKeyValue {
            key: key.clone(),
            value: any_value(value),
        })
        .collect()
}

/// `GET /api/requests/{id}`: everything one request did, by request id or trace id.
pub(crate) async fn request_story(
    State(state): State<QueryState>,
    Path(id): Path<String>,
) -> Result<Json<RequestStory>, ApiError> {
    let story = blocking(move || build_story(&state, &id)).await?;
    Ok(Json(story?))
}

fn is_trace_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn build_story(
    state: &QueryState,
    id: &str,
) -> Result<Result<RequestStory, ApiError>, sightline_store::StoreError> {
    let by_trace = is_trace_id(id);
    let mut trace_ids: BTreeSet<String> = BTreeSet::new();
    let mut request_ids: BTreeSet<String> = BTreeSet::new();
    if by_trace {
        trace_ids.insert(id.to_ascii_lowercase());
    } else {
        request_ids.insert(id.to_string());
        trace_ids.extend(state.spans.trace_ids_for_request(id)?);
    }
    // Logs of the request tell about traces the spans may not (yet) show, and the other way round.
    let log_query = |trace_ids: &BTreeSet<String>, request_ids: &BTreeSet<String>| {
        let clauses: Vec<String> = trace_ids
            .iter()
            .map(|t| format!("trace_id:{t}"))
            .chain(
                request_ids
                    .iter()
                    .map(|r| format!("request_id:{}", quoted(r))),
            )
            .collect();
        clauses.join(" OR ")
    };
    let first_logs = state.logs.search(&LogQuery {
        query: log_query(&trace_ids, &request_ids),
        limit: STORY_LOG_LIMIT,
        ..LogQuery::default()
    })?;
    for hit in &first_logs.hits {
        if let Some(trace_id) = &hit.record.trace_id {
            trace_ids.insert(trace_id.clone());
        }
        if let Some(request_id) = &hit.record.request_id {
            request_ids.insert(request_id.clone());
        }
    }
    // Async work and retries: traces linked to or from these ones.
    for trace_id in trace_ids.clone() {
        trace_ids.extend(state.spans.traces_linking_to(&trace_id)?);
        if let Some(summary) = state.spans.summary(&trace_id)? {
            trace_ids.extend(summary.linked_traces);
            request_ids.extend(summary.request_ids);
        }
    }
    let logs = state.logs.search(&LogQuery {
        query: log_query(&trace_ids, &request_ids),
        limit: STORY_LOG_LIMIT,
        ..LogQuery::default()
    })?;
    let mut spans: Vec<Span> = Vec::new();
    for trace_id in &trace_ids {
        spans.extend(state.spans.trace(trace_id)?);
    }
    if spans.is_empty() && logs.hits.is_empty() {
        return Ok(Err(ApiError::NotFound(format!(
            "no spans or logs for request {id}"
        ))));
    }

    // The critical path of each trace; the bottleneck is the critical-path
    // span with the largest self time.
    let mut path: Vec<String> = Vec::new();
    for trace_id in &trace_ids {
        let trace_spans: Vec<Span> = spans
            .iter()
            .filter(|s| &s.trace_id == trace_id)
            .cloned()
            .collect();
        if let Some(root) = trace_spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by_key(|s| s.start_time)
        {
            path.extend(critical_path(&trace_spans, &root.span_id));
        }
    }
    let on_critical_path: HashSet<String> = path.iter().cloned().collect();
    let self_times = self_times(&spans);
    let bottleneck = spans
        .iter()
        .zip(&self_times)
        .filter(|(span, _)| on_critical_path.contains(&span.span_id))
        .max_by_key(|(_, self_time)| **self_time)
        .map(|(span, self_time)| Bottleneck {
            span_id: span.span_id.clone(),
            trace_id: span.trace_id.clone(),
            service: span.service.clone(),
            name: span.name.clone(),
            self_time: *self_time,
        });

    let span_count = spans.len();
    let log_count = logs.hits.len();
    let end = spans
        .iter()
        .map(|s| s.end_time)
        .chain(logs.hits.iter().map(|h| h.record.timestamp))
        .max();
    let mut timeline: Vec<TimelineEntry> = Vec::with_capacity(span_count + log_count);
    for (span, self_time) in spans.into_iter().zip(self_times) {
        timeline.push(TimelineEntry::Span(SpanEntry {
            time: span.start_time,
            duration: span.duration_nanos(),
            self_time,
            on_critical_path: on_critical_path.contains(&span.span_id),
            error: span.status == SpanStatus::Error,
            span,
        }));
    }
    for hit in logs.hits {
        timeline.push(TimelineEntry::Log(LogEntry {
            time: hit.record.timestamp,
            error: hit.record.severity_number >= 17
                || matches!(hit.record.severity_text.as_str(), "ERROR" | "FATAL"),
            hit,
        }));
    }
    timeline.sort_by_key(TimelineEntry::time);

    let start = timeline
        .iter()
        .map(TimelineEntry::time)
        .min()
        .unwrap_or_default();
    let end = end.unwrap_or(start);
    let mut services: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &timeline {
        *services.entry(entry.service().to_string()).or_default() += 1;
    }
    let errors = timeline.iter().filter(|e| e.is_error()).count();
    Ok(Ok(RequestStory {
        id: id.to_string(),
        kind: if by_trace { "trace_id" } else { "request_id" },
        request_ids,
        trace_ids,
        services,
        start,
        end,
        duration: end - start,
        span_count,
        log_count,
        errors,
        critical_path: path,
        bottleneck,
        timeline,
    }))
}

/// Tags as Jaeger sends them (a JSON object) or as people type them
/// (`key=value key2=value2`). `error=true` means "traces with errors".
fn parse_tags(text: Option<&str>) -> Result<(Vec<(String, String)>, bool), ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok((Vec::new(), false));
    };
    let pairs: Vec<(String, String)> = if text.starts_with('{') {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|error| {
                ApiError::BadRequest(format!("`tags` is not a JSON object: {error}"))
            })?;
        object
            .into_iter()
            .map(|(key, value)| {
                (
                    key,
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string),
                )
            })
            .collect()
    } else {
        text.split_whitespace()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
                    .ok_or_else(|| ApiError::BadRequest(format!("tag {pair:?} is not key=value")))
            })
            .collect::<Result<_, _>>()?
    };
    let errors_only = pairs
        .iter()
        .any(|(key, value)| key == "error" && value == "true");
    Ok((
        pairs
            .into_iter()
            .filter(|(key, _)| key != "error")
            .collect(),
        errors_only,
    ))
}

/// Jaeger durations: `1.2s`, `100ms`, `500us`, `300µs`; a bare number is microseconds.
fn parse_duration(name: &str, text: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(index) => text.split_at(index),
        None => (text, "us"),
    };
    let value: f64 = number.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "`{name}` must be a duration like 100ms or 1.5s, got {text:?}"
        ))
    })?;
    let nanos_per_unit = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(ApiError::BadRequest(format!(
                "`{name}`: unknown duration unit {other:?} in {text:?}"
            )));
        }
    };
    Ok((value * nanos_per_unit) as i64)
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_and_tags_parse_as_jaeger_sends_them() {
        assert_eq!(parse_duration("d", "1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration("d", "100ms").unwrap(), 100_000_000);
        assert_eq!(parse_duration("d", "250").unwrap(), 250_000);
        assert!(parse_duration("d", "fast").is_err());
        let (tags, errors) =
            parse_tags(Some(r#"{"http.status_code":"502","error":"true"}"#)).unwrap();
        assert_eq!(tags, [("http.status_code".to_string(), "502".to_string())]);
        assert!(errors);
        let (tags, errors) = parse_tags(Some("user_id=u-1 region=eu")).unwrap();
        assert_eq!(tags.len(), 2);
        assert!(!errors);
        assert!(parse_tags(Some("novalue")).is_err());
    }

    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use sightline_store::{LogRecord, LogStore, SpanLink, SpanStore};
    use tower::ServiceExt;

    pub(crate) const ORDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    pub(crate) const NOTIFY_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    const T0: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;

    fn span(
        trace: &str,
        id: &str,
        parent: Option<&str>,
        service: &str,
        name: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Span {
        let mut resource = serde_json::Map::new();
        resource.insert("service.name".into(), service.into());
        Span {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            name: name.into(),
            service: service.into(),
            kind: "server".into(),
            start_time: T0 + start_ms * MS,
            end_time: T0 + end_ms * MS,
            resource: std::sync::Arc::new(resource),
            ..Span::default()
        }
    }

    fn log(
        trace: Option<&str>,
        request: Option<&str>,
        service: &str,
        at_ms: i64,
        body: &str,
    ) -> LogRecord {
        LogRecord {
            timestamp: T0 + at_ms * MS,
            body: body.into(),
            service: service.into(),
            severity_text: "INFO".into(),
            severity_number: 9,
            trace_id: trace.map(str::to_string),
            request_id: request.map(str::to_string),
            ..LogRecord::default()
        }
    }

    /// gateway -> order -> payment (slow, failing), and a notification
    /// trace linked to the order's span; logs with and without trace ids.
    pub(crate) fn shop(dir: &std::path::Path) -> crate::QueryState {
        let mut order = span(
            ORDER_TRACE,
            "00000000000000a2",
            Some("00000000000000a1"),
            "order",
            "POST /orders",
            5,
            900,
        );
        order.request_id = Some("req-42".into());
        let mut payment = span(
            ORDER_TRACE,
            "00000000000000a3",
            Some("00000000000000a2"),
            "payment",
            "charge",
            100,
            850,
        );
        payment.status = SpanStatus::Error;
        payment
            .attributes
            .insert("http.status_code".into(), 502.into());
        let mut notify = span(
            NOTIFY_TRACE,
            "00000000000000b1",
            None,
            "notification",
            "send email",
            950,
            990,
        );
        notify.kind = "consumer".into();
        notify.links.push(SpanLink {
            trace_id: ORDER_TRACE.into(),
            span_id: "00000000000000a2".into(),
            ..SpanLink::default()
        });
        let spans = SpanStore::open(&dir.join("spans")).unwrap();
        spans
            .add(
                0,
                &[
                    span(
                        ORDER_TRACE,
                        "00000000000000a1",
                        None,
                        "gateway",
                        "POST /api/orders",
                        0,
                        1_000,
                    ),
                    order,
                    payment,
                    span(
                        ORDER_TRACE,
                        "00000000000000a4",
                        Some("00000000000000a2"),
                        "inventory",
                        "reserve",
                        10,
                        60,
                    ),
                    notify,
                ],
            )
            .unwrap();
        spans.commit(1).unwrap();
        let logs = LogStore::open(&dir.join("logs")).unwrap();
        let mut failed = log(
            Some(ORDER_TRACE),
            Some("req-42"),
            "payment",
            840,
            "payment declined",
        );
        failed.severity_text = "ERROR".into();
        failed.severity_number = 17;
        logs.add(
            0,
            &[
                log(
                    Some(ORDER_TRACE),
                    Some("req-42"),
                    "gateway",
                    1,
                    "order received",
                ),
                failed,
                // A log with the request id but no trace id (e.g. before the span started).
                log(None, Some("req-42"), "auth", 0, "token checked"),
                log(Some(NOTIFY_TRACE), None, "notification", 960, "email sent"),
                log(None, Some("other"), "gateway", 2, "unrelated"),
            ],
        )
        .unwrap();
        logs.commit(1).unwrap();
        crate::QueryState {
            logs: Arc::new(logs),
            spans: Arc::new(spans),
            metrics: Arc::new(sightline_tsdb::MetricStore::open(dir.join("metrics")).unwrap()),
            rules: Arc::new(sightline_tsdb::rules::NoRules),
            dashboards: Default::default(),
            searches: crate::Searches::in_dir(dir),
        }
    }

    async fn get(state: crate::QueryState, uri: &str) -> (StatusCode, Value) {
        let response = crate::router(state)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn jaeger_api_answers_in_jaegers_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let state = shop(dir.path());
        let (status, body) = get(state.clone(), "/api/services").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["data"],
            json!(["gateway", "inventory", "notification", "order", "payment"])
        );
        assert_eq!(
            (
                body["total"].clone(),
                body["limit"].clone(),
                body["offset"].clone(),
                body["errors"].clone()
            ),
            (json!(5), json!(0), json!(0), Value::Null)
        );

        let (_, body) = get(state.clone(), "/api/services/order/operations").await;
        assert_eq!(body["data"], json!(["POST /orders"]));
        let (_, body) = get(state.clone(), "/api/operations?service=payment").await;
        assert_eq!(
            body["data"],
            json!([{"name": "charge", "spanKind": "server"}])
        );
        let (_, body) = get(state.clone(), "/api/operations?service=notification").await;
        assert_eq!(
            body["data"],
            json!([{"name": "send email", "spanKind": "consumer"}])
        );
        let (_, body) = get(
            state.clone(),
            "/api/operations?service=notification&spanKind=server",
        )
        .await;
        assert_eq!(body["data"], json!([]));

        // Search: whole-trace duration (1 s) and an error, with Jaeger's units.
        let (status, body) = get(
            state.clone(),
            "/api/traces?service=payment&minDuration=900ms&limit=5",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let traces = body["data"].as_array().unwrap();
        assert_eq!(traces.len(), 1);
        let trace = &traces[0];
        assert_eq!(trace["traceID"], ORDER_TRACE);
        assert_eq!(trace["spans"].as_array().unwrap().len(), 4);
        let span = &trace["spans"][0];
        for field in [
            "traceID",
            "spanID",
            "operationName",
            "references",
            "startTime",
            "duration",
            "tags",
            "logs",
            "processID",
            "warnings",
            "flags",
        ] {
            assert!(span.get(field).is_some(), "span field {field} in {span}");
        }
        assert!(
            span["startTime"].is_i64() && span["duration"].is_i64(),
            "microseconds as integers"
        );
        let process = &trace["processes"][span["processID"].as_str().unwrap()];
        assert!(
            process["serviceName"].is_string() && process["tags"].is_array(),
            "{process}"
        );
        let (_, body) = get(
            state.clone(),
            "/api/traces?service=payment&maxDuration=500ms",
        )
        .await;
        assert_eq!(body["data"], json!([]));
        let (_, body) = get(
            state.clone(),
            r#"/api/traces?tags=%7B%22http.status_code%22%3A%22502%22%7D"#,
        )
        .await;
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        let (status, _) = get(state.clone(), "/api/traces?minDuration=soon").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // v3: OTLP JSON.
        let (status, body) = get(state.clone(), &format!("/api/v3/traces/{ORDER_TRACE}")).await;
        assert_eq!(status, StatusCode::OK);
        let resource_spans = body["result"]["resourceSpans"].as_array().unwrap();
        assert_eq!(resource_spans.len(), 4, "one resource per service");
        let otlp_span = &resource_spans[0]["scopeSpans"][0]["spans"][0];
        assert_eq!(otlp_span["traceId"], ORDER_TRACE);
        assert!(otlp_span["startTimeUnixNano"].is_string());
        let (_, body) = get(state.clone(), "/api/v3/services").await;
        assert_eq!(body["services"].as_array().unwrap().len(), 5);
        let (_, body) = get(
            state.clone(),
            "/api/v3/operations?service=payment&span_kind=server",
        )
        .await;
        assert_eq!(
            body["operations"],
            json!([{"name": "charge", "spanKind": "server"}])
        );
        let (_, body) = get(
            state.clone(),
            "/api/v3/operations?service=payment&span_kind=client",
        )
        .await;
        assert_eq!(body["operations"], json!([]));
        let (_, body) = get(
            state.clone(),
            "/api/v3/traces?query.service_name=notification",
        )
        .await;
        assert_eq!(body["result"]["resourceSpans"].as_array().unwrap().len(), 1);
        let (status, _) = get(state, "/api/v3/traces/0123456789abcdef0123456789abcdef").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn trace_search_returns_summaries_of_whole_traces() {
        let dir = tempfile::tempdir().unwrap();
        let state = shop(dir.path());
        let (status, body) = get(state.clone(), "/api/trace-search?errors=true").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let traces = body["traces"].as_array().unwrap();
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0]["root_service"], "gateway");
        assert_eq!(traces[0]["span_count"], 4);
        assert_eq!(traces[0]["duration"], 1_000 * MS);
        assert_eq!(
            traces[0]["complete"], false,
            "just updated: more spans may still come"
        );
        assert_eq!(
            (
                traces[0]["has_root"].clone(),
                traces[0]["orphan_count"].clone()
            ),
            (json!(true), json!(0))
        );
        let (_, body) = get(state, "/api/trace-search?service=notification").await;
        assert_eq!(body["traces"][0]["linked_traces"], json!([ORDER_TRACE]));
    }

    #[tokio::test]
    async fn a_request_story_merges_logs_and_spans_across_services_and_traces() {
        let dir = tempfile::tempdir().unwrap();
        let state = shop(dir.path());
        for id in ["req-42", ORDER_TRACE] {
            let (status, story) = get(state.clone(), &format!("/api/requests/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{story}");
            assert_eq!(
                story["trace_ids"],
                json!([ORDER_TRACE, NOTIFY_TRACE]),
                "{id}: the linked async trace belongs to the story"
            );
            assert_eq!(story["span_count"], 5);
            let bodies: Vec<&str> = story["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["body"].as_str())
                .collect();
            assert_eq!(
                bodies,
                [
                    "token checked",
                    "order received",
                    "payment declined",
                    "email sent"
                ],
                "{id}: logs in time order, the trace-less one included, the unrelated one not"
            );
            let times: Vec<i64> = story["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["time"].as_i64().unwrap())
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "one timeline in time order"
            );
            assert_eq!(
                story["critical_path"],
                json!([
                    "00000000000000a1",
                    "00000000000000a2",
                    "00000000000000a3",
                    "00000000000000a4",
                    "00000000000000b1"
                ])
            );
            assert_eq!(
                story["bottleneck"]["service"], "payment",
                "largest self time on the critical path"
            );
            assert_eq!(story["errors"], 2, "the failing span and the error log");
            assert!(story["services"].as_object().unwrap().contains_key("auth"));
        }
        let (status, _) = get(state, "/api/requests/nothing-like-this").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
