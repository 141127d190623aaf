//! Scraping real HTTP targets on loopback into a real [`MetricStore`]:
//! samples, synthetic series, staleness markers, health, file discovery.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sightline_metrics::config_file::FileSdConfig;
use sightline_metrics::scrape::target::Health;
use sightline_metrics::scrape::{Job, Scraper};
use sightline_metrics::share::WorkShare;
use sightline_tsdb::promql::is_stale_nan;
use sightline_tsdb::{LabelMatcher, Labels, MetricStore};
use tokio::sync::watch;
use tower::ServiceExt;

/// What the test target serves: a body and its content type, or an error.
#[derive(Clone)]
enum Exposed {
    Body(&'static str, String),
    Fail,
}

async fn serve(State(exposed): State<Arc<Mutex<Exposed>>>, headers: HeaderMap) -> Response {
    let exposed = exposed.lock().unwrap().clone();
    let Exposed::Body(content_type, body) = exposed else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response();
    };
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("gzip"));
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(body.as_bytes()).unwrap();
        let compressed = encoder.finish().unwrap();
        return (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            compressed,
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn start_target(exposed: Exposed) -> (SocketAddr, Arc<Mutex<Exposed>>) {
    let state = Arc::new(Mutex::new(exposed));
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, state)
}

/// Every series named `name` with its samples.
fn series(store: &MetricStore, name: &str) -> Vec<(Labels, Vec<(i64, f64)>)> {
    store
        .reader()
        .select(&[LabelMatcher::equal("__name__", name)], 0, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|series| (series.labels, series.samples))
        .collect()
}

/// The last value of the one series named `name` matching `label=value`.
fn last(store: &MetricStore, name: &str, label: (&str, &str)) -> Option<f64> {
    series(store, name)
        .into_iter()
        .find(|(labels, _)| labels.get(label.0) == label.1)
        .and_then(|(_, samples)| samples.last().map(|(_, value)| *value))
}

/// Polls `check` until it holds; gives up (and fails) after a minute.
async fn poll_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn first_body() -> String {
    "# HELP requests Requests served.\n\
# TYPE requests counter\n\
requests_total{path=\"/a\",job=\"theirs\"} 1\n\
requests_created{path=\"/a\",job=\"theirs\"} 1700000000\n\
# TYPE going_away gauge\n\
going_away 7\n\
# TYPE latency_seconds histogram\n\
latency_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.05\n\
latency_seconds_bucket{le=\"+Inf\"} 2 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"00f067aa0ba902b7\"} 2.5 1700000000.5\n\
latency_seconds_sum 0.3\n\
latency_seconds_count 2\n\
special{kind=\"nan\"} NaN\n\
# EOF\n"
        .to_string()
}

