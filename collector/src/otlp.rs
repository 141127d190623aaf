//! Conversion from OTLP protobuf messages to the store's data model.
//!
//! This is the only place that knows both OTLP and [`sightline_store`] types.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::{Map, Value};
use sightline_store::{LogRecord, SharedResource, Span, SpanEvent, SpanLink, SpanStatus};
use sightline_vocab::clock::now_nanos;
use sightline_vocab::severity::Severity;

use crate::document;

/// Attribute names whose value becomes a record's `request_id`, in order of preference.
pub(crate) use sightline_vocab::names::REQUEST_ID_KEYS;

const UNKNOWN_SERVICE: &str = "unknown_service";

/// Flattens an OTLP logs export into store records.
///
/// A body that is a JSON object (a string holding one, or a kvlist) is what
/// shippers send for a container's JSON line when they do not parse it
/// themselves (Fluent Bit's `opentelemetry` output by default: an empty
/// resource, the line as the body, no attributes). It is taken apart by the
/// mapping `_bulk` documents get (`document.rs`): its message becomes the
/// body, its fields attributes, its level, time, ids and Kubernetes
/// metadata the record's own. What the OTLP record sets itself wins, except
/// the time: the line's own timestamp is the event's, as in the agent.
pub(crate) fn log_records(request: ExportLogsServiceRequest) -> Vec<LogRecord> {
    let now = now_nanos();
    let mut records = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = Arc::new(resource_map(resource_logs.resource.as_ref()));
        let service = service_name(&resource);
        let mut extended = ExtendedResources::default();
        for scope_logs in resource_logs.scope_logs {
            for log in scope_logs.log_records {
                let mut attributes = key_values_to_map(&log.attributes);
                let observed = nanos_or(log.observed_time_unix_nano, now);
                let severity_text = if log.severity_text.is_empty() {
                    Severity::from_number(log.severity_number)
                        .map_or("", Severity::text)
                        .to_string()
                } else {
                    log.severity_text.to_ascii_uppercase()
                };
                let mut record = LogRecord {
                    timestamp: nanos_or(log.time_unix_nano, observed),
                    observed_timestamp: observed,
                    severity_text,
                    severity_number: log.severity_number,
                    body: String::new(),
                    service: service.clone(),
                    resource: Arc::clone(&resource),
                    request_id: None,
                    attributes: Map::new(),
                    trace_id: id_to_hex(&log.trace_id, 16),
                    span_id: id_to_hex(&log.span_id, 8),
                };
                record.body = match body_document(log.body) {
                    Body::Text(text) => text,
                    Body::Document { document, raw } => {
                        let shaped = document::shape(document);
                        if let Some(Ok(timestamp)) = shaped.timestamp {
                            record.timestamp = timestamp;
                        }
                        if record.severity_text.is_empty()
                            && record.severity_number == 0
                            && let Some((text, number)) = shaped.severity
                        {
                            record.severity_text = text;
                            record.severity_number = number;
                        }
                        record.trace_id = record.trace_id.take().or(shaped.trace_id);
                        record.span_id = record.span_id.take().or(shaped.span_id);
                        for (key, value) in shaped.attributes {
                            attributes.entry(key).or_insert(value);
                        }
                        let named = resource.contains_key("service.name");
                        let mut more = shaped.resource;
                        if let (false, Some(name)) = (named, shaped.service) {
                            more.insert("service.name".into(), Value::String(name));
                        }
                        if !more.is_empty() {
                            record.resource = extended.get(&resource, more);
                            record.service = service_name(&record.resource);
                        }
                        shaped.body.or(raw).unwrap_or_default()
                    }
                };
                record.request_id = document::request_id(&attributes);
                record.attributes = attributes;
                records.push(record);
            }
        }
    }
    records
}

/// A log body: text, or a JSON object to take apart with its text when it
/// may become the body (no message field of its own).
enum Body {
    Text(String),
    Document {
        document: Map<String, Value>,
        raw: Option<String>,
    },
}

fn body_document(body: Option<AnyValue>) -> Body {
    match body.and_then(|body| body.value) {
        Some(any_value::Value::StringValue(text)) => {
            let trimmed = text.trim();
            if trimmed.starts_with('{')
                && trimmed.ends_with('}')
                && let Ok(document) = serde_json::from_str::<Map<String, Value>>(trimmed)
            {
                return Body::Document {
                    document,
                    raw: Some(text),
                };
            }
            Body::Text(text)
        }
        Some(any_value::Value::KvlistValue(list)) => {
            let document = key_values_to_map(&list.values);
            let has_message = ["message", "log", "msg"]
                .iter()
                .any(|key| matches!(document.get(*key), Some(value) if is_text_like(value)));
            let raw = (!has_message).then(|| Value::Object(document.clone()).to_string());
            Body::Document { document, raw }
        }
        other => Body::Text(
            other
                .map(|value| any_value_to_text(&AnyValue { value: Some(value) }))
                .unwrap_or_default(),
        ),
    }
}

