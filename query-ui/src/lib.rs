//! The HTTP query API and the browser UI of Sightline.
//!
//! [`router`] builds an axum `Router` that the collector mounts on its query
//! port (7070 by default):
//!
//! - `GET /api/logs?q=&start=&end=&limit=&cursor=`: log search, newest first,
//!   with a cursor for the next page;
//! - `GET /api/logs/histogram?q=&start=&end=&interval=`: volume over time by severity;
//! - `GET /api/logs/terms?field=&q=&start=&end=&size=`: top values of a field;
//! - `GET /api/logs/context/{id}?before=&after=`: the record's neighbours in its stream;
//! - `GET /api/logs/tail?q=`: live tail as Server-Sent Events;
//! - the Jaeger query API: `GET /api/traces/{trace_id}` (404 when unknown),
//!   `/api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=`,
//!   `/api/services`, `/api/services/{service}/operations`, `/api/operations`,
//!   and the `/api/v3/...` endpoints answering OTLP JSON;
//! - `GET /api/trace-search`: trace summaries on whole-trace properties;
//! - `GET /api/requests/{id}`: one request's logs and spans on one timeline,
//!   by request id or trace id, with the critical path and the bottleneck;
//! - the Prometheus HTTP API under `/api/v1/` (query, query_range, series,
//!   labels, label values, metadata, rules, alerts, buildinfo), see
//!   [`prometheus`](crate::prometheus) for the details;
//! - saved searches and the alerts made from them under `/api/searches`,
//!   see [`searches`](crate::searches);
//! - `GET /api/dashboards`, `/api/dashboards/{uid}`: the Grafana dashboards
//!   of the dashboards directory, read at run time ([`DashboardDir`]);
//! - `GET /health`: liveness;
//! - `GET /` and `/ui/*`: the UI, plain ES modules embedded in the binary.
//!
//! Handlers never block the executor: store reads run on blocking threads.
//! Every response carries a Content-Security-Policy that forbids inline
//! scripts, and the UI only ever inserts log content as text: log lines are
//! attacker-controlled.

mod api;
#[cfg(test)]
mod api_shapes;
mod compare;
mod dashboards;
mod error;
mod incident;
mod jaeger;
mod logql;
mod loki;
mod params;
mod patterns;
mod prometheus;
mod response;
mod searches;
mod traces;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use sightline_store::{LogReader, SpanReader};
use sightline_tsdb::MetricReader;
use sightline_tsdb::rules::RuleStatusSource;

pub use dashboards::DashboardDir;
pub use error::ApiError;
pub use prometheus::cancel_queries;
pub use searches::{NoAlerts, SearchAlerts, Searches};

/// What the query API reads: the collector's own stores when embedded,
/// the splits of the cluster in cluster mode.
#[derive(Clone)]
pub struct QueryState {
    pub logs: Arc<dyn LogReader>,
    pub spans: Arc<dyn SpanReader>,
    /// Time series, for the Prometheus HTTP API: the collector's own
    /// store, or the cluster's owners and blocks.
    pub metrics: Arc<dyn MetricReader>,
    /// The rule engine's report, for `/api/v1/rules` and `/api/v1/alerts`.
    pub rules: Arc<dyn RuleStatusSource>,
    /// Where the UI's dashboards are read from, on every request.
    pub dashboards: DashboardDir,
    /// Saved searches, and what turns their alerts into counters and rules.
    pub searches: Searches,
}

