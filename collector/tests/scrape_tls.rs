//! Scraping https targets with Prometheus' `tls_config` and credentials: a
//! real rustls server on loopback (the collector's own TLS listener code,
//! requiring a client certificate) behind a bearer-token check, certificates
//! made at test time, jobs read from a real config file with relative paths.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sightline_collector::config::TlsFlags;
use sightline_collector::tls::{ServerTls, serve_http};
use sightline_metrics::config_file::ConfigFile;
use sightline_metrics::scrape::{Scraper, jobs_from_config};
use sightline_metrics::share::WorkShare;
use sightline_tsdb::{LabelMatcher, MetricStore};
use tokio::sync::watch;
use tower::ServiceExt;

/// The token the target accepts.
const TOKEN: &str = "scrape-token-7f3a";

/// A CA and the certificates it signs, written as PEM files into `dir`.
fn write_ca(dir: &Path, prefix: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{prefix} test CA"));
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{prefix}-ca.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, Issuer::new(params, key))
}

fn write_leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// The `Authorization` headers the target has seen.
type Seen = Arc<Mutex<Vec<String>>>;

/// `/metrics` for a bearer token of [`TOKEN`]; 401 otherwise.
async fn metrics(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().push(authorization.clone());
    if authorization != format!("Bearer {TOKEN}") {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        "# TYPE secure_requests_total counter\nsecure_requests_total 42\n",
    )
        .into_response()
}

/// A TLS target with a certificate for 127.0.0.1/localhost signed by the
/// CA at `ca` that requires client certificates signed by the same CA.
async fn start_target(cert: &Path, key: &Path, ca: &Path) -> (SocketAddr, Seen) {
    let flags = TlsFlags {
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        tls_client_ca: Some(ca.to_path_buf()),
    };
    let tls = ServerTls::from_flags(&flags).unwrap().unwrap();
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_http(
        listener,
        Some(tls.ingest_acceptor()),
        app,
        std::future::pending(),
    ));
    (address, seen)
}

