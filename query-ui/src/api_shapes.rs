//! Snapshot tests of the query API's JSON shapes: the contract between the
//! handlers and their clients (the UI's JSDoc types in `assets/*.js`,
//! Grafana's Prometheus and Jaeger data sources, the Jaeger UI).
//!
//! Each case sends one request to the router over a fixed data set (the
//! request-story shop of `traces.rs`, the metrics and rule group of
//! `prometheus.rs`) and compares the status and the JSON body with
//! `tests/snapshots/<case>.json`. Values that change from run to run are
//! replaced by `"<volatile>"` (their keys stay), so a renamed, added or
//! removed field fails the test. Key order is not part of the contract and
//! is not compared.
//!
//! After an intended change of a shape, rewrite the snapshots with
//! `UPDATE_SNAPSHOTS=1 cargo test -p sightline-query-ui --lib api_shapes`,
//! review the diff, and run `scripts/typecheck`: `contract.mjs` checks that
//! the snapshots the UI reads still satisfy its JSDoc types.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::QueryState;

/// 2023-11-14T22:13:20Z, the time of the metrics fixture, in Unix seconds.
const METRICS_T0: i64 = 1_700_000_000;

/// Keys whose values depend on when the test runs or on the build.
const VOLATILE_KEYS: &[&str] = &[
    // Wall-clock time of ingestion, and whether the idle timeout has passed since.
    "updated_at",
    "complete",
    // The crate version.
    "revision",
    // How long a query took.
    "took_ms",
    "timings",
    "execTime",
];

