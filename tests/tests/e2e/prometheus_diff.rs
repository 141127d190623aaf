//! Differential test: the real Prometheus (Debian's `prometheus`) and our
//! collector scrape the same target, then answer the same PromQL through
//! their HTTP APIs; the answers must match.
//!
//! Both scrape every second, but the target serves explicit sample
//! timestamps (honored by default in both): every series changes once per
//! [`PERIOD_S`] seconds and carries the period's start as its timestamp, so
//! both stores hold exactly the same samples however their scrapes are
//! phased. Queries are evaluated half a second off the whole second, well
//! behind the newest data and only over windows both scrapers fully saw, so
//! no sample sits on a window boundary (where Prometheus 2.x, which Debian
//! ships, and 3.x, which our engine follows, differ by design).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use sightline_tests::{CollectorProcess, Process, free_port, poll_until, wait_healthy};

/// Seconds between two changes of every series the target serves.
const PERIOD_S: i64 = 5;

pub(crate) const PROMETHEUS: &str = "/usr/bin/prometheus";

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The exposition for the period that contains `now`: counters (one with
/// resets), gauges and a classic histogram, each a deterministic function of
/// the period, stamped with the period's start.
fn exposition(now: f64) -> String {
    let period_start = (now as i64).div_euclid(PERIOD_S) * PERIOD_S;
    let n = period_start / PERIOD_S % 100_000;
    let timestamp_ms = period_start * 1000;
    let wave = (n as f64 / 3.0).sin();
    let mut text = String::new();
    let mut line = |name: &str, labels: &str, value: f64| {
        text.push_str(&format!("{name}{{{labels}}} {value} {timestamp_ms}\n"));
    };
    line(
        "diff_requests_total",
        r#"path="/a""#,
        (7 * n + n % 3) as f64,
    );
    line("diff_requests_total", r#"path="/b""#, (2 * n) as f64 + 0.5);
    line("diff_errors_total", r#"path="/a""#, (n % 4 * 3) as f64);
    line("diff_temperature", r#"room="lab""#, 20.0 + 5.0 * wave);
    line(
        "diff_temperature",
        r#"room="office""#,
        18.0 + (n % 6) as f64,
    );
    let extra = (n % 3) as f64;
    line("diff_latency_seconds_bucket", r#"le="0.1""#, (2 * n) as f64);
    line(
        "diff_latency_seconds_bucket",
        r#"le="0.5""#,
        (5 * n) as f64 + extra,
    );
    line(
        "diff_latency_seconds_bucket",
        r#"le="2.5""#,
        (7 * n) as f64 + extra,
    );
    line(
        "diff_latency_seconds_bucket",
        r#"le="+Inf""#,
        (8 * n) as f64 + extra,
    );
    line("diff_latency_seconds_sum", "", 1.75 * n as f64);
    line("diff_latency_seconds_count", "", (8 * n) as f64 + extra);
    let types = "# TYPE diff_requests_total counter\n# TYPE diff_errors_total counter\n\
                 # TYPE diff_temperature gauge\n# TYPE diff_latency_seconds histogram\n";
    // Families must be contiguous: the lines are grouped by name already.
    format!("{types}{text}")
}

pub(crate) async fn serve_target() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the target");
    let port = listener.local_addr().expect("target address").port();
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4")],
                exposition(now_s()),
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A `prometheus.yml` both read: scrape the target every second.
pub(crate) fn scrape_config(target_port: u16) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: diff\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
}

/// One answer of either side, keyed for comparison.
#[derive(Debug)]
enum Answer {
    Scalar(f64),
    /// Label set (as sorted JSON text) -> points (time ms, value).
    Series(BTreeMap<String, Vec<(i64, f64)>>),
}

fn parse_point(point: &Value) -> Result<(i64, f64), String> {
    let time = point[0].as_f64().ok_or(format!("bad time in {point}"))?;
    let value = point[1]
        .as_str()
        .ok_or(format!("bad value in {point}"))?
        .parse::<f64>()
        .map_err(|error| format!("bad value in {point}: {error}"))?;
    Ok(((time * 1000.0).round() as i64, value))
}

fn parse_answer(body: &Value) -> Result<Answer, String> {
    if body["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    let data = &body["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => Ok(Answer::Scalar(parse_point(result)?.1)),
        Some(kind @ ("vector" | "matrix")) => {
            let mut series = BTreeMap::new();
            for element in result.as_array().ok_or(format!("no result in {body}"))? {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(element["metric"].clone())
                        .map_err(|error| format!("bad metric in {element}: {error}"))?;
                let points = if kind == "vector" {
                    vec![parse_point(&element["value"])?]
                } else {
                    element["values"]
                        .as_array()
                        .ok_or(format!("no values in {element}"))?
                        .iter()
                        .map(parse_point)
                        .collect::<Result<_, _>>()?
                };
                let key = serde_json::to_string(&labels).expect("labels serialize");
                if series.insert(key.clone(), points).is_some() {
                    return Err(format!("label set {key} twice in {body}"));
                }
            }
            Ok(Answer::Series(series))
        }
        other => Err(format!("unexpected result type {other:?} in {body}")),
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// Why two answers differ, or `None` when they match.
fn difference(ours: &Answer, theirs: &Answer) -> Option<String> {
    match (ours, theirs) {
        (Answer::Scalar(a), Answer::Scalar(b)) => {
            (!close(*a, *b)).then(|| format!("scalar {a} vs {b}"))
        }
        (Answer::Series(ours), Answer::Series(theirs)) => {
            let our_keys: Vec<_> = ours.keys().collect();
            let their_keys: Vec<_> = theirs.keys().collect();
            if our_keys != their_keys {
                return Some(format!("label sets {our_keys:?} vs {their_keys:?}"));
            }
            for (key, our_points) in ours {
                let their_points = &theirs[key];
                let same = our_points.len() == their_points.len()
                    && our_points
                        .iter()
                        .zip(their_points)
                        .all(|((t1, v1), (t2, v2))| t1 == t2 && close(*v1, *v2));
                if !same {
                    return Some(format!("{key}: {our_points:?} vs {their_points:?}"));
                }
            }
            None
        }
        _ => Some(format!("kinds differ: {ours:?} vs {theirs:?}")),
    }
}

fn answer_is_empty(answer: &Answer) -> bool {
    matches!(answer, Answer::Series(series) if series.is_empty())
}

async fn ask(http: &reqwest::Client, base: &str, path: &str, form: &[(&str, String)]) -> Value {
    // Form POST, as Grafana sends queries.
    let response = http
        .post(format!("{base}{path}"))
        .form(form)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{base}{path}: {error}"));
    response
        .json()
        .await
        .unwrap_or_else(|error| panic!("{base}{path}: not JSON: {error}"))
}

/// The newest timestamp (seconds) of `diff_temperature` one side has.
async fn newest_sample(http: &reqwest::Client, base: &str) -> Result<Option<f64>, String> {
    let body = ask(
        http,
        base,
        "/api/v1/query",
        &[("query", "max(timestamp(diff_temperature))".to_string())],
    )
    .await;
    match parse_answer(&body)? {
        Answer::Series(series) => Ok(series.values().next().map(|points| points[0].1)),
        Answer::Scalar(_) => Err(format!("unexpected scalar: {body}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_promql_answers_match_prometheus_on_the_same_scraped_data() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: apt-get install -y prometheus (scripts/test does it)"
    );
    let target_port = serve_target().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, scrape_config(target_port)).expect("write the config");

    let prometheus_port = free_port();
    let _prometheus = Process::spawn(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn"),
    );
    let collector_data = dir.path().join("collector-data");
    let collector = CollectorProcess::start(
        &collector_data,
        &["--config", config_path.to_str().expect("utf-8 temp path")],
    )
    .await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let prometheus_base = format!("http://127.0.0.1:{prometheus_port}");
    let ours_base = collector.url("");
    wait_healthy(
        &http,
        &format!("{prometheus_base}/-/ready"),
        Duration::from_secs(60),
    )
    .await;

    compare_with_prometheus(&http, &ours_base, &prometheus_base).await;
}

/// Waits until both sides hold the target's samples, then asks both the
/// same instant and range queries and fails on any difference.
pub(crate) async fn compare_with_prometheus(
    http: &reqwest::Client,
    ours_base: &str,
    prometheus_base: &str,
) {
    let (http, ours_base, prometheus_base) =
        (http, ours_base.to_string(), prometheus_base.to_string());
    // Both stores must have data before the compared windows begin.
    let both_since = poll_until(
        "both Prometheus and the collector to hold scraped samples",
        Duration::from_secs(60),
        || async {
            let theirs = newest_sample(http, &prometheus_base).await?;
            let ours = newest_sample(http, &ours_base).await?;
            Ok(theirs.zip(ours).map(|_| now_s()))
        },
    )
    .await;
    // The widest window below is 30 s (plus 10 s of offset); wait until
    // every compared window starts after both were scraping, and 12 s of
    // newer data exist after the latest evaluation time.
    let first_eval = (both_since.ceil() + 45.0) - 0.5;
    let range_end = first_eval + 20.0;
    let wait_until = range_end + 12.0;
    tokio::time::sleep(Duration::from_secs_f64((wait_until - now_s()).max(0.0))).await;

    // (expression, whether its answer must have data).
    let expressions: &[(&str, bool)] = &[
        ("diff_temperature", true),
        ("rate(diff_requests_total[30s])", true),
        ("irate(diff_requests_total[30s])", true),
        ("increase(diff_requests_total[30s])", true),
        ("rate(diff_errors_total[30s])", true),
        ("resets(diff_errors_total[30s])", true),
        ("sum by (path) (rate(diff_requests_total[20s]))", true),
        ("sum(diff_temperature)", true),
        ("avg_over_time(diff_temperature[30s])", true),
        ("max_over_time(diff_temperature[30s])", true),
        ("min_over_time(diff_temperature[30s])", true),
        ("count_over_time(diff_temperature[30s])", true),
        ("delta(diff_temperature[30s])", true),
        ("deriv(diff_temperature[30s])", true),
        (
            "histogram_quantile(0.9, sum by (le) (rate(diff_latency_seconds_bucket[30s])))",
            true,
        ),
        (
            "histogram_quantile(0.5, rate(diff_latency_seconds_bucket[30s]))",
            true,
        ),
        (
            "rate(diff_latency_seconds_sum[30s]) / rate(diff_latency_seconds_count[30s])",
            true,
        ),
        ("diff_temperature > bool 20", true),
        ("diff_temperature > 19", false),
        ("topk(1, diff_temperature)", true),
        ("bottomk(1, rate(diff_requests_total[30s]))", true),
        ("count(diff_temperature)", true),
        ("count by (job) (diff_requests_total)", true),
        ("absent(diff_not_there)", true),
        ("absent(diff_temperature)", false),
        (
            r#"label_replace(diff_temperature, "place", "at-$1", "room", "(.*)")"#,
            true,
        ),
        ("diff_temperature offset 10s", true),
        ("rate(diff_requests_total[20s] offset 10s)", true),
        (
            r#"diff_temperature{room="lab"} or diff_temperature{room="office"}"#,
            true,
        ),
        (
            r#"diff_requests_total and on (path) diff_errors_total"#,
            true,
        ),
        (
            r#"diff_requests_total unless on (path) diff_requests_total{path="/b"}"#,
            true,
        ),
        (
            "diff_requests_total / on (path) group_left diff_errors_total",
            false,
        ),
        ("scalar(sum(diff_temperature)) * 2", false),
        ("time() - timestamp(diff_temperature)", true),
    ];

    let mut compared = 0;
    let mut failures = Vec::new();
    let eval_times = [first_eval, first_eval + 7.0, range_end];
    for (expression, must_have_data) in expressions {
        for eval_time in eval_times {
            let form = [
                ("query", expression.to_string()),
                ("time", format!("{eval_time:.3}")),
            ];
            let ours = parse_answer(&ask(http, &ours_base, "/api/v1/query", &form).await);
            let theirs = parse_answer(&ask(http, &prometheus_base, "/api/v1/query", &form).await);
            compared += 1;
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => {
                    if let Some(why) = difference(&ours, &theirs) {
                        failures.push(format!("{expression} @ {eval_time}: {why}"));
                    } else if *must_have_data && answer_is_empty(&ours) {
                        failures.push(format!(
                            "{expression} @ {eval_time}: both empty, the test expected data"
                        ));
                    }
                }
                (ours, theirs) => failures.push(format!(
                    "{expression} @ {eval_time}: ours {ours:?}, Prometheus {theirs:?}"
                )),
            }
        }
        println!("compared: {expression}");
    }

    let range_expressions = [
        "rate(diff_requests_total[30s])",
        "sum by (le) (increase(diff_latency_seconds_bucket[20s]))",
        "diff_temperature",
        "avg_over_time(diff_temperature[15s]) > bool 20",
    ];
    for expression in range_expressions {
        let form = [
            ("query", expression.to_string()),
            ("start", format!("{first_eval:.3}")),
            ("end", format!("{range_end:.3}")),
            // A whole-second step keeps every step half a second off the
            // samples' timestamps, as for the instant queries.
            ("step", "3s".to_string()),
        ];
        let ours = parse_answer(&ask(http, &ours_base, "/api/v1/query_range", &form).await);
        let theirs = parse_answer(&ask(http, &prometheus_base, "/api/v1/query_range", &form).await);
        compared += 1;
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => {
                if let Some(why) = difference(&ours, &theirs) {
                    failures.push(format!("range {expression}: {why}"));
                } else if answer_is_empty(&ours) {
                    failures.push(format!("range {expression}: both empty"));
                }
            }
            (ours, theirs) => failures.push(format!(
                "range {expression}: ours {ours:?}, Prometheus {theirs:?}"
            )),
        }
        println!("compared (range, step 3s): {expression}");
    }

    println!(
        "prometheus differential: {} comparisons, {} matched, {} differed",
        compared,
        compared - failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} answers differ from Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