fn second_body() -> String {
    "# TYPE requests counter\n\
requests_total{path=\"/a\",job=\"theirs\"} 2\n\
# EOF\n"
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_samples_staleness_and_down_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path()).unwrap());
    let (address, exposed) = start_target(Exposed::Body(OPENMETRICS, first_body())).await;
    let job = Job::new("app", Duration::from_millis(200), vec![address.to_string()]);
    let (_shutdown, shutdown) = watch::channel(false);
    let scraper = Scraper::start(
        vec![job],
        store.clone(),
        WorkShare::everything(),
        Duration::from_millis(100),
        shutdown,
    )
    .unwrap();
    let instance = address.to_string();

    // First scrape: samples with the target's labels, the scraped `job`
    // kept as `exported_job`, `_created` dropped, synthetic series.
    poll_until("the first scrape", || {
        last(&store, "up", ("instance", &instance)) == Some(1.0)
    })
    .await;
    let requests = series(&store, "requests_total");
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].0,
        Labels::new([
            ("__name__", "requests_total"),
            ("path", "/a"),
            ("job", "app"),
            ("exported_job", "theirs"),
            ("instance", instance.as_str()),
        ])
    );
    assert!(series(&store, "requests_created").is_empty());
    assert_eq!(
        last(&store, "scrape_samples_scraped", ("job", "app")),
        Some(7.0)
    );
    assert_eq!(
        last(
            &store,
            "scrape_samples_post_metric_relabeling",
            ("job", "app")
        ),
        Some(7.0)
    );
    // Every series is new at the first scrape, none at the next ones.
    let added = &series(&store, "scrape_series_added")[0].1;
    assert_eq!(added[0].1, 7.0);
    assert!(
        added[1..].iter().all(|(_, value)| *value == 0.0),
        "{added:?}"
    );
    assert!(last(&store, "scrape_duration_seconds", ("job", "app")).unwrap() > 0.0);
    assert_eq!(last(&store, "going_away", ("job", "app")), Some(7.0));
    assert_eq!(
        last(&store, "latency_seconds_bucket", ("le", "+Inf")),
        Some(2.0)
    );
    let nan = last(&store, "special", ("kind", "nan")).unwrap();
    assert!(nan.is_nan() && !is_stale_nan(nan));
    let metadata = store.metadata();
    assert_eq!(metadata["requests"].kind, "counter");
    assert_eq!(metadata["requests"].help, "Requests served.");
    assert_eq!(metadata["latency_seconds"].kind, "histogram");

    // The series that disappears gets a staleness marker; the others go on.
    *exposed.lock().unwrap() = Exposed::Body(OPENMETRICS, second_body());
    poll_until("the staleness marker of going_away", || {
        last(&store, "going_away", ("job", "app")).is_some_and(is_stale_nan)
    })
    .await;
    poll_until("the second value of requests_total", || {
        last(&store, "requests_total", ("path", "/a")) == Some(2.0)
    })
    .await;
    let going_away = &series(&store, "going_away")[0].1;
    assert_eq!(
        going_away.len(),
        2,
        "one value, then one marker: {going_away:?}"
    );
    assert_eq!(
        last(&store, "scrape_samples_scraped", ("job", "app")),
        Some(1.0)
    );

    // A malformed body fails the scrape with the line and the problem.
    *exposed.lock().unwrap() = Exposed::Body(
        "text/plain; version=0.0.4",
        "ok 1\nbroken{a=\"1\" 2\n".to_string(),
    );
    poll_until("up=0 after a parse error", || {
        last(&store, "up", ("job", "app")) == Some(0.0)
    })
    .await;
    poll_until("the parse error in the target's health", || {
        scraper.targets()[0].health().last_error.contains("line 2")
    })
    .await;
    let health = scraper.targets()[0].health();
    assert_eq!(health.health, Health::Down);
    assert!(
        health.last_error.contains("expected ',' or '}'"),
        "{}",
        health.last_error
    );
    assert!(last(&store, "requests_total", ("path", "/a")).is_some_and(is_stale_nan));

    // Back up, then down with an HTTP error: up=0, every series stale.
    *exposed.lock().unwrap() = Exposed::Body(OPENMETRICS, second_body());
    poll_until("up=1 again", || {
        last(&store, "up", ("job", "app")) == Some(1.0)
    })
    .await;
    poll_until("requests_total back", || {
        last(&store, "requests_total", ("path", "/a")) == Some(2.0)
    })
    .await;
    *exposed.lock().unwrap() = Exposed::Fail;
    poll_until("up=0 after HTTP 500", || {
        last(&store, "up", ("job", "app")) == Some(0.0)
    })
    .await;
    assert!(last(&store, "requests_total", ("path", "/a")).is_some_and(is_stale_nan));
    assert_eq!(
        last(&store, "scrape_samples_scraped", ("job", "app")),
        Some(0.0)
    );
    poll_until("the HTTP error in the target's health", || {
        scraper.targets()[0].health().last_error.contains("500")
    })
    .await;

    // The targets API, in Prometheus' format.
    let response = scraper
        .router()
        .oneshot(
            axum::http::Request::get("/api/v1/targets")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let target = &json["data"]["activeTargets"][0];
    assert_eq!(json["status"], "success");
    assert_eq!(target["labels"]["job"], "app");
    assert_eq!(target["labels"]["instance"], instance.as_str());
    assert_eq!(target["scrapeUrl"], format!("http://{instance}/metrics"));
    assert_eq!(target["health"], "down");
    assert_eq!(target["scrapeInterval"], "200ms");
    assert_eq!(target["scrapeTimeout"], "200ms");
    assert!(target["lastError"].as_str().unwrap().contains("500"));
    assert!(target["lastScrapeDuration"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_discovery_adds_and_removes_targets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetricStore::open(dir.path().join("tsdb")).unwrap());
    let (first, _) = start_target(Exposed::Body(
        "text/plain; version=0.0.4",
        "from_first 1\n".to_string(),
    ))
    .await;
    let (second, _) = start_target(Exposed::Body(
        "text/plain; version=0.0.4",
        "from_second 2\n".to_string(),
    ))
    .await;
    let targets_file = dir.path().join("targets.yml");
    // Written whole and renamed into place, as target files should be: a
    // reader may otherwise see an empty file, which is a valid empty list.
    let replace_targets = |text: &str| {
        let staging = dir.path().join("targets.tmp");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, &targets_file).unwrap();
    };
    let write_targets = |addresses: &[SocketAddr]| {
        let list: Vec<String> = addresses.iter().map(|a| format!("'{a}'")).collect();
        replace_targets(&format!(
            "- targets: [{}]\n  labels: {{team: core}}\n",
            list.join(", ")
        ));
    };
    write_targets(&[first]);
    let mut job = Job::new("files", Duration::from_millis(200), Vec::new());
    job.base_dir = dir.path().to_path_buf();
    job.file_sd_configs = vec![FileSdConfig {
        files: vec!["*.yml".into()],
        refresh_interval: Duration::from_secs(300),
    }];
    let (_shutdown, shutdown) = watch::channel(false);
    let scraper = Scraper::start(
        vec![job],
        store.clone(),
        WorkShare::everything(),
        Duration::from_millis(100),
        shutdown,
    )
    .unwrap();

    poll_until("the first target scraped", || {
        last(&store, "from_first", ("team", "core")) == Some(1.0)
    })
    .await;
    assert_eq!(scraper.targets().len(), 1);

    // Rewritten: the first target goes (its series marked stale), the
    // second comes.
    write_targets(&[second]);
    poll_until("the second target scraped", || {
        last(&store, "from_second", ("team", "core")) == Some(2.0)
    })
    .await;
    poll_until("the removed target's staleness marker", || {
        last(&store, "from_first", ("team", "core")).is_some_and(is_stale_nan)
    })
    .await;
    assert!(
        last(&store, "up", ("instance", &first.to_string())).is_some_and(is_stale_nan),
        "up of a removed target ends too"
    );

    // Broken: the second target stays.
    replace_targets("- targets: [oops\n");
    let scraped_before = series(&store, "from_second")[0].1.len();
    poll_until("more scrapes of the kept target", || {
        series(&store, "from_second")[0].1.len() > scraped_before + 3
    })
    .await;
    assert_eq!(last(&store, "from_second", ("team", "core")), Some(2.0));
    let targets = scraper.targets();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].target.labels.get("instance"), second.to_string());
}

