//! Receivers end to end inside one process: what an OTLP export or a log
//! batch sent to the collector's services becomes in the metric store.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use sightline_metrics::config_file::LogMetricConfig;
use sightline_metrics::log_metrics::{FLUSH_INTERVAL, LogMetrics};
use sightline_metrics::otlp::OtlpMetrics;
use sightline_metrics::span_metrics::SpanMetrics;
use sightline_metrics::testing::{T0, assert_translated, at_ms, query, request};
use sightline_store::{
    Checkpoint, DurableLog, LogEntry, LogStore, PartitionId, Position, SINGLE_PARTITION, Span,
    SpanStore,
};
use sightline_tsdb::MetricStore;
use sightline_tsdb::promql::{Engine, Value};

use crate::ingest::{Ingest, Limits};
use crate::metrics::CollectorMetrics;
use sightline_pipeline::{Pipeline, PipelineConfig};

fn open_store() -> (tempfile::TempDir, Arc<MetricStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path()).unwrap());
    (dir, store)
}

fn config(yaml: &str) -> Vec<LogMetricConfig> {
    serde_norway::from_str(yaml).unwrap()
}

#[tokio::test]
async fn grpc_exports_become_series_and_native_histograms_a_partial_success() {
    let (_dir, store) = open_store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let metrics = OtlpMetrics::new(store.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(crate::grpc::metrics_service(metrics, None))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = MetricsServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let response = client.export(request(T0)).await.unwrap().into_inner();
    let partial = response.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(
        partial
            .error_message
            .contains("exponential histograms are not supported"),
        "{}",
        partial.error_message
    );
    assert_translated(&store);
}

#[tokio::test]
async fn http_exports_in_protobuf_and_json_become_series() {
    let (_dir, store) = open_store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = crate::otlp_http::metrics_router(OtlpMetrics::new(store.clone()), None);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let url = format!("http://{address}/v1/metrics");
    let client = reqwest::Client::new();

    let response = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(request(T0).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.bytes().await.unwrap();
    let answer =
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::decode(
            body,
        )
        .unwrap();
    assert_eq!(answer.partial_success.unwrap().rejected_data_points, 2);
    assert_translated(&store);

    // The same request a minute later, as OTLP/JSON.
    let later = T0 + 60_000_000_000;
    let json = serde_json::to_string(&request(later)).unwrap();
    let response = client
        .post(&url)
        .header("Content-Type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], "2");
    assert_eq!(
        query(&store, "count_over_time(queue_depth[2m])", at_ms(later)),
        vec![(
            r#"{instance="pod-1", job="shop/checkout"}"#.to_string(),
            2.0
        )]
    );

    let response = client
        .post(&url)
        .header("Content-Type", "application/json")
        .body("{\"resourceMetrics\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("ExportMetricsServiceRequest"),
        "{error}"
    );
}

/// One OTLP/JSON log record from `service` with `body` and attributes.
fn record(body: &str, ip: &str, time_nanos: i64) -> serde_json::Value {
    serde_json::json!({
        "timeUnixNano": time_nanos.to_string(),
        "severityText": "WARN",
        "body": {"stringValue": body},
        "attributes": [{"key": "ip_address", "value": {"stringValue": ip}}],
    })
}

#[tokio::test]
async fn failed_logins_are_counted_per_ip_and_usable_in_a_rule_expression() {
    let log_metrics = Arc::new(
        LogMetrics::from_config(&config(
            r#"
- name: failed_logins_total
  help: Failed logins by client address
  query: 'body:"login failed" AND service:auth'
  labels: [ip_address, service]
"#,
        ))
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(LogStore::open(&dir.path().join("logs")).unwrap());
    let spans = Arc::new(SpanStore::open(&dir.path().join("spans")).unwrap());
    let metric_store = MetricStore::open(dir.path().join("metrics")).unwrap();
    let metrics = Arc::new(CollectorMetrics::default());
    let (pipeline, threads) = Pipeline::start(
        PipelineConfig::new(dir.path().join("wal")),
        logs,
        spans,
        metrics.clone(),
    )
    .unwrap();
    let ingest =
        Ingest::new(pipeline, Limits::default(), metrics).with_log_metrics(log_metrics.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = crate::otlp_http::router(ingest);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let now = sightline_vocab::clock::now_nanos();
    let mut auth_records = Vec::new();
    for attempt in 0..12 {
        auth_records.push(record(
            "Login failed for user bob",
            "10.0.0.1",
            now + attempt,
        ));
    }
    for attempt in 0..3 {
        auth_records.push(record(
            "login FAILED: bad password",
            "10.0.0.2",
            now + attempt,
        ));
    }
    auth_records.push(record("login succeeded", "10.0.0.1", now));
    let shop_records = vec![record("login failed", "10.0.0.3", now)];
    let body = serde_json::json!({"resourceLogs": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "auth"}}]},
         "scopeLogs": [{"logRecords": auth_records}]},
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
         "scopeLogs": [{"logRecords": shop_records}]},
    ]});
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/logs"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "{}");

    let first_flush_ms = 1_000_000;
    log_metrics.flush(&metric_store, first_flush_ms).unwrap();
    let second_flush_ms = first_flush_ms + FLUSH_INTERVAL.as_millis() as i64;
    log_metrics.flush(&metric_store, second_flush_ms).unwrap();

    let value = Engine::default()
        .instant_query(
            &*metric_store.reader(),
            "sum by (ip_address) (increase(failed_logins_total[1m])) > 10",
            second_flush_ms,
        )
        .unwrap();
    let Value::Vector(firing) = value else {
        panic!("not a vector: {value:?}")
    };
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].labels.get("ip_address"), "10.0.0.1");
    assert_eq!(firing[0].value, 12.0);

    let value = Engine::default()
        .instant_query(
            &*metric_store.reader(),
            "failed_logins_total",
            second_flush_ms,
        )
        .unwrap();
    let Value::Vector(counters) = value else {
        panic!("not a vector: {value:?}")
    };
    let mut counts: Vec<(String, String, f64)> = counters
        .iter()
        .map(|sample| {
            (
                sample.labels.get("ip_address").to_string(),
                sample.labels.get("service").to_string(),
                sample.value,
            )
        })
        .collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        counts,
        vec![
            ("10.0.0.1".to_string(), "auth".to_string(), 12.0),
            ("10.0.0.2".to_string(), "auth".to_string(), 3.0),
        ]
    );
    assert_eq!(
        metric_store.metadata()["failed_logins_total"].kind,
        "counter"
    );

    server.abort();
    let _ = server.await;
    tokio::task::spawn_blocking(move || threads.join())
        .await
        .unwrap();
}

