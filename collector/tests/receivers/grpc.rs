//! OTLP/gRPC: the services driven as tower services, without a socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use prost::Message;
use sightline_collector::grpc::{logs_service, metrics_service, trace_service};
use sightline_metrics::otlp::OtlpMetrics;
use sightline_tsdb::MetricStore;
use tower::ServiceExt;

use crate::harness::Harness;

/// A gRPC request for `path` carrying `message` as its one uncompressed frame.
fn grpc_request(path: &str, message: &[u8]) -> Request<Body> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(frame))
        .unwrap()
}

/// The `grpc-status` and `grpc-message` of an answer that failed before any
/// message (tonic sends them as headers, "trailers only").
fn status_of(response: &axum::http::Response<tonic::body::Body>) -> (i32, String) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let code = header("grpc-status").parse().unwrap_or(-1);
    (code, header("grpc-message"))
}

/// Bytes no OTLP message decodes from: an unterminated varint tag, and a
/// field whose length runs past the end.
const GARBAGE: [&[u8]; 2] = [&[0xff; 11], &[0x0a, 0xff, 0xff, 0x03, b'x']];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument_for_logs_traces_and_metrics() {
    let harness = Harness::start();
    let dir = tempfile::tempdir().unwrap();
    let metric_store = Arc::new(MetricStore::open(dir.path()).unwrap());
    for garbage in GARBAGE {
        let logs = logs_service(harness.ingest.clone())
            .oneshot(grpc_request(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                garbage,
            ))
            .await
            .unwrap();
        let traces = trace_service(harness.ingest.clone())
            .oneshot(grpc_request(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                garbage,
            ))
            .await
            .unwrap();
        let metrics = metrics_service(OtlpMetrics::new(metric_store.clone()), None)
            .oneshot(grpc_request(
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                garbage,
            ))
            .await
            .unwrap();
        for (signal, response) in [("logs", logs), ("traces", traces), ("metrics", metrics)] {
            let (code, message) = status_of(&response);
            assert_eq!(
                code,
                tonic::Code::InvalidArgument as i32,
                "{signal} with {garbage:?}: {message}"
            );
            assert!(message.contains("protobuf"), "{signal}: {message}");
        }
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_export_is_answered_ok_and_an_unknown_method_unimplemented() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    let harness = Harness::start();
    let empty = ExportLogsServiceRequest::default().encode_to_vec();
    let response = logs_service(harness.ingest.clone())
        .oneshot(grpc_request(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            &empty,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .unwrap();
    // One frame holding an empty ExportLogsServiceResponse.
    assert_eq!(&body[..], &[0, 0, 0, 0, 0]);
    let response = logs_service(harness.ingest.clone())
        .oneshot(grpc_request(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Import",
            &empty,
        ))
        .await
        .unwrap();
    assert_eq!(status_of(&response).0, tonic::Code::Unimplemented as i32);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_compressed_export_is_stored() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let harness = Harness::start();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: crate::harness::now_nanos() as u64,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("compressed".into())),
                    }),
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    let compressed = crate::harness::gzip(&request.encode_to_vec());
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&compressed);
    let response = logs_service(harness.ingest.clone())
        .oneshot(
            Request::post("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
                .header("content-type", "application/grpc")
                .header("grpc-encoding", "gzip")
                .body(Body::from(frame))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        status_of(&response).0,
        -1,
        "no error status before the message"
    );
    let records = harness.records(1).await;
    assert_eq!(records[0].body, "compressed");
    harness.stop().await;
}
