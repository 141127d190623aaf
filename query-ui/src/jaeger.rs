//! The Jaeger query API's JSON shapes (`/api/traces/{id}`), so Grafana's
//! Jaeger data source and the Jaeger UI can read our traces.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use serde_json::Value;
use sightline_store::{Span, SpanStatus};

use crate::response::{
    JaegerError, JaegerLog, JaegerProcess, JaegerReference, JaegerResponse, JaegerSpan, JaegerTag,
    JaegerTrace,
};

/// The envelope Jaeger answers with: `{"data": [...], "total", "limit", "offset", "errors"}`.
pub(crate) fn traces_response(traces: &[Vec<Span>]) -> JaegerResponse<Vec<JaegerTrace>> {
    let data: Vec<JaegerTrace> = traces.iter().map(|spans| trace(spans)).collect();
    JaegerResponse {
        data,
        total: 0,
        limit: 0,
        offset: 0,
        errors: None,
    }
}

pub(crate) fn not_found(
    trace_id: &str,
) -> (StatusCode, Json<JaegerResponse<Option<Vec<JaegerTrace>>>>) {
    (
        StatusCode::NOT_FOUND,
        Json(JaegerResponse {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![JaegerError {
                code: StatusCode::NOT_FOUND.as_u16(),
                msg: format!("trace {trace_id} not found"),
            }]),
        }),
    )
}

fn trace(spans: &[Span]) -> JaegerTrace {
    // One process per distinct service + resource, numbered in order of appearance.
    let mut process_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut processes = BTreeMap::new();
    let mut jaeger_spans = Vec::with_capacity(spans.len());
    for span in spans {
        let process_key = serde_json::to_string(&span.resource).unwrap_or_default() + &span.service;
        let next_id = format!("p{}", process_ids.len() + 1);
        let process_id = process_ids
            .entry(process_key)
            .or_insert_with(|| {
                let tags: Vec<JaegerTag> = span
                    .resource
                    .iter()
                    .filter(|(key, _)| key.as_str() != "service.name")
                    .map(|(key, value)| tag(key, value))
                    .collect();
                processes.insert(
                    next_id.clone(),
                    JaegerProcess {
                        service_name: span.service.clone(),
                        tags,
                    },
                );
                next_id
            })
            .clone();
        jaeger_spans.push(jaeger_span(span, &process_id));
    }
    JaegerTrace {
        trace_id: spans
            .first()
            .map(|s| s.trace_id.clone())
            .unwrap_or_default(),
        spans: jaeger_spans,
        processes,
        warnings: None,
    }
}

fn jaeger_span(span: &Span, process_id: &str) -> JaegerSpan {
    let mut references = Vec::new();
    if let Some(parent) = &span.parent_span_id {
        references.push(JaegerReference {
            ref_type: "CHILD_OF",
            trace_id: span.trace_id.clone(),
            span_id: parent.clone(),
        });
    }
    for link in &span.links {
        references.push(JaegerReference {
            ref_type: "FOLLOWS_FROM",
            trace_id: link.trace_id.clone(),
            span_id: link.span_id.clone(),
        });
    }
    let mut tags: Vec<JaegerTag> = span
        .attributes
        .iter()
        .map(|(key, value)| tag(key, value))
        .collect();
    tags.push(tag("span.kind", &Value::String(span.kind.clone())));
    match span.status {
        SpanStatus::Error => {
            tags.push(tag("error", &Value::Bool(true)));
            tags.push(tag("otel.status_code", &Value::String("ERROR".into())));
            if !span.status_message.is_empty() {
                tags.push(tag(
                    "otel.status_description",
                    &Value::String(span.status_message.clone()),
                ));
            }
        }
        SpanStatus::Ok => tags.push(tag("otel.status_code", &Value::String("OK".into()))),
        SpanStatus::Unset => {}
    }
    let logs: Vec<JaegerLog> = span
        .events
        .iter()
        .map(|event| {
            let mut fields = vec![tag("event", &Value::String(event.name.clone()))];
            fields.extend(event.attributes.iter().map(|(key, value)| tag(key, value)));
            JaegerLog {
                timestamp: event.time / 1_000,
                fields,
            }
        })
        .collect();
    JaegerSpan {
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        flags: 1,
        operation_name: span.name.clone(),
        references,
        start_time: span.start_time / 1_000,
        duration: span.duration_nanos() / 1_000,
        tags,
        logs,
        process_id: process_id.to_string(),
        warnings: None,
    }
}

/// A span kind as Jaeger names it: OpenTelemetry's kinds in lowercase, and
/// `""` for an unspecified or unknown kind.
pub(crate) fn span_kind(kind: &str) -> &str {
    match kind {
        "server" | "client" | "producer" | "consumer" | "internal" => kind,
        _ => "",
    }
}

/// A Jaeger key-value tag; nested values are flattened to their JSON text.
fn tag(key: &str, value: &Value) -> JaegerTag {
    let (kind, value) = match value {
        Value::Bool(flag) => ("bool", Value::Bool(*flag)),
        Value::Number(number) if number.is_i64() || number.is_u64() => ("int64", value.clone()),
        Value::Number(_) => ("float64", value.clone()),
        Value::String(text) => ("string", Value::String(text.clone())),
        other => ("string", Value::String(other.to_string())),
    };
    JaegerTag {
        key: key.to_string(),
        kind,
        value,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spans_have_jaeger_shape_with_references_and_processes() {
        let resource = json!({"service.name": "order", "host.name": "node-1"});
        let parent = Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            name: "POST /orders".into(),
            service: "order".into(),
            kind: "server".into(),
            start_time: 1_000_000,
            end_time: 3_500_000,
            resource: std::sync::Arc::new(resource.as_object().unwrap().clone()),
            attributes: json!({"http.status_code": 201})
                .as_object()
                .unwrap()
                .clone(),
            ..Span::default()
        };
        let child = Span {
            span_id: "00f067aa0ba902b8".into(),
            parent_span_id: Some("00f067aa0ba902b7".into()),
            status: SpanStatus::Error,
            ..parent.clone()
        };
        let response = serde_json::to_value(traces_response(&[vec![parent, child]])).unwrap();
        let trace = &response["data"][0];
        assert_eq!(trace["traceID"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace["processes"]["p1"]["serviceName"], "order");
        assert_eq!(
            trace["processes"]["p1"]["tags"][0],
            json!({"key": "host.name", "type": "string", "value": "node-1"})
        );
        let spans = trace["spans"].as_array().unwrap();
        assert_eq!(spans[0]["startTime"], 1_000);
        assert_eq!(spans[0]["duration"], 2_500);
        assert_eq!(spans[0]["references"], json!([]));
        assert_eq!(
            spans[0]["tags"][0],
            json!({"key": "http.status_code", "type": "int64", "value": 201})
        );
        assert_eq!(
            spans[1]["references"][0],
            json!({"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"})
        );
        assert!(
            spans[1]["tags"]
                .as_array()
                .unwrap()
                .contains(&json!({"key": "error", "type": "bool", "value": true}))
        );
        assert_eq!(spans[1]["processID"], "p1");
        assert_eq!(response["errors"], Value::Null);
    }
}
