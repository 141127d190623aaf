//! Zipkin v2 receiver: `POST /api/v2/spans` with a JSON list of spans
//! (`zipkin2-api.yaml`, `application/json`, gzip or not), on the OTLP/HTTP
//! port, so services instrumented with Zipkin (Brave, zipkin-js,
//! `py_zipkin`, the OTel SDKs' Zipkin exporters) send to Sightline by
//! pointing their Zipkin URL at it.
//!
//! Each span becomes an OTLP span with the mapping the OpenTelemetry
//! Collector's Zipkin receiver uses: `localEndpoint.serviceName` is the
//! resource's `service.name`; ids are hex (a 64-bit trace id is padded to
//! 128 bits); `timestamp` and `duration` are microseconds; `kind` maps to
//! the OTLP span kind; `tags` become attributes, and an `error` tag the
//! span's error status with the tag as its message; `annotations` become
//! events; `remoteEndpoint` becomes `peer.service`,
//! `network.peer.address` and `network.peer.port`. The spans then take
//! the OTLP path, durable before the answer.
//!
//! Zipkin has no partial success: the spans that decode are stored and
//! the answer is `202 Accepted` when all did; when some did not, the others
//! are still stored and the answer is `400` naming each refused span by
//! its index and what was wrong with it. A body that is not a JSON list
//! is a `400` with serde's line and column; protobuf (`application/x-protobuf`)
//! is refused with `415`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use serde::Deserialize;

use crate::error::{Flavour, ReceiveError};
use crate::http_body::{self, Received};
use crate::ingest::Ingest;
use crate::service::{OtlpService, TracesService};

// The bodies `/api/v2/spans` takes: the OTLP/HTTP limits.
use crate::otlp_http::BODY;

/// `POST /api/v2/spans`, merged into the OTLP/HTTP port.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/api/v2/spans", post(receive))
        .with_state(TracesService::new(ingest))
}

/// A Zipkin v2 span, as `zipkin2-api.yaml` describes it; every field the
/// mapping reads, each optional so one bad span is named, not the body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: Option<String>,
    id: Option<String>,
    parent_id: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    timestamp: Option<u64>,
    duration: Option<u64>,
    local_endpoint: Option<Endpoint>,
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    service_name: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: u64,
    value: String,
}

async fn receive(State(service): State<TracesService>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let outcome = async {
        service.admit(
            Some(http_body::client(&parts.extensions)),
            http_body::content_length(&parts.headers),
        )?;
        let media_type = http_body::media_type(&parts.headers, "application/json");
        if media_type != "application/json" {
            return Err(ReceiveError::UnsupportedContentType(format!(
                "unsupported Content-Type {media_type:?}: Sightline takes Zipkin v2 spans as application/json (not the proto3 encoding)"
            )));
        }
        let received = http_body::receive(body, &parts.headers, &BODY).await?;
        let (request, refused, size) = tokio::task::spawn_blocking(move || decode(received))
            .await
            .map_err(|error| ReceiveError::Internal(error.to_string()))??;
        let stored: usize = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        let response = service.export(request, size).await?;
        Ok((stored, refused, response.partial_success))
    }
    .await;
    match outcome {
        Ok((_, refused, None)) if refused.is_empty() => StatusCode::ACCEPTED.into_response(),
        Ok((stored, refused, partial)) => {
            let mut message = format!(
                "{} of {} spans refused: {}",
                refused.len(),
                refused.len() + stored,
                refused.join("; ")
            );
            if let Some(partial) = partial {
                message.push_str(&format!("; {}", partial.error_message));
            }
            message.push_str(" (the other spans were stored)");
            (StatusCode::BAD_REQUEST, message).into_response()
        }
        Err(error) => {
            service.count_refused(&error);
            error.log("zipkin");
            let (status, _) = error.http(Flavour::OtlpHttp);
            (status, error.to_string()).into_response()
        }
    }
}

/// Decompresses and decodes a body: the spans as one OTLP request, what
/// was wrong with each refused span, and the decoded size.
fn decode(received: Received) -> Result<(ExportTraceServiceRequest, Vec<String>, usize), ReceiveError> {
    let body = received.decode()?;
    let (request, refused) = spans(&body)?;
    Ok((request, refused, body.len()))
}

