//! Prometheus remote-write 1.0 receiver: `POST /api/v1/write`.
//!
//! What a Prometheus server (or the Grafana agent, or vmagent) configured
//! with `remote_write: [{url: http://collector:7070/api/v1/write}]` sends:
//!
//! - the body is a `prometheus.WriteRequest` protobuf
//!   (`Content-Type: application/x-protobuf`), compressed with snappy's block
//!   format (`Content-Encoding: snappy`); both headers are checked and a
//!   mismatch answers 415 (remote-write 2.0, `proto=io.prometheus.write.v2.Request`,
//!   is refused that way too);
//! - the compressed body is capped at [`MAX_BODY_BYTES`] and the size the
//!   snappy header announces at [`MAX_DECODED_BYTES`]: 413 before anything
//!   is decompressed;
//! - samples are appended to the [`MetricStore`] on the blocking pool and the
//!   answer (204) waits for the store's fsync: what is acknowledged is durable;
//! - bad input answers 400 with what was wrong and where (an undecodable
//!   body, a series without `__name__`, out-of-order samples, native
//!   histograms, which Sightline does not store). As in Prometheus, the
//!   other samples of the batch are kept: a 400 tells the sender not to
//!   retry a batch that would fail again;
//! - metadata (`# TYPE`/`# HELP`/`# UNIT` that Prometheus sends every minute)
//!   goes to [`MetricStore::set_metadata`]; exemplars are dropped.
//!
//! The messages are declared here with `prost` derives, field numbers as in
//! Prometheus' `prompb/types.proto` and `prompb/remote.proto`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use sightline_tsdb::{Labels, MetricMetadata, MetricStore, TsdbError};

use crate::otlp::MAX_LABELS_PER_SERIES;

/// Largest compressed request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Largest decompressed request accepted, in bytes.
pub const MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;

/// How many individual problems a 400 answer spells out.
const ERRORS_SHOWN: usize = 5;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<WireMetadata>,
}

/// `prometheus.TimeSeries`: one series and its samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a time in milliseconds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`: decoded so the request parses, then dropped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.Histogram` (a native histogram). Only its timestamp is
/// decoded: native histograms are refused, and the error names the time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireMetadata {
    /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram,
    /// 4 gaugehistogram, 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

impl WireMetadata {
    fn kind(&self) -> &'static str {
        match self.r#type {
            1 => "counter",
            2 => "gauge",
            3 => "histogram",
            4 => "gaugehistogram",
            5 => "summary",
            6 => "info",
            7 => "stateset",
            _ => "unknown",
        }
    }
}

/// Why a write request was not (entirely) stored, mapped to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is over the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("snappy-decoded request would be {size} bytes, over the limit of {limit} bytes")]
    DecodedTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    Malformed(String),
    /// Some samples or series were refused; the rest of the batch is stored.
    #[error("{refused} of {total} samples refused: {details}")]
    Refused {
        refused: usize,
        total: usize,
        details: String,
    },
    #[error("failed to store the samples: {0}")]
    Storage(String),
}

impl RemoteWriteError {
    fn status(&self) -> StatusCode {
        match self {
            RemoteWriteError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RemoteWriteError::TooLarge { .. } | RemoteWriteError::DecodedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RemoteWriteError::Malformed(_) | RemoteWriteError::Refused { .. } => {
                StatusCode::BAD_REQUEST
            }
            // 5xx: the sender retries, which is right when our disk failed.
            RemoteWriteError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for RemoteWriteError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "remote write failed");
        } else {
            tracing::debug!(error = %self, "remote write refused");
        }
        (
            status,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.to_string(),
        )
            .into_response()
    }
}

/// The remote-write route, merged into the query API's router.
pub fn router(store: Arc<MetricStore>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store)
}

async fn write(
    State(store): State<Arc<MetricStore>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match receive(store, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn receive(
    store: Arc<MetricStore>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), RemoteWriteError> {
    check_headers(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RemoteWriteError::TooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            RemoteWriteError::Malformed(format!(
                "failed to read the request body: {}",
                rejection.body_text()
            ))
        }
    })?;
    tokio::task::spawn_blocking(move || {
        let request = decode(&body)?;
        store_request(&store, request)
    })
    .await
    .map_err(|error| RemoteWriteError::Storage(error.to_string()))?
}