fn is_text_like(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// The resources of one OTLP resource extended by what records' bodies say
/// (Kubernetes fields, a service name): records with the same additions
/// share one map, as records of one resource do.
#[derive(Default)]
struct ExtendedResources {
    last: Option<(Map<String, Value>, SharedResource)>,
}

impl ExtendedResources {
    fn get(&mut self, base: &Map<String, Value>, more: Map<String, Value>) -> SharedResource {
        if let Some((known, shared)) = &self.last
            && *known == more
        {
            return Arc::clone(shared);
        }
        let mut resource = base.clone();
        for (key, value) in &more {
            resource.entry(key.clone()).or_insert_with(|| value.clone());
        }
        let shared = Arc::new(resource);
        self.last = Some((more, Arc::clone(&shared)));
        shared
    }
}

/// Flattens an OTLP trace export into store spans. Spans without a valid
/// trace or span id cannot be stored and are counted in the second value.
pub(crate) fn spans(request: ExportTraceServiceRequest) -> (Vec<Span>, usize) {
    let mut spans = Vec::new();
    let mut rejected = 0;
    for resource_spans in request.resource_spans {
        let resource = Arc::new(resource_map(resource_spans.resource.as_ref()));
        let service = service_name(&resource);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let (Some(trace_id), Some(span_id)) =
                    (id_to_hex(&span.trace_id, 16), id_to_hex(&span.span_id, 8))
                else {
                    rejected += 1;
                    continue;
                };
                let attributes = key_values_to_map(&span.attributes);
                let (status, status_message) = match &span.status {
                    Some(status) => (span_status(status.code), status.message.clone()),
                    None => (SpanStatus::Unset, String::new()),
                };
                spans.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id: id_to_hex(&span.parent_span_id, 8),
                    name: span.name,
                    service: service.clone(),
                    kind: span_kind(span.kind).to_string(),
                    start_time: clamp_nanos(span.start_time_unix_nano),
                    end_time: clamp_nanos(span.end_time_unix_nano.max(span.start_time_unix_nano)),
                    status,
                    status_message,
                    resource: Arc::clone(&resource),
                    request_id: document::request_id(&attributes),
                    attributes,
                    events: span
                        .events
                        .iter()
                        .map(|event| SpanEvent {
                            time: clamp_nanos(event.time_unix_nano),
                            name: event.name.clone(),
                            attributes: key_values_to_map(&event.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .filter_map(|link| {
                            Some(SpanLink {
                                trace_id: id_to_hex(&link.trace_id, 16)?,
                                span_id: id_to_hex(&link.span_id, 8)?,
                                attributes: key_values_to_map(&link.attributes),
                            })
                        })
                        .collect(),
                });
            }
        }
    }
    (spans, rejected)
}

fn span_kind(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Unspecified) | Err(_) => "unspecified",
    }
}

fn span_status(code: i32) -> SpanStatus {
    match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => SpanStatus::Ok,
        Ok(StatusCode::Error) => SpanStatus::Error,
        Ok(StatusCode::Unset) | Err(_) => SpanStatus::Unset,
    }
}

fn resource_map(resource: Option<&Resource>) -> Map<String, Value> {
    resource
        .map(|resource| key_values_to_map(&resource.attributes))
        .unwrap_or_default()
}

fn service_name(resource: &Map<String, Value>) -> String {
    match resource.get("service.name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => UNKNOWN_SERVICE.to_string(),
    }
}

/// Hex form of an OTLP id, or `None` when it is absent, of the wrong length or all zeros.
fn id_to_hex(bytes: &[u8], expected_len: usize) -> Option<String> {
    if bytes.len() != expected_len || bytes.iter().all(|byte| *byte == 0) {
        return None;
    }
    Some(hex::encode(bytes))
}

fn key_values_to_map(key_values: &[KeyValue]) -> Map<String, Value> {
    key_values
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Value::Null, any_value_to_json),
            )
        })
        .collect()
}

