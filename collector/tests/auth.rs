//! A real collector process started with an ingest token file (two tokens,
//! as during a rotation) and a query token in the environment, checked on
//! every port and route family over loopback.

mod support;

use support::{free_port, log_request};

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message;
use reqwest::StatusCode;

const INGEST_OLD: &str = "ingest-old-7f3a9c1d2e";
const INGEST_NEW: &str = "ingest-new-b84e0f6a11";
const QUERY: &str = "query-5d2c8e71f0a4";
const WRONG: &str = "wrong-token-0c9b1a";
const STARTUP_WITHIN: Duration = Duration::from_secs(60);
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(60);

struct Collector {
    child: Child,
    grpc: SocketAddr,
    otlp_http: SocketAddr,
    http: SocketAddr,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("ingest-tokens");
        std::fs::write(
            &token_file,
            format!("# rotation in progress\n{INGEST_OLD}\n\n{INGEST_NEW}\n"),
        )
        .unwrap();
        let log_path = dir.path().join("collector.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let (grpc, otlp_http, http) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_sightline-collector"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc-addr", &grpc.to_string()])
            .args(["--otlp-http-addr", &otlp_http.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(["--commit-interval", "50ms"])
            .arg("--ingest-token-file")
            .arg(&token_file)
            .env("SIGHTLINE_QUERY_TOKEN", QUERY)
            .env("RUST_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Collector {
            child,
            grpc,
            otlp_http,
            http,
            log_path,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn wait_healthy(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_WITHIN;
        loop {
            if let Ok(response) = client.get(self.url("/health")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop_and_read_log(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        std::fs::File::open(&self.log_path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends `request` with an optional token; returns status and body.
async fn send(request: reqwest::RequestBuilder, token: Option<&str>) -> (StatusCode, String) {
    let request = match token {
        Some(token) => request.header("authorization", bearer(token)),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(www_authenticate.as_deref(), Some("Bearer"), "{body}");
    }
    (status, body)
}

async fn grpc_export(
    collector: &Collector,
    token: Option<&str>,
    body: &str,
) -> Result<(), tonic::Status> {
    let mut client = LogsServiceClient::connect(format!("http://{}", collector.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(log_request(body));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", bearer(token).parse().unwrap());
    }
    client.export(request).await.map(|_| ())
}

#[tokio::test]
async fn every_port_asks_for_the_token_of_its_scope() {
    let collector = Collector::start();
    let client = reqwest::Client::new();
    collector.wait_healthy(&client).await;

    // OTLP/gRPC: no token, a wrong one and the query token are refused.
    for token in [None, Some(WRONG), Some(QUERY)] {
        let status = grpc_export(&collector, token, "refused").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
        assert!(
            status.message().contains("ingest token"),
            "{}",
            status.message()
        );
    }
    grpc_export(&collector, Some(INGEST_OLD), "grpc line old token")
        .await
        .unwrap();
    grpc_export(&collector, Some(INGEST_NEW), "grpc line new token")
        .await
        .unwrap();

    // OTLP/HTTP.
    let otlp_http = |token| {
        send(
            client
                .post(format!("http://{}/v1/logs", collector.otlp_http))
                .header("content-type", "application/x-protobuf")
                .body(log_request("otlp http line").encode_to_vec()),
            token,
        )
    };
    let (status, body) = otlp_http(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("missing credentials"), "{body}");
    assert_eq!(otlp_http(Some(WRONG)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(otlp_http(Some(QUERY)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(otlp_http(Some(INGEST_NEW)).await.0, StatusCode::OK);

    // Elasticsearch `_bulk` on the query port.
    let bulk = |token| {
        send(
            client
                .post(collector.url("/elastic/_bulk"))
                .header("content-type", "application/x-ndjson")
                .body("{\"create\":{\"_index\":\"app\"}}\n{\"message\":\"bulk line\"}\n"),
            token,
        )
    };
    let (status, body) = bulk(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("ingest token"), "{body}");
    assert_eq!(bulk(Some(QUERY)).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = bulk(Some(INGEST_OLD)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"errors\":false"), "{body}");

    // Prometheus remote write: an empty, snappy-compressed WriteRequest.
    let remote_write = |token| {
        send(
            client
                .post(collector.url("/api/v1/write"))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .body(snap::raw::Encoder::new().compress_vec(&[]).unwrap()),
            token,
        )
    };
    assert_eq!(remote_write(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(remote_write(Some(QUERY)).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = remote_write(Some(INGEST_NEW)).await;
    assert!(status.is_success(), "{status}: {body}");

    // Query routes, the UI's data among them, ask for the query token.
    for path in [
        "/api/logs?q=*",
        "/api/v1/query?query=1",
        "/api/dashboards",
        "/api/services",
    ] {
        let (status, body) = send(client.get(collector.url(path)), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(body.contains("query token"), "{path}: {body}");
        let (status, _) = send(client.get(collector.url(path)), Some(WRONG)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = send(client.get(collector.url(path)), Some(INGEST_OLD)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "ingest token on {path}");
        let (status, body) = send(client.get(collector.url(path)), Some(QUERY)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // Reloading the configuration is a query-scope route, POST and PUT.
    for method in [reqwest::Method::POST, reqwest::Method::PUT] {
        let reload = || client.request(method.clone(), collector.url("/-/reload"));
        let (status, body) = send(reload(), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} /-/reload");
        assert!(body.contains("query token"), "{method} /-/reload: {body}");
        let (status, _) = send(reload(), Some(INGEST_NEW)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "ingest token on /-/reload"
        );
        let (status, body) = send(reload(), Some(QUERY)).await;
        assert_eq!(status, StatusCode::OK, "{method} /-/reload: {body}");
    }
    // Probes and scrapers need no token.
    assert_eq!(
        send(client.get(collector.url("/health")), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(client.get(collector.url("/metrics")), None).await.0,
        StatusCode::OK
    );
    // The UI's page and code carry no data; it asks for the token itself.
    for path in ["/", "/ui/app.js"] {
        let (status, body) = send(client.get(collector.url(path)), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // What was accepted is searchable with the query token.
    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    loop {
        let (status, body) = send(
            client.get(collector.url("/api/logs?q=*&limit=100")),
            Some(QUERY),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let found = [
            "grpc line old token",
            "grpc line new token",
            "otlp http line",
            "bulk line",
        ]
        .iter()
        .all(|line| body.contains(line));
        if found {
            assert!(!body.contains("refused"), "a refused export was stored");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accepted lines not searchable: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log = collector.stop_and_read_log();
    assert!(log.contains("collector listening"), "{log}");
    for token in [INGEST_OLD, INGEST_NEW, QUERY, WRONG] {
        assert!(!log.contains(token), "the log shows a token: {log}");
    }
}
