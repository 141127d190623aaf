//! OTLP/HTTP receiver: `POST /v1/logs`, `POST /v1/traces` and `POST /v1/metrics`,
//! the HTTP transport of the services in [`crate::service`].
//!
//! Follows the OTLP/HTTP specification:
//!
//! - the body is an `Export*ServiceRequest`, binary protobuf
//!   (`Content-Type: application/x-protobuf`) or OTLP/JSON
//!   (`application/json`: camelCase keys, hex trace and span ids, 64-bit
//!   integers as strings or numbers, enums as integers);
//! - `Content-Encoding: gzip` is accepted; the decompressed size is capped at
//!   [`MAX_DECODED_BYTES`] and the received size at [`MAX_BODY_BYTES`], so a
//!   gzip bomb costs at most the cap, then answers 413 (the body is read by
//!   [`crate::http_body`], as for every HTTP ingest route);
//! - the answer is an `Export*ServiceResponse` in the request's content type,
//!   with `partialSuccess` when some records were refused;
//! - errors answer a `google.rpc.Status` (`{"code": 3, "message": "..."}` in
//!   JSON, the protobuf message for protobuf requests) with the status and
//!   code [`crate::error`] decides: 400 for a malformed body (the decoder's
//!   message, with line and column for JSON), 413 over a limit, 415 for an
//!   unknown content type or encoding, 429 with `Retry-After` when the
//!   client is over its ingest rate or ingest is over capacity, 503 with
//!   `Retry-After` when the collector is stopping or cannot write.
//!
//! The request is charged to its client's ingest rate by its
//! `Content-Length` before the body is read. Decompression and decoding run
//! on the blocking pool: a 16 MiB body is tens of milliseconds of work.
//!
//! `/v1/metrics` is served by [`metrics_router`] (merged into the same port
//! by `lib.rs`): data points go to the metric store through
//! [`sightline_metrics::otlp`], with the same formats, limits and errors.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sightline_metrics::otlp::OtlpMetrics;
use std::sync::Arc;

use crate::error::{Flavour, ReceiveError};
use crate::http_body::{self, BodyRules, Encodings, Received};
use crate::ingest::Ingest;
use crate::otlp;
use crate::ratelimit::RateLimiter;
use crate::service::{LogsService, MetricsService, OtlpService, TracesService};

/// Largest request body accepted as received (compressed or not), in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Largest request body accepted after decompression, in bytes.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// The bodies every route of the OTLP/HTTP port takes (Zipkin's and
/// Loki's too).
pub(crate) const BODY: BodyRules = BodyRules {
    max_body_bytes: MAX_BODY_BYTES,
    max_decoded_bytes: MAX_DECODED_BYTES,
    encodings: Encodings::IdentityOrGzip,
};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP routes, served on their own port (4318 by default).
pub fn router(ingest: Ingest) -> Router {
    route("/v1/logs", LogsService::new(ingest.clone()))
        .merge(route("/v1/traces", TracesService::new(ingest)))
}

/// `POST /v1/metrics`, on the OTLP/HTTP port next to [`router`].
pub fn metrics_router(metrics: OtlpMetrics, rate_limiter: Option<Arc<RateLimiter>>) -> Router {
    route("/v1/metrics", MetricsService::new(metrics, rate_limiter))
}

fn route<S>(path: &str, service: S) -> Router
where
    S: OtlpService,
    S::Response: OtlpJson,
{
    Router::new()
        .route(path, post(export::<S>))
        .with_state(service)
}

