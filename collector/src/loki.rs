//! Loki's push API: `POST /loki/api/v1/push` on the OTLP/HTTP port, so
//! Promtail, Grafana Alloy, Fluent Bit's `loki` output, Vector's `loki`
//! sink and the Docker Loki driver ship to Sightline by pointing their Loki
//! URL at it.
//!
//! Two encodings, as Loki takes them: `application/x-protobuf` (Loki's
//! `logproto.PushRequest`, snappy block-compressed, no
//! `Content-Encoding`) and `application/json`
//! (`{"streams":[{"stream":{..labels},"values":[["<ns>","<line>",{..metadata}]]}]}`,
//! gzip allowed). Each entry becomes a log record:
//! - the line is the body, the entry's time its timestamp;
//! - stream labels become the resource, with the OTel names where one
//!   exists (`namespace` → `k8s.namespace.name`, `pod`, `container`,
//!   `node_name`, `host`), and `service.name` from the first of
//!   `service_name`, `service`, `app`, `application`, `job`, `container`
//!   (Loki's service name discovery), else `unknown_service`; the others
//!   keep their name;
//! - `level` (a label or structured metadata, or `detected_level`) is the
//!   severity; structured metadata become attributes, a `request_id` among
//!   them promoted.
//!
//! As Loki, a push succeeds with `204`; entries that cannot be stored (a
//! timestamp that is not one) are named in a `400` while the rest are
//! stored, durable before the answer.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use serde_json::{Map, Value};
use sightline_store::LogRecord;
use sightline_vocab::clock::now_nanos;

use crate::error::{Flavour, ReceiveError};
use crate::http_body::{self, Received};
use crate::ingest::Ingest;

// The bodies the push takes: the OTLP/HTTP limits.
use crate::otlp_http::BODY;

/// `POST /loki/api/v1/push`, merged into the OTLP/HTTP port.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/loki/api/v1/push", post(receive))
        .with_state(ingest)
}

/// `logproto.PushRequest` (Loki's `pkg/push/push.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StreamAdapter {
    /// The stream's labels as text: `{job="app", namespace="shop"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

async fn receive(State(ingest): State<Ingest>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let outcome = async {
        ingest.admit(
            Some(http_body::client(&parts.extensions)),
            http_body::content_length(&parts.headers),
        )?;
        let media_type = http_body::media_type(&parts.headers, "application/x-protobuf");
        let protobuf = match media_type.as_str() {
            "application/x-protobuf" | "application/protobuf" => true,
            "application/json" => false,
            other => {
                return Err(ReceiveError::UnsupportedContentType(format!(
                    "unsupported Content-Type {other:?}: Loki pushes are application/x-protobuf (snappy) or application/json"
                )));
            }
        };
        let received = http_body::receive(body, &parts.headers, &BODY).await?;
        let (records, refused, size) =
            tokio::task::spawn_blocking(move || decode(received, protobuf, now_nanos()))
                .await
                .map_err(|error| ReceiveError::Internal(error.to_string()))??;
        if !refused.is_empty() {
            ingest.count_malformed(refused.len() as u64);
        }
        let total = records.len() + refused.len();
        let rejections = ingest.logs(records, size).await?;
        Ok((refused, rejections, total))
    }
    .await;
    match outcome {
        Ok((refused, rejections, _)) if refused.is_empty() && rejections.is_empty() => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok((mut refused, rejections, total)) => {
            refused.extend(
                rejections
                    .iter()
                    .map(|rejection| format!("entry {}: {}", rejection.index, rejection.reason)),
            );
            (
                StatusCode::BAD_REQUEST,
                format!(
                    "{} of {total} entries refused: {} (the other entries were stored)",
                    refused.len(),
                    refused.join("; ")
                ),
            )
                .into_response()
        }
        Err(error) => {
            error.log("loki push");
            let (status, _) = error.http(Flavour::OtlpHttp);
            (status, error.to_string()).into_response()
        }
    }
}

/// The records of a push body, what was wrong with each refused entry
/// (`stream 0 entry 3: ...`), and the decoded size.
fn decode(
    received: Received,
    protobuf: bool,
    now: i64,
) -> Result<(Vec<LogRecord>, Vec<String>, usize), ReceiveError> {
    let body = received.decode()?;
    let (records, refused) = if protobuf {
        let raw = unsnappy(&body)?;
        let (records, refused) = from_protobuf(&raw, now)?;
        return Ok((records, refused, raw.len()));
    } else {
        from_json(&body, now)?
    };
    Ok((records, refused, body.len()))
}

/// Undoes snappy's block format, checking the announced size first.
fn unsnappy(compressed: &[u8]) -> Result<Vec<u8>, ReceiveError> {
    let size = snap::raw::decompress_len(compressed).map_err(|error| {
        ReceiveError::Malformed(format!("a Loki protobuf push is snappy-compressed: {error}"))
    })?;
    if size > crate::otlp_http::MAX_DECODED_BYTES {
        return Err(ReceiveError::Malformed(format!(
            "the push announces {size} bytes decompressed, over the limit of {}",
            crate::otlp_http::MAX_DECODED_BYTES
        )));
    }
    snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|error| ReceiveError::Malformed(format!("bad snappy data: {error}")))
}