/// All routes of the query API and the UI.
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/logs", get(api::search_logs))
        .route("/api/logs/histogram", get(api::histogram))
        .route("/api/logs/terms", get(api::terms))
        .route("/api/logs/stats", get(api::stats))
        .route("/api/logs/patterns", get(patterns::patterns))
        .route("/api/logs/context/{id}", get(api::context))
        .route("/api/logs/tail", get(api::tail))
        .route("/api/traces", get(traces::jaeger_search))
        .route("/api/traces/compare", get(compare::compare))
        .route("/api/incident", get(incident::incident))
        .route("/api/traces/{trace_id}", get(api::get_trace))
        .route("/api/services", get(traces::services))
        .route(
            "/api/services/{service}/operations",
            get(traces::service_operations),
        )
        .route("/api/operations", get(traces::operations))
        .route("/api/trace-search", get(traces::search))
        .route("/api/requests/{id}", get(traces::request_story))
        .route("/api/v3/traces", get(traces::v3_search))
        .route("/api/v3/traces/{trace_id}", get(traces::v3_trace))
        .route("/api/v3/services", get(traces::v3_services))
        .route("/api/v3/operations", get(traces::v3_operations))
        .merge(prometheus::routes())
        .merge(loki::routes())
        .merge(searches::routes())
        .merge(ui::routes())
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use sightline_store::LogRecord;
    use sightline_store::{LogStore, SpanStore};
    use tower::ServiceExt;

    fn state(dir: &std::path::Path) -> QueryState {
        let logs = LogStore::open(&dir.join("logs")).unwrap();
        logs.add(
            0,
            &[LogRecord {
                timestamp: 1_700_000_000_000_000_000,
                body: "<script>alert(1)</script> payment declined".into(),
                service: "payment".into(),
                request_id: Some("req-1".into()),
                ..LogRecord::default()
            }],
        )
        .unwrap();
        logs.commit(1).unwrap();
        let spans = SpanStore::open(&dir.join("spans")).unwrap();
        QueryState {
            logs: Arc::new(logs),
            spans: Arc::new(spans),
            metrics: Arc::new(sightline_tsdb::MetricStore::open(dir.join("metrics")).unwrap()),
            rules: Arc::new(sightline_tsdb::rules::NoRules),
            dashboards: Default::default(),
            searches: crate::Searches::in_dir(dir),
        }
    }

    async fn get(
        state: QueryState,
        uri: &str,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = router(state)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    #[tokio::test]
    async fn log_search_answers_records_and_bad_queries_answer_400() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, _, body) = get(state.clone(), "/api/logs?q=request_id:req-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["total_hits"], 1);
        assert_eq!(body["records"][0]["service"], "payment");

        let (status, _, body) = get(state.clone(), "/api/logs?q=body:(oops").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("position"),
            "{body}"
        );

        let (status, _, body) = get(state.clone(), "/api/logs?limit=10001").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "`limit` 10001 is over the maximum of 10000 records per page; ask for the next page with `cursor`"
        );
        let (status, _, body) = get(state.clone(), "/api/logs?limit=10000").await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let (status, _, body) = get(state.clone(), "/api/logs?start=yesterday").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("`start`"),
            "{body}"
        );

        let (status, _, body) = get(
            state,
            "/api/logs?start=2023-11-14T00:00:00Z&end=2023-11-15T00:00:00Z",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total_hits"], 1);
    }

    #[tokio::test]
    async fn traces_answer_404_when_missing_and_400_for_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (status, _, body) = get(
            state.clone(),
            "/api/traces/0123456789abcdef0123456789abcdef",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errors"][0]["code"], 404);
        let (status, _, _) = get(state, "/api/traces/not-hex").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn every_response_carries_a_strict_content_security_policy() {
        let dir = tempfile::tempdir().unwrap();
        for uri in ["/", "/ui/app.js", "/api/logs", "/health"] {
            let (_, headers, _) = get(state(&dir.path().join(uri.replace('/', "_"))), uri).await;
            let policy = headers
                .get("content-security-policy")
                .unwrap()
                .to_str()
                .unwrap();
            assert!(
                policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
                "{uri}: {policy}"
            );
            assert_eq!(headers.get("x-content-type-options").unwrap(), "nosniff");
        }
    }

    fn record(timestamp: i64, body: &str, severity: &str, user: &str) -> LogRecord {
        let mut record = LogRecord {
            timestamp,
            body: body.into(),
            severity_text: severity.into(),
            service: "checkout".into(),
            ..LogRecord::default()
        };
        record.attributes.insert("user_id".into(), user.into());
        record
            .attributes
            .insert("log.iostream".into(), "stdout".into());
        std::sync::Arc::make_mut(&mut record.resource).insert("k8s.pod.uid".into(), "pod-1".into());
        record
    }

    /// 2023-11-14T00:00:00Z in nanoseconds.
    const T0: i64 = 1_699_920_000_000_000_000;

    fn filled_state(dir: &std::path::Path) -> QueryState {
        filled_stores(dir).1
    }

    /// The state and its log store, for a test that writes more.
    fn filled_stores(dir: &std::path::Path) -> (Arc<LogStore>, QueryState) {
        let logs = Arc::new(LogStore::open(&dir.join("logs")).unwrap());
        let records: Vec<_> = (0..10)
            .map(|i| {
                let severity = if i % 3 == 0 { "ERROR" } else { "INFO" };
                record(
                    T0 + i * 1_000_000_000,
                    &format!("line {i}"),
                    severity,
                    if i < 7 { "u-1" } else { "u-2" },
                )
            })
            .collect();
        logs.add(0, &records).unwrap();
        logs.commit(1).unwrap();
        let spans = SpanStore::open(&dir.join("spans")).unwrap();
        let state = QueryState {
            logs: logs.clone(),
            spans: Arc::new(spans),
            metrics: Arc::new(sightline_tsdb::MetricStore::open(dir.join("metrics")).unwrap()),
            rules: Arc::new(sightline_tsdb::rules::NoRules),
            dashboards: Default::default(),
            searches: crate::Searches::in_dir(dir),
        };
        (logs, state)
    }

    #[tokio::test]
    async fn log_patterns_name_what_is_new_since_a_time_and_refuse_bad_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, state) = filled_stores(dir.path());
        // "line <i>" once a second over [T0, T0 + 10 s); from T0 + 5 s a
        // new message as well.
        let declined: Vec<_> = (5..10)
            .map(|i| {
                record(
                    T0 + i * 1_000_000_000 + 1,
                    &format!("payment declined for order ord-{i}"),
                    "ERROR",
                    "u-3",
                )
            })
            .collect();
        logs.add(2, &declined).unwrap();
        logs.commit(3).unwrap();
        let (start, since, end) = (T0, T0 + 5_000_000_000, T0 + 10_000_000_000);
        let uri = format!("/api/logs/patterns?start={start}&end={end}&since={since}");
        let (status, _, body) = get(state.clone(), &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["sampled"], 10, "{body}");
        assert_eq!(body["sampled_before"], 5, "{body}");
        let patterns: Vec<(&str, &str, u64, u64)> = body["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["pattern"].as_str().unwrap(),
                    p["change"].as_str().unwrap(),
                    p["count"].as_u64().unwrap(),
                    p["count_before"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            patterns,
            [
                ("payment declined for order <*>", "new", 5, 0),
                ("line <*>", "steady", 5, 5),
            ]
        );

        for (query, field) in [
            (format!("start={start}&end={end}&since={end}"), "`since`"),
            ("limit=0".to_string(), "`limit`"),
            ("limit=20001".to_string(), "`limit`"),
            ("since=yesterday".to_string(), "`since`"),
            ("q=body:(oops".to_string(), "position"),
        ] {
            let (status, _, body) =
                get(state.clone(), &format!("/api/logs/patterns?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains(field),
                "{query}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let state = filled_state(dir.path());
        let mut bodies = Vec::new();
        let mut uri = "/api/logs?limit=4".to_string();
        loop {
            let (status, _, body) = get(state.clone(), &uri).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["total_hits"], 10);
            bodies.extend(
                body["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["body"].as_str().unwrap().to_string()),
            );
            match body["next_cursor"].as_str() {
                Some(cursor) => uri = format!("/api/logs?limit=4&cursor={cursor}"),
                None => break,
            }
        }
        let expected: Vec<String> = (0..10).rev().map(|i| format!("line {i}")).collect();
        assert_eq!(bodies, expected);
        let (status, _, _) = get(state, "/api/logs?cursor=nonsense").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn histogram_terms_and_context_answer_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let state = filled_state(dir.path());
        let uri = format!(
            "/api/logs/histogram?start={T0}&end={}&interval=5s",
            T0 + 10_000_000_000
        );
        let (status, _, body) = get(state.clone(), &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let buckets = body["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0]["count"], 5);
        assert_eq!(buckets[0]["by_severity"]["ERROR"], 2);
        assert_eq!(buckets[1]["by_severity"]["ERROR"], 2);

        let (status, _, body) = get(state.clone(), "/api/logs/terms?field=user_id").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["values"][0],
            serde_json::json!({"value": "u-1", "count": 7})
        );
        assert_eq!(
            body["values"][1],
            serde_json::json!({"value": "u-2", "count": 3})
        );
        let (_, _, body) = get(
            state.clone(),
            "/api/logs/terms?field=severity_text&q=user_id:u-2",
        )
        .await;
        assert_eq!(
            body["values"][0],
            serde_json::json!({"value": "INFO", "count": 2})
        );
        assert_eq!(
            body["values"][1],
            serde_json::json!({"value": "ERROR", "count": 1})
        );

        let (_, _, page) = get(state.clone(), "/api/logs?q=%22line%205%22").await;
        let id = page["records"][0]["id"].as_str().unwrap().to_string();
        let (status, _, body) = get(
            state.clone(),
            &format!("/api/logs/context/{id}?before=2&after=1"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let bodies: Vec<_> = body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, ["line 3", "line 4", "line 5", "line 6"]);
        let (status, _, body) = get(state.clone(), "/api/logs/context/1-1").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, _, _) = get(state, &format!("/api/logs/histogram?start={T0}&end={T0}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "an empty range is refused");
    }

    #[tokio::test]
    async fn live_tail_streams_records_that_arrive_after_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, state) = filled_stores(dir.path());
        let response = router(state.clone())
            .oneshot(
                Request::get("/api/logs/tail?q=user_id:u-3")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body().into_data_stream();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        tokio::task::spawn_blocking(move || {
            logs.add(5, &[record(now + 1_000_000, "fresh line", "WARN", "u-3")])
                .unwrap();
            logs.commit(6).unwrap();
        })
        .await
        .unwrap();
        let mut received = String::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !received.contains("fresh line") {
            use futures_util::StreamExt;
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("an event within 10 s");
            received.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
        }
        assert!(received.contains("event: record"), "{received}");
        assert!(
            !received.contains("line 1\""),
            "old records are not replayed: {received}"
        );

        let (status, _, _) = get(state, "/api/logs/tail?q=body:(broken").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