fn check_headers(headers: &HeaderMap) -> Result<(), RemoteWriteError> {
    let header = |name| {
        headers
            .get(name)
            .map(|value: &axum::http::HeaderValue| value.to_str().unwrap_or("(not text)").trim())
    };
    let encoding = header(CONTENT_ENCODING);
    if !encoding.is_some_and(|encoding| encoding.eq_ignore_ascii_case("snappy")) {
        return Err(RemoteWriteError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {}, remote write needs snappy",
            encoding.map_or("(none)".to_string(), |value| format!("{value:?}"))
        )));
    }
    let content_type = header(CONTENT_TYPE).unwrap_or("(none)");
    let mut parts = content_type.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(RemoteWriteError::UnsupportedMediaType(format!(
            "unsupported Content-Type {content_type:?}, remote write needs application/x-protobuf"
        )));
    }
    for parameter in parts {
        if let Some(proto) = parameter.strip_prefix("proto=")
            && proto != "prometheus.WriteRequest"
        {
            return Err(RemoteWriteError::UnsupportedMediaType(format!(
                "unsupported remote write message {proto:?}: only remote write 1.0 (prometheus.WriteRequest) is supported"
            )));
        }
    }
    Ok(())
}

/// Undoes snappy (after checking the announced size) and decodes the protobuf.
pub fn decode(body: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    let size = snap::raw::decompress_len(body)
        .map_err(|error| RemoteWriteError::Malformed(format!("malformed snappy body: {error}")))?;
    if size > MAX_DECODED_BYTES {
        return Err(RemoteWriteError::DecodedTooLarge {
            size,
            limit: MAX_DECODED_BYTES,
        });
    }
    let decoded = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|error| RemoteWriteError::Malformed(format!("malformed snappy body: {error}")))?;
    WriteRequest::decode(decoded.as_slice()).map_err(|error| {
        RemoteWriteError::Malformed(format!(
            "malformed protobuf prometheus.WriteRequest: {error}"
        ))
    })
}

/// Appends what can be stored; reports the rest as [`RemoteWriteError::Refused`].
pub fn store_request(store: &MetricStore, request: WriteRequest) -> Result<(), RemoteWriteError> {
    for metadata in &request.metadata {
        if metadata.metric_family_name.is_empty() {
            continue;
        }
        store.set_metadata(
            &metadata.metric_family_name,
            MetricMetadata {
                kind: metadata.kind().to_string(),
                help: metadata.help.clone(),
                unit: metadata.unit.clone(),
            },
        );
    }
    let mut problems = Vec::new();
    let mut refused = 0;
    let mut total = 0;
    let mut samples = Vec::new();
    for (index, series) in request.timeseries.into_iter().enumerate() {
        total += series.samples.len() + series.histograms.len();
        if let Some(name) = duplicate_label_name(&series.labels) {
            // `Labels` keeps one value per name: storing would silently
            // drop the other. Prometheus refuses the series.
            refused += series.samples.len() + series.histograms.len();
            problems.push(format!(
                "timeseries[{index}] {}: duplicate label name {name:?}",
                describe_labels(&series.labels)
            ));
            continue;
        }
        let labels = Labels::new(
            series
                .labels
                .into_iter()
                .map(|label| (label.name, label.value)),
        );
        if !series.histograms.is_empty() {
            refused += series.histograms.len();
            problems.push(format!(
                "timeseries[{index}] {labels}: {} native histogram samples are not supported",
                series.histograms.len()
            ));
        }
        if series.samples.is_empty() {
            continue;
        }
        if labels.len() > MAX_LABELS_PER_SERIES {
            refused += series.samples.len();
            problems.push(format!(
                "timeseries[{index}] {}: {} labels, over max_labels_per_series ({MAX_LABELS_PER_SERIES})",
                labels.metric_name(),
                labels.len()
            ));
            continue;
        }
        if labels.metric_name().is_empty() {
            refused += series.samples.len();
            problems.push(format!("timeseries[{index}] {labels}: no __name__ label"));
            continue;
        }
        for sample in series.samples {
            samples.push((labels.clone(), sample.timestamp, sample.value));
        }
    }
    if !samples.is_empty() {
        let outcome = store
            .append(&samples)
            .map_err(|error| RemoteWriteError::Storage(error.to_string()))?;
        refused += outcome.rejected.len();
        problems.extend(
            outcome
                .rejected
                .iter()
                .map(|(_, error)| describe(error))
                .take(ERRORS_SHOWN),
        );
    }
    if refused == 0 {
        return Ok(());
    }
    let shown = problems.len().min(ERRORS_SHOWN);
    let mut details = problems[..shown].join("; ");
    if problems.len() > shown {
        details.push_str(&format!("; and {} more", problems.len() - shown));
    }
    Err(RemoteWriteError::Refused {
        refused,
        total,
        details,
    })
}

