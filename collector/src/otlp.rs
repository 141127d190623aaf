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
use sightline_store::{LogRecord, Span, SpanEvent, SpanLink, SpanStatus};
use sightline_vocab::clock::now_nanos;
use sightline_vocab::severity::Severity;

/// Attribute names whose value becomes a record's `request_id`, in order of preference.
pub(crate) const REQUEST_ID_KEYS: &[&str] =
    &["request_id", "requestId", "x-request-id", "correlation_id"];

const UNKNOWN_SERVICE: &str = "unknown_service";

/// Flattens an OTLP logs export into store records.
pub(crate) fn log_records(request: ExportLogsServiceRequest) -> Vec<LogRecord> {
    let now = now_nanos();
    let mut records = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = Arc::new(resource_map(resource_logs.resource.as_ref()));
        let service = service_name(&resource);
        for scope_logs in resource_logs.scope_logs {
            for log in scope_logs.log_records {
                let attributes = key_values_to_map(&log.attributes);
                let observed = nanos_or(log.observed_time_unix_nano, now);
                let severity_text = if log.severity_text.is_empty() {
                    Severity::from_number(log.severity_number)
                        .map_or("", Severity::text)
                        .to_string()
                } else {
                    log.severity_text.to_ascii_uppercase()
                };
                records.push(LogRecord {
                    timestamp: nanos_or(log.time_unix_nano, observed),
                    observed_timestamp: observed,
                    severity_text,
                    severity_number: log.severity_number,
                    body: log.body.as_ref().map(any_value_to_text).unwrap_or_default(),
                    service: service.clone(),
                    resource: Arc::clone(&resource),
                    request_id: request_id(&attributes),
                    attributes,
                    trace_id: id_to_hex(&log.trace_id, 16),
                    span_id: id_to_hex(&log.span_id, 8),
                });
            }
        }
    }
    records
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
                    request_id: request_id(&attributes),
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

fn request_id(attributes: &Map<String, Value>) -> Option<String> {
    REQUEST_ID_KEYS
        .iter()
        .find_map(|key| match attributes.get(*key)? {
            Value::String(id) if !id.is_empty() => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        })
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