/// A protobuf `PushRequest` as records.
pub(crate) fn from_protobuf(body: &[u8], now: i64) -> Result<(Vec<LogRecord>, Vec<String>), ReceiveError> {
    let request = PushRequest::decode(body)
        .map_err(|error| ReceiveError::Malformed(format!("malformed Loki PushRequest: {error}")))?;
    let mut records = Vec::new();
    let mut refused = Vec::new();
    for (s, stream) in request.streams.into_iter().enumerate() {
        let labels = match parse_labels(&stream.labels) {
            Ok(labels) => labels,
            Err(reason) => {
                refused.push(format!(
                    "stream {s} ({} entries): labels {:?}: {reason}",
                    stream.entries.len(),
                    stream.labels
                ));
                continue;
            }
        };
        let resource = std::sync::Arc::new(resource(&labels));
        for (e, entry) in stream.entries.into_iter().enumerate() {
            let Some(at) = entry.timestamp else {
                refused.push(format!("stream {s} entry {e}: no timestamp"));
                continue;
            };
            let timestamp = at.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(at.nanos));
            let metadata = entry
                .structured_metadata
                .into_iter()
                .map(|pair| (pair.name, pair.value))
                .collect();
            records.push(record(&labels, &resource, timestamp, entry.line, metadata, now));
        }
    }
    Ok((records, refused))
}

