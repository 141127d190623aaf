//! Traces from two independent real OpenTelemetry SDKs reach the collector
//! over both OTLP transports: the Python SDK (`opentelemetry-sdk` with the
//! gRPC and HTTP exporters, installed by `scripts/test`) and the Rust
//! `opentelemetry-otlp` exporter over HTTP (the demo services already export
//! with it over gRPC). The Python SDK's metrics carry exemplars back out of
//! `/api/v1/query_exemplars`.

use std::process::Command;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use sightline_tests::{CollectorProcess, get_json, poll_until, unique_request_id};

pub(crate) const PYTHON_CLIENT: &str = r#"
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

transport, endpoint, request_id = sys.argv[1], sys.argv[2], sys.argv[3]
if transport == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint)
provider = TracerProvider(resource=Resource.create({"service.name": "python-" + transport}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("sightline-e2e")
with tracer.start_as_current_span("checkout", attributes={"request_id": request_id}) as parent:
    with tracer.start_as_current_span("charge card", attributes={"amount": 12.5}):
        pass
    print(format(parent.get_span_context().trace_id, "032x"))
provider.shutdown()
"#;

/// Runs a Python client script with `args` (scripts/test installs the
/// OpenTelemetry SDK and its exporters); its trimmed standard output.
fn run_python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "the python client failed (scripts/test installs the OpenTelemetry SDK and exporters): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn trace_of_request(collector: &CollectorProcess, request_id: &str, spans: usize) -> Value {
    let http = reqwest::Client::new();
    let url = collector.url(&format!("/api/requests/{request_id}"));
    poll_until(
        &format!("{spans} spans of request {request_id}"),
        Duration::from_secs(60),
        || async {
            let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let story: Value = response.json().await.map_err(|e| e.to_string())?;
            match story["span_count"].as_u64() {
                Some(count) if count as usize >= spans => Ok(Some(story)),
                other => Err(format!("spans so far: {other:?}")),
            }
        },
    )
    .await
}

/// The parent/child link and the service name arrived intact.
fn assert_parent_child(story: &Value, service: &str, parent: &str, child: &str) {
    let spans: Vec<&Value> = story["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "span")
        .collect();
    let find = |name: &str| {
        *spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("span {name} in {story}"))
    };
    let (parent_span, child_span) = (find(parent), find(child));
    assert_eq!(
        child_span["parent_span_id"], parent_span["span_id"],
        "{story}"
    );
    assert_eq!(parent_span["service"], service);
    assert_eq!(parent_span["trace_id"], child_span["trace_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_grpc_and_http() {
    let data = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(data.path(), &["--commit-interval", "200ms"]).await;
    for (transport, endpoint) in [
        ("grpc", format!("http://127.0.0.1:{}", collector.grpc_port)),
        ("http", collector.otlp_http_url("/v1/traces")),
    ] {
        let request_id = unique_request_id(&format!("py-{transport}"));
        let trace_id = run_python(PYTHON_CLIENT, &[transport, &endpoint, &request_id]);
        let story = trace_of_request(&collector, &request_id, 2).await;
        assert_eq!(
            story["trace_ids"],
            serde_json::json!([trace_id]),
            "{transport}"
        );
        assert_parent_child(
            &story,
            &format!("python-{transport}"),
            "checkout",
            "charge card",
        );
    }
}

/// The Python SDK's metrics over OTLP/HTTP: a histogram recorded inside a
/// sampled span carries that span as an exemplar (the SDK's default
/// trace-based exemplar filter).
const PYTHON_METRICS_CLIENT: &str = r#"
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

endpoint = sys.argv[1]
resource = Resource.create({"service.name": "python-metrics"})
tracer = TracerProvider(resource=resource).get_tracer("sightline-e2e")
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint), export_interval_millis=60000)
meters = MeterProvider(resource=resource, metric_readers=[reader])
histogram = meters.get_meter("sightline-e2e").create_histogram("checkout.duration", unit="s")
with tracer.start_as_current_span("checkout") as span:
    histogram.record(0.7, {"route": "/checkout"})
    context = span.get_span_context()
    print(format(context.trace_id, "032x"), format(context.span_id, "016x"))
meters.shutdown()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_metric_exemplars_come_back_from_query_exemplars() {
    let data = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(data.path(), &[]).await;
    let stdout = run_python(
        PYTHON_METRICS_CLIENT,
        &[&collector.otlp_http_url("/v1/metrics")],
    );
    let (trace_id, span_id) = stdout.split_once(' ').expect("trace and span ids");
    let http = reqwest::Client::new();
    let url = collector.url("/api/v1/query_exemplars?query=histogram_quantile(0.99%2C%20rate(checkout_duration_seconds_bucket%5B5m%5D))");
    let answer = poll_until(
        "the histogram's exemplar",
        Duration::from_secs(30),
        || async {
            let body = get_json(&http, &url).await?;
            match body["data"].as_array() {
                Some(data) if !data.is_empty() => Ok(Some(body)),
                _ => Err(format!("so far: {body}")),
            }
        },
    )
    .await;
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{answer}");
    // The SDK's default bounds put 0.7 s in the bucket up to 5.
    assert_eq!(data[0]["seriesLabels"]["le"], "5", "{answer}");
    assert_eq!(data[0]["seriesLabels"]["route"], "/checkout", "{answer}");
    assert_eq!(data[0]["seriesLabels"]["job"], "python-metrics", "{answer}");
    let exemplar = &data[0]["exemplars"][0];
    assert_eq!(exemplar["labels"]["trace_id"], trace_id, "{answer}");
    assert_eq!(exemplar["labels"]["span_id"], span_id, "{answer}");
    assert_eq!(exemplar["value"], "0.7", "{answer}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = exemplar["timestamp"].as_f64().unwrap();
    assert!((now - 60.0..=now).contains(&at), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_otlp_exporter_over_http() {
    let data = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(data.path(), &["--commit-interval", "200ms"]).await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(collector.otlp_http_url("/v1/traces"))
        .with_timeout(Duration::from_secs(10))
        .with_headers(Default::default())
        .build()
        .expect("build the OTLP/HTTP exporter");
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("rust-http").build())
        .build();
    let request_id = unique_request_id("rust-http");
    let tracer = provider.tracer("sightline-e2e");
    // The simple exporter blocks; keep it off the test's async workers.
    let span_request_id = request_id.clone();
    tokio::task::spawn_blocking(move || {
        tracer.in_span("checkout", |context| {
            context
                .span()
                .set_attribute(KeyValue::new("request_id", span_request_id));
            let mut child = tracer.start("charge card");
            child.end();
        });
        provider.shutdown().expect("flush spans");
    })
    .await
    .unwrap();
    let story = trace_of_request(&collector, &request_id, 2).await;
    assert_parent_child(&story, "rust-http", "checkout", "charge card");
}

/// The OpenTelemetry Python SDK's Zipkin exporter (v2 JSON), pointed at the
/// collector's `/api/v2/spans`.
const PYTHON_ZIPKIN_CLIENT: &str = r#"
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.zipkin.json import ZipkinExporter

endpoint = sys.argv[1]
provider = TracerProvider(resource=Resource.create({"service.name": "python-zipkin"}))
provider.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=endpoint)))
tracer = provider.get_tracer("sightline-e2e")
with tracer.start_as_current_span("checkout") as parent:
    with tracer.start_as_current_span("charge card", attributes={"amount": "12.5"}):
        pass
    print(format(parent.get_span_context().trace_id, "032x"))