/// A JSON list of Zipkin v2 spans as one OTLP request, one resource per
/// service, and the refused spans' reasons (`span 3: ...`).
pub(crate) fn spans(body: &[u8]) -> Result<(ExportTraceServiceRequest, Vec<String>), ReceiveError> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|error| {
        ReceiveError::Malformed(format!(
            "malformed Zipkin v2 JSON (expected a list of spans): {error}"
        ))
    })?;
    let mut by_service: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    let mut refused = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let converted = serde_json::from_value::<ZipkinSpan>(item)
            .map_err(|error| error.to_string())
            .and_then(otlp_span);
        match converted {
            Ok((service, span)) => by_service.entry(service).or_default().push(span),
            Err(reason) => refused.push(format!("span {index}: {reason}")),
        }
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "zipkin".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    Ok((ExportTraceServiceRequest { resource_spans }, refused))
}

fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Hex `text` of `bytes` bytes; a shorter trace id is padded on the left
/// (Zipkin's 64-bit trace ids).
fn hex_id(text: &str, bytes: usize, what: &str, pad: bool) -> Result<Vec<u8>, String> {
    let digits = bytes * 2;
    let valid = (text.len() == digits || (pad && text.len() == 16))
        && text.bytes().all(|byte| byte.is_ascii_hexdigit());
    if !valid {
        let expected = if pad {
            format!("16 or {digits}")
        } else {
            digits.to_string()
        };
        return Err(format!("{what} {text:?} is not {expected} hex digits"));
    }
    let padded = format!("{text:0>digits$}");
    let id = hex::decode(padded).map_err(|error| format!("{what} {text:?}: {error}"))?;
    if id.iter().all(|byte| *byte == 0) {
        return Err(format!("{what} is all zeros"));
    }
    Ok(id)
}

/// One Zipkin span as an OTLP span, with its service's name.
fn otlp_span(span: ZipkinSpan) -> Result<(String, Span), String> {
    let trace_id = hex_id(span.trace_id.as_deref().unwrap_or_default(), 16, "traceId", true)?;
    let span_id = hex_id(span.id.as_deref().unwrap_or_default(), 8, "id", false)?;
    let parent_span_id = match span.parent_id.as_deref() {
        None | Some("") => Vec::new(),
        Some(parent) => hex_id(parent, 8, "parentId", false)?,
    };
    let start = span
        .timestamp
        .ok_or("no timestamp (microseconds since the epoch)")?;
    let end = start.saturating_add(span.duration.unwrap_or(0));
    let kind = match span.kind.as_deref() {
        Some("SERVER") => SpanKind::Server,
        Some("CLIENT") => SpanKind::Client,
        Some("PRODUCER") => SpanKind::Producer,
        Some("CONSUMER") => SpanKind::Consumer,
        None => SpanKind::Internal,
        Some(other) => {
            return Err(format!(
                "kind {other:?} is none of CLIENT, SERVER, PRODUCER, CONSUMER"
            ));
        }
    };
    let mut attributes = Vec::with_capacity(span.tags.len() + 3);
    let mut status = None;
    for (key, value) in span.tags {
        if key == "error" {
            status = Some(Status {
                code: status::StatusCode::Error as i32,
                message: value.clone(),
            });
        }
        attributes.push(string_attribute(&key, value));
    }
    if let Some(remote) = span.remote_endpoint {
        if let Some(service) = remote.service_name.filter(|name| !name.is_empty()) {
            attributes.push(string_attribute("peer.service", service));
        }
        if let Some(address) = remote.ipv4.or(remote.ipv6) {
            attributes.push(string_attribute("network.peer.address", address));
        }
        if let Some(port) = remote.port {
            attributes.push(KeyValue {
                key: "network.peer.port".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i64::from(port))),
                }),
                ..Default::default()
            });
        }
    }
    let service = span
        .local_endpoint
        .and_then(|local| local.service_name)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown_service".into());
    let events = span
        .annotations
        .into_iter()
        .map(|annotation| Event {
            time_unix_nano: annotation.timestamp.saturating_mul(1000),
            name: annotation.value,
            ..Default::default()
        })
        .collect();
    Ok((
        service,
        Span {
            trace_id,
            span_id,
            parent_span_id,
            name: span.name.unwrap_or_default(),
            kind: kind as i32,
            start_time_unix_nano: start.saturating_mul(1000),
            end_time_unix_nano: end.saturating_mul(1000),
            attributes,
            events,
            status,
            ..Default::default()
        },
    ))
}

