//! Configuration reload of a real collector process over loopback: targets
//! and rule files change with `POST /-/reload` and `SIGHUP`, what stays
//! keeps running (series without a gap, pending alerts with their
//! `activeAt`), and a broken file changes nothing; and
//! [`Scraper::reload`] on its own, with credentials and TLS files; and the
//! composition root in process: [`sightline_collector::start`], its
//! addresses, `reload` and `shutdown`.

mod support;

use support::{free_port, log_request};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sightline_metrics::scrape::client::{Auth, Credentials, Secret};
use sightline_metrics::scrape::{Job, Scraper};
use sightline_metrics::share::WorkShare;
use sightline_tsdb::MetricStore;

/// Polls `check` until it returns something; fails after a minute.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    for _ in 0..1200 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

/// A loopback target exposing `probe_value 1`.
async fn start_target() -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { "# TYPE probe_value gauge\nprobe_value 1\n" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A config with job `app` scraping `targets` every 200ms, and `rule_files`.
fn config(targets: &[SocketAddr], rule_files: &[&str]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let rule_files: Vec<String> = rule_files.iter().map(|f| format!("'{f}'")).collect();
    format!(
        "global: {{scrape_interval: 200ms, scrape_timeout: 200ms, evaluation_interval: 200ms}}\n\
         rule_files: [{}]\n\
         scrape_configs:\n  - job_name: app\n    static_configs: [{{targets: [{}]}}]\n",
        rule_files.join(", "),
        targets.join(", ")
    )
}

const ALERT_RULES: &str = "groups:\n  - name: alerts\n    rules:\n      - alert: ProbeSeen\n        expr: probe_value > 0\n        for: 1h\n";
const RECORDING_RULES: &str = "groups:\n  - name: recording\n    rules:\n      - record: job:probe_value:sum\n        expr: sum by (job) (probe_value)\n";

struct Collector {
    child: Child,
    http: SocketAddr,
    config: PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Collector {
    async fn start(config_text: &str, files: &[(&str, &str)]) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let http = free_port();
        let log = std::fs::File::create(dir.path().join("collector.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sightline-collector"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc-addr", &free_port().to_string()])
            .args(["--otlp-http-addr", &free_port().to_string()])
            .args(["--http-addr", &http.to_string()])
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let collector = Collector {
            child,
            http,
            config,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        poll("the collector to start", || async {
            let response = collector.client.get(collector.url("/health")).send().await;
            response.ok().filter(|r| r.status() == StatusCode::OK)
        })
        .await;
        collector
    }

    fn dir(&self) -> &Path {
        self.config.parent().unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir().join(name), text).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn reload(&self) -> (StatusCode, String) {
        let response = self
            .client
            .post(self.url("/-/reload"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    /// The instant query's series, as (labels, value).
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let json = self
            .client
            .get(self.url("/api/v1/query"))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        json["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {json}"))
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The job `app` targets' instances.
    async fn app_targets(&self) -> Vec<String> {
        let json = self.json("/api/v1/targets").await;
        let mut instances: Vec<String> = json["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|target| target["scrapePool"] == "app")
            .map(|target| target["labels"]["instance"].as_str().unwrap().to_string())
            .collect();
        instances.sort();
        instances
    }

    /// The value of an unlabelled metric on `/metrics`.
    async fn own_metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} not on /metrics"))
            .parse()
            .unwrap()
    }

    /// The `activeAt` and state of the `ProbeSeen` alert of `instance`.
    async fn alert(&self, instance: SocketAddr) -> Option<(String, String)> {
        let json = self.json("/api/v1/alerts").await;
        json["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|alert| {
                alert["labels"]["alertname"] == "ProbeSeen"
                    && alert["labels"]["instance"] == instance.to_string()
            })
            .map(|alert| {
                (
                    alert["activeAt"].as_str().unwrap_or_default().to_string(),
                    alert["state"].as_str().unwrap_or_default().to_string(),
                )
            })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seconds_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_targets_and_rules_and_refuses_broken_files() {
    let (kept, removed, added) = (
        start_target().await,
        start_target().await,
        start_target().await,
    );
    let collector = Collector::start(
        &config(&[kept, removed], &["alerts.yml"]),
        &[("alerts.yml", ALERT_RULES)],
    )
    .await;
    assert_eq!(
        collector
            .own_metric("sightline_config_last_reload_successful")
            .await,
        1.0
    );
    let up = |target: SocketAddr| format!("up{{job=\"app\",instance=\"{target}\"}}");
    for target in [kept, removed] {
        poll("both targets scraped", || async {
            let series = collector.query(&up(target)).await;
            (series.len() == 1 && series[0].1 == 1.0).then_some(())
        })
        .await;
    }
    // Some history of `kept` before the reload, for the gap check below.
    poll("three scrapes of the kept target", || async {
        let count = collector
            .query(&format!("count_over_time({}[1m])", up(kept)))
            .await;
        (count.len() == 1 && count[0].1 >= 3.0).then_some(())
    })
    .await;
    let (active_at, state) = poll("the pending alert", || collector.alert(kept)).await;
    assert_eq!(state, "pending");

    // (a) and (b): `removed` goes, `added` comes, a rule file is added.
    let reloaded_at = seconds_now();
    collector.write("recording.yml", RECORDING_RULES);
    std::fs::write(
        &collector.config,
        config(&[kept, added], &["alerts.yml", "recording.yml"]),
    )
    .unwrap();
    let (status, body) = collector.reload().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(collector.app_targets().await, {
        let mut expected = vec![kept.to_string(), added.to_string()];
        expected.sort();
        expected
    });
    // The implicit self-scrape job is still there, once.
    let targets = collector.json("/api/v1/targets").await;
    let own = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|target| target["scrapePool"] == "sightline")
        .count();
    assert_eq!(own, 1, "{targets}");
    poll("the added target scraped", || async {
        let series = collector.query(&up(added)).await;
        (series.len() == 1 && series[0].1 == 1.0).then_some(())
    })
    .await;
    // A removed target's series are marked stale: the instant query no
    // longer returns them (without markers they would linger 5 minutes).
    poll("the removed target's series to go stale", || async {
        let up = collector.query(&up(removed)).await;
        let probe = collector
            .query(&format!("probe_value{{instance=\"{removed}\"}}"))
            .await;
        (up.is_empty() && probe.is_empty()).then_some(())
    })
    .await;
    poll("the new rule file's recording rule", || async {
        let series = collector.query("job:probe_value:sum{job=\"app\"}").await;
        (series.len() == 1 && series[0].1 == 2.0).then_some(())
    })
    .await;
    // The unchanged target was never stopped: every 50ms step from before
    // the reload to now has a sample (the staleness marker of a restarted
    // loop would leave a hole until its next scrape; a loop that restarts
    // right on its slot may hide it, the alert check below does not).
    let now = seconds_now();
    let range = collector
        .client
        .get(collector.url("/api/v1/query_range"))
        .query(&[
            ("query", up(kept)),
            ("start", format!("{:.3}", reloaded_at - 1.0)),
            ("end", format!("{now:.3}")),
            ("step", "0.05".to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let result = range["data"]["result"].as_array().expect("a matrix");
    assert_eq!(result.len(), 1, "{range}");
    let steps: Vec<f64> = result[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point[0].as_f64().unwrap())
        .collect();
    assert!(
        steps[0] < reloaded_at,
        "no sample before the reload: {range}"
    );
    assert!(
        *steps.last().unwrap() > now - 0.1,
        "no sample at the end: {range}"
    );
    for pair in steps.windows(2) {
        assert!(
            (pair[1] - pair[0] - 0.05).abs() < 0.001,
            "a gap from {} to {}: {range}",
            pair[0],
            pair[1]
        );
    }

    // The alert that stayed kept its wait.
    assert_eq!(
        collector.alert(kept).await,
        Some((active_at.clone(), "pending".to_string()))
    );

    // (c) A broken config changes nothing and says what is wrong.
    std::fs::write(&collector.config, "scrape_configs: [job_name: {\n").unwrap();
    let (status, body) = collector.reload().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("prometheus.yml"), "{body}");
    assert_eq!(
        collector
            .own_metric("sightline_config_last_reload_successful")
            .await,
        0.0
    );
    assert_eq!(
        collector
            .own_metric("prometheus_config_last_reload_successful")
            .await,
        0.0
    );
    // A rule with an invalid expression: the same.
    std::fs::write(
        &collector.config,
        config(&[kept], &["alerts.yml", "recording.yml", "broken.yml"]),
    )
    .unwrap();
    collector.write(
        "broken.yml",
        "groups:\n  - name: broken\n    rules:\n      - record: broken\n        expr: sum(\n",
    );
    let (status, body) = collector.reload().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("broken.yml"), "{body}");
    assert!(body.contains("unclosed left parenthesis"), "{body}");
    // Old targets and rules still run.
    assert_eq!(collector.app_targets().await.len(), 2);
    let evaluations = collector
        .own_metric("sightline_rules_evaluations_total")
        .await;
    poll("rules still evaluated", || async {
        (collector
            .own_metric("sightline_rules_evaluations_total")
            .await
            > evaluations)
            .then_some(())
    })
    .await;
    assert_eq!(
        collector.alert(kept).await,
        Some((active_at.clone(), "pending".to_string()))
    );
    // A good reload again.
    let before = collector
        .own_metric("sightline_config_last_reload_success_timestamp_seconds")
        .await;
    std::fs::write(&collector.config, config(&[kept], &["alerts.yml"])).unwrap();
    let (status, body) = collector.reload().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        collector
            .own_metric("sightline_config_last_reload_successful")
            .await,
        1.0
    );
    assert!(
        collector
            .own_metric("sightline_config_last_reload_success_timestamp_seconds")
            .await
            >= before
    );
    assert_eq!(collector.app_targets().await, vec![kept.to_string()]);
    // The removed rule file's output ends with a staleness marker.
    poll(
        "the removed recording rule's series to go stale",
        || async {
            let series = collector.query("job:probe_value:sum").await;
            series.is_empty().then_some(())
        },
    )
    .await;
    assert_eq!(
        collector.alert(kept).await,
        Some((active_at, "pending".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let (first, second) = (start_target().await, start_target().await);
    let collector = Collector::start(&config(&[first], &[]), &[]).await;
    assert_eq!(collector.app_targets().await, vec![first.to_string()]);
    std::fs::write(&collector.config, config(&[second], &[])).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &collector.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll("the reload after SIGHUP", || async {
        (collector.app_targets().await == vec![second.to_string()]).then_some(())
    })
    .await;
    poll("the new target scraped", || async {
        let series = collector
            .query(&format!("up{{instance=\"{second}\"}}"))
            .await;
        (series.len() == 1 && series[0].1 == 1.0).then_some(())
    })
    .await;
    // A broken file on SIGHUP: logged, counted, nothing changes.
    std::fs::write(&collector.config, "global: [\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &collector.child.id().to_string()])
        .status()
        .unwrap();
    poll("the failed reload counted", || async {
        (collector
            .own_metric("sightline_config_last_reload_successful")
            .await
            == 0.0)
            .then_some(())
    })
    .await;
    assert_eq!(collector.app_targets().await, vec![second.to_string()]);
    // The process is still alive (SIGHUP did not terminate it).
    let health = collector.client.get(collector.url("/health")).send().await;
    assert_eq!(health.unwrap().status(), StatusCode::OK);
}

/// A loopback target that records the `Authorization` header of each
/// scrape.
async fn start_recording_target() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let authorization = headers
                    .get("authorization")
                    .map(|value| value.to_str().unwrap().to_string());
                record.lock().unwrap().push(authorization);
                "probe_value 1\n"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraper_reload_uses_new_credentials_and_refuses_unusable_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path()).unwrap());
    let (address, seen) = start_recording_target().await;
    let job = Job::new("app", Duration::from_millis(100), vec![address.to_string()]);
    let (_shutdown, shutdown) = tokio::sync::watch::channel(false);
    let scraper = Scraper::start(
        vec![job.clone()],
        store,
        WorkShare::everything(),
        Duration::from_millis(100),
        shutdown,
    )
    .unwrap();
    poll("a scrape without credentials", || async {
        seen.lock().unwrap().contains(&None).then_some(())
    })
    .await;

    // Same target, new credentials: its loop restarts with the new client.
    let mut with_token = job.clone();
    with_token.auth = Some(Auth::Authorization {
        scheme: "Bearer".to_string(),
        credentials: Credentials::Inline(Secret::new("token-after-reload")),
    });
    scraper.reload(vec![with_token]).await.unwrap();
    poll("a scrape with the new token", || async {
        let seen = seen.lock().unwrap();
        seen.contains(&Some("Bearer token-after-reload".to_string()))
            .then_some(())
    })
    .await;

    // A CA file that cannot be read fails the reload, naming job and file,
    // and the running target stays.
    let mut broken = job.clone();
    broken.name = "broken".to_string();
    broken.tls.ca_file = Some(sightline_metrics::scrape::client::Pem::File(
        dir.path().join("missing-ca.pem"),
    ));
    let error = scraper.reload(vec![job, broken]).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("broken"), "{message}");
    assert!(message.contains("missing-ca.pem"), "{message}");
    let targets = scraper.targets();
    assert_eq!(targets.len(), 1);
    assert!(targets[0].target.url.contains(&address.to_string()));
    assert!(
        scraper
            .targets()
            .iter()
            .all(|status| status.target.job == "app")
    );
}

/// The composition root in process: `start` on a temporary directory with
/// port 0 binds every listener, a log record sent over OTLP/HTTP becomes
/// searchable, spans become RED metrics in the metric store (written
/// directly, labelled as the self-scrape labelled them), `reload` applies
/// an edited config and refuses a broken one, and `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serves_reloads_and_shuts_down() {
    use clap::Parser;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("sightline.yml");
    std::fs::write(
        &config_path,
        "global: {scrape_interval: 200ms, scrape_timeout: 200ms}\n",
    )
    .unwrap();
    let flags = sightline_collector::CollectorConfig::parse_from([
        "sightline-collector".to_string(),
        format!("--data-dir={}", dir.path().join("data").display()),
        "--http-addr=127.0.0.1:0".to_string(),
        "--otlp-grpc-addr=127.0.0.1:0".to_string(),
        "--otlp-http-addr=127.0.0.1:0".to_string(),
        format!("--config={}", config_path.display()),
    ]);
    let collector = sightline_collector::start(flags).await.unwrap();
    let addresses = collector.addresses();
    let ports = [
        addresses.otlp_grpc.port(),
        addresses.otlp_http.port(),
        addresses.http.port(),
    ];
    assert!(!ports.contains(&0), "{addresses:?}");
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "{addresses:?}"
    );
    let client = reqwest::Client::new();
    let http = addresses.http;
    let json = |path: String| {
        let client = client.clone();
        async move {
            let response = client
                .get(format!("http://{http}{path}"))
                .send()
                .await
                .ok()?;
            response.json::<Value>().await.ok()
        }
    };

    // A log record over OTLP/HTTP is searchable.
    let response = client
        .post(format!("http://{}/v1/logs", addresses.otlp_http))
        .header("content-type", "application/x-protobuf")
        .body(log_request("composition root line").encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    poll("the record searchable", || async {
        let answer = json("/api/logs?q=%22composition%20root%20line%22".into()).await?;
        (answer["records"].as_array()?.len() == 1).then_some(())
    })
    .await;

    // Spans become RED metrics in the store, with the collector's job and
    // instance.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let spans = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "checkout"}}
        ]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "GET /cart",
            "kind": 2,
            "startTimeUnixNano": now,
            "endTimeUnixNano": now,
        }]}],
    }]});
    let response = client
        .post(format!("http://{}/v1/traces", addresses.otlp_http))
        .header("content-type", "application/json")
        .body(spans.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let series = poll("span metrics in the store", || async {
        let answer = json(
            "/api/v1/query?query=traces_spanmetrics_calls_total%7Bservice%3D%22checkout%22%7D"
                .into(),
        )
        .await?;
        let series = answer["data"]["result"].as_array()?.clone();
        (!series.is_empty()).then_some(series)
    })
    .await;
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["job"], "sightline", "{labels}");
    assert_eq!(labels["instance"], format!("127.0.0.1:{}", http.port()));
    assert_eq!(labels["span_kind"], "SPAN_KIND_SERVER", "{labels}");
    assert_eq!(series[0]["value"][1], "1");

    // A reload applies an edited config: a new job is scraped.
    let target = start_target().await;
    std::fs::write(&config_path, config(&[target], &[])).unwrap();
    collector.reload().await.unwrap();
    poll("the added job's target", || async {
        let targets = json("/api/v1/targets".into()).await?;
        targets["data"]["activeTargets"]
            .as_array()?
            .iter()
            .any(|t| {
                t["scrapePool"] == "app" && t["scrapeUrl"] == format!("http://{target}/metrics")
            })
            .then_some(())
    })
    .await;
    // A broken one changes nothing, and the error names the file.
    std::fs::write(&config_path, "scrape_configs: [{job_name: 7\n").unwrap();
    let error = collector.reload().await.unwrap_err();
    assert!(
        format!("{error:#}").contains(&config_path.display().to_string()),
        "{error:#}"
    );

    collector.shutdown().await.unwrap();
    // Every listener is closed.
    for address in [addresses.otlp_grpc, addresses.otlp_http, addresses.http] {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "{address} still accepts connections"
        );
    }
}
