//! End-to-end tests of the agent library against a real tonic OTLP logs
//! server on loopback: records and their mapping, retries, checkpoints
//! after acknowledgement, and restarts that do not resend.

#[path = "common/mod.rs"]
mod common;
#[path = "otlp_pipeline/rotation.rs"]
mod rotation;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use sightline_agent::config::Tuning;
use sightline_agent::{Config, RunningAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A fake collector that records every acknowledged request and can refuse
/// the first few with UNAVAILABLE.
#[derive(Clone, Default)]
struct FakeCollector {
    received: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    refuse_first: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl LogsService for FakeCollector {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        if request.get_ref().resource_logs.is_empty() {
            // The agent's readiness probe, not a batch.
            return Ok(Response::new(ExportLogsServiceResponse::default()));
        }
        let refused = self
            .refuse_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            });
        if refused.is_ok() {
            return Err(Status::unavailable("warming up"));
        }
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

impl FakeCollector {
    /// Every received record with its resource, in arrival order.
    fn records(&self) -> Vec<(Resource, LogRecord)> {
        let received = self.received.lock().unwrap();
        let mut records = Vec::new();
        for request in received.iter() {
            for resource_logs in &request.resource_logs {
                let resource = resource_logs.resource.clone().unwrap_or_default();
                for scope_logs in &resource_logs.scope_logs {
                    for record in &scope_logs.log_records {
                        records.push((resource.clone(), record.clone()));
                    }
                }
            }
        }
        records
    }

    fn bodies(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|(_, record)| body(record))
            .collect()
    }
}

struct RunningCollector {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningCollector {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn serve_collector(listener: TcpListener, collector: FakeCollector) -> RunningCollector {
    let (stop, stopped) = oneshot::channel::<()>();
    let service = LogsServiceServer::new(collector).accept_compressed(CompressionEncoding::Gzip);
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningCollector { stop, task }
}

fn test_config(root: &Path, collector_addr: SocketAddr) -> Config {
    Config {
        include: vec![format!("{}/pods/*/*/*.log", root.display())],
        collector: format!("http://{collector_addr}"),
        data_dir: root.join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        host_name: "node-test".to_owned(),
        read_from_start: true,
        tuning: Tuning {
            discovery_interval: Duration::from_millis(50),
            poll_interval: Duration::from_millis(20),
            batch_max_wait: Duration::from_millis(20),
            checkpoint_interval: Duration::from_millis(50),
            retry_initial_backoff: Duration::from_millis(20),
            retry_max_backoff: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(2),
            ..Tuning::default()
        },
        ..Config::default()
    }
}

/// Polls `probe` until it returns `Some`, failing after a generous bound.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|body| body.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        any_value::Value::StringValue(text) => text.clone(),
        any_value::Value::IntValue(integer) => integer.to_string(),
        other => format!("{other:?}"),
    })
}

fn write_pod_log(root: &Path, lines: &[&str]) -> PathBuf {
    let dir = root.join("pods/shop_checkout-7c9d_5f1c-uid/checkout");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("0.log");
    let mut content = lines.join("\n");
    content.push('\n');
    std::fs::write(&path, content).unwrap();
    path
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(file, "{line}").unwrap();
}

