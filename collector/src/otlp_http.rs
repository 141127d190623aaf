//! OTLP/HTTP receiver: `POST /v1/logs`, `POST /v1/traces` and `POST /v1/metrics`.
//!
//! Follows the OTLP/HTTP specification:
//!
//! - the body is an `ExportLogsServiceRequest` / `ExportTraceServiceRequest`,
//!   binary protobuf (`Content-Type: application/x-protobuf`) or OTLP/JSON
//!   (`application/json`: camelCase keys, hex trace and span ids, 64-bit
//!   integers as strings or numbers, enums as integers);
//! - `Content-Encoding: gzip` is accepted; the decompressed size is capped at
//!   [`MAX_DECODED_BYTES`] and the received size at [`MAX_BODY_BYTES`], so a
//!   gzip bomb costs at most the cap, then answers 413;
//! - the answer is an `Export*ServiceResponse` in the request's content type,
//!   with `partialSuccess` when some records were refused;
//! - errors answer a `google.rpc.Status` (`{"code": 3, "message": "..."}` in
//!   JSON, the protobuf message for protobuf requests): 400 for a malformed
//!   body (the decoder's message, with line and column for JSON), 413 over a
//!   limit, 415 for an unknown content type or encoding, 429 with
//!   `Retry-After` when ingest is over capacity, 503 with `Retry-After` when
//!   the collector is stopping or the write-ahead log fails.
//!
//! Decompression and decoding run on the blocking pool: a 16 MiB body is
//! tens of milliseconds of work.
//!
//! `/v1/metrics` is served by [`metrics_router`] (merged into the same port
//! by `lib.rs`): data points go to the metric store through
//! [`sightline_metrics::otlp`], with the same formats, limits and errors.
//!
//! The body helpers ([`read_body`], [`decode_content`]) are shared with the
//! Elasticsearch `_bulk` receiver.

use std::io::Read;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ingest::{Ingest, summarize};
use crate::metrics::Limit;
use crate::otlp;
use crate::pipeline::IngestError;
use sightline_metrics::otlp::OtlpMetrics;

/// Largest request body accepted as received (compressed or not), in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Largest request body accepted after decompression, in bytes.
pub const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// Seconds a client is asked to wait when ingest is over capacity.
const RETRY_AFTER_BUSY_SECONDS: u64 = 1;

/// Seconds a client is asked to wait when the collector cannot store.
const RETRY_AFTER_UNAVAILABLE_SECONDS: u64 = 5;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// gRPC status codes used in error bodies, as `google.rpc.Status` carries them.
mod grpc_code {
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
}

/// The OTLP/HTTP routes, served on their own port (4318 by default).
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/v1/logs", post(export_logs))
        .route("/v1/traces", post(export_traces))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ingest)
}

/// `POST /v1/metrics`, on the OTLP/HTTP port next to [`router`].
pub fn metrics_router(metrics: OtlpMetrics) -> Router {
    Router::new()
        .route("/v1/metrics", post(export_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(metrics)
}

/// How an OTLP payload is encoded, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn from_headers(headers: &HeaderMap) -> Result<Format, OtlpError> {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Err(OtlpError::UnsupportedContentType(
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
            _ => Err(OtlpError::UnsupportedContentType(format!(
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

/// What can go wrong with a request body before it is decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body is over the limit of {limit} bytes (max_body_bytes)")]
    TooLarge { limit: usize },
    #[error("decompressed request body is over the limit of {limit} bytes (max_decoded_bytes)")]
    DecodedTooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?}, expected gzip or identity")]
    UnsupportedEncoding(String),
    #[error("malformed gzip body: {0}")]
    Gzip(String),
    #[error("failed to read the request body: {0}")]
    Read(String),
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } | BodyError::DecodedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Gzip(_) | BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The body as axum buffered it (under [`DefaultBodyLimit`]), or why not.
pub(crate) fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            BodyError::TooLarge { limit }
        } else {
            BodyError::Read(rejection.body_text())
        }
    })
}

