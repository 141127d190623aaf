//! A real collector process with TLS on its listeners and client
//! certificates required on OTLP/gRPC and OTLP/HTTP, driven over loopback with
//! certificates made at test time: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate.

mod support;

use support::{free_port, log_request};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::StatusCode;

const STARTUP_WITHIN: Duration = Duration::from_secs(60);
const SEARCHABLE_WITHIN: Duration = Duration::from_secs(60);

/// PEM files of a small PKI, written into a directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sightline test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["agent-1.example".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

struct Collector {
    child: Child,
    grpc: SocketAddr,
    otlp_http: SocketAddr,
    http: SocketAddr,
    pki: Pki,
    _dir: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start() -> Collector {
        Collector::start_with(None, &[])
    }

    /// A collector with the config file `config` and more flags.
    fn start_with(config: Option<&str>, args: &[&str]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(dir.path());
        let (grpc, otlp_http, http) = (free_port(), free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_sightline-collector"));
        if let Some(config) = config {
            let path = dir.path().join("sightline.yml");
            std::fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        let child = command
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc-addr", &grpc.to_string()])
            .args(["--otlp-http-addr", &otlp_http.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(["--commit-interval", "50ms"])
            .arg("--tls-cert")
            .arg(&pki.server_cert)
            .arg("--tls-key")
            .arg(&pki.server_key)
            .arg("--tls-client-ca")
            .arg(&pki.ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Collector {
            child,
            grpc,
            otlp_http,
            http,
            pki,
            _dir: dir,
        }
    }

    /// An HTTPS client that trusts the test CA, and only it.
    fn https_client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.pki.ca).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }

    /// [`Collector::https_client`] with the test client certificate.
    fn https_client_with_cert(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.pki.ca).unwrap();
        let mut identity = std::fs::read(&self.pki.client_cert).unwrap();
        identity.extend(std::fs::read(&self.pki.client_key).unwrap());
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .build()
            .unwrap()
    }

    async fn wait_healthy(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_WITHIN;
        loop {
            if let Ok(response) = client
                .get(format!("https://{}/health", self.http))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC export over TLS, with the client certificate when `with_cert`.
    async fn grpc_export(&self, with_cert: bool, body: &str) -> Result<(), String> {
        let ca = std::fs::read(&self.pki.ca).unwrap();
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        if with_cert {
            let cert = std::fs::read(&self.pki.client_cert).unwrap();
            let key = std::fs::read(&self.pki.client_key).unwrap();
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|error| format!("connect: {error:?}"))?;
        LogsServiceClient::new(channel)
            .export(log_request(body))
            .await
            .map(|_| ())
            .map_err(|status| format!("export: {status:?}"))
    }
}

#[tokio::test]
async fn grpc_with_a_client_certificate_is_stored_and_found_over_https() {
    let collector = Collector::start();
    let client = collector.https_client();
    collector.wait_healthy(&client).await;

    collector
        .grpc_export(true, "shipped over mutual tls")
        .await
        .unwrap();

    // Without a client certificate the handshake is refused.
    let refused = collector.grpc_export(false, "no client certificate").await;
    assert!(refused.is_err(), "export without a client certificate");

    // OTLP/HTTP asks for a client certificate too: without one the
    // handshake fails, with one the export is stored.
    let otlp_http_export = |client: reqwest::Client, body: &'static str| {
        let url = format!("https://{}/v1/logs", collector.otlp_http);
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{{"stringValue":"{body}"}}}}]}}]}}]}}"#
                ))
                .send()
                .await
        }
    };
    let refused = otlp_http_export(client.clone(), "otlp http without a certificate").await;
    assert!(
        refused.is_err(),
        "OTLP/HTTP answered a client without a certificate: {refused:?}"
    );
    let response = otlp_http_export(collector.https_client_with_cert(), "otlp http over tls")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The query port asks browsers for no certificate.
    let response = client
        .get(format!("https://{}/health", collector.http))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    loop {
        let response = client
            .get(format!("https://{}/api/logs?q=*&limit=100", collector.http))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.text().await.unwrap();
        if body.contains("shipped over mutual tls") && body.contains("otlp http over tls") {
            assert!(
                !body.contains("no client certificate")
                    && !body.contains("otlp http without a certificate"),
                "an export without a client certificate was stored"
            );
            break;
        }
        assert!(Instant::now() < deadline, "records not searchable: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn plain_text_gets_no_answer_from_a_tls_port() {
    let collector = Collector::start();
    collector.wait_healthy(&collector.https_client()).await;
    let plain = reqwest::Client::new();
    for address in [collector.http, collector.otlp_http] {
        let result = plain.get(format!("http://{address}/health")).send().await;
        assert!(result.is_err(), "{address} answered plain HTTP: {result:?}");
    }
    let plain_grpc = async {
        let mut client = LogsServiceClient::connect(format!("http://{}", collector.grpc))
            .await
            .map_err(|error| error.to_string())?;
        client
            .export(log_request("plain text grpc"))
            .await
            .map_err(|status| status.to_string())
    };
    assert!(plain_grpc.await.is_err(), "plain-text gRPC was answered");
    // A client that does not trust the test CA refuses the server.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let result = untrusting
        .get(format!("https://{}/health", collector.http))
        .send()
        .await;
    assert!(result.is_err(), "an unknown CA was accepted: {result:?}");
}

/// Runs the collector with `args` until it exits; its stderr.
fn start_up_error(dir: &Path, args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sightline-collector"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--otlp-grpc-addr", &free_port().to_string()])
        .args(["--otlp-http-addr", &free_port().to_string()])
        .args(["--http-addr", &free_port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_or_broken_pem_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let missing = dir.path().join("missing-cert.pem");
    let broken = dir.path().join("broken-key.pem");
    std::fs::write(&broken, "not a key\n").unwrap();

    let stderr = start_up_error(
        dir.path(),
        &[
            "--tls-cert".as_ref(),
            missing.as_os_str(),
            "--tls-key".as_ref(),
            pki.server_key.as_os_str(),
        ],
    );
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("missing-cert.pem"),
        "{stderr}"
    );

    let stderr = start_up_error(
        dir.path(),
        &[
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            broken.as_os_str(),
        ],
    );
    assert!(
        stderr.contains("--tls-key") && stderr.contains("broken-key.pem"),
        "{stderr}"
    );

    // A key that is not the certificate's.
    let stderr = start_up_error(
        dir.path(),
        &[
            "--tls-cert".as_ref(),
            pki.server_cert.as_os_str(),
            "--tls-key".as_ref(),
            pki.client_key.as_os_str(),
        ],
    );
    assert!(stderr.contains("server.pem"), "{stderr}");
}