/// The whole collector, in process: it scrapes its own `/metrics` into its
/// TSDB beside the configured jobs, and an OpenMetrics target's exemplars
/// come back from `/api/v1/query_exemplars` in Prometheus' JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_scrapes_its_own_metrics_and_a_targets_exemplars() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = start_target(Exposed::Body(OPENMETRICS, first_body())).await;
    let config_path = dir.path().join("sightline.yml");
    std::fs::write(
        &config_path,
        format!(
            "global: {{scrape_interval: 200ms, scrape_timeout: 200ms}}\n\
             scrape_configs:\n\
             - job_name: app\n  static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = sightline_collector::CollectorConfig::parse_from([
        "sightline-collector".to_string(),
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--http-addr=127.0.0.1:{port}"),
        "--otlp-grpc-addr=127.0.0.1:0".to_string(),
        "--otlp-http-addr=127.0.0.1:0".to_string(),
        format!("--config={}", config_path.display()),
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(sightline_collector::run(config, async move {
        let _ = stopped.await;
    }));
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            let response = reqwest::get(url).await.ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    let mut self_target = serde_json::Value::Null;
    for _ in 0..1200 {
        if let Some(json) = get("/api/v1/targets").await
            && let Some(target) = json["data"]["activeTargets"]
                .as_array()
                .and_then(|targets| targets.iter().find(|t| t["scrapePool"] == "sightline"))
            && target["health"] == "up"
        {
            self_target = target.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        self_target["health"], "up",
        "the self-scrape never succeeded"
    );
    assert_eq!(
        self_target["scrapeUrl"],
        format!("http://127.0.0.1:{port}/metrics")
    );
    assert_eq!(self_target["lastError"], "");
    let mut result = serde_json::Value::Null;
    for _ in 0..1200 {
        if let Some(json) =
            get("/api/v1/query?query=sightline_collector_ingested_total%7Bjob%3D%22sightline%22%7D")
                .await
            && json["data"]["result"]
                .as_array()
                .is_some_and(|series| !series.is_empty())
        {
            result = json;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let series = result["data"]["result"]
        .as_array()
        .expect("no self-scraped series");
    assert_eq!(series[0]["metric"]["instance"], format!("127.0.0.1:{port}"));

    // The target's exemplars: the one on the fast bucket (no time of its
    // own: the scrape's) and the timestamped one on the slow bucket, once
    // each however many scrapes exposed them.
    let mut answer = serde_json::Value::Null;
    for _ in 0..1200 {
        if let Some(json) = get("/api/v1/query_exemplars?query=histogram_quantile(0.9%2C%20rate(latency_seconds_bucket%5B1m%5D))").await
            && json["data"].as_array().is_some_and(|data| data.len() == 2)
        {
            answer = json;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer["status"], "success", "{answer}");
    let data = answer["data"]
        .as_array()
        .expect("two series with exemplars");
    // Sorted by labels: `le="+Inf"` before `le="0.1"`.
    let (slow, fast) = (&data[0], &data[1]);
    assert_eq!(
        fast["seriesLabels"],
        serde_json::json!({
            "__name__": "latency_seconds_bucket",
            "instance": target.to_string(),
            "job": "app",
            "le": "0.1",
        })
    );
    let exemplars = fast["exemplars"].as_array().unwrap();
    assert_eq!(exemplars.len(), 1, "{answer}");
    assert_eq!(
        exemplars[0]["labels"],
        serde_json::json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    );
    assert_eq!(exemplars[0]["value"], "0.05");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let scraped_at = exemplars[0]["timestamp"].as_f64().unwrap();
    assert!((now - 60.0..=now).contains(&scraped_at), "{scraped_at}");
    assert_eq!(slow["seriesLabels"]["le"], "+Inf");
    assert_eq!(
        slow["exemplars"],
        serde_json::json!([{
            "labels": {"span_id": "00f067aa0ba902b7", "trace_id": "0af7651916cd43dd8448eb211c80319c"},
            "value": "2.5",
            "timestamp": 1700000000.5,
        }])
    );
    let _ = stop.send(());
    collector.await.unwrap().unwrap();
}

/// A loopback target that records the path and query of every request and
/// answers with a probe-style exposition naming the `module` parameter.
async fn start_recording_target() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let recorded = recorded.clone();
        async move {
            recorded.lock().unwrap().push(uri.to_string());
            let module = uri
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("module="))
                .unwrap_or("none")
                .to_string();
            format!(
                "# TYPE probe_success gauge\nprobe_success{{module=\"{module}\"}} 1\n\
                 expensive_metric{{shard=\"1\"}} 5\nexpensive_metric{{shard=\"2\"}} 6\n\
                 http_requests_total{{path=\"/user/42\"}} 3\n"
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, requests)
}

/// The whole collector with a real prometheus.yml: `relabel_configs` drop
/// one target (never scraped, listed in `droppedTargets`), rewrite another's
/// path and parameters and map its file-SD `__meta_*` labels; then
/// `metric_relabel_configs` drop a metric family and rewrite a label in
/// what the Prometheus API returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabel_configs_shape_targets_and_stored_series() {
    use clap::Parser;
    let (kept_address, kept_requests) = start_recording_target().await;
    let (dropped_address, dropped_requests) = start_recording_target().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("targets")).unwrap();
    std::fs::write(
        dir.path().join("targets/probe.json"),
        format!(
            r#"[{{"targets": ["{kept_address}"], "labels": {{"__meta_datacenter": "dc1", "__meta_rack": "r7"}}}}]"#
        ),
    )
    .unwrap();
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            r#"
global: {{ scrape_interval: 200ms, scrape_timeout: 200ms }}
scrape_configs:
  - job_name: probe
    static_configs:
      - targets: ["{dropped_address}"]
        labels: {{ tier: skip }}
    file_sd_configs: [{{ files: ["targets/*.json"] }}]
    relabel_configs:
      - {{ source_labels: [tier], regex: skip, action: drop }}
      - {{ regex: '__meta_(datacenter)', action: labelmap }}
      - {{ source_labels: [__meta_filepath], regex: '.*/([^/]+)', target_label: source_file }}
      - {{ target_label: __metrics_path__, replacement: /probe }}
      - {{ target_label: __param_module, replacement: http_2xx }}
    metric_relabel_configs:
      - {{ source_labels: [__name__], regex: 'expensive_.*', action: drop }}
      - {{ source_labels: [path], regex: '/user/\d+', target_label: path, replacement: '/user/:id' }}
"#
        ),
    )
    .unwrap();
    // Port 0, the port chosen told back: a port probed free and bound
    // later can be taken in between by another test process.
    let config = sightline_collector::CollectorConfig::parse_from([
        "sightline-collector".to_string(),
        format!("--data-dir={}", dir.path().join("data").display()),
        "--http-addr=127.0.0.1:0".to_string(),
        "--otlp-grpc-addr=127.0.0.1:0".to_string(),
        "--otlp-http-addr=127.0.0.1:0".to_string(),
        format!("--config={}", config_path.display()),
    ]);
    let collector = sightline_collector::start(config)
        .await
        .expect("the collector starts");
    let port = collector.addresses().http.port();
    let client = reqwest::Client::new();
    let query = |promql: &'static str| {
        let request = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", promql)]);
        async move {
            let json: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
            json["data"]["result"].as_array().cloned()
        }
    };

    // Wait until the kept target has been scraped a few times and its
    // series are queryable.
    let mut probe = Vec::new();
    for _ in 0..1200 {
        if kept_requests.lock().unwrap().len() >= 3
            && let Some(result) = query("probe_success").await
            && !result.is_empty()
        {
            probe = result;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe.len(), 1, "probe_success never arrived");
    let metric = &probe[0]["metric"];
    assert_eq!(metric["module"], "http_2xx", "{metric}");
    assert_eq!(metric["datacenter"], "dc1", "{metric}");
    assert_eq!(metric["source_file"], "probe.json", "{metric}");
    assert_eq!(metric["instance"], kept_address.to_string(), "{metric}");
    assert_eq!(metric["job"], "probe", "{metric}");
    // Only the mapped `__meta_` label became a label; the rest went.
    assert!(metric.get("rack").is_none() && metric.get("__meta_rack").is_none());
    assert_eq!(
        kept_requests.lock().unwrap()[0],
        "/probe?module=http_2xx",
        "the scrape used the relabeled path and parameter"
    );
    // The dropped target was never asked, though the kept one was, thrice.
    assert!(dropped_requests.lock().unwrap().is_empty());

    let requests = query("http_requests_total").await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["metric"]["path"], "/user/:id");
    assert_eq!(
        query("expensive_metric").await.unwrap(),
        Vec::<serde_json::Value>::new()
    );
    let post = query("scrape_samples_post_metric_relabeling{job=\"probe\"}")
        .await
        .unwrap();
    assert_eq!(post[0]["value"][1], "2");
    let scraped = query("scrape_samples_scraped{job=\"probe\"}")
        .await
        .unwrap();
    assert_eq!(scraped[0]["value"][1], "4");

    let targets: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/targets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let active: Vec<&serde_json::Value> = targets["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|target| target["scrapePool"] == "probe")
        .collect();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["discoveredLabels"]["__meta_datacenter"], "dc1");
    assert_eq!(
        active[0]["discoveredLabels"]["__metrics_path__"],
        "/metrics"
    );
    assert_eq!(active[0]["labels"]["datacenter"], "dc1");
    assert_eq!(
        active[0]["scrapeUrl"],
        format!("http://{kept_address}/probe?module=http_2xx")
    );
    let dropped = targets["data"]["droppedTargets"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{targets}");
    assert_eq!(
        dropped[0]["discoveredLabels"]["__address__"],
        dropped_address.to_string()
    );
    assert_eq!(dropped[0]["discoveredLabels"]["tier"], "skip");
    assert_eq!(targets["data"]["droppedTargetCounts"]["probe"], 1);
    let only_dropped: serde_json::Value = client
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/targets?state=dropped"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only_dropped["data"]["activeTargets"], serde_json::json!([]));
    assert_eq!(
        only_dropped["data"]["droppedTargets"],
        targets["data"]["droppedTargets"]
    );
    collector.shutdown().await.unwrap();
}
