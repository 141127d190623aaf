//! One order through the real `shop-service` binaries: gateway -> order, with
//! a real OTLP gRPC trace receiver standing in for the collector.
//!
//! Checks the contracts the rest of Sightline relies on: the request id is
//! echoed and propagated, both services' JSON log lines carry the request id
//! and the same trace id, and the exported spans form one trace in which
//! order's server span is the child of gateway's client span, itself the
//! child of gateway's server span.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;

const SHOP_SERVICE: &str = env!("CARGO_BIN_EXE_shop-service");

/// Upper bound of every wait in this test; polling returns as soon as the
/// condition holds.
const WAIT: Duration = Duration::from_secs(20);

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    span: Span,
}

/// A minimal OTLP trace receiver keeping everything it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    any_value::Value::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    let service = service.clone();
                    spans.push(ReceivedSpan { service, span });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running `shop-service` whose stdout lines are collected; killed on drop
/// so a failing test leaves no process behind.
struct Service {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(name: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new(SHOP_SERVICE)
            .args(["--service", name, "--listen", "127.0.0.1:0"])
            .args(args)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("SHOP_PAYMENT_DECLINE_RATE", "0")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("failed to start shop-service");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                collected.lock().unwrap().push(line);
            }
        });
        Self { name, child, lines }
    }

    /// Every stdout line, parsed; a line that is not a JSON object fails the
    /// test (the log format is one JSON object per line).
    fn json_lines(&self) -> Vec<serde_json::Map<String, Value>> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(object)) => object,
                _ => text_line(line).unwrap_or_else(|| {
                    panic!(
                        "{}: stdout line is neither a JSON object nor a text line: {line}",
                        self.name
                    )
                }),
            })
            .collect()
    }

    async fn listen_addr(&self) -> SocketAddr {
        eventually(&format!("{} to log its listen address", self.name), || {
            self.json_lines().iter().find_map(|line| {
                (line.get("message")? == "listening")
                    .then(|| line.get("addr")?.as_str()?.parse().ok())?
            })
        })
        .await
    }

    fn terminate(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let name = self.name;
        let child = &mut self.child;
        eventually(&format!("{name} to exit after SIGTERM"), || {
            child.try_wait().unwrap()
        })
        .await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most [`WAIT`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn string_attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|attribute| attribute.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    match value {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_gateway_and_order() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let mut leaves = Vec::new();
    let mut peer_args = Vec::new();
    for name in ["auth", "inventory", "payment", "notification"] {
        let service = Service::start(name, &["--otlp-endpoint", &otlp_endpoint]);
        peer_args.push(format!("--{name}-url"));
        peer_args.push(format!("http://{}", service.listen_addr().await));
        leaves.push(service);
    }
    let with_peers = |extra: &[String]| -> Vec<String> {
        let mut args = peer_args.clone();
        args.extend(["--otlp-endpoint".to_owned(), otlp_endpoint.clone()]);
        args.extend(extra.iter().cloned());
        args
    };
    let order_args = with_peers(&[]);
    let order_args: Vec<&str> = order_args.iter().map(String::as_str).collect();
    let mut order = Service::start("order", &order_args);
    let order_url = format!("http://{}", order.listen_addr().await);
    let gateway_args = with_peers(&["--order-url".to_owned(), order_url]);
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let mut gateway = Service::start("gateway", &gateway_args);
    let gateway_addr = gateway.listen_addr().await;

    // Log in, then one order with our own request id.
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("http://{gateway_addr}/api/login"))
        .json(&serde_json::json!({"user_id": "u1", "password": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    let unauthenticated = client
        .post(format!("http://{gateway_addr}/api/orders"))
        .json(&serde_json::json!({"product_id": "p2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let request_id = format!("it-{}", std::process::id());
    let response = client
        .post(format!("http://{gateway_addr}/api/orders"))
        .bearer_auth(token)
        .header("X-Request-ID", &request_id)
        .json(&serde_json::json!({"user_id": "u1", "product_id": "p2", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["total_cents"], 9000);
    let order_id = created["order_id"].as_str().unwrap().to_owned();

    // Logs: both services logged the request with the same trace id.
    let lines_of = |service: &Service| -> Option<Vec<serde_json::Map<String, Value>>> {
        let lines: Vec<_> = service
            .json_lines()
            .into_iter()
            .filter(|line| line.get("request_id").and_then(Value::as_str) == Some(&request_id))
            .collect();
        let completed = lines
            .iter()
            .any(|line| line["message"] == "request completed");
        completed.then_some(lines)
    };
    let gateway_lines = eventually("gateway's log lines", || lines_of(&gateway)).await;
    let order_lines = eventually("order's log lines", || lines_of(&order)).await;
    let trace_id = gateway_lines[0]["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()));
    for line in gateway_lines.iter().chain(&order_lines) {
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line:?}");
        assert_eq!(line["span_id"].as_str().unwrap().len(), 16, "{line:?}");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.len() == 30,
            "{timestamp}"
        );
        assert!(["INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap()));
    }
    assert!(
        gateway_lines
            .iter()
            .all(|line| line["service"] == "gateway")
    );
    assert!(order_lines.iter().all(|line| line["service"] == "order"));
    let created_line = order_lines
        .iter()
        .find(|line| line["message"] == "order created")
        .expect("order logs the order it created");
    assert_eq!(created_line["order_id"], order_id.as_str());
    assert_eq!(created_line["user_id"], "u1");

    // Spans: gateway server -> gateway client -> order server, one trace.
    let find_span = |service: &str, kind: SpanKind, name: &str| {
        let spans = receiver.spans.lock().unwrap();
        spans
            .iter()
            .find(|received| {
                received.service == service
                    && received.span.kind == kind as i32
                    && received.span.name == name
                    && hex(&received.span.trace_id) == trace_id
            })
            .map(|received| received.span.clone())
    };
    let gateway_server = eventually("gateway's server span", || {
        find_span("gateway", SpanKind::Server, "POST /api/orders")
    })
    .await;
    let gateway_client = eventually("gateway's client span", || {
        find_span("gateway", SpanKind::Client, "POST /orders")
    })
    .await;
    let order_server = eventually("order's server span", || {
        find_span("order", SpanKind::Server, "POST /orders")
    })
    .await;

    assert_eq!(gateway_server.name, "POST /api/orders");
    assert_eq!(order_server.name, "POST /orders");
    assert!(
        gateway_server.parent_span_id.is_empty(),
        "the gateway starts the trace"
    );
    assert_eq!(gateway_client.parent_span_id, gateway_server.span_id);
    assert_eq!(order_server.parent_span_id, gateway_client.span_id);
    for span in [&gateway_server, &order_server] {
        assert_eq!(
            string_attribute(span, "request_id").as_deref(),
            Some(request_id.as_str())
        );
        assert_eq!(
            string_attribute(span, "http.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            string_attribute(span, "http.status_code").as_deref(),
            Some("201")
        );
    }
    assert_eq!(
        string_attribute(&order_server, "http.route").as_deref(),
        Some("/orders")
    );
    let order_log_span_ids: Vec<&str> = order_lines
        .iter()
        .map(|line| line["span_id"].as_str().unwrap())
        .collect();
    assert!(order_log_span_ids.contains(&hex(&order_server.span_id).as_str()));

    // Graceful shutdown on SIGTERM: exit 0 after saying so.
    for service in [&gateway, &order] {
        service.terminate();
    }
    for service in [&mut gateway, &mut order] {
        let status = service.wait_exit().await;
        assert!(status.success(), "{} exited with {status}", service.name);
        let stopped = |service: &Service| {
            let lines = service.json_lines();
            lines
                .iter()
                .any(|line| line["message"] == "stopped")
                .then_some(())
        };
        eventually(&format!("{} to log `stopped`", service.name), || {
            stopped(service)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_without_a_collector_and_generate_request_ids() {
    // Nothing listens on this port: exporting fails, the service must not.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp_endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);

    let payment = Service::start("payment", &["--otlp-endpoint", &otlp_endpoint]);
    let order_addr = payment.listen_addr().await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(format!("http://{order_addr}/charges"))
            .json(&serde_json::json!({"order_id": "ord-1", "user_id": "u2", "amount_cents": 100}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let request_id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(request_id.len(), 36, "generated UUID-like id: {request_id}");
    }
    let ready = client
        .get(format!("http://{order_addr}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// The fields of a text line as the notification service writes it
/// (`<timestamp> [<LEVEL>] <message>: key=value, key="quoted", ...`); the
/// agent's `text` parser is what reads these in production.
fn text_line(line: &str) -> Option<serde_json::Map<String, Value>> {
    let (timestamp, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix('[')?;
    let (level, rest) = rest.split_once("] ")?;
    let mut fields = serde_json::Map::new();
    fields.insert("timestamp".into(), timestamp.into());
    fields.insert("level".into(), level.into());
    let (message, mut pairs) = match rest.split_once(": ") {
        Some((message, pairs)) if pairs.contains('=') => (message, pairs),
        _ => (rest, ""),
    };
    fields.insert("message".into(), message.into());
    while let Some((key, after)) = pairs.split_once('=') {
        let (value, next) = if after.starts_with('"') {
            // A JSON string: find its end by parsing.
            let mut stream = serde_json::Deserializer::from_str(after).into_iter::<Value>();
            let value = stream.next()?.ok()?;
            (value, &after[stream.byte_offset()..])
        } else {
            let end = after.find(", ").unwrap_or(after.len());
            let text = &after[..end];
            let value = serde_json::from_str(text).unwrap_or_else(|_| Value::from(text));
            (value, &after[end..])
        };
        fields.insert(key.to_owned(), value);
        pairs = next.strip_prefix(", ").unwrap_or(next);
    }
    Some(fields)
}