fn any_value_to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(text)) => Value::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => Value::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => Value::from(*number),
        Some(any_value::Value::DoubleValue(number)) => {
            serde_json::Number::from_f64(*number).map_or(Value::Null, Value::Number)
        }
        Some(any_value::Value::ArrayValue(array)) => {
            Value::Array(array.values.iter().map(any_value_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => Value::Object(key_values_to_map(&list.values)),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex::encode(bytes)),
        Some(any_value::Value::StringValueStrindex(_)) => Value::Null,
    }
}

/// A log body as text: strings as they are, anything else as JSON.
fn any_value_to_text(value: &AnyValue) -> String {
    match any_value_to_json(value) {
        Value::String(text) => text,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn clamp_nanos(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn nanos_or(nanos: u64, fallback: i64) -> i64 {
    if nanos == 0 {
        fallback
    } else {
        clamp_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLog, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
    };

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..KeyValue::default()
        }
    }

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                string("service.name", service),
                string("k8s.pod.name", "order-1"),
            ],
            ..Resource::default()
        })
    }

    #[test]
    fn log_records_carry_resource_ids_and_promoted_request_id() {
        let nested = KeyValue {
            key: "http".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: "status".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(502)),
                        }),
                        ..KeyValue::default()
                    }],
                })),
            }),
            ..KeyValue::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("order"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![OtlpLog {
                        time_unix_nano: 1_700_000_000_000_000_000,
                        severity_number: 17,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue("boom".into())),
                        }),
                        attributes: vec![string("requestId", "req-7"), nested],
                        trace_id: vec![0xab; 16],
                        span_id: vec![0; 8],
                        ..OtlpLog::default()
                    }],
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        let records = log_records(request);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.service, "order");
        assert_eq!(record.severity_text, "ERROR");
        assert_eq!(record.body, "boom");
        assert_eq!(record.request_id.as_deref(), Some("req-7"));
        assert_eq!(
            record.trace_id.as_deref(),
            Some("abababababababababababababababab")
        );
        assert_eq!(record.span_id, None, "an all-zero span id means no span");
        assert_eq!(record.attributes["http"]["status"], 502);
        assert_eq!(record.resource["k8s.pod.name"], "order-1");
        assert_eq!(record.timestamp, 1_700_000_000_000_000_000);
        assert!(record.observed_timestamp > 0);
    }

    fn body(value: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(value) })
    }

    /// One request as Fluent Bit's `opentelemetry` output sends container
    /// lines by default: an empty resource and scope, the line as the body,
    /// the CRI time, nothing else.
    fn fluent_bit_request(records: Vec<OtlpLog>) -> ExportLogsServiceRequest {
        logs_request(Some(Resource::default()), records)
    }

    /// One resource with one scope holding `records`.
    fn logs_request(resource: Option<Resource>, records: Vec<OtlpLog>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource,
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
    }

    #[test]
    fn a_json_line_in_the_body_is_taken_apart_like_the_agent_does() {
        let line = r#"{"ts":"2026-11-21T05:48:03.000123Z","level":"warn","msg":"payment declined","service":"payment","request_id":"req-42","trace_id":"5B8EFFF798038103D269B633813FC60C","span_id":"00f067aa0ba902b7","amount":99.99,"http":{"status":402}}"#;
        let records = log_records(fluent_bit_request(vec![
            OtlpLog {
                time_unix_nano: 1_700_000_000_000_000_000,
                body: body(any_value::Value::StringValue(line.into())),
                ..OtlpLog::default()
            },
            // Not JSON, and JSON-looking but broken: kept as text.
            OtlpLog {
                time_unix_nano: 1_700_000_000_000_000_000,
                body: body(any_value::Value::StringValue("plain {text}".into())),
                ..OtlpLog::default()
            },
            OtlpLog {
                time_unix_nano: 1_700_000_000_000_000_000,
                body: body(any_value::Value::StringValue("{\"broken\": }".into())),
                ..OtlpLog::default()
            },
        ]));
        let record = &records[0];
        assert_eq!(record.body, "payment declined");
        assert_eq!(record.service, "payment");
        assert_eq!(record.resource["service.name"], "payment");
        assert_eq!(
            (record.severity_text.as_str(), record.severity_number),
            ("WARN", 13)
        );
        assert_eq!(
            record.timestamp, 1_795_240_083_000_123_000,
            "the line's own time"
        );
        assert_eq!(record.request_id.as_deref(), Some("req-42"));
        assert_eq!(
            record.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(record.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(record.attributes["amount"], 99.99);
        assert_eq!(record.attributes["http"]["status"], 402);
        for taken in ["ts", "level", "msg", "service", "trace_id", "span_id"] {
            assert!(
                !record.attributes.contains_key(taken),
                "{taken} is not also an attribute"
            );
        }
        assert_eq!(records[1].body, "plain {text}");
        assert_eq!(records[1].service, UNKNOWN_SERVICE);
        assert_eq!(records[2].body, "{\"broken\": }");
        assert!(records[2].attributes.is_empty());
    }

    #[test]
    fn a_correlation_id_is_a_request_id() {
        for key in [
            "correlationId",
            "correlation_id",
            "x-correlation-id",
            "x_request_id",
        ] {
            let records = log_records(fluent_bit_request(vec![OtlpLog {
                body: body(any_value::Value::StringValue("m".into())),
                attributes: vec![string(key, "corr-7")],
                ..OtlpLog::default()
            }]));
            assert_eq!(records[0].request_id.as_deref(), Some("corr-7"), "{key}");
        }
    }

    #[test]
    fn what_the_otlp_record_says_wins_over_its_body() {
        let line = r#"{"level":"debug","msg":"m","trace_id":"5b8efff798038103d269b633813fc60c","service":"from-body","user":"u1"}"#;
        let request = logs_request(
            resource("order"),
            vec![OtlpLog {
                severity_number: 17,
                body: body(any_value::Value::StringValue(line.into())),
                attributes: vec![string("user", "own")],
                trace_id: vec![0xab; 16],
                ..OtlpLog::default()
            }],
        );
        let record = &log_records(request)[0];
        assert_eq!(record.service, "order");
        assert_eq!(record.resource["service.name"], "order");
        assert_eq!(
            (record.severity_text.as_str(), record.severity_number),
            ("ERROR", 17)
        );
        assert_eq!(
            record.trace_id.as_deref(),
            Some("abababababababababababababababab")
        );
        assert_eq!(record.attributes["user"], "own");
        assert_eq!(record.body, "m");
    }

    #[test]
    fn a_kvlist_body_with_kubernetes_fields_names_the_pod_once_per_pod() {
        let kv = |key: &str, value: any_value::Value| KeyValue {
            key: key.into(),
            value: body(value),
            ..KeyValue::default()
        };
        let text = |text: &str| any_value::Value::StringValue(text.into());
        let merged = |pod: &str, message: &str| OtlpLog {
            body: body(any_value::Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("log", text(message)),
                    kv("stream", text("stdout")),
                    kv(
                        "kubernetes",
                        any_value::Value::KvlistValue(KeyValueList {
                            values: vec![
                                kv("pod_name", text(pod)),
                                kv("namespace_name", text("shop")),
                                kv("container_name", text("checkout")),
                            ],
                        }),
                    ),
                ],
            })),
            ..OtlpLog::default()
        };
        let without_message = OtlpLog {
            body: body(any_value::Value::KvlistValue(KeyValueList {
                values: vec![kv("event", text("started"))],
            })),
            ..OtlpLog::default()
        };
        let records = log_records(fluent_bit_request(vec![
            merged("checkout-1", "one"),
            merged("checkout-1", "two"),
            merged("checkout-2", "three"),
            without_message,
        ]));
        assert_eq!(records[0].body, "one");
        assert_eq!(records[0].service, "checkout", "from the container name");
        assert_eq!(records[0].resource["k8s.pod.name"], "checkout-1");
        assert_eq!(records[0].resource["k8s.namespace.name"], "shop");
        assert_eq!(records[0].attributes["stream"], "stdout");
        assert!(!records[0].attributes.contains_key("kubernetes"));
        assert!(Arc::ptr_eq(&records[0].resource, &records[1].resource));
        assert_eq!(records[2].resource["k8s.pod.name"], "checkout-2");
        assert_eq!(records[3].body, r#"{"event":"started"}"#);
        assert_eq!(records[3].resource.len(), 0);
    }

    #[test]
    fn spans_keep_parent_status_and_reject_bad_ids() {
        let good = OtlpSpan {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "POST /orders".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 10,
            end_time_unix_nano: 25,
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "declined".into(),
            }),
            attributes: vec![string("request_id", "req-1")],
            ..OtlpSpan::default()
        };
        let bad = OtlpSpan {
            trace_id: vec![1; 3],
            ..good.clone()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource("order"),
                scope_spans: vec![ScopeSpans {
                    spans: vec![good, bad],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        let (spans, rejected) = spans(request);
        assert_eq!(rejected, 1);
        let span = &spans[0];
        assert_eq!(span.parent_span_id.as_deref(), Some("0303030303030303"));
        assert_eq!(
            (span.kind.as_str(), span.status),
            ("server", SpanStatus::Error)
        );
        assert_eq!(span.duration_nanos(), 15);
        assert_eq!(span.request_id.as_deref(), Some("req-1"));
    }
}