/// The first label name that occurs twice in `labels`, if any.
fn duplicate_label_name(labels: &[Label]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(labels.len());
    labels
        .iter()
        .map(|label| label.name.as_str())
        .find(|name| !seen.insert(*name))
}

/// The labels as sent, duplicates included: `{a="1", a="2"}`.
fn describe_labels(labels: &[Label]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|label| format!("{}={:?}", label.name, label.value))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn describe(error: &TsdbError) -> String {
    match error {
        TsdbError::OutOfOrder { .. } => format!("out of order sample: {error}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_tsdb::promql::{Engine, Value};

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            exemplars: Vec::new(),
            histograms: Vec::new(),
        }
    }

    /// What a sender puts on the wire: protobuf, then snappy block format.
    fn encode(request: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .unwrap()
    }

    async fn serve(store: Arc<MetricStore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(store)).await });
        format!("http://{address}/api/v1/write")
    }

    async fn post(url: &str, body: Vec<u8>, encoding: &str) -> (StatusCode, String) {
        let response = reqwest::Client::new()
            .post(url)
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", encoding)
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.unwrap())
    }

    fn query(store: &MetricStore, expression: &str, at_ms: i64) -> Vec<(String, f64)> {
        let reader = store.reader();
        let value = Engine::default()
            .instant_query(&*reader, expression, at_ms)
            .unwrap();
        let Value::Vector(samples) = value else {
            panic!("{expression} is not a vector: {value:?}")
        };
        let mut result: Vec<(String, f64)> = samples
            .into_iter()
            .map(|sample| (sample.labels.to_string(), sample.value))
            .collect();
        result.sort_by(|a, b| a.0.cmp(&b.0));
        result
    }

    #[tokio::test]
    async fn a_write_is_stored_and_queryable_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(dir.path()).unwrap());
        let url = serve(store.clone()).await;
        let request = WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "http_requests_total"),
                        ("job", "api"),
                        ("code", "200"),
                    ],
                    &[(1_000, 1.0), (16_000, 5.0)],
                ),
                series(
                    &[
                        ("__name__", "http_requests_total"),
                        ("job", "api"),
                        ("code", "500"),
                    ],
                    &[(16_000, 2.0)],
                ),
            ],
            metadata: vec![WireMetadata {
                r#type: 1,
                metric_family_name: "http_requests_total".into(),
                help: "Requests served.".into(),
                unit: String::new(),
            }],
        };
        let (status, text) = post(&url, encode(&request), "snappy").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
        assert_eq!(
            query(&store, "http_requests_total", 20_000),
            vec![
                (
                    r#"http_requests_total{code="200", job="api"}"#.to_string(),
                    5.0
                ),
                (
                    r#"http_requests_total{code="500", job="api"}"#.to_string(),
                    2.0
                ),
            ]
        );
        let metadata = store.metadata();
        assert_eq!(metadata["http_requests_total"].kind, "counter");
        assert_eq!(metadata["http_requests_total"].help, "Requests served.");
    }

    #[tokio::test]
    async fn series_over_the_label_limit_are_refused_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(dir.path()).unwrap());
        let url = serve(store.clone()).await;
        let names: Vec<String> = (0..MAX_LABELS_PER_SERIES)
            .map(|i| format!("l{i}"))
            .collect();
        let mut wide: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "v")).collect();
        wide.push(("__name__", "wide"));
        let request = WriteRequest {
            timeseries: vec![
                series(&wide, &[(10_000, 1.0)]),
                series(&[("__name__", "narrow")], &[(10_000, 2.0)]),
            ],
            metadata: Vec::new(),
        };
        let (status, text) = post(&url, encode(&request), "snappy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(
            text.contains("timeseries[0] wide: 65 labels, over max_labels_per_series (64)"),
            "{text}"
        );
        assert_eq!(
            query(&store, "narrow", 11_000),
            vec![("narrow".to_string(), 2.0)]
        );
        assert!(query(&store, "wide", 11_000).is_empty());
    }

    #[tokio::test]
    async fn bad_series_are_refused_with_400_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(dir.path()).unwrap());
        let url = serve(store.clone()).await;
        let first = WriteRequest {
            timeseries: vec![series(
                &[("__name__", "temp"), ("room", "a")],
                &[(10_000, 20.0)],
            )],
            metadata: Vec::new(),
        };
        assert_eq!(
            post(&url, encode(&first), "snappy").await.0,
            StatusCode::NO_CONTENT
        );

        let mut native = series(&[("__name__", "latency")], &[]);
        native.histograms.push(Histogram { timestamp: 12_000 });
        let second = WriteRequest {
            timeseries: vec![
                // Older than what the series already has.
                series(&[("__name__", "temp"), ("room", "a")], &[(5_000, 19.0)]),
                series(&[("room", "b")], &[(12_000, 21.0)]),
                native,
                series(&[("__name__", "temp"), ("room", "c")], &[(12_000, 22.0)]),
            ],
            metadata: Vec::new(),
        };
        let (status, text) = post(&url, encode(&second), "snappy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.starts_with("3 of 4 samples refused"), "{text}");
        assert!(text.contains("out of order sample"), "{text}");
        assert!(
            text.contains("timeseries[1]") && text.contains("no __name__"),
            "{text}"
        );
        assert!(
            text.contains("native histogram samples are not supported"),
            "{text}"
        );
        assert_eq!(
            query(&store, "temp", 13_000),
            vec![
                (r#"temp{room="a"}"#.to_string(), 20.0),
                (r#"temp{room="c"}"#.to_string(), 22.0),
            ]
        );
    }

    #[tokio::test]
    async fn a_series_with_a_duplicate_label_name_is_refused_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(dir.path()).unwrap());
        let url = serve(store.clone()).await;
        let request = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "twice"), ("job", "a"), ("job", "b")],
                    &[(10_000, 1.0)],
                ),
                series(&[("__name__", "once"), ("job", "a")], &[(10_000, 2.0)]),
            ],
            metadata: Vec::new(),
        };
        let (status, text) = post(&url, encode(&request), "snappy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.starts_with("1 of 2 samples refused"), "{text}");
        assert!(
            text.contains(
                r#"timeseries[0] {__name__="twice", job="a", job="b"}: duplicate label name "job""#
            ),
            "{text}"
        );
        assert!(query(&store, "twice", 11_000).is_empty());
        assert_eq!(
            query(&store, "once", 11_000),
            vec![(r#"once{job="a"}"#.to_string(), 2.0)]
        );
    }

    #[tokio::test]
    async fn undecodable_bodies_and_wrong_headers_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(dir.path()).unwrap());
        let url = serve(store.clone()).await;

        let (status, text) = post(&url, b"not snappy at all".to_vec(), "snappy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("malformed snappy body"), "{text}");

        let garbage = snap::raw::Encoder::new()
            .compress_vec(&[0x0a, 0xff, 0x01])
            .unwrap();
        let (status, text) = post(&url, garbage, "snappy").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            text.contains("malformed protobuf prometheus.WriteRequest"),
            "{text}"
        );

        let plain = WriteRequest::default().encode_to_vec();
        let (status, text) = post(&url, plain, "gzip").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(text.contains("needs snappy"), "{text}");

        let response = reqwest::Client::new()
            .post(&url)
            .header(
                "Content-Type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            )
            .header("Content-Encoding", "snappy")
            .body(encode(&WriteRequest::default()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 415);
        assert!(response.text().await.unwrap().contains("remote write 1.0"));
    }

    #[test]
    fn the_announced_decompressed_size_is_capped_before_decompressing() {
        // A snappy block starts with its decompressed length as a varint.
        let mut body = Vec::new();
        let mut length = (MAX_DECODED_BYTES + 1) as u64;
        while length >= 0x80 {
            body.push((length as u8) | 0x80);
            length >>= 7;
        }
        body.push(length as u8);
        let error = decode(&body).unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.to_string().contains("over the limit"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_panic_the_decoder(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&body);
            let compressed = snap::raw::Encoder::new().compress_vec(&body).unwrap();
            let _ = decode(&compressed);
        }
    }
}