/// How an OTLP payload is encoded, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn from_headers(headers: &HeaderMap) -> Result<Format, ReceiveError> {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Err(ReceiveError::UnsupportedContentType(
                "missing Content-Type, expected application/x-protobuf or application/json".into(),
            ));
        };
        let media_type = value
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            PROTOBUF | "application/protobuf" => Ok(Format::Protobuf),
            JSON => Ok(Format::Json),
            _ => Err(ReceiveError::UnsupportedContentType(format!(
                "unsupported Content-Type {value:?}, expected application/x-protobuf or application/json"
            ))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

/// `google.rpc.Status`, the body of every OTLP/HTTP error response.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// An error answered in the request's format (JSON when it is unknown).
fn error_response(error: ReceiveError, format: Format) -> Response {
    error.log("otlp/http");
    let (status, retry_after) = error.http(Flavour::OtlpHttp);
    let rpc_status = RpcStatus {
        code: error.grpc_code() as i32,
        message: error.to_string(),
    };
    let body = match format {
        Format::Protobuf => rpc_status.encode_to_vec(),
        Format::Json => json!({"code": rpc_status.code, "message": rpc_status.message})
            .to_string()
            .into_bytes(),
    };
    let mut response = (status, [(CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(wait) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
    }
    response
}

/// One export: the request's format, then the service's answer or its
/// refusal, both in that format (JSON when the format itself is what was
/// wrong).
async fn export<S>(State(service): State<S>, request: Request) -> Response
where
    S: OtlpService,
    S::Response: OtlpJson,
{
    let (parts, body) = request.into_parts();
    let format = Format::from_headers(&parts.headers);
    let answer_format = *format.as_ref().unwrap_or(&Format::Json);
    match receive_and_export(&service, &parts, body, format).await {
        Ok(response) => success(answer_format, &response),
        Err(error) => {
            service.count_refused(&error);
            error_response(error, answer_format)
        }
    }
}

async fn receive_and_export<S: OtlpService>(
    service: &S,
    parts: &Parts,
    body: Body,
    format: Result<Format, ReceiveError>,
) -> Result<S::Response, ReceiveError> {
    let client = http_body::client(&parts.extensions);
    service.admit(Some(client), http_body::content_length(&parts.headers))?;
    let format = format?;
    let received = http_body::receive(body, &parts.headers, &BODY).await?;
    let (request, size) =
        tokio::task::spawn_blocking(move || decode_request::<S::Request>(format, received))
            .await
            .map_err(|error| ReceiveError::Internal(error.to_string()))??;
    service.export(request, size).await
}

/// A 200 answer: the protobuf message, or its OTLP/JSON form.
fn success<M: Message + OtlpJson>(format: Format, message: &M) -> Response {
    let body = match format {
        Format::Protobuf => message.encode_to_vec(),
        Format::Json => message.to_json().to_string().into_bytes(),
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

/// The OTLP/JSON form of an export response: `{}`, or the partial success
/// with its count as a string (a 64-bit integer in OTLP/JSON).
trait OtlpJson {
    fn to_json(&self) -> Value;
}

impl OtlpJson for ExportLogsServiceResponse {
    fn to_json(&self) -> Value {
        match &self.partial_success {
            Some(partial) => json!({"partialSuccess": {
                "rejectedLogRecords": partial.rejected_log_records.to_string(),
                "errorMessage": partial.error_message,
            }}),
            None => json!({}),
        }
    }
}

impl OtlpJson for ExportTraceServiceResponse {
    fn to_json(&self) -> Value {
        match &self.partial_success {
            Some(partial) => json!({"partialSuccess": {
                "rejectedSpans": partial.rejected_spans.to_string(),
                "errorMessage": partial.error_message,
            }}),
            None => json!({}),
        }
    }
}

impl OtlpJson for ExportMetricsServiceResponse {
    fn to_json(&self) -> Value {
        match &self.partial_success {
            Some(partial) => json!({"partialSuccess": {
                "rejectedDataPoints": partial.rejected_data_points.to_string(),
                "errorMessage": partial.error_message,
            }}),
            None => json!({}),
        }
    }
}

/// Decompresses and decodes one export request; returns it with its decoded size.
fn decode_request<M>(format: Format, received: Received) -> Result<(M, usize), ReceiveError>
where
    M: Message + Default + DeserializeOwned,
{
    let body = received.decode()?;
    let name = std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("request");
    let request = match format {
        Format::Protobuf => M::decode(body.as_ref()).map_err(|error| {
            ReceiveError::Malformed(format!("malformed protobuf {name}: {error}"))
        })?,
        Format::Json => decode_json(&body).map_err(|error| {
            ReceiveError::Malformed(format!("malformed OTLP/JSON {name}: {error}"))
        })?,
    };
    Ok((request, body.len()))
}

/// Decodes OTLP/JSON with opentelemetry-proto's serde impls.
///
/// They want `"values"` in every `arrayValue` and `kvlistValue`, while
/// encoders that omit empty repeated fields (Go's protojson, the collector's
/// pdata) send `{"arrayValue": {}}` for an empty array. When the first
/// attempt fails, the document is patched and decoded again; if that fails
/// too, the first error (which has a line and column) is reported.
fn decode_json<M: DeserializeOwned>(body: &[u8]) -> Result<M, serde_json::Error> {
    let first_error = match serde_json::from_slice::<M>(body) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    if !first_error.is_data() {
        return Err(first_error);
    }
    let Ok(mut document) = serde_json::from_slice::<Value>(body) else {
        return Err(first_error);
    };
    if !add_missing_values(&mut document) {
        return Err(first_error);
    }
    serde_json::from_value(document).map_err(|_| first_error)
}

/// Adds `"values": []` to `arrayValue` / `kvlistValue` objects without it;
/// returns whether anything changed.
fn add_missing_values(value: &mut Value) -> bool {
    match value {
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| add_missing_values(item) | changed),
        Value::Object(map) => {
            let mut changed = false;
            for (key, inner) in map.iter_mut() {
                if matches!(key.as_str(), "arrayValue" | "kvlistValue")
                    && let Value::Object(list) = inner
                    && !list.contains_key("values")
                {
                    list.insert("values".into(), Value::Array(Vec::new()));
                    changed = true;
                }
                changed |= add_missing_values(inner);
            }
            changed
        }
        _ => false,
    }
}

/// Fuzz entry point (not an API): decodes `data` as an export request the
/// way the handlers do, then converts it as ingestion does. The first byte
/// chooses the signal, JSON or protobuf, and gzip or no content encoding.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
#[doc(hidden)]
pub fn fuzz_otlp(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        Format::Json
    } else {
        Format::Protobuf
    };
    let gzip = (selector & 8 != 0).then_some("gzip");
    let Ok(received) = in_memory(gzip, body) else {
        return;
    };
    match (selector >> 1) % 3 {
        0 => {
            if let Ok((request, _)) = decode_request::<ExportLogsServiceRequest>(format, received) {
                otlp::log_records(request);
            }
        }
        1 => {
            if let Ok((request, _)) = decode_request::<ExportTraceServiceRequest>(format, received)
            {
                otlp::spans(request);
            }
        }
        _ => {
            if let Ok((request, _)) =
                decode_request::<ExportMetricsServiceRequest>(format, received)
            {
                let deltas = sightline_metrics::otlp::DeltaTotals::default();
                sightline_metrics::otlp::translate(request, &deltas, 0);
            }
        }
    }
}

/// `body` as if received with `Content-Encoding: encoding`.
fn in_memory(encoding: Option<&str>, body: &[u8]) -> Result<Received, ReceiveError> {
    let mut headers = HeaderMap::new();
    if let Some(encoding) = encoding {
        let value = HeaderValue::from_str(encoding)
            .map_err(|error| ReceiveError::Malformed(error.to_string()))?;
        headers.insert(axum::http::header::CONTENT_ENCODING, value);
    }
    Ok(Received::in_memory(
        Bytes::copy_from_slice(body),
        &headers,
        &BODY,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use proptest::prelude::*;
    use std::io::Write;

    /// The log example of the OTLP specification's `examples/logs.json`, trimmed.
    const SPEC_LOGS_JSON: &str = r#"{
      "resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "logRecords": [{
            "timeUnixNano": "1544712660300000000",
            "observedTimeUnixNano": "1544712660300000000",
            "severityNumber": 10,
            "severityText": "Information",
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "body": {"stringValue": "Example log record"},
            "attributes": [
              {"key": "string.attribute", "value": {"stringValue": "some string"}},
              {"key": "boolean.attribute", "value": {"boolValue": true}},
              {"key": "int.attribute", "value": {"intValue": "10"}},
              {"key": "double.attribute", "value": {"doubleValue": 637.704}},
              {"key": "array.attribute", "value": {"arrayValue": {"values": [
                {"stringValue": "many"}, {"stringValue": "values"}]}}},
              {"key": "map.attribute", "value": {"kvlistValue": {"values": [
                {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}}
            ]
          }]
        }]
      }]
    }"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn decode_logs(
        format: Format,
        encoding: Option<&str>,
        body: &[u8],
    ) -> Result<ExportLogsServiceRequest, ReceiveError> {
        decode_request(format, in_memory(encoding, body)?).map(|(request, _)| request)
    }

    #[test]
    fn the_specification_example_decodes() {
        let request = decode_logs(Format::Json, None, SPEC_LOGS_JSON.as_bytes()).unwrap();
        let records = otlp::log_records(request);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.service, "my.service");
        assert_eq!(record.timestamp, 1_544_712_660_300_000_000);
        assert_eq!(record.severity_text, "INFORMATION");
        assert_eq!(record.severity_number, 10);
        assert_eq!(record.body, "Example log record");
        assert_eq!(
            record.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(record.span_id.as_deref(), Some("eee19b7ec3c1b174"));
        assert_eq!(record.attributes["int.attribute"], 10);
        assert_eq!(record.attributes["double.attribute"], 637.704);
        assert_eq!(record.attributes["boolean.attribute"], true);
        assert_eq!(
            record.attributes["array.attribute"],
            json!(["many", "values"])
        );
        assert_eq!(
            record.attributes["map.attribute"]["some.map.key"],
            "some value"
        );
    }

    #[test]
    fn json_accepts_numbers_for_64_bit_integers_and_omitted_empty_lists() {
        let body = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{
            "timeUnixNano": 1544712660300000000, "severityNumber": 9,
            "body": {"intValue": 7},
            "attributes": [{"key": "empty", "value": {"arrayValue": {}}},
                           {"key": "nothing", "value": {"kvlistValue": {}}},
                           {"key": "unset"}],
            "unknownField": {"is": "ignored"}
        }]}]}]}"#;
        let request = decode_logs(Format::Json, None, body.as_bytes()).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(
            record.body.as_ref().and_then(|body| body.value.clone()),
            Some(any_value::Value::IntValue(7))
        );
        let records = otlp::log_records(request);
        assert_eq!(records[0].attributes["empty"], json!([]));
        assert_eq!(records[0].attributes["nothing"], json!({}));
        assert_eq!(records[0].attributes["unset"], Value::Null);
    }

    #[test]
    fn malformed_json_says_where() {
        let error = decode_logs(
            Format::Json,
            None,
            b"{\"resourceLogs\": [\n  {\"scopeLogs\": 5}]}",
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("ExportLogsServiceRequest"), "{message}");
        assert!(message.contains("line 2 column"), "{message}");
        assert_eq!(error.http(Flavour::OtlpHttp).0, StatusCode::BAD_REQUEST);

        let error = decode_logs(
            Format::Json,
            None,
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("column"), "{error}");
    }

    #[test]
    fn malformed_protobuf_names_the_message() {
        let error = decode_logs(Format::Protobuf, None, &[0x0a, 0x05, 0x01]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("malformed protobuf ExportLogsServiceRequest"),
            "{message}"
        );
    }

    #[test]
    fn content_types_are_recognised_with_parameters() {
        let headers = |value: &'static str| {
            HeaderMap::from_iter([(CONTENT_TYPE, HeaderValue::from_static(value))])
        };
        assert_eq!(
            Format::from_headers(&headers("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::from_headers(&headers("Application/X-Protobuf")).unwrap(),
            Format::Protobuf
        );
        let error = Format::from_headers(&headers("text/plain")).unwrap_err();
        assert_eq!(
            error.http(Flavour::OtlpHttp).0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(Format::from_headers(&HeaderMap::new()).is_err());
    }

    /// Arbitrary JSON, biased towards OTLP's shape so the decoder gets deep.
    fn otlp_like_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("resourceLogs".to_string()),
            Just("resourceSpans".to_string()),
            Just("scopeLogs".to_string()),
            Just("scopeSpans".to_string()),
            Just("logRecords".to_string()),
            Just("spans".to_string()),
            Just("resource".to_string()),
            Just("attributes".to_string()),
            Just("key".to_string()),
            Just("value".to_string()),
            Just("body".to_string()),
            Just("stringValue".to_string()),
            Just("intValue".to_string()),
            Just("doubleValue".to_string()),
            Just("bytesValue".to_string()),
            Just("arrayValue".to_string()),
            Just("kvlistValue".to_string()),
            Just("values".to_string()),
            Just("traceId".to_string()),
            Just("spanId".to_string()),
            Just("timeUnixNano".to_string()),
            Just("severityNumber".to_string()),
            "[a-zA-Z]{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9a-fA-F]{0,34}".prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..5)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    fn decode_both(format: Format, encoding: Option<&str>, body: &[u8]) {
        if let Ok(request) = decode_logs(format, encoding, body) {
            let _ = otlp::log_records(request);
        }
        let traces = in_memory(encoding, body)
            .and_then(|received| decode_request::<ExportTraceServiceRequest>(format, received));
        if let Ok((request, _)) = traces {
            let _ = otlp::spans(request);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn no_json_document_panics_the_decoder(document in otlp_like_json()) {
            let body = serde_json::to_vec(&document).unwrap();
            decode_both(Format::Json, None, &body);
            decode_both(Format::Json, Some("gzip"), &gzip(&body));
        }

        #[test]
        fn no_bytes_panic_the_decoders(body in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_both(Format::Protobuf, None, &body);
            decode_both(Format::Json, None, &body);
            decode_both(Format::Protobuf, Some("gzip"), &body);
        }

        #[test]
        fn no_mutation_of_a_valid_protobuf_panics_the_decoder(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let request: ExportLogsServiceRequest = serde_json::from_str(SPEC_LOGS_JSON).unwrap();
            let mut body = request.encode_to_vec();
            for (index, byte) in flips {
                let at = index.index(body.len());
                body[at] = byte;
            }
            decode_both(Format::Protobuf, None, &body);
        }
    }
}