/// A JSON push as records.
pub(crate) fn from_json(body: &[u8], now: i64) -> Result<(Vec<LogRecord>, Vec<String>), ReceiveError> {
    let push: Value = serde_json::from_slice(body).map_err(|error| {
        ReceiveError::Malformed(format!("malformed Loki push JSON: {error}"))
    })?;
    let streams = push
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| ReceiveError::Malformed("a Loki push is {\"streams\": [...]}".into()))?;
    let mut records = Vec::new();
    let mut refused = Vec::new();
    for (s, stream) in streams.iter().enumerate() {
        let labels: Vec<(String, String)> = match stream.get("stream").map(Value::as_object) {
            Some(Some(labels)) => labels
                .iter()
                .map(|(name, value)| {
                    let value = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                    (name.clone(), value)
                })
                .collect(),
            None => Vec::new(),
            Some(None) => {
                refused.push(format!("stream {s}: `stream` is not an object of labels"));
                continue;
            }
        };
        let resource = std::sync::Arc::new(resource(&labels));
        let Some(values) = stream.get("values").and_then(Value::as_array) else {
            refused.push(format!("stream {s}: no `values` list"));
            continue;
        };
        for (e, value) in values.iter().enumerate() {
            let entry = value.as_array().map(Vec::as_slice).unwrap_or_default();
            let timestamp = entry.first().and_then(|t| match t {
                Value::String(text) => text.parse::<i64>().ok(),
                Value::Number(number) => number.as_i64(),
                _ => None,
            });
            let (Some(timestamp), Some(line)) = (timestamp, entry.get(1).and_then(Value::as_str)) else {
                refused.push(format!(
                    "stream {s} entry {e}: expected [\"<unix nanoseconds>\", \"<line>\"], found {}",
                    truncate(&value.to_string())
                ));
                continue;
            };
            let metadata: Vec<(String, String)> = entry
                .get(2)
                .and_then(Value::as_object)
                .map(|fields| {
                    fields
                        .iter()
                        .map(|(name, value)| {
                            (name.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_string))
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(record(&labels, &resource, timestamp, line.to_string(), metadata, now));
        }
    }
    Ok((records, refused))
}

fn truncate(text: &str) -> String {
    if text.len() <= 80 {
        return text.to_string();
    }
    let mut end = 80;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Stream labels whose OTel resource name differs.
const RESOURCE_NAMES: &[(&str, &str)] = &[
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("container", "k8s.container.name"),
    ("node_name", "k8s.node.name"),
    ("host", "host.name"),
    ("hostname", "host.name"),
];

/// Labels Loki reads a service name from, first found first.
const SERVICE_LABELS: &[&str] = &["service_name", "service", "app", "application", "job", "container"];

/// Labels that say the severity rather than where a line comes from.
const LEVEL_LABELS: &[&str] = &["level", "detected_level", "severity", "lvl"];

fn resource(labels: &[(String, String)]) -> Map<String, Value> {
    let mut resource = Map::new();
    for (name, value) in labels {
        if LEVEL_LABELS.contains(&name.as_str()) {
            continue;
        }
        let key = RESOURCE_NAMES
            .iter()
            .find(|(label, _)| label == name)
            .map_or(name.as_str(), |(_, key)| key);
        resource.insert(key.to_string(), Value::String(value.clone()));
    }
    let service = SERVICE_LABELS
        .iter()
        .find_map(|label| labels.iter().find(|(name, _)| name == label))
        .map_or("unknown_service", |(_, value)| value.as_str());
    resource.insert("service.name".into(), Value::String(service.to_string()));
    resource
}

fn record(
    labels: &[(String, String)],
    resource: &std::sync::Arc<Map<String, Value>>,
    timestamp: i64,
    line: String,
    metadata: Vec<(String, String)>,
    now: i64,
) -> LogRecord {
    let level = metadata
        .iter()
        .chain(labels)
        .find(|(name, _)| LEVEL_LABELS.contains(&name.as_str()))
        .map(|(_, value)| crate::document::severity(&Value::String(value.clone())));
    let attributes: Map<String, Value> = metadata
        .into_iter()
        .filter(|(name, _)| !LEVEL_LABELS.contains(&name.as_str()))
        .map(|(name, value)| (name, Value::String(value)))
        .collect();
    let (severity_text, severity_number) = level.unwrap_or_default();
    LogRecord {
        timestamp,
        observed_timestamp: now,
        severity_text,
        severity_number,
        request_id: crate::document::request_id(&attributes),
        service: resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or("unknown_service")
            .to_string(),
        resource: std::sync::Arc::clone(resource),
        body: line,
        attributes,
        ..LogRecord::default()
    }
}

/// `{name="value", other="x"}` (Prometheus' label-set text, as Loki's
/// clients send it) as pairs.
pub(crate) fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("not a label set {name=\"value\", ...}")?;
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(labels);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected `=` after label {name:?}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('"') {
            return Err(format!("the value of {name:?} is not quoted"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return Err(format!("the value of {name:?} is not closed")),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(format!("the value of {name:?} is not closed")),
            }
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{name:?} is not a label name"));
        }
        labels.push((name, value));
    }
}

/// For the fuzz target: a body taken as either encoding, and its records
/// converted as ingest converts them.
#[cfg(feature = "testing")]
pub fn fuzz_loki(data: &[u8]) {
    for records in [from_json(data, 0), from_protobuf(data, 0)]
        .into_iter()
        .flatten()
        .map(|(records, _)| records)
    {
        for record in records {
            let _ = serde_json::to_string(&record);
        }
    }
    if let Ok(raw) = unsnappy(data) {
        let _ = from_protobuf(&raw, 0);
    }
    let _ = parse_labels(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protobuf_push_becomes_records_with_otel_resource_names() {
        let push = PushRequest {
            streams: vec![
                StreamAdapter {
                    labels: r#"{app="checkout", namespace="shop", pod="checkout-7f9", level="warn", team="pay\"ments"}"#.into(),
                    entries: vec![
                        EntryAdapter {
                            timestamp: Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }),
                            line: "payment declined".into(),
                            structured_metadata: vec![LabelPairAdapter { name: "request_id".into(), value: "req-9".into() }],
                        },
                        EntryAdapter { timestamp: None, line: "lost".into(), structured_metadata: vec![] },
                    ],
                    hash: 0,
                },
                StreamAdapter { labels: "job=broken".into(), entries: vec![EntryAdapter::default()], hash: 0 },
            ],
        };
        let (records, refused) = from_protobuf(&push.encode_to_vec(), 42).unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.timestamp, 1_700_000_000_000_000_005);
        assert_eq!(record.body, "payment declined");
        assert_eq!(record.service, "checkout");
        assert_eq!((record.severity_text.as_str(), record.severity_number), ("WARN", 13));
        assert_eq!(record.request_id.as_deref(), Some("req-9"));
        assert_eq!(record.resource["k8s.namespace.name"], "shop");
        assert_eq!(record.resource["k8s.pod.name"], "checkout-7f9");
        assert_eq!(record.resource["team"], "pay\"ments");
        assert!(!record.resource.contains_key("level"));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("stream 0 entry 1: no timestamp"), "{refused:?}");
        assert!(refused[1].contains("stream 1 (1 entries): labels \"job=broken\""), "{refused:?}");
    }

    #[test]
    fn a_json_push_names_its_bad_entries_and_keeps_the_rest() {
        let body = serde_json::json!({"streams": [{
            "stream": {"service_name": "gateway", "host": "node-1"},
            "values": [
                ["1700000000000000000", "GET /api 200", {"trace_id": "abc", "detected_level": "error"}],
                ["yesterday", "bad time"],
                ["1700000000000000001", "second"],
            ],
        }]});
        let (records, refused) = from_json(body.to_string().as_bytes(), 0).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].service, "gateway");
        assert_eq!(records[0].resource["host.name"], "node-1");
        assert_eq!(records[0].severity_text, "ERROR");
        assert_eq!(records[0].attributes["trace_id"], "abc");
        assert_eq!(records[1].body, "second");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].starts_with("stream 0 entry 1: expected"), "{refused:?}");
        assert!(from_json(b"{\"nope\": 1}", 0).is_err());
    }
}