provider.shutdown()
"#;

/// Spans of trace `trace_id` from the Jaeger API, once there are `count`.
async fn jaeger_spans(collector: &CollectorProcess, trace_id: &str, count: usize) -> Value {
    let http = reqwest::Client::new();
    let url = collector.url(&format!("/api/traces/{trace_id}"));
    poll_until(
        &format!("{count} spans of trace {trace_id}"),
        Duration::from_secs(60),
        || async {
            let body = get_json(&http, &url).await?;
            match body["data"][0]["spans"].as_array() {
                Some(spans) if spans.len() >= count => Ok(Some(body["data"][0].clone())),
                _ => Err(format!("so far: {body}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_v2_json_from_the_python_sdk_and_a_batch_with_a_bad_span() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), &[]).await;
    let endpoint = collector.otlp_http_url("/api/v2/spans");
    let trace_id = run_python(PYTHON_ZIPKIN_CLIENT, &[&endpoint]);
    let trace = jaeger_spans(&collector, &trace_id, 2).await;
    let spans = trace["spans"].as_array().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|span| span["operationName"] == name)
            .unwrap_or_else(|| panic!("{name} in {trace}"))
    };
    let (parent, child) = (find("checkout"), find("charge card"));
    assert_eq!(
        child["references"][0]["spanID"], parent["spanID"],
        "{trace}"
    );
    let process = &trace["processes"][parent["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "python-zipkin", "{trace}");
    assert!(
        child["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|tag| tag["key"] == "amount" && tag["value"] == "12.5"),
        "{child}"
    );

    // A batch with one bad span: the good one is stored, the bad one named.
    let body = serde_json::json!([
        {"traceId": "00000000000000000000000000abcdef", "id": "00000000000000a1", "name": "kept",
         "timestamp": 1_733_500_000_000_000u64, "duration": 1000,
         "localEndpoint": {"serviceName": "zipkin-raw"}},
        {"traceId": "00000000000000000000000000abcdef", "id": "short", "timestamp": 1},
    ]);
    let response = reqwest::Client::new()
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let message = response.text().await.unwrap();
    assert!(
        message.contains("1 of 2 spans refused: span 1: id \"short\" is not 16 hex digits")
            && message.contains("the other spans were stored"),
        "{message}"
    );
    jaeger_spans(&collector, "00000000000000000000000000abcdef", 1).await;
}