/// The fuzz target: a Zipkin body, decoded and converted as ingest does.
#[cfg(feature = "testing")]
pub fn fuzz_zipkin(data: &[u8]) {
    if let Ok((request, _)) = spans(data) {
        crate::otlp::spans(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client span and its server span as Brave reports them (the shape
    /// of `zipkin2-api.yaml`'s examples), a 64-bit trace id, and three bad
    /// spans among them.
    #[test]
    fn zipkin_spans_become_otlp_spans_and_bad_ones_are_named() {
        let body = serde_json::json!([
            {"traceId": "5af7183fb1d4cf5f", "id": "6b221d5bc9e6496c", "name": "get /api",
             "kind": "CLIENT", "timestamp": 1_733_500_000_000_000u64, "duration": 207_000,
             "localEndpoint": {"serviceName": "frontend", "ipv4": "192.168.99.1"},
             "remoteEndpoint": {"serviceName": "backend", "ipv4": "172.19.0.2", "port": 9000},
             "annotations": [{"timestamp": 1_733_500_000_100_000u64, "value": "wire send"}],
             "tags": {"http.method": "GET", "http.path": "/api", "error": "500 Internal"}},
            {"traceId": "5af7183fb1d4cf5f", "parentId": "6b221d5bc9e6496c", "id": "352bff9a74ca9ad2",
             "name": "get /api", "kind": "SERVER", "timestamp": 1_733_500_000_010_000u64,
             "duration": 150_000, "localEndpoint": {"serviceName": "backend"}},
            {"traceId": "xyz", "id": "352bff9a74ca9ad2", "timestamp": 1},
            {"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad3"},
            {"traceId": "5af7183fb1d4cf5f", "id": "352bff9a74ca9ad4", "timestamp": 1, "kind": "SIDEWAYS"},
        ])
        .to_string();
        let (request, refused) = spans(body.as_bytes()).unwrap();
        assert_eq!(
            refused,
            [
                "span 2: traceId \"xyz\" is not 16 or 32 hex digits",
                "span 3: no timestamp (microseconds since the epoch)",
                "span 4: kind \"SIDEWAYS\" is none of CLIENT, SERVER, PRODUCER, CONSUMER",
            ]
        );
        let services: Vec<String> = request
            .resource_spans
            .iter()
            .map(|resource| match &resource.resource.as_ref().unwrap().attributes[0].value {
                Some(AnyValue {
                    value: Some(any_value::Value::StringValue(name)),
                }) => name.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(services, ["backend", "frontend"]);
        let client = &request.resource_spans[1].scope_spans[0].spans[0];
        assert_eq!(hex::encode(&client.trace_id), "00000000000000005af7183fb1d4cf5f");
        assert_eq!(hex::encode(&client.span_id), "6b221d5bc9e6496c");
        assert_eq!(client.kind, SpanKind::Client as i32);
        assert_eq!(client.start_time_unix_nano, 1_733_500_000_000_000_000);
        assert_eq!(client.end_time_unix_nano - client.start_time_unix_nano, 207_000_000);
        assert_eq!(
            client.status.as_ref().map(|status| (status.code, status.message.as_str())),
            Some((status::StatusCode::Error as i32, "500 Internal"))
        );
        let keys: Vec<&str> = client.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["error", "http.method", "http.path", "peer.service", "network.peer.address", "network.peer.port"]
        );
        assert_eq!(client.events[0].name, "wire send");
        let server = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(hex::encode(&server.parent_span_id), "6b221d5bc9e6496c");
        assert_eq!(server.kind, SpanKind::Server as i32);
        // And OTLP ingest takes them all.
        let (converted, malformed) = crate::otlp::spans(request);
        assert_eq!((converted.len(), malformed), (2, 0));
        // Not a list: the whole body is refused, with where.
        let error = spans(b"{\"traceId\": 1}").unwrap_err().to_string();
        assert!(error.contains("expected a list of spans") && error.contains("line 1"), "{error}");
    }
}
