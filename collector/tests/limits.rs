//! No single input takes the collector down: a real collector process on
//! loopback gets a gzip bomb, a 100 MB record, a record with 100k attributes
//! and a scrape target with a million series, and each time answers with an
//! error naming the limit, counts it on `/metrics`, and keeps serving the
//! other clients and the rest of the batch.

mod support;

use support::free_port;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

const STARTUP_WITHIN: Duration = Duration::from_secs(60);
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(60);

struct Collector {
    child: Child,
    grpc: SocketAddr,
    otlp_http: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// A collector with default limits and, when given, this config file.
    async fn start(config_file: Option<&str>) -> Collector {
        Collector::start_with(config_file, &[]).await
    }

    async fn start_with(config_file: Option<&str>, args: &[&str]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, otlp_http, http) = (free_port(), free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_sightline-collector"));
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc-addr", &grpc.to_string()])
            .args(["--otlp-http-addr", &otlp_http.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(["--commit-interval", "50ms"])
            .args(args);
        if let Some(text) = config_file {
            let path = dir.path().join("collector.yml");
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let collector = Collector {
            child,
            grpc,
            otlp_http,
            http,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_WITHIN;
        while !collector.healthy().await {
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        collector
    }

    async fn healthy(&self) -> bool {
        reqwest::get(format!("http://{}/health", self.http))
            .await
            .is_ok_and(|response| response.status() == StatusCode::OK)
    }

    fn logs_url(&self) -> String {
        format!("http://{}/v1/logs", self.otlp_http)
    }

    /// The value of `sightline_collector_limited_total{limit="<limit>"}`.
    async fn limited(&self, limit: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("sightline_collector_limited_total{{limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .parse()
            .unwrap()
    }

    /// Waits until a search for `query` finds `count` records; returns their bodies.
    async fn bodies(&self, query: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + SEARCHABLE_WITHIN;
        loop {
            let answer: Value = reqwest::Client::new()
                .get(format!("http://{}/api/logs", self.http))
                .query(&[("q", query), ("limit", "1000")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let bodies: Vec<String> = answer["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|record| record["body"].as_str().unwrap_or_default().to_string())
                .collect();
            if bodies.len() >= count {
                return bodies;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} records for {query:?} became searchable",
                bodies.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_nanos() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string()
}

/// An OTLP/JSON log record with `body` and these attributes.
fn record(body: &str, attributes: Vec<Value>) -> Value {
    json!({
        "timeUnixNano": now_nanos(),
        "body": {"stringValue": body},
        "attributes": attributes,
    })
}

fn logs_request(records: Vec<Value>) -> Value {
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "limits-test"}}
        ]},
        "scopeLogs": [{"logRecords": records}],
    }]})
}

async fn post_json(url: &str, body: Vec<u8>, gzip: bool) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json");
    if gzip {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// About 10 MB of gzip that inflates to about 10 GB of zeros: one member of
/// 64 MiB of zeros, repeated (multi-member gzip is one valid stream).
fn gzip_bomb() -> (Vec<u8>, u64) {
    let member_bytes = 64u64 << 20;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(member_bytes >> 20) {
        encoder.write_all(&zeros).unwrap();
    }
    let member = encoder.finish().unwrap();
    let members = (10 << 20) / member.len();
    (member.repeat(members), members as u64 * member_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gzip_bomb_is_refused_while_another_client_keeps_ingesting() {
    let collector = Collector::start(None).await;
    let (bomb, inflated) = gzip_bomb();
    assert!(inflated > 9 << 30, "the bomb inflates to {inflated} bytes");

    // Another client ingests all along the bomb's request.
    let url = collector.logs_url();
    let other_client = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for index in 0..20 {
            let request = logs_request(vec![record(&format!("steady{index} neighbour"), vec![])]);
            let (status, _) = post_json(&url, request.to_string().into_bytes(), false).await;
            statuses.push(status);
        }
        statuses
    });
    let started = Instant::now();
    let (status, answer) = post_json(&collector.logs_url(), bomb.clone(), true).await;
    println!(
        "gzip bomb of {} bytes (inflating to {inflated}) refused in {:?}",
        bomb.len(),
        started.elapsed()
    );
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("decompressed request body is over the limit of 67108864 bytes")
            && message.contains("max_decoded_bytes"),
        "{message}"
    );
    assert_eq!(answer["code"], 8, "RESOURCE_EXHAUSTED: {answer}");

    let statuses = other_client.await.unwrap();
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(collector.bodies("neighbour", 20).await.len(), 20);
    assert_eq!(collector.limited("max_decoded_bytes").await, 1.0);
    assert!(collector.healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100_mb_record_is_refused_and_a_large_one_leaves_its_batch_stored() {
    let collector = Collector::start(None).await;
    let huge = "x".repeat(100 << 20);

    // As sent: refused at the received-size cap, before it is all buffered.
    // The refusal closes the connection unread, so a client still writing
    // may see a broken pipe instead of the answer (no lingering close yet):
    // try a few times for the answer itself.
    let request = logs_request(vec![record(&huge, vec![])]).to_string();
    let mut attempts = 0;
    let (status, answer) = loop {
        attempts += 1;
        let sent = reqwest::Client::new()
            .post(collector.logs_url())
            .header("content-type", "application/json")
            .body(request.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap();
                break (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                );
            }
            Err(error) if attempts < 10 && error.is_request() => continue,
            Err(error) => panic!("no answer to the 100 MB request in {attempts} tries: {error:?}"),
        }
    };
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("max_body_bytes"), "{message}");

    // Compressed to 100 KB: refused once inflating passes the decoded cap.
    let request = logs_request(vec![record(&huge, vec![])]).to_string();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(request.as_bytes()).unwrap();
    let compressed = encoder.finish().unwrap();
    let (status, answer) = post_json(&collector.logs_url(), compressed, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("max_decoded_bytes"),
        "{answer}"
    );

    // 2 MiB: within the body caps, over max_record_bytes; the rest is kept.
    let large = "y".repeat(2 << 20);
    let request = logs_request(vec![
        record("kept1 beside", vec![]),
        record(&large, vec![]),
        record("kept2 beside", vec![]),
    ]);
    let (status, answer) = post_json(
        &collector.logs_url(),
        request.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], "1");
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("[1] record of") && message.contains("max_record_bytes (1048576 bytes)"),
        "{message}"
    );
    let mut bodies = collector.bodies("beside", 2).await;
    bodies.sort();
    assert_eq!(bodies, ["kept1 beside", "kept2 beside"]);

    // Every try of the 100 MB send was refused (and counted), also those
    // whose answer the client missed.
    assert_eq!(
        collector.limited("max_body_bytes").await,
        f64::from(attempts)
    );
    assert_eq!(collector.limited("max_decoded_bytes").await, 1.0);
    assert_eq!(collector.limited("max_record_bytes").await, 1.0);
    assert!(collector.healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_with_100k_attributes_is_refused_and_its_batch_stored() {
    let collector = Collector::start(None).await;
    let attributes: Vec<Value> = (0..100_000)
        .map(|index| json!({"key": format!("a{index}"), "value": {"intValue": index}}))
        .collect();
    let long_key = vec![json!({"key": "k".repeat(300), "value": {"stringValue": "v"}})];
    let long_value = vec![json!({"key": "big", "value": {"stringValue": "v".repeat(70_000)}})];
    let request = logs_request(vec![
        record(
            "first survivor",
            vec![json!({"key": "ok", "value": {"boolValue": true}})],
        ),
        record("many attributes", attributes),
        record("long key", long_key),
        record("long value", long_value),
        record("second survivor", vec![]),
    ]);
    let (status, answer) = post_json(
        &collector.logs_url(),
        request.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], "3");
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("[1] 100000 attributes is over max_attributes (1000)"),
        "{message}"
    );
    assert!(
        message.contains("[2] attribute key") && message.contains("max_attribute_key_bytes (256)"),
        "{message}"
    );
    assert!(
        message.contains("[3] value of attribute \"big\"")
            && message.contains("max_attribute_value_bytes (65536)"),
        "{message}"
    );
    let mut bodies = collector.bodies("survivor", 2).await;
    bodies.sort();
    assert_eq!(bodies, ["first survivor", "second survivor"]);
    assert_eq!(collector.limited("max_attributes").await, 1.0);
    assert_eq!(collector.limited("max_attribute_key_bytes").await, 1.0);
    assert_eq!(collector.limited("max_attribute_value_bytes").await, 1.0);
}

/// A target exposing `series` series of one gauge.
async fn start_target(series: usize) -> SocketAddr {
    let mut body = String::with_capacity(series * 32);
    body.push_str("# TYPE wide gauge\n");
    for index in 0..series {
        body.push_str(&format!("wide{{i=\"{index}\"}} 1\n"));
    }
    let body = Arc::new(body);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body.as_str().to_string() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Waits until `/api/v1/targets` has a scraped target of `job`; returns it.
async fn scraped_target(collector: &Collector, job: &str) -> Value {
    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    loop {
        let answer: Value = reqwest::get(format!("http://{}/api/v1/targets", collector.http))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let target = answer["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|target| target["labels"]["job"] == job && target["health"] != "unknown")
            .cloned();
        if let Some(target) = target {
            return target;
        }
        assert!(Instant::now() < deadline, "job {job} was not scraped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `up{job="<job>"}` through the Prometheus API.
async fn up(collector: &Collector, job: &str) -> Option<String> {
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/query", collector.http))
        .query(&[("query", format!("up{{job=\"{job}\"}}"))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_series_target_fails_with_sample_limit_exceeded() {
    let huge = start_target(1_000_000).await;
    let small = start_target(10).await;
    let config = format!(
        "scrape_configs:\n\
         - job_name: huge\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  static_configs:\n  - targets: ['{huge}']\n\
         - job_name: small\n  scrape_interval: 1s\n  sample_limit: 10\n  static_configs:\n  - targets: ['{small}']\n\
         - job_name: tight\n  scrape_interval: 1s\n  sample_limit: 9\n  static_configs:\n  - targets: ['{small}']\n"
    );
    let collector = Collector::start(Some(&config)).await;

    let target = scraped_target(&collector, "huge").await;
    assert_eq!(target["health"], "down", "{target}");
    assert_eq!(
        target["lastError"],
        "sample limit exceeded: more than 200000 samples (sample_limit)"
    );
    let target = scraped_target(&collector, "tight").await;
    assert_eq!(target["health"], "down", "{target}");
    assert_eq!(
        target["lastError"],
        "sample limit exceeded: more than 9 samples (sample_limit)"
    );
    // At the limit is still fine.
    let target = scraped_target(&collector, "small").await;
    assert_eq!(target["health"], "up", "{target}");

    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    while up(&collector, "huge").await.is_none() || up(&collector, "small").await.is_none() {
        assert!(Instant::now() < deadline, "up was not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up(&collector, "huge").await.as_deref(), Some("0"));
    assert_eq!(up(&collector, "small").await.as_deref(), Some("1"));

    // Nothing of the failed scrape was stored; the collector still ingests.
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/query", collector.http))
        .query(&[("query", "count(wide)")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["data"]["result"][0]["value"][1], "10", "{answer}");
    let request = logs_request(vec![record("after scraping", vec![])]);
    let (status, _) = post_json(
        &collector.logs_url(),
        request.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(collector.bodies("scraping", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_ingest_rate_gets_429_and_others_keep_ingesting() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;

    let collector = Collector::start_with(
        None,
        &[
            "--ingest-rate-limit-bytes",
            "10000",
            "--ingest-rate-burst-bytes",
            "10000",
        ],
    )
    .await;
    let client_from = |address: &str| {
        reqwest::Client::builder()
            .local_address(address.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let (greedy, other) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    let post = |client: &reqwest::Client, body: String| {
        client
            .post(collector.logs_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // 3.6 MB at once: admitted (a client may always send one request),
    // leaving its address about 360 s in debt.
    let big: Vec<Value> = (0..4)
        .map(|index| record(&format!("big{index} {}", "z".repeat(900_000)), vec![]))
        .collect();
    let response = post(&greedy, logs_request(big).to_string()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let small = logs_request(vec![record("refused greedy", vec![])]).to_string();
    let response = post(&greedy, small).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 1, "Retry-After {retry_after}");
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("ingest rate limit of 10000 bytes/s exceeded for client 127.0.0.1"),
        "{answer}"
    );

    // The same address over gRPC shares the bucket.
    let mut grpc = LogsServiceClient::connect(format!("http://{}", collector.grpc))
        .await
        .unwrap();
    let status = grpc
        .export(ExportLogsServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("ingest rate limit of 10000 bytes/s"),
        "{status:?}"
    );
    // And so do OTLP metrics over gRPC, which go to the metric store.
    let mut grpc_metrics = MetricsServiceClient::connect(format!("http://{}", collector.grpc))
        .await
        .unwrap();
    let status = grpc_metrics
        .export(ExportMetricsServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("ingest rate limit of 10000 bytes/s"),
        "{status:?}"
    );

    // Another address is not affected.
    let response = post(
        &other,
        logs_request(vec![record("polite client", vec![])]).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collector.bodies("polite", 1).await, ["polite client"]);
    assert_eq!(collector.limited("ingest_rate").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_span_with_too_many_attributes_is_refused_and_its_trace_kept() {
    let collector = Collector::start(None).await;
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let span = |span_id: &str, name: &str, attributes: Vec<Value>| {
        json!({
            "traceId": trace_id,
            "spanId": span_id,
            "name": name,
            "kind": 2,
            "startTimeUnixNano": now_nanos(),
            "endTimeUnixNano": now_nanos(),
            "attributes": attributes,
        })
    };
    let many: Vec<Value> = (0..2_000)
        .map(|index| json!({"key": format!("a{index}"), "value": {"intValue": index}}))
        .collect();
    let request = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "limits-test"}}
        ]},
        "scopeSpans": [{"spans": [
            span("eee19b7ec3c1b174", "kept", vec![]),
            span("eee19b7ec3c1b175", "too wide", many),
        ]}],
    }]});
    let (status, answer) = post_json(
        &format!("http://{}/v1/traces", collector.otlp_http),
        request.to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert_eq!(
        answer["partialSuccess"]["errorMessage"],
        "1 spans rejected: [1] 2000 attributes is over max_attributes (1000);"
    );
    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    loop {
        let response = reqwest::get(format!("http://{}/api/traces/{trace_id}", collector.http))
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            let trace: Value = response.json().await.unwrap();
            let names: Vec<&str> = trace["data"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|span| span["operationName"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["kept"]);
            break;
        }
        assert!(Instant::now() < deadline, "trace was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(collector.limited("max_attributes").await, 1.0);
}

/// The collector's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// An OTLP/JSON gauge sample of `steady_gauge`, timestamped now.
fn metrics_request(value: f64) -> Value {
    json!({"resourceMetrics": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "limits-test"}}
        ]},
        "scopeMetrics": [{"metrics": [{
            "name": "steady_gauge",
            "gauge": {"dataPoints": [{"timeUnixNano": now_nanos(), "asDouble": value}]},
        }]}],
    }]})
}

/// What one request answered: status, body and how long it took.
struct Answer {
    status: StatusCode,
    body: Value,
    latency: Duration,
}

/// A query: a form POST for the Prometheus API (a 200 KB query does not
/// fit in a URL), a GET for the others.
async fn get_query(client: &reqwest::Client, url: String, params: &[(&str, &str)]) -> Answer {
    let started = Instant::now();
    let request = if url.contains("/api/v1/") {
        client.post(url).form(params)
    } else {
        client.get(url).query(params)
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        latency: started.elapsed(),
    }
}

/// Requests one client makes all along, and whether each was answered OK,
/// with the time it started and ended (to tell which ran during a bomb).
#[derive(Default)]
struct Neighbour {
    requests: std::sync::Mutex<Vec<(Instant, Instant, bool)>>,
}

impl Neighbour {
    fn record(&self, started: Instant, ok: bool) {
        self.requests
            .lock()
            .unwrap()
            .push((started, Instant::now(), ok));
    }

    /// Whether a request that started after `from` was answered OK before
    /// `to`, and whether every request so far was answered OK.
    fn report(&self, from: Instant, to: Instant) -> (bool, bool, usize, Duration) {
        let requests = self.requests.lock().unwrap();
        let during = requests
            .iter()
            .any(|(started, ended, ok)| *ok && *started >= from && *ended <= to);
        let slowest = requests
            .iter()
            .map(|(started, ended, _)| *ended - *started)
            .max()
            .unwrap_or_default();
        (
            during,
            requests.iter().all(|(_, _, ok)| *ok),
            requests.len(),
            slowest,
        )
    }
}

/// A query bomb: its name, URL, parameters, the statuses it may answer and
/// a part of its message.
type Bomb<'a> = (
    &'a str,
    &'a String,
    Vec<(&'a str, &'a str)>,
    &'a [StatusCode],
    &'a str,
);

/// Query bombs, through every query endpoint of a real collector: each gets
/// a clear 4xx or 503 within its timeout, while another client keeps
/// ingesting logs and metrics and `vector(1)` keeps answering; the process
/// survives with its peak RSS under a bound, and SIGTERM stops it promptly
/// even with a runaway query running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_bombs_get_clear_errors_while_ingest_and_cheap_queries_go_on() {
    /// The collector's peak RSS over the whole test must stay under this:
    /// the sample budget (50M samples, as Prometheus') allows one query
    /// about 800 MB of points, on top of the process's own 100-200 MB.
    const PEAK_RSS_BOUND: u64 = 3 << 29; // 1.5 GiB
    let mut collector = Collector::start(None).await;
    let pid = collector.child.id();
    let http = collector.http;
    let client = reqwest::Client::new();

    // The neighbours: one client ingests logs and metrics, one asks
    // `vector(1)`, both all along the bombs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ingest, probe) = (
        Arc::new(Neighbour::default()),
        Arc::new(Neighbour::default()),
    );
    let neighbours = {
        let (stop, ingest, probe) = (stop.clone(), ingest.clone(), probe.clone());
        let (logs_url, metrics_url) = (
            collector.logs_url(),
            format!("http://{}/v1/metrics", collector.otlp_http),
        );
        let query_url = format!("http://{http}/api/v1/query");
        let client = client.clone();
        tokio::spawn(async move {
            let probing = {
                let (stop, client) = (stop.clone(), client.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = Instant::now();
                        let answer =
                            get_query(&client, query_url.clone(), &[("query", "vector(1)")]).await;
                        probe.record(started, answer.status == StatusCode::OK);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            let mut index = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let logs = logs_request(vec![record(&format!("steady{index} neighbour"), vec![])]);
                let (logs_status, _) =
                    post_json(&logs_url, logs.to_string().into_bytes(), false).await;
                let (metrics_status, answer) = post_json(
                    &metrics_url,
                    metrics_request(index as f64).to_string().into_bytes(),
                    false,
                )
                .await;
                assert_eq!(metrics_status, StatusCode::OK, "{answer}");
                ingest.record(
                    started,
                    logs_status == StatusCode::OK && metrics_status == StatusCode::OK,
                );
                index += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            probing.await.unwrap();
        })
    };

    let nested =
        |levels: usize, inner: &str| format!("{}{inner}{}", "(".repeat(levels), ")".repeat(levels));
    let log_nested = nested(730, "error");
    let log_nested_deeper = nested(10_000, "error");
    let log_nots = format!("{}error", "NOT ".repeat(5_000));
    let wildcard = format!("{}x", "*a?".repeat(5_000));
    let promql_nested = nested(100_000, "1");
    let promql_chain = vec!["1"; 50_000].join("+");
    let huge_regex = format!("{{__name__=~\"{}\"}}", "(a{1000}){1000}");
    let logs_url = format!("http://{http}/api/logs");
    let histogram_url = format!("http://{http}/api/logs/histogram");
    let terms_url = format!("http://{http}/api/logs/terms");
    let tail_url = format!("http://{http}/api/logs/tail");
    let query_url = format!("http://{http}/api/v1/query");
    let range_url = format!("http://{http}/api/v1/query_range");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = ((now - 600).to_string(), now.to_string());
    let start_ns = ((now - 3600) as u128 * 1_000_000_000).to_string();
    // (name, URL, parameters, the statuses it may answer, a part of its message)
    let bombs: Vec<Bomb> = vec![
        (
            "log query: 730 nested parentheses",
            &logs_url,
            vec![("q", &log_nested)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "histogram: 730 nested parentheses",
            &histogram_url,
            vec![("q", &log_nested), ("start", &start_ns)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "terms: 730 nested parentheses",
            &terms_url,
            vec![("q", &log_nested), ("field", "service")],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "tail: 730 nested parentheses",
            &tail_url,
            vec![("q", &log_nested)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "log query: 10,000 nested parentheses",
            &logs_url,
            vec![("q", &log_nested_deeper)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "log query: 5,000 NOTs",
            &logs_url,
            vec![("q", &log_nots)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "terms: 5,000 NOTs",
            &terms_url,
            vec![("q", &log_nots), ("field", "service")],
            &[StatusCode::BAD_REQUEST],
            "the limit is 64",
        ),
        (
            "log query: 15 KB wildcard",
            &logs_url,
            vec![("q", &wildcard)],
            &[StatusCode::OK, StatusCode::BAD_REQUEST],
            "",
        ),
        (
            "PromQL: 100k nested parentheses",
            &query_url,
            vec![("query", &promql_nested)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 128",
        ),
        (
            "PromQL range: 100k nested parentheses",
            &range_url,
            vec![
                ("query", &promql_nested),
                ("start", &start),
                ("end", &end),
                ("step", "60"),
            ],
            &[StatusCode::BAD_REQUEST],
            "the limit is 128",
        ),
        (
            "PromQL: 50k-term 1+1+...",
            &query_url,
            vec![("query", &promql_chain)],
            &[StatusCode::BAD_REQUEST],
            "the limit is 1000",
        ),
        (
            "PromQL: (a+)+b regex",
            &query_url,
            vec![("query", "{__name__=~\"(a+)+b\"}"), ("timeout", "20s")],
            &[StatusCode::OK],
            "",
        ),
        (
            "PromQL: huge regex",
            &query_url,
            vec![("query", &huge_regex)],
            &[StatusCode::BAD_REQUEST],
            "",
        ),
        (
            "PromQL: max_over_time(vector(1)[100y:1s])",
            &query_url,
            vec![
                ("query", "max_over_time(vector(1)[100y:1s])"),
                // 50M steps take a few seconds optimised, a minute or
                // more in a debug build
                ("timeout", "120s"),
            ],
            &[StatusCode::UNPROCESSABLE_ENTITY],
            "query processing would load too many samples into memory in query execution",
        ),
        (
            "PromQL: nested subquery",
            &query_url,
            vec![
                (
                    "query",
                    "max_over_time(max_over_time(steady_gauge[1h:1s])[30d:1s])",
                ),
                ("timeout", "10s"),
            ],
            &[StatusCode::SERVICE_UNAVAILABLE],
            "query timed out",
        ),
        (
            "PromQL range: a day of 1s subquery steps at each of 601 steps",
            &range_url,
            vec![
                ("query", "count_over_time(vector(1)[1d:1s])"),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
                ("timeout", "5s"),
            ],
            &[StatusCode::SERVICE_UNAVAILABLE],
            "query timed out",
        ),
        (
            "PromQL: count_values with an invalid label",
            &query_url,
            vec![("query", "count_values(\"1-not a label\", vector(1))")],
            &[StatusCode::BAD_REQUEST],
            "invalid label name \\\"1-not a label\\\"",
        ),
    ];
    for (name, url, params, statuses, message) in &bombs {
        let from = Instant::now();
        let answer = get_query(&client, url.to_string(), params).await;
        let to = Instant::now();
        let body = answer.body.to_string();
        let shown: String = body.chars().take(300).collect();
        let (ingested, _, _, _) = ingest.report(from, to);
        println!(
            "{name}: {} in {:?} (peak RSS so far {} MiB; ingest answered meanwhile: {ingested}): {shown}",
            answer.status,
            answer.latency,
            peak_rss(pid) >> 20,
        );
        assert!(
            statuses.contains(&answer.status),
            "{name}: {} {shown}",
            answer.status
        );
        assert!(body.contains(message), "{name}: {shown}");
        if url.contains("/api/v1/") && answer.status != StatusCode::OK {
            assert_eq!(answer.body["status"], "error", "{name}: {shown}");
        }
        if answer.latency > Duration::from_secs(2) {
            // a long answer: ingest and cheap queries went on meanwhile
            let (ingested, _, _, _) = ingest.report(from, to);
            let (probed, _, _, _) = probe.report(from, to);
            assert!(ingested, "{name}: no ingest was answered while it ran");
            assert!(probed, "{name}: vector(1) was not answered while it ran");
        }
        assert!(collector.healthy().await, "{name} took the collector down");
    }

    // Twenty runaway queries time out together; their evaluations stop and
    // free the slots, so the next query gets one.
    let runaways: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), query_url.clone());
            tokio::spawn(async move {
                get_query(
                    &client,
                    url,
                    &[
                        (
                            "query",
                            "max_over_time(max_over_time(vector(1)[1h:1s])[30d:1s])",
                        ),
                        ("timeout", "3s"),
                    ],
                )
                .await
            })
        })
        .collect();
    for runaway in runaways {
        let answer = runaway.await.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
    }
    let answer = get_query(
        &client,
        query_url.clone(),
        &[("query", "vector(1)"), ("timeout", "30s")],
    )
    .await;
    println!(
        "vector(1) after 20 runaway queries timed out: {} in {:?}",
        answer.status, answer.latency
    );
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    neighbours.await.unwrap();
    let (_, all_ingested, ingests, slowest_ingest) = ingest.report(Instant::now(), Instant::now());
    let (_, all_probed, probes, slowest_probe) = probe.report(Instant::now(), Instant::now());
    println!(
        "neighbours: {ingests} ingest rounds (slowest {slowest_ingest:?}), {probes} vector(1) queries (slowest {slowest_probe:?})"
    );
    assert!(all_ingested, "an ingest request failed during the bombs");
    assert!(all_probed, "a vector(1) query failed during the bombs");
    assert!(collector.healthy().await);
    let peak = peak_rss(pid);
    println!(
        "collector peak RSS: {} MiB (bound {} MiB)",
        peak >> 20,
        PEAK_RSS_BOUND >> 20
    );
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {peak} bytes");

    // SIGTERM with a runaway query running stops the process promptly.
    let runaway = {
        let (client, url) = (client.clone(), query_url.clone());
        tokio::spawn(async move {
            client
                .get(url)
                .query(&[
                    (
                        "query",
                        "max_over_time(max_over_time(vector(1)[1h:1s])[30d:1s])",
                    ),
                    ("timeout", "120s"),
                ])
                .send()
                .await
                .map(|response| response.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminated = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = terminated + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = collector.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not stop within 30 s of SIGTERM with a runaway query"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answered = runaway.await.unwrap();
    println!(
        "SIGTERM with a runaway query: exited {exit} after {:?}; the query answered {answered:?}",
        terminated.elapsed(),
    );
    assert!(exit.success(), "{exit}");
}

/// rsyslog, Fluent Bit, Vector and Logstash all retry this answer (see
/// `elastic.rs`): through the real wiring, a `_bulk` over the client's rate
/// is refused as Elasticsearch refuses a busy bulk, not with the OTLP body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_over_the_ingest_rate_gets_an_elasticsearch_429_its_shippers_retry() {
    let collector = Collector::start_with(
        None,
        &[
            "--ingest-rate-limit-bytes",
            "1000",
            "--ingest-rate-burst-bytes",
            "1000",
        ],
    )
    .await;
    let bulk = |message: &str| {
        format!(
            "{}\n{}\n",
            json!({"index": {"_index": "syslog"}}),
            json!({"message": message, "padding": "p".repeat(5000)})
        )
    };
    let url = format!("http://{}/elastic/_bulk", collector.http);
    let client = reqwest::Client::new();
    let send = |body: String| {
        client
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // The first request passes and puts the client in debt.
    let response = send(bulk("first")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = send(bulk("second")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["x-elastic-product"], "Elasticsearch");
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], 429, "{answer}");
    assert_eq!(
        answer["error"]["type"], "es_rejected_execution_exception",
        "{answer}"
    );
    assert_eq!(
        answer["error"]["root_cause"][0]["type"], "es_rejected_execution_exception",
        "{answer}"
    );
    assert_eq!(answer["errors"], true, "{answer}");
    assert_eq!(answer["items"][0]["index"]["status"], 429, "{answer}");
    assert_eq!(answer["items"][0]["index"]["_index"], "syslog", "{answer}");
    assert_eq!(collector.bodies("first", 1).await.len(), 1);
}