/// `(snapshot name, request URI)`, every endpoint of the query API that
/// answers JSON, and one error answer of each error shape.
fn cases() -> Vec<(&'static str, String)> {
    let t = |offset: i64| METRICS_T0 + offset;
    let trace = crate::traces::tests::ORDER_TRACE;
    vec![
        // Logs: our own shapes.
        (
            "logs_search",
            "/api/logs?q=request_id:req-42&limit=2".into(),
        ),
        ("logs_search_bad_query", "/api/logs?q=body:(oops".into()),
        (
            "logs_histogram",
            "/api/logs/histogram?start=1700000000000000000&end=1700000001000000000&interval=500ms"
                .into(),
        ),
        ("logs_terms", "/api/logs/terms?field=service&size=3".into()),
        (
            "logs_stats",
            "/api/logs/stats?q=*%20%7C%20stats%20count()%20by%20service%20%7C%20sort%20-count&start=1699999999000000000&end=1700000002000000000".into(),
        ),
        (
            "logs_timechart",
            "/api/logs/stats?q=*%20%7C%20timechart%20span%3D1s%20count()%20by%20service&start=1699999999000000000&end=1700000002000000000".into(),
        ),
        (
            "logs_stats_bad_pipe",
            "/api/logs/stats?q=*%20%7C%20stats%20avgg(x)".into(),
        ),
        (
            "logs_context",
            "/api/logs/context/1700000000001000000-0?before=1&after=1".into(),
        ),
        ("logs_context_unknown", "/api/logs/context/1-1".into()),
        (
            "logs_patterns",
            "/api/logs/patterns?start=1699999999000000000&end=1700000002000000000&since=1700000000500000000".into(),
        ),
        ("saved_searches", "/api/searches".into()),
        // Loki's API, as Grafana's Loki data source asks it: the health
        // check, the label browser, logs and a metric over time, series.
        (
            "loki_health_check",
            "/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=1700000000000000000".into(),
        ),
        (
            "loki_labels",
            "/loki/api/v1/labels?start=1699999999000000000&end=1700000002000000000".into(),
        ),
        (
            "loki_label_values",
            "/loki/api/v1/label/service_name/values?start=1699999999000000000&end=1700000002000000000".into(),
        ),
        (
            "loki_query_range_logs",
            "/loki/api/v1/query_range?query=%7Bservice_name%3D%22gateway%22%7D&start=1699999999000000000&end=1700000002000000000&limit=10&direction=backward".into(),
        ),
        (
            "loki_query_range_metric",
            "/loki/api/v1/query_range?query=sum%20by%20(service_name)%20(count_over_time(%7Bservice_name%3D~%22.%2B%22%7D%5B1s%5D))&start=1699999999000000000&end=1700000002000000000&step=1s".into(),
        ),
        (
            "loki_series",
            "/loki/api/v1/series?match%5B%5D=%7Bservice_name%3D%22gateway%22%7D&start=1699999999000000000&end=1700000002000000000".into(),
        ),
        (
            "loki_bad_query",
            "/loki/api/v1/query_range?query=%7Bservice_name%3D%22gateway%22".into(),
        ),
        // Jaeger's query API (v2 JSON and v3 OTLP JSON).
        ("jaeger_services", "/api/services".into()),
        (
            "jaeger_service_operations",
            "/api/services/order/operations".into(),
        ),
        (
            "jaeger_operations",
            "/api/operations?service=payment".into(),
        ),
        (
            "jaeger_search",
            "/api/traces?service=payment&minDuration=900ms&limit=5".into(),
        ),
        ("jaeger_trace", format!("/api/traces/{trace}")),
        (
            "jaeger_trace_unknown",
            "/api/traces/0123456789abcdef0123456789abcdef".into(),
        ),
        ("jaeger_trace_bad_id", "/api/traces/not-hex".into()),
        ("v3_trace", format!("/api/v3/traces/{trace}")),
        (
            "v3_search",
            "/api/v3/traces?query.service_name=notification".into(),
        ),
        ("v3_services", "/api/v3/services".into()),
        ("v3_operations", "/api/v3/operations?service=payment".into()),
        // Our trace search and request story.
        (
            "trace_search",
            "/api/trace-search?service=notification".into(),
        ),
        ("request_story", "/api/requests/req-42".into()),
        (
            "trace_compare",
            format!(
                "/api/traces/compare?a={trace}&b={}",
                crate::traces::tests::NOTIFY_TRACE
            ),
        ),
        (
            "trace_compare_typical",
            format!("/api/traces/compare?a={trace}&b=typical"),
        ),
        ("trace_compare_bad_id", "/api/traces/compare?a=nope".into()),
        ("incident", "/api/incident?alert=HighErrorRate".into()),
        ("incident_unknown", "/api/incident?alert=NoSuchAlert".into()),
        (
            "request_story_unknown",
            "/api/requests/nothing-like-this".into(),
        ),
        // Dashboards (the list follows dashboards/*.json, so only its error shape).
        (
            "dashboard_unknown",
            "/api/dashboards/no-such-dashboard".into(),
        ),
        // The Prometheus HTTP API.
        (
            "prom_query_vector",
            format!("/api/v1/query?query=http_requests_total&time={}", t(60)),
        ),
        (
            "prom_query_scalar",
            format!("/api/v1/query?query=1.5&time={}.5", t(0)),
        ),
        (
            "prom_query_string",
            format!("/api/v1/query?query=%22hi%22&time={}", t(0)),
        ),
        (
            "prom_query_range",
            format!(
                "/api/v1/query_range?query=rate(http_requests_total%5B1m%5D)&start={}&end={}&step=30",
                t(60),
                t(120)
            ),
        ),
        (
            "prom_query_range_bad_step",
            format!("/api/v1/query_range?query=up&start={}&end={}", t(0), t(60)),
        ),
        (
            "prom_series",
            "/api/v1/series?match%5B%5D=http_requests_total".into(),
        ),
        (
            "prom_series_truncated",
            "/api/v1/series?match%5B%5D=http_requests_total&limit=1".into(),
        ),
        ("prom_labels", "/api/v1/labels".into()),
        ("prom_label_values", "/api/v1/label/instance/values".into()),
        ("prom_metadata", "/api/v1/metadata".into()),
        ("prom_rules", "/api/v1/rules".into()),
        ("prom_alerts", "/api/v1/alerts".into()),
        ("prom_buildinfo", "/api/v1/status/buildinfo".into()),
        ("prom_flags", "/api/v1/status/flags".into()),
        (
            "prom_query_exemplars",
            "/api/v1/query_exemplars?query=rate(http_requests_total%5B5m%5D)".into(),
        ),
    ]
}

