//! Prometheus remote-write: the route driven without a socket, against a
//! metric store on a temporary directory.

use std::sync::Arc;

use axum::http::StatusCode;
use prost::Message;
use sightline_metrics::otlp::MAX_LABELS_PER_SERIES;
use sightline_metrics::remote_write::{
    Histogram, Label, RemoteWrite, Sample, TimeSeries, WireMetadata, WriteRequest,
};
use sightline_metrics::testing::query;
use sightline_tsdb::MetricStore;

use crate::harness::{self, send};

const PROTOBUF: &str = "application/x-protobuf";

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

fn router(store: Arc<MetricStore>) -> axum::Router {
    sightline_collector::remote_write::router(RemoteWrite::new(store), None)
}

async fn post(
    router: axum::Router,
    body: Vec<u8>,
    encoding: &str,
    content_type: &str,
) -> (StatusCode, String) {
    let headers = [
        ("content-type", content_type),
        ("content-encoding", encoding),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ];
    let answer = send(router, harness::post("/api/v1/write", &headers, body)).await;
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

#[tokio::test]
async fn a_write_is_stored_and_queryable_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path()).unwrap());
    let route = router(store.clone());
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
    let (status, text) = post(route.clone(), encode(&request), "snappy", PROTOBUF).await;
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
    let route = router(store.clone());
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
    let (status, text) = post(route.clone(), encode(&request), "snappy", PROTOBUF).await;
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
    let route = router(store.clone());
    let first = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "temp"), ("room", "a")],
            &[(10_000, 20.0)],
        )],
        metadata: Vec::new(),
    };
    assert_eq!(
        post(route.clone(), encode(&first), "snappy", PROTOBUF)
            .await
            .0,
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
    let (status, text) = post(route.clone(), encode(&second), "snappy", PROTOBUF).await;
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
    let route = router(store.clone());
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
    let (status, text) = post(route.clone(), encode(&request), "snappy", PROTOBUF).await;
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
    let route = router(store.clone());

    let (status, text) = post(
        route.clone(),
        b"not snappy at all".to_vec(),
        "snappy",
        PROTOBUF,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("malformed snappy body"), "{text}");

    let garbage = snap::raw::Encoder::new()
        .compress_vec(&[0x0a, 0xff, 0x01])
        .unwrap();
    let (status, text) = post(route.clone(), garbage, "snappy", PROTOBUF).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("malformed protobuf prometheus.WriteRequest"),
        "{text}"
    );

    let plain = WriteRequest::default().encode_to_vec();
    let (status, text) = post(route.clone(), plain, "gzip", PROTOBUF).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(text.contains("needs snappy"), "{text}");

    let (status, text) = post(
        route,
        encode(&WriteRequest::default()),
        "snappy",
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    )
    .await;
    assert_eq!(status.as_u16(), 415);
    assert!(text.contains("remote write 1.0"), "{text}");
}

/// Remote-write charges the client's ingest rate like every ingest route:
/// 429 with `Retry-After`, which Prometheus retries.
#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    use sightline_collector::ratelimit::RateLimiter;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path()).unwrap());
    let limiter = RateLimiter::new(1000, 1000, Arc::default());
    let route = || {
        sightline_collector::remote_write::router(RemoteWrite::new(store.clone()), limiter.clone())
    };
    let request = WriteRequest {
        timeseries: vec![series(&[("__name__", "paid")], &[(10_000, 1.0)])],
        metadata: Vec::new(),
    };
    let headers = |length: &'static str| {
        [
            ("content-type", PROTOBUF),
            ("content-encoding", "snappy"),
            ("content-length", length),
        ]
    };
    // Announced as 5000 bytes: admitted, and the client is 4 s in debt.
    let first = send(
        route(),
        harness::post("/api/v1/write", &headers("5000"), encode(&request)),
    )
    .await;
    assert_eq!(first.status, StatusCode::NO_CONTENT, "{:?}", first.body);
    let second = send(
        route(),
        harness::post("/api/v1/write", &headers("10"), encode(&request)),
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry_after), "Retry-After {retry_after}");
    let text = String::from_utf8_lossy(&second.body);
    assert!(
        text.starts_with("ingest rate limit of 1000 bytes/s exceeded"),
        "{text}"
    );
    assert_eq!(
        query(&store, "paid", 11_000),
        vec![("paid".to_string(), 1.0)]
    );
}