/// Offset stored for `log` in the checkpoint file, if any.
fn checkpoint_offset(data_dir: &Path, log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(data_dir.join("checkpoints.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["files"]
        .as_array()?
        .iter()
        .find(|entry| entry["path"] == log.to_str().unwrap())?["offset"]
        .as_u64()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Value of one sample in Prometheus text.
fn metric_value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_cri_file_commits_after_ack_and_resumes_without_resending() {
    let root = tempfile::tempdir().unwrap();
    let log = write_pod_log(
        root.path(),
        &[
            r#"2026-11-21T05:48:48.123456789Z stdout F {"level":"INFO","msg":"order placed","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","request_id":"req-1","order":{"id":7}}"#,
            "2026-11-21T07:48:49.000000000+02:00 stderr P first half, ",
            "2026-11-21T05:48:49.100000000Z stdout F interleaved",
            "2026-11-21T05:48:49.200000000Z stderr F second half",
            "not a cri line",
        ],
    );

    // The collector refuses the first two exports: the agent must retry.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = FakeCollector::default();
    collector.refuse_first.store(2, Ordering::SeqCst);
    let server = serve_collector(listener, collector.clone()).await;

    let config = test_config(root.path(), collector_addr);
    let data_dir = config.data_dir.clone();
    let agent: RunningAgent = sightline_agent::start(config.clone()).await.unwrap();

    eventually("four records", || {
        (collector.records().len() >= 4).then_some(())
    })
    .await;
    let records = collector.records();
    assert_eq!(
        collector.bodies(),
        [
            "order placed",
            "interleaved",
            "first half, second half",
            "not a cri line"
        ]
    );

    let (resource, first) = &records[0];
    for (key, expected) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "checkout-7c9d"),
        ("k8s.pod.uid", "5f1c-uid"),
        ("k8s.container.name", "checkout"),
        ("k8s.container.restart_count", "0"),
        ("service.name", "checkout"),
        ("host.name", "node-test"),
        ("log.file.path", log.to_str().unwrap()),
    ] {
        assert_eq!(
            attribute(&resource.attributes, key).as_deref(),
            Some(expected),
            "resource {key}"
        );
    }
    assert_eq!(hex::encode(&first.trace_id), TRACE_ID);
    assert_eq!(hex::encode(&first.span_id), "00f067aa0ba902b7");
    assert_eq!(first.severity_text, "INFO");
    assert_eq!(first.severity_number, 9);
    assert_eq!(first.time_unix_nano, 1_795_240_128_123_456_789);
    assert_eq!(
        attribute(&first.attributes, "request_id").as_deref(),
        Some("req-1")
    );
    assert_eq!(
        attribute(&first.attributes, "log.iostream").as_deref(),
        Some("stdout")
    );
    assert!(attribute(&first.attributes, "order").is_some());
    assert!(attribute(&first.attributes, "trace_id").is_none());

    let (_, joined) = &records[2];
    assert_eq!(
        attribute(&joined.attributes, "log.iostream").as_deref(),
        Some("stderr")
    );
    assert_eq!(joined.time_unix_nano, 1_795_240_129_000_000_000);
    let (_, plain) = &records[3];
    assert!(plain.attributes.is_empty());
    assert!(plain.time_unix_nano > 0);

    // After the acknowledgement the checkpoint reaches the end of the file.
    let file_len = std::fs::metadata(&log).unwrap().len();
    eventually("checkpoint at end of file", || {
        (checkpoint_offset(&data_dir, &log) == Some(file_len)).then_some(())
    })
    .await;

    let metrics = http_get(agent.http_addr(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("sightline_agent_records_sent_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sightline_agent_send_retries_total{reason=\"unavailable\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sightline_agent_lines_read_total 5"),
        "{metrics}"
    );
    let health = http_get(agent.http_addr(), "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );

    agent.shutdown().await.unwrap();

    // Restart: only the line appended since is sent.
    append(
        &log,
        r#"2026-11-21T05:48:50Z stdout F {"level":"warn","msg":"after restart"}"#,
    );
    collector.received.lock().unwrap().clear();
    let restarted = collector;
    let agent = sightline_agent::start(config).await.unwrap();

    // Records of one file arrive in order, so anything resent would arrive
    // before the new line.
    eventually("the new line", || {
        restarted
            .bodies()
            .iter()
            .any(|body| body == "after restart")
            .then_some(())
    })
    .await;
    assert_eq!(restarted.bodies(), ["after restart"]);
    assert_eq!(restarted.records()[0].1.severity_text, "WARN");

    let file_len = std::fs::metadata(&log).unwrap().len();
    agent.shutdown().await.unwrap();
    // Shutdown writes the final checkpoint.
    assert_eq!(checkpoint_offset(&data_dir, &log), Some(file_len));
    server.stop().await;
}

/// A loopback port that refuses connections until the test listens on it:
/// the socket is bound but not listening, so a connection gets a reset (the
/// agent sees `UNAVAILABLE`) and no other test can take the port meanwhile.
/// (A port bound and released instead can be handed to a concurrent test's
/// `bind(0)`, and the agent then talks to that test's server.)
fn refusing_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_collector_that_starts_late() {
    let root = tempfile::tempdir().unwrap();
    let log = write_pod_log(root.path(), &["2026-11-21T05:48:48Z stdout F early line"]);

    // A port that refuses connections: nothing listens there yet.
    let (reserved, collector_addr) = refusing_port();

    let config = test_config(root.path(), collector_addr);
    let data_dir = config.data_dir.clone();
    let agent = sightline_agent::start(config).await.unwrap();
    let metrics = agent.metrics();
    eventually("a failed connection attempt", || {
        let retries = metric_value(
            &metrics.render_prometheus(),
            "sightline_agent_send_retries_total{reason=\"unavailable\"}",
        );
        (retries > 0).then_some(())
    })
    .await;
    assert_eq!(
        checkpoint_offset(&data_dir, &log),
        None,
        "nothing acknowledged yet"
    );
    // Alive, not ready, and the probe says why.
    let health = http_get(agent.http_addr(), "/-/healthy").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let not_ready = http_get(agent.http_addr(), "/-/ready").await;
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(
        not_ready.contains(&format!(
            "the collector at http://{collector_addr} has not answered yet"
        )),
        "{not_ready}"
    );

    let collector = FakeCollector::default();
    let listener = reserved.listen(1024).unwrap();
    let server = serve_collector(listener, collector.clone()).await;
    eventually("the early line", || {
        (!collector.bodies().is_empty()).then_some(())
    })
    .await;
    assert_eq!(collector.bodies(), ["early line"]);
    let ready = http_get(agent.http_addr(), "/-/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    agent.shutdown().await.unwrap();
    assert_eq!(
        checkpoint_offset(&data_dir, &log),
        Some(std::fs::metadata(&log).unwrap().len())
    );
    server.stop().await;
}

/// With no log lines to ship, the agent still finds out that the collector
/// answers (an empty export) and gets ready; nothing is sent as a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_gets_ready_once_the_collector_answers() {
    let root = tempfile::tempdir().unwrap();
    let collector = FakeCollector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let server = serve_collector(listener, collector.clone()).await;
    let agent = sightline_agent::start(test_config(root.path(), collector_addr))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http_get(agent.http_addr(), "/-/ready").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(collector.records().is_empty(), "a probe carries no records");
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_collector_down_keeps_lines_for_next_start() {
    let root = tempfile::tempdir().unwrap();
    let log = write_pod_log(
        root.path(),
        &["2026-11-21T05:48:48Z stdout F kept for later"],
    );
    let (reserved, collector_addr) = refusing_port();

    let mut config = test_config(root.path(), collector_addr);
    config.tuning.shutdown_grace = Duration::from_millis(200);
    let agent = sightline_agent::start(config.clone()).await.unwrap();
    let metrics = agent.metrics();
    eventually("the line to be read", || {
        (metric_value(
            &metrics.render_prometheus(),
            "sightline_agent_lines_read_total",
        ) == 1)
            .then_some(())
    })
    .await;
    agent.shutdown().await.unwrap();
    assert_eq!(
        checkpoint_offset(&config.data_dir, &log),
        None,
        "nothing was acknowledged"
    );

    let collector = FakeCollector::default();
    let listener = reserved.listen(1024).unwrap();
    let server = serve_collector(listener, collector.clone()).await;
    let agent = sightline_agent::start(config).await.unwrap();
    eventually("the kept line", || {
        (!collector.bodies().is_empty()).then_some(())
    })
    .await;
    assert_eq!(collector.bodies(), ["kept for later"]);
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_rotation_without_losing_or_repeating_lines() {
    let root = tempfile::tempdir().unwrap();
    let log = write_pod_log(
        root.path(),
        &["2026-11-21T05:48:48Z stdout F before rotation"],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = FakeCollector::default();
    let server = serve_collector(listener, collector.clone()).await;
    let agent = sightline_agent::start(test_config(root.path(), collector_addr))
        .await
        .unwrap();
    eventually("the first line", || {
        (!collector.bodies().is_empty()).then_some(())
    })
    .await;

    // What kubelet does: the runtime's last words go to the old file, which
    // is renamed away; a new file takes its path.
    append(
        &log,
        "2026-11-21T05:48:49Z stdout F last words of the old file",
    );
    std::fs::rename(&log, log.with_extension("log.20261121-054849")).unwrap();
    std::fs::write(
        &log,
        "2026-11-21T05:48:50Z stdout F first line of the new file\n",
    )
    .unwrap();

    eventually("the new file's line", || {
        (collector.bodies().len() >= 3).then_some(())
    })
    .await;
    let mut bodies = collector.bodies();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "before rotation",
            "first line of the new file",
            "last words of the old file"
        ]
    );
    agent.shutdown().await.unwrap();
    assert_eq!(collector.bodies().len(), 3);
    server.stop().await;
}