/// `/api/v1/targets` by job, once every target has been scraped.
async fn scraped_targets(scraper: &Scraper, jobs: usize) -> BTreeMap<String, serde_json::Value> {
    for _ in 0..1200 {
        let response = scraper
            .router()
            .oneshot(
                axum::http::Request::get("/api/v1/targets")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let targets: BTreeMap<String, serde_json::Value> = json["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|target| {
                (
                    target["scrapePool"].as_str().unwrap().to_string(),
                    target.clone(),
                )
            })
            .collect();
        if targets.len() == jobs && targets.values().all(|target| target["health"] != "unknown") {
            return targets;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("targets never all scraped");
}

/// The last value of `name` in job `job`.
fn last(store: &MetricStore, name: &str, job: &str) -> Option<f64> {
    store
        .reader()
        .select(
            &[
                LabelMatcher::equal("__name__", name),
                LabelMatcher::equal("job", job),
            ],
            0,
            i64::MAX,
        )
        .unwrap()
        .into_iter()
        .next()
        .and_then(|series| series.samples.last().map(|(_, value)| *value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_with_tls_config_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (ca, issuer) = write_ca(&certs, "good");
    let (_other_ca, _) = write_ca(&certs, "other");
    let (server_cert, server_key) = write_leaf(
        &certs,
        "server",
        &issuer,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write_leaf(
        &certs,
        "client",
        &issuer,
        &["sightline-scraper"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (address, seen) = start_target(&server_cert, &server_key, &ca).await;
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();

    // Paths relative to the config file's directory, as in Prometheus.
    let config_path = dir.path().join("sightline.yml");
    let good_tls =
        "{ca_file: certs/good-ca.pem, cert_file: certs/client.pem, key_file: certs/client-key.pem}";
    std::fs::write(
        &config_path,
        format!(
            "global: {{scrape_interval: 200ms, scrape_timeout: 5s}}
scrape_configs:
  - job_name: secure
    scheme: https
    tls_config: {good_tls}
    authorization: {{credentials_file: token}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: legacy_bearer
    scheme: https
    tls_config: {{ca_file: certs/good-ca.pem, cert_file: certs/client.pem, key_file: certs/client-key.pem, server_name: localhost}}
    bearer_token: {TOKEN}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: wrong_ca
    scheme: https
    tls_config: {{ca_file: certs/other-ca.pem, cert_file: certs/client.pem, key_file: certs/client-key.pem}}
    authorization: {{credentials_file: token}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: wrong_token
    scheme: https
    tls_config: {good_tls}
    authorization: {{credentials: not-the-token}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: wrong_name
    scheme: https
    tls_config: {{ca_file: certs/good-ca.pem, cert_file: certs/client.pem, key_file: certs/client-key.pem, server_name: other.example}}
    authorization: {{credentials_file: token}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: no_client_cert
    scheme: https
    tls_config: {{ca_file: certs/good-ca.pem}}
    authorization: {{credentials_file: token}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: basic
    scheme: https
    tls_config: {good_tls}
    basic_auth: {{username: user, password: pass}}
    static_configs: [{{targets: ['{address}']}}]
  - job_name: missing_token_file
    scheme: https
    tls_config: {good_tls}
    authorization: {{credentials_file: no-such-token}}
    static_configs: [{{targets: ['{address}']}}]
"
        ),
    )
    .unwrap();
    let config = ConfigFile::load(&config_path).unwrap();
    let jobs = jobs_from_config(&config, dir.path(), None);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(store_dir.path()).unwrap());
    let (stop, stopped) = watch::channel(false);
    let scraper = Scraper::start(
        jobs,
        store.clone(),
        WorkShare::everything(),
        Duration::from_secs(5),
        stopped,
    )
    .unwrap();
    let targets = scraped_targets(&scraper, 8).await;

    for job in ["secure", "legacy_bearer"] {
        assert_eq!(targets[job]["health"], "up", "{job}: {}", targets[job]);
        assert_eq!(targets[job]["lastError"], "", "{job}");
        assert_eq!(
            targets[job]["scrapeUrl"],
            format!("https://{address}/metrics")
        );
        assert_eq!(last(&store, "up", job), Some(1.0), "{job}");
        assert_eq!(
            last(&store, "secure_requests_total", job),
            Some(42.0),
            "{job}"
        );
    }
    let error = |job: &str| {
        assert_eq!(targets[job]["health"], "down", "{job}: {}", targets[job]);
        assert_eq!(last(&store, "up", job), Some(0.0), "{job}");
        assert_eq!(last(&store, "secure_requests_total", job), None, "{job}");
        let error = targets[job]["lastError"].as_str().unwrap().to_string();
        assert!(!error.contains(TOKEN), "{job}: the token leaked: {error}");
        error
    };
    let wrong_ca = error("wrong_ca");
    assert!(
        wrong_ca.contains("invalid peer certificate") && wrong_ca.contains("UnknownIssuer"),
        "{wrong_ca}"
    );
    let wrong_token = error("wrong_token");
    assert!(wrong_token.contains("401 Unauthorized"), "{wrong_token}");
    let wrong_name = error("wrong_name");
    assert!(
        wrong_name.contains("invalid peer certificate"),
        "{wrong_name}"
    );
    let no_client_cert = error("no_client_cert");
    // With TLS 1.3 the client finishes its handshake before the server
    // refuses it: the request fails on the server's alert, or, when the
    // refusal closes the connection first, as a connection not ready.
    assert!(
        no_client_cert.contains("CertificateRequired")
            || no_client_cert.contains("connection was not ready"),
        "{no_client_cert}"
    );
    let missing = error("missing_token_file");
    assert!(
        missing.contains("cannot read credentials file") && missing.contains("no-such-token"),
        "{missing}"
    );
    // basic_auth sends base64("user:pass").
    let basic = error("basic");
    assert!(basic.contains("401"), "{basic}");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|header| header == "Basic dXNlcjpwYXNz"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|header| header == "Bearer not-the-token"));

    // Credentials files are read on every scrape: once the missing file
    // appears, the next scrape of that job succeeds, without a restart.
    std::fs::write(dir.path().join("no-such-token"), TOKEN).unwrap();
    let mut recovered = false;
    for _ in 0..1200 {
        if last(&store, "secure_requests_total", "missing_token_file") == Some(42.0) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the new credentials file was never read");
    let _ = stop.send(true);
}

#[tokio::test]
async fn an_unusable_tls_file_stops_the_scraper_naming_job_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.pem"), "not a certificate\n").unwrap();
    let cases = [
        ("tls_config: {ca_file: missing-ca.pem}", "missing-ca.pem"),
        ("tls_config: {ca_file: broken.pem}", "broken.pem"),
        (
            "tls_config: {cert_file: broken.pem, key_file: missing-key.pem}",
            "broken.pem",
        ),
    ];
    for (keys, file) in cases {
        let config = ConfigFile::parse(&format!(
            "scrape_configs:\n  - job_name: node\n    scheme: https\n    {keys}\n    static_configs: [{{targets: ['127.0.0.1:1']}}]\n"
        ))
        .unwrap();
        let jobs = jobs_from_config(&config, dir.path(), None);
        let store_dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricStore::open(store_dir.path()).unwrap());
        let (_stop, stopped) = watch::channel(false);
        let error = match Scraper::start(
            jobs,
            store,
            WorkShare::everything(),
            Duration::from_secs(5),
            stopped,
        ) {
            Ok(_) => panic!("{keys}: started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("\"node\"") && error.contains(file),
            "{keys}: {error}"
        );
    }
}
