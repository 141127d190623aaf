//! OTLP/HTTP: `/v1/logs` and `/v1/traces` in protobuf and JSON.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLog, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use serde_json::json;
use sightline_collector::otlp_http::{MAX_BODY_BYTES, MAX_DECODED_BYTES, router};

use crate::harness::{Harness, gzip, now_nanos, post, send};

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
const JSON: (&str, &str) = ("content-type", "application/json");

/// `google.rpc.Status`, the body of OTLP/HTTP errors.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn text(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: text(value),
        ..KeyValue::default()
    }
}

fn log(time_unix_nano: u64, body: &str) -> OtlpLog {
    OtlpLog {
        time_unix_nano,
        severity_number: 13,
        body: text(body),
        attributes: vec![attribute("request_id", &format!("req-{body}"))],
        trace_id: vec![0xab; 16],
        span_id: vec![0xcd; 8],
        ..OtlpLog::default()
    }
}

fn logs_request(records: Vec<OtlpLog>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "checkout")],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// The brief's OTLP/JSON example, with a timestamp inside retention.
fn brief_example(time_unix_nano: i64) -> String {
    json!({"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
        "scopeLogs":[{"logRecords":[{"timeUnixNano":time_unix_nano.to_string(),"severityNumber":9,
        "body":{"stringValue":"hi"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_logs_are_stored_and_acknowledged_in_protobuf() {
    let harness = Harness::start();
    let now = now_nanos() as u64;
    let body = logs_request(vec![log(now, "first"), log(now + 1, "second")]).encode_to_vec();
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[PROTOBUF], body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        Some("application/x-protobuf")
    );
    let response = ExportLogsServiceResponse::decode(answer.body.as_ref()).unwrap();
    assert_eq!(response.partial_success, None);

    let records = harness.records(2).await;
    let second = &records[0];
    assert_eq!(
        (second.body.as_str(), second.service.as_str()),
        ("second", "checkout")
    );
    assert_eq!(
        (second.severity_text.as_str(), second.severity_number),
        ("WARN", 13)
    );
    assert_eq!(
        second.trace_id.as_deref(),
        Some("abababababababababababababababab")
    );
    assert_eq!(second.span_id.as_deref(), Some("cdcdcdcdcdcdcdcd"));
    assert_eq!(second.request_id.as_deref(), Some("req-second"));
    assert_eq!(second.timestamp, now as i64 + 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_stored_and_acknowledged_in_json() {
    let harness = Harness::start();
    let now = now_nanos();
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[JSON], brief_example(now)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json(), json!({}));

    let records = harness.records(1).await;
    let record = &records[0];
    assert_eq!(
        (record.body.as_str(), record.service.as_str()),
        ("hi", "svc")
    );
    assert_eq!(
        (record.severity_text.as_str(), record.severity_number),
        ("INFO", 9)
    );
    assert_eq!(record.timestamp, now);
    assert_eq!(
        record.trace_id.as_deref(),
        Some("5b8efff798038103d269b633813fc60c")
    );
    assert_eq!(record.span_id.as_deref(), Some("eee19b7ec3c1b174"));
    assert_eq!(record.resource["service.name"], "svc");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_decompressed() {
    let harness = Harness::start();
    let headers = [JSON, ("content-encoding", "gzip")];
    let answer = send(
        router(harness.ingest.clone()),
        post(
            "/v1/logs",
            &headers,
            gzip(brief_example(now_nanos()).as_bytes()),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let headers = [PROTOBUF, ("content-encoding", "gzip")];
    let body = logs_request(vec![log(now_nanos() as u64, "zipped")]).encode_to_vec();
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &headers, gzip(&body)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);

    let bodies: Vec<_> = harness
        .records(2)
        .await
        .into_iter()
        .map(|record| record.body)
        .collect();
    assert!(
        bodies.contains(&"hi".to_string()) && bodies.contains(&"zipped".to_string()),
        "{bodies:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_outside_retention_are_a_partial_success() {
    let harness = Harness::start();
    let now = now_nanos() as u64;
    let body = logs_request(vec![log(1_000, "ancient"), log(now, "fresh")]).encode_to_vec();
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[PROTOBUF], body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let partial = ExportLogsServiceResponse::decode(answer.body.as_ref())
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("[0] timestamp 1970-01-01"),
        "{}",
        partial.error_message
    );

    // The same in JSON: the count is an int64, so a string.
    let old = brief_example(1_000);
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[JSON], old),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    assert_eq!(json["partialSuccess"]["rejectedLogRecords"], "1");
    assert!(
        json["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("outside the accepted window")
    );

    let records = harness.records(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records_later = harness.records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records_later.len(), 1, "the rejected records never arrive");
    assert_eq!(records[0].body, "fresh");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_answer_400_saying_what_and_where() {
    let harness = Harness::start();
    let truncated = "{\"resourceLogs\": [\n  {\"scopeLogs\": [{\"logRecords\": [{\"timeUnixNano\": \"soon\"}]}]}]}";
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[JSON], truncated),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let error = answer.json();
    assert_eq!(error["code"], 3, "INVALID_ARGUMENT");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("malformed OTLP/JSON ExportLogsServiceRequest"),
        "{message}"
    );
    assert!(message.contains("line 2 column"), "{message}");

    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/traces", &[PROTOBUF], vec![0x0a, 0xff]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.header("content-type"),
        Some("application/x-protobuf")
    );
    let status = RpcStatus::decode(answer.body.as_ref()).unwrap();
    assert_eq!(status.code, 3);
    assert!(
        status
            .message
            .starts_with("malformed protobuf ExportTraceServiceRequest"),
        "{}",
        status.message
    );

    let headers = [JSON, ("content-encoding", "gzip")];
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &headers, "not gzip"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.json()["message"].as_str().unwrap().contains("gzip"));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_types_and_encodings_answer_415() {
    let harness = Harness::start();
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[("content-type", "text/plain")], "hi"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );
    let answer = send(router(harness.ingest.clone()), post("/v1/logs", &[], "hi")).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let headers = [JSON, ("content-encoding", "br")];
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &headers, "{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/metrics", &[JSON], "{}"),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "metrics come with a later issue"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_answers_413_without_decompressing_it_all() {
    let harness = Harness::start();
    // Concatenated gzip members of 1 MiB of zeros each: a few KiB that
    // decompress to more than the limit.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![0; 1024 * 1024]).unwrap();
    let member = encoder.finish().unwrap();
    let members = MAX_DECODED_BYTES / (1024 * 1024) * 2;
    let bomb = member.repeat(members);
    assert!(
        bomb.len() < 1024 * 1024,
        "the bomb itself is small: {}",
        bomb.len()
    );
    let started = Instant::now();
    let headers = [PROTOBUF, ("content-encoding", "gzip")];
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &headers, bomb),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let status = RpcStatus::decode(answer.body.as_ref()).unwrap();
    assert!(
        status
            .message
            .contains("decompressed request body is over the limit"),
        "{}",
        status.message
    );

    let too_big = vec![b' '; MAX_BODY_BYTES + 1];
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[JSON], too_big),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("request body is over the limit")
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_stored_and_spans_with_bad_ids_are_a_partial_success() {
    let harness = Harness::start();
    let now = now_nanos() as u64;
    let span = |span_id: Vec<u8>, name: &str| OtlpSpan {
        trace_id: vec![0x11; 16],
        span_id,
        name: name.into(),
        start_time_unix_nano: now,
        end_time_unix_nano: now + 5_000,
        ..OtlpSpan::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "order")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(vec![0x22; 8], "GET /orders"),
                    span(vec![1, 2], "broken"),
                ],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/traces", &[PROTOBUF], request.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let response = ExportTraceServiceResponse::decode(answer.body.as_ref()).unwrap();
    assert_eq!(
        response
            .partial_success
            .map(|partial| partial.rejected_spans),
        Some(1)
    );

    let json_span = json!({"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"order"}}]},
        "scopeSpans":[{"spans":[{"traceId":"11111111111111111111111111111111","spanId":"3333333333333333",
        "parentSpanId":"2222222222222222","name":"SELECT","kind":3,"startTimeUnixNano":now.to_string(),
        "endTimeUnixNano":now + 1_000,"status":{"code":2,"message":"timeout"}}]}]}]});
    let answer = send(
        router(harness.ingest.clone()),
        post("/v1/traces", &[JSON], json_span.to_string()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json(), json!({}));

    let spans = harness.trace("11111111111111111111111111111111", 2).await;
    let child = spans.iter().find(|span| span.name == "SELECT").unwrap();
    assert_eq!(child.parent_span_id.as_deref(), Some("2222222222222222"));
    assert_eq!(
        (child.kind.as_str(), child.service.as_str()),
        ("client", "order")
    );
    assert_eq!(child.status_message, "timeout");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_answers_429_with_retry_after() {
    // A one-byte budget, held by the first batch until a commit that does not come.
    let harness = Harness::start_with(|config| {
        config.memory_budget_bytes = 1;
        config.budget_wait = Duration::from_millis(100);
        config.commit_interval = Duration::from_secs(3600);
    });
    let body = || logs_request(vec![log(now_nanos() as u64, "x")]).encode_to_vec();
    let first = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[PROTOBUF], body()),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = send(
        router(harness.ingest.clone()),
        post("/v1/logs", &[PROTOBUF], body()),
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(
        RpcStatus::decode(second.body.as_ref()).unwrap().code,
        8,
        "RESOURCE_EXHAUSTED"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let harness = Harness::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, router(harness.ingest.clone())).into_future());

    let body = gzip(brief_example(now_nanos()).as_bytes());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\n{}"), "{response}");
    assert_eq!(harness.records(1).await[0].body, "hi");

    server.abort();
    let _ = server.await;
    harness.stop().await;
}

/// Every OTLP/HTTP route charges the client's rate before reading the body:
/// one large request passes, the next answers 429 with `Retry-After` and a
/// `RESOURCE_EXHAUSTED` status in the request's format, for logs, traces
/// and metrics alike (metrics go to the metric store, not the pipeline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signal_over_the_client_rate_answers_429_with_retry_after() {
    use sightline_collector::otlp_http::metrics_router;
    use sightline_collector::ratelimit::RateLimiter;
    use sightline_metrics::otlp::OtlpMetrics;
    use sightline_tsdb::MetricStore;
    use std::sync::Arc;

    let harness = Harness::start();
    let dir = tempfile::tempdir().unwrap();
    let metric_store = Arc::new(MetricStore::open(dir.path()).unwrap());
    let limiter = RateLimiter::new(1000, 1000, harness.ingest.metrics().clone());
    let ingest = harness.ingest.clone().with_rate_limiter(limiter.clone());
    let routes = || {
        router(ingest.clone()).merge(metrics_router(
            OtlpMetrics::new(metric_store.clone()),
            limiter.clone(),
        ))
    };
    // Announced as 5000 bytes: admitted, and the client is 4 s in debt.
    let body = logs_request(vec![log(now_nanos() as u64, "paid")]).encode_to_vec();
    let announced = [PROTOBUF, ("content-length", "5000")];
    let first = send(routes(), post("/v1/logs", &announced, body)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    for path in ["/v1/logs", "/v1/traces", "/v1/metrics"] {
        let answer = send(routes(), post(path, &[PROTOBUF], Vec::new())).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(
            answer
                .header("retry-after")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1,
            "{path}"
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/x-protobuf"),
            "{path}"
        );
        let status = RpcStatus::decode(answer.body.as_ref()).unwrap();
        assert_eq!(status.code, 8, "{path}: RESOURCE_EXHAUSTED");
        assert!(
            status
                .message
                .starts_with("ingest rate limit of 1000 bytes/s exceeded for client 0.0.0.0"),
            "{path}: {}",
            status.message
        );
    }
    let answer = send(routes(), post("/v1/metrics", &[JSON], "{}")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.json()["code"], 8);
    drop(ingest);
    harness.stop().await;
}