/// The shop's logs and spans with the Prometheus fixture's metrics and rules.
fn state(dir: &Path) -> QueryState {
    let shop = crate::traces::tests::shop(&dir.join("shop"));
    let metrics = crate::prometheus::tests::state(&dir.join("metrics"));
    QueryState {
        logs: shop.logs,
        spans: shop.spans,
        metrics: metrics.metrics,
        rules: metrics.rules,
        dashboards: Default::default(),
        searches: saved_searches(dir),
    }
}

/// One saved search with an alert, one without.
fn saved_searches(dir: &Path) -> crate::Searches {
    let searches = crate::Searches::in_dir(dir);
    let failed = searches
        .saved
        .save(
            "Failed logins",
            "body:\"login failed\"",
            1_700_000_000_000_000_000,
        )
        .unwrap();
    searches
        .saved
        .save(
            "Errors by service",
            "severity:ERROR | stats count() by service",
            1_700_000_000_000_000_000,
        )
        .unwrap();
    let alert = sightline_store::SearchAlert {
        metric: "search_failed_logins_by_ip_address_total".into(),
        group_by: Some("ip_address".into()),
        threshold: 10.0,
        window_seconds: 60,
        for_seconds: 0,
        severity: "warning".into(),
        created: 1_700_000_000_000_000_000,
    };
    searches.saved.set_alert(&failed.id, Some(alert)).unwrap();
    searches
}

/// Replaces the values of [`VOLATILE_KEYS`] anywhere in `value`.
fn normalise(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object.iter_mut() {
                if VOLATILE_KEYS.contains(&key.as_str()) {
                    *inner = json!("<volatile>");
                } else {
                    normalise(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

async fn answer(state: &QueryState, uri: &str) -> Value {
    let response = crate::router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    // Loki answers its errors in plain text, as Grafana expects them.
    let loki_error = uri.starts_with("/loki/") && status >= 400;
    let mut body: Value = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(_) if loki_error => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        Err(error) => panic!("{uri} answered no JSON ({error}): {bytes:?}"),
    };
    normalise(&mut body);
    json!({ "request": format!("GET {uri}"), "status": status, "body": body })
}

#[tokio::test]
async fn every_endpoint_answers_the_shape_of_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let snapshots = snapshot_dir();
    if update {
        std::fs::create_dir_all(&snapshots).unwrap();
    }
    let mut failures = Vec::new();
    let cases = cases();
    for (name, uri) in &cases {
        let actual = answer(&state, uri).await;
        let path = snapshots.join(format!("{name}.json"));
        let pretty = serde_json::to_string_pretty(&actual).unwrap() + "\n";
        if update {
            std::fs::write(&path, pretty).unwrap();
            continue;
        }
        let expected: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        if expected.as_ref() != Some(&actual) {
            failures.push(format!(
                "{name} ({}):\n--- expected\n{}\n--- actual\n{pretty}",
                path.display(),
                expected.map_or_else(
                    || "(no snapshot)".to_string(),
                    |value| serde_json::to_string_pretty(&value).unwrap()
                ),
            ));
        }
    }
    // A snapshot without its case would stop checking anything unnoticed.
    for entry in std::fs::read_dir(&snapshots).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().to_string();
        let name = file.trim_end_matches(".json");
        if !cases.iter().any(|(case, _)| *case == name) {
            failures.push(format!("{file}: a snapshot no case produces"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} API shape(s) differ from their snapshots; if the change is intended, \
         rerun with UPDATE_SNAPSHOTS=1 and review the diff:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn volatile_values_are_replaced_and_their_keys_kept() {
    let mut value = json!({"traces": [{"trace_id": "a", "updated_at": 5, "complete": true}]});
    normalise(&mut value);
    assert_eq!(
        value,
        json!({"traces": [{"trace_id": "a", "updated_at": "<volatile>", "complete": "<volatile>"}]})
    );
}