/// A durable log whose every append fails, as a broken disk's would.
#[derive(Debug)]
struct BrokenLog;

impl DurableLog for BrokenLog {
    fn partitions(&self) -> Vec<PartitionId> {
        vec![SINGLE_PARTITION]
    }
    fn append(&self, _: PartitionId, _: &[u8]) -> sightline_store::Result<Position> {
        Err(std::io::Error::other("the disk is gone").into())
    }
    fn sync(&self) -> sightline_store::Result<()> {
        Err(std::io::Error::other("the disk is gone").into())
    }
    fn end(&self) -> Checkpoint {
        Checkpoint::single(0)
    }
    fn replay(
        &self,
        _: &Checkpoint,
        _: &mut dyn FnMut(LogEntry) -> sightline_store::Result<()>,
    ) -> sightline_store::Result<()> {
        Ok(())
    }
    fn remove_below(&self, _: &Checkpoint) -> sightline_store::Result<usize> {
        Ok(0)
    }
    fn disk_bytes(&self) -> sightline_store::Result<u64> {
        Ok(0)
    }
}

/// Span RED metrics observe acknowledged batches: spans the pipeline made
/// durable are counted once, spans refused because the durable log failed
/// are not (their sender retries them, and they count then).
#[tokio::test]
async fn span_metrics_count_acknowledged_spans_only() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(LogStore::open(&dir.path().join("logs")).unwrap());
    let spans = Arc::new(SpanStore::open(&dir.path().join("spans")).unwrap());
    let metrics = Arc::new(CollectorMetrics::default());
    let span_metrics = Arc::new(SpanMetrics::default());
    let (working, _working_threads) = Pipeline::start(
        PipelineConfig::new(dir.path().join("wal")),
        logs.clone(),
        spans.clone(),
        metrics.clone(),
    )
    .unwrap();
    let (broken, _broken_threads) = Pipeline::start_with_log(
        PipelineConfig::new(dir.path().join("broken")),
        Arc::new(BrokenLog),
        logs,
        spans,
        metrics.clone(),
    )
    .unwrap();
    let span = |name: &str| Span {
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        name: name.into(),
        service: "shop".into(),
        kind: "server".into(),
        start_time: 0,
        end_time: 5_000_000,
        ..Span::default()
    };

    Ingest::new(working, Limits::default(), metrics.clone())
        .with_span_metrics(span_metrics.clone())
        .spans(vec![span("checkout")], 100)
        .await
        .unwrap();
    let refused = Ingest::new(broken, Limits::default(), metrics)
        .with_span_metrics(span_metrics.clone())
        .spans(vec![span("refused")], 100)
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let page = span_metrics.render(false);
    assert!(
        page.contains(
            "traces_spanmetrics_calls_total{service=\"shop\",span_name=\"checkout\",\
             span_kind=\"SPAN_KIND_SERVER\",status_code=\"STATUS_CODE_UNSET\"} 1\n"
        ),
        "{page}"
    );
    assert!(
        !page.contains("refused"),
        "a refused span was counted:\n{page}"
    );
}