/// Undoes the request's `Content-Encoding` (none, `identity` or `gzip`),
/// refusing to produce more than `max_decoded` bytes.
pub(crate) fn decode_content(
    encoding: Option<&HeaderValue>,
    body: Bytes,
    max_decoded: usize,
) -> Result<Bytes, BodyError> {
    let encoding = encoding.map(|value| {
        value
            .to_str()
            .unwrap_or("(not text)")
            .trim()
            .to_ascii_lowercase()
    });
    match encoding.as_deref() {
        None | Some("" | "identity") => {
            if body.len() > max_decoded {
                return Err(BodyError::DecodedTooLarge { limit: max_decoded });
            }
            Ok(body)
        }
        Some("gzip" | "x-gzip") => gunzip(&body, max_decoded).map(Bytes::from),
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

/// Decompresses (possibly multi-member) gzip, reading at most one byte past
/// `limit` so a bomb allocates no more than about twice the limit.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut decoded = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(compressed).take(limit as u64 + 1);
    reader
        .read_to_end(&mut decoded)
        .map_err(|error| BodyError::Gzip(error.to_string()))?;
    if decoded.len() > limit {
        return Err(BodyError::DecodedTooLarge { limit });
    }
    Ok(decoded)
}

/// Everything an OTLP/HTTP request can fail with, mapped to an HTTP status
/// and a gRPC code at the boundary.
#[derive(Debug, thiserror::Error)]
enum OtlpError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    UnsupportedContentType(String),
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl OtlpError {
    fn status(&self) -> StatusCode {
        match self {
            OtlpError::Body(error) => error.status(),
            OtlpError::UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            OtlpError::Malformed(_) => StatusCode::BAD_REQUEST,
            OtlpError::Ingest(IngestError::Busy) => StatusCode::TOO_MANY_REQUESTS,
            OtlpError::Ingest(IngestError::ShuttingDown | IngestError::Storage(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            OtlpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn grpc_code(&self) -> i32 {
        match self.status() {
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
                grpc_code::RESOURCE_EXHAUSTED
            }
            StatusCode::SERVICE_UNAVAILABLE => grpc_code::UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR => grpc_code::INTERNAL,
            _ => grpc_code::INVALID_ARGUMENT,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            OtlpError::Ingest(IngestError::Busy) => Some(RETRY_AFTER_BUSY_SECONDS),
            OtlpError::Ingest(_) => Some(RETRY_AFTER_UNAVAILABLE_SECONDS),
            _ => None,
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
struct ErrorResponse {
    error: OtlpError,
    format: Format,
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = self.error.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.error, "otlp/http request failed");
        } else {
            tracing::debug!(error = %self.error, "otlp/http request refused");
        }
        let rpc_status = RpcStatus {
            code: self.error.grpc_code(),
            message: self.error.to_string(),
        };
        let body = match self.format {
            Format::Protobuf => rpc_status.encode_to_vec(),
            Format::Json => json!({"code": rpc_status.code, "message": rpc_status.message})
                .to_string()
                .into_bytes(),
        };
        let mut response =
            (status, [(CONTENT_TYPE, self.format.content_type())], body).into_response();
        if let Some(seconds) = self.error.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Runs an export in the request's format and answers errors in it too
/// (JSON when the format itself is what was wrong).
async fn respond<Export, Exporting>(headers: &HeaderMap, export: Export) -> Response
where
    Export: FnOnce(Format) -> Exporting,
    Exporting: std::future::Future<Output = Result<Response, OtlpError>>,
{
    let format = match Format::from_headers(headers) {
        Ok(format) => format,
        Err(error) => {
            let format = Format::Json;
            return ErrorResponse { error, format }.into_response();
        }
    };
    match export(format).await {
        Ok(response) => response,
        Err(error) => ErrorResponse { error, format }.into_response(),
    }
}

async fn export_logs(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(&headers, |format| {
        store_logs(&ingest, &headers, format, body)
    })
    .await
}

async fn store_logs(
    ingest: &Ingest,
    headers: &HeaderMap,
    format: Format,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OtlpError> {
    let body = counted(
        ingest,
        read_body(body, MAX_BODY_BYTES).map_err(OtlpError::from),
    )?;
    let encoding = headers.get(CONTENT_ENCODING).cloned();
    let decoded = tokio::task::spawn_blocking(move || {
        let (request, size) =
            decode_request::<ExportLogsServiceRequest>(format, encoding.as_ref(), body)?;
        Ok::<_, OtlpError>((otlp::log_records(request), size))
    })
    .await
    .map_err(|error| OtlpError::Internal(error.to_string()))?;
    let (records, size) = counted(ingest, decoded)?;
    let rejections = ingest.logs(records, size).await?;
    let partial_success = (!rejections.is_empty()).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejections.len() as i64,
        error_message: summarize(&rejections, "log records"),
    });
    let json = match &partial_success {
        Some(partial) => json!({"partialSuccess": {
            "rejectedLogRecords": partial.rejected_log_records.to_string(),
            "errorMessage": partial.error_message,
        }}),
        None => json!({}),
    };
    Ok(success(
        format,
        &ExportLogsServiceResponse { partial_success },
        json,
    ))
}

/// Counts a request refused by a body-size limit on `/metrics`.
fn counted<T>(ingest: &Ingest, result: Result<T, OtlpError>) -> Result<T, OtlpError> {
    match &result {
        Err(OtlpError::Body(BodyError::TooLarge { .. })) => {
            ingest.metrics().limited(Limit::BodyBytes);
        }
        Err(OtlpError::Body(BodyError::DecodedTooLarge { .. })) => {
            ingest.metrics().limited(Limit::DecodedBytes);
        }
        _ => {}
    }
    result
}

async fn export_traces(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(&headers, |format| {
        store_traces(&ingest, &headers, format, body)
    })
    .await
}

async fn store_traces(
    ingest: &Ingest,
    headers: &HeaderMap,
    format: Format,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OtlpError> {
    let body = counted(
        ingest,
        read_body(body, MAX_BODY_BYTES).map_err(OtlpError::from),
    )?;
    let encoding = headers.get(CONTENT_ENCODING).cloned();
    let decoded = tokio::task::spawn_blocking(move || {
        let (request, size) =
            decode_request::<ExportTraceServiceRequest>(format, encoding.as_ref(), body)?;
        let (spans, rejected) = otlp::spans(request);
        Ok::<_, OtlpError>((spans, rejected, size))
    })
    .await
    .map_err(|error| OtlpError::Internal(error.to_string()))?;
    let (spans, rejected, size) = counted(ingest, decoded)?;
    if rejected > 0 {
        ingest.count_malformed(rejected as u64);
    }
    let limited = ingest.spans(spans, size).await?;
    let partial_success =
        (rejected > 0 || !limited.is_empty()).then(|| ExportTracePartialSuccess {
            rejected_spans: (rejected + limited.len()) as i64,
            error_message: crate::ingest::spans_message(rejected, &limited),
        });
    let json = match &partial_success {
        Some(partial) => json!({"partialSuccess": {
            "rejectedSpans": partial.rejected_spans.to_string(),
            "errorMessage": partial.error_message,
        }}),
        None => json!({}),
    };
    Ok(success(
        format,
        &ExportTraceServiceResponse { partial_success },
        json,
    ))
}

async fn export_metrics(
    State(metrics): State<OtlpMetrics>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(&headers, |format| {
        store_metrics(&metrics, &headers, format, body)
    })
    .await
}

async fn store_metrics(
    metrics: &OtlpMetrics,
    headers: &HeaderMap,
    format: Format,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OtlpError> {
    let body = read_body(body, MAX_BODY_BYTES)?;
    let encoding = headers.get(CONTENT_ENCODING).cloned();
    let request = tokio::task::spawn_blocking(move || {
        decode_request::<ExportMetricsServiceRequest>(format, encoding.as_ref(), body)
    })
    .await
    .map_err(|error| OtlpError::Internal(error.to_string()))??
    .0;
    let partial_success = metrics
        .export(request)
        .await
        .map_err(|error| OtlpError::Ingest(IngestError::Storage(error.0)))?;
    let json = match &partial_success {
        Some(partial) => json!({"partialSuccess": {
            "rejectedDataPoints": partial.rejected_data_points.to_string(),
            "errorMessage": partial.error_message,
        }}),
        None => json!({}),
    };
    Ok(success(
        format,
        &ExportMetricsServiceResponse { partial_success },
        json,
    ))
}

/// A 200 answer: the protobuf message, or its OTLP/JSON form.
fn success(format: Format, message: &impl Message, json: Value) -> Response {
    let body = match format {
        Format::Protobuf => message.encode_to_vec(),
        Format::Json => json.to_string().into_bytes(),
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

/// Decompresses and decodes one export request; returns it with its decoded size.
fn decode_request<M>(
    format: Format,
    encoding: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(M, usize), OtlpError>
where
    M: Message + Default + DeserializeOwned,
{
    let body = decode_content(encoding, body, MAX_DECODED_BYTES)?;
    let name = std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("request");
    let request = match format {
        Format::Protobuf => M::decode(body.as_ref())
            .map_err(|error| OtlpError::Malformed(format!("malformed protobuf {name}: {error}")))?,
        Format::Json => decode_json(&body).map_err(|error| {
            OtlpError::Malformed(format!("malformed OTLP/JSON {name}: {error}"))
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
    let gzip = HeaderValue::from_static("gzip");
    let encoding = (selector & 8 != 0).then_some(&gzip);
    let body = Bytes::copy_from_slice(body);
    match (selector >> 1) % 3 {
        0 => {
            if let Ok((request, _)) =
                decode_request::<ExportLogsServiceRequest>(format, encoding, body)
            {
                otlp::log_records(request);
            }
        }
        1 => {
            if let Ok((request, _)) =
                decode_request::<ExportTraceServiceRequest>(format, encoding, body)
            {
                otlp::spans(request);
            }
        }
        _ => {
            if let Ok((request, _)) =
                decode_request::<ExportMetricsServiceRequest>(format, encoding, body)
            {
                let deltas = sightline_metrics::otlp::DeltaTotals::default();
                sightline_metrics::otlp::translate(request, &deltas, 0);
            }
        }
    }
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
    ) -> Result<ExportLogsServiceRequest, OtlpError> {
        let encoding = encoding.map(|value| HeaderValue::from_str(value).unwrap());
        decode_request(format, encoding.as_ref(), Bytes::copy_from_slice(body))
            .map(|(request, _)| request)
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
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);

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
    fn gzip_is_undone_and_capped() {
        let decoded = decode_content(
            Some(&HeaderValue::from_static("gzip")),
            gzip(b"hello").into(),
            5,
        )
        .unwrap();
        assert_eq!(decoded.as_ref(), b"hello");
        let error = decode_content(
            Some(&HeaderValue::from_static("gzip")),
            gzip(b"hello!").into(),
            5,
        )
        .unwrap_err();
        assert!(
            matches!(error, BodyError::DecodedTooLarge { limit: 5 }),
            "{error}"
        );
        let error = decode_content(
            Some(&HeaderValue::from_static("gzip")),
            Bytes::from_static(b"not gzip"),
            5,
        )
        .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let error =
            decode_content(Some(&HeaderValue::from_static("br")), Bytes::new(), 5).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
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
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
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
        let encoding = encoding.map(|value| HeaderValue::from_str(value).unwrap());
        let traces = decode_request::<ExportTraceServiceRequest>(
            format,
            encoding.as_ref(),
            Bytes::copy_from_slice(body),
        );
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