/// The agent binary, built next to the collector's by
/// `cargo build --workspace --bins`.
fn agent_binary() -> PathBuf {
    let path =
        Path::new(env!("CARGO_BIN_EXE_sightline-collector")).with_file_name("sightline-agent");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_agent_ships_over_mutual_tls() {
    let collector = Collector::start();
    let client = collector.https_client();
    collector.wait_healthy(&client).await;
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(logs.path().join("app.log"), "agent line over mutual tls\n").unwrap();
    let mut agent = Command::new(agent_binary())
        .arg("--include")
        .arg(logs.path().join("*.log"))
        .args(["--collector", &format!("https://{}", collector.grpc)])
        .arg("--collector-ca")
        .arg(&collector.pki.ca)
        .arg("--client-cert")
        .arg(&collector.pki.client_cert)
        .arg("--client-key")
        .arg(&collector.pki.client_key)
        .arg("--data-dir")
        .arg(logs.path().join("agent-data"))
        .args(["--http-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    let found = loop {
        let body = client
            .get(format!("https://{}/api/logs?q=*&limit=100", collector.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("agent line over mutual tls") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(found, "the agent's line never reached the collector");
}

/// Behind TLS the collector still scrapes its own `/metrics` (over https,
/// on loopback), also when a query token closes the query API: `/metrics`
/// stays open, so the self-scrape needs no credentials.
#[tokio::test]
async fn a_tls_collector_scrapes_itself_with_a_query_token_set() {
    const QUERY_TOKEN: &str = "query-token-for-the-tls-test";
    let collector = Collector::start_with(
        Some("global: {scrape_interval: 200ms, scrape_timeout: 200ms}\n"),
        &["--query-token", QUERY_TOKEN],
    );
    let client = collector.https_client();
    collector.wait_healthy(&client).await;
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("https://{}{path}", collector.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.ok())
        }
    };
    // The query token is in force.
    let (status, _) = get("/api/v1/targets", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let deadline = Instant::now() + SEARCHABLE_WITHIN;
    let self_target = loop {
        let (status, json) = get("/api/v1/targets", Some(QUERY_TOKEN)).await;
        assert_eq!(status, StatusCode::OK);
        let target = json.and_then(|json| {
            json["data"]["activeTargets"]
                .as_array()?
                .iter()
                .find(|target| target["scrapePool"] == "sightline")
                .cloned()
        });
        if let Some(target) = target
            && target["health"] == "up"
        {
            break target;
        }
        assert!(Instant::now() < deadline, "the self-scrape never succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        self_target["scrapeUrl"],
        format!("https://{}/metrics", collector.http)
    );
    assert_eq!(self_target["lastError"], "");

    let value = |json: &serde_json::Value| {
        json["data"]["result"]
            .as_array()
            .and_then(|series| series.first())
            .map(|series| series["value"][1].clone())
    };
    loop {
        let (_, up) = get(
            "/api/v1/query?query=up%7Bjob%3D%22sightline%22%7D",
            Some(QUERY_TOKEN),
        )
        .await;
        let (_, ingested) = get(
            "/api/v1/query?query=sightline_collector_ingested_total%7Bjob%3D%22sightline%22%7D",
            Some(QUERY_TOKEN),
        )
        .await;
        let up = up.as_ref().and_then(value);
        let ingested = ingested.as_ref().and_then(value);
        if up.is_some() && ingested.is_some() {
            assert_eq!(up, Some(serde_json::json!("1")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "self-scraped series not queryable: up {up:?}, ingested {ingested:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
